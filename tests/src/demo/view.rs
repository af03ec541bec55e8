//! The terminal view. On a terminal: a table of the nodes, a progress line and the latest
//! events, redrawn in place about twice a second with plain ANSI escapes. Elsewhere (CI,
//! a pipe): one line per event and a progress line every ten seconds, no escapes.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(500);
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Keep the live frame within a 24-line terminal: cursor-up cannot reach lines that
/// scrolled off the top, so a taller frame could not be redrawn in place.
const LIVE_ROWS: usize = 12;
const LIVE_EVENTS: usize = 5;
/// ANSI: auto-wrap off while a frame is written (a long line is clipped at the right
/// edge instead of taking two lines, so the frame's height stays its line count), on after.
const WRAP_OFF: &str = "\x1b[?7l";
const WRAP_ON: &str = "\x1b[?7h";

/// One node as the table shows it: its state and generation from Tether's record, the
/// rest as the emulator reports the node's current instance.
#[derive(Clone, Debug)]
pub struct Row {
    pub node: String,
    pub private_ip: String,
    pub public_ip: String,
    pub generation: u64,
    pub node_state: String,
    pub instance_id: String,
    pub instance_state: String,
    pub market_type: String,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub elapsed: Duration,
    pub market_time: Duration,
    pub market_closed: bool,
    pub interruptions: usize,
    pub planned: usize,
    pub replacements: usize,
    pub recovering: usize,
    pub deliveries: usize,
    pub reconciler_runs: usize,
}

impl Progress {
    pub fn line(&self) -> String {
        const WIDTH: usize = 12;
        let done = self.elapsed.as_secs_f64() / self.market_time.as_secs_f64().max(f64::EPSILON);
        let filled = ((done.min(1.0) * WIDTH as f64) as usize).min(WIDTH);
        let phase = if self.market_closed { "market closed" } else { "market open" };
        format!(
            "{:>5.1}/{} s [{}{}] {phase}  interrupted {}/{}  replaced {}  recovering {}  events {}  reconciler runs {}",
            self.elapsed.as_secs_f64(),
            self.market_time.as_secs(),
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.interruptions,
            self.planned,
            self.replacements,
            self.recovering,
            self.deliveries,
            self.reconciler_runs
        )
    }
}

pub fn table(rows: &[Row]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<11}  {:<12}  {:<15}  {:>3}  {:<10}  {:<19}  {:<13}  {}",
        "node", "private IP", "public IP", "gen", "state", "instance", "EC2 state", "market/type"
    )];
    lines.extend(rows.iter().map(|r| {
        format!(
            "{:<11}  {:<12}  {:<15}  {:>3}  {:<10}  {:<19}  {:<13}  {}",
            r.node, r.private_ip, r.public_ip, r.generation, r.node_state, r.instance_id, r.instance_state, r.market_type
        )
    }));
    lines
}

pub struct View {
    live: bool,
    /// Lines of the live frame on screen, to move up over and clear.
    drawn: usize,
    recent: VecDeque<String>,
    last_drawn: Option<Instant>,
}

impl View {
    /// Live when stdout is a terminal that understands escapes.
    pub fn for_stdout() -> View {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        View { live: std::io::stdout().is_terminal() && !dumb, drawn: 0, recent: VecDeque::new(), last_drawn: None }
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Something happened `elapsed` into the run; `source` says where (the market, a function ...).
    pub fn event(&mut self, elapsed: Duration, source: &str, text: &str) {
        let line = event_line(elapsed, source, text);
        tracing::info!(target: "demo", "{line}");
        if self.live {
            self.recent.push_back(line);
            while self.recent.len() > LIVE_EVENTS {
                self.recent.pop_front();
            }
        } else {
            println!("{line}");
        }
    }

    /// Whether `draw` would show something new now (it needs the rows, which cost reads).
    pub fn due(&self) -> bool {
        let every = if self.live { REDRAW_EVERY } else { PLAIN_PROGRESS_EVERY };
        self.last_drawn.is_none_or(|at| at.elapsed() >= every)
    }

    /// Live: redraws the frame. Plain: prints the progress line.
    pub fn draw(&mut self, rows: &[Row], progress: &Progress) {
        self.last_drawn = Some(Instant::now());
        if !self.live {
            println!("{}", event_line(progress.elapsed, "progress", &progress.line()));
            return;
        }
        let mut frame = table(&rows[..rows.len().min(LIVE_ROWS)]);
        if rows.len() > LIVE_ROWS {
            frame.push(format!("... and {} more nodes (all in the final table)", rows.len() - LIVE_ROWS));
        }
        frame.push(String::new());
        frame.push(progress.line());
        frame.push(String::new());
        frame.extend(self.recent.iter().cloned());
        let mut out = self.erase();
        out.push_str(WRAP_OFF);
        for line in &frame {
            out.push_str(line);
            out.push_str("\x1b[K\n");
        }
        out.push_str(WRAP_ON);
        self.drawn = frame.len();
        print_now(&out);
    }

    /// The end: the live frame gives way to the final table, printed plainly as in CI.
    pub fn finish(&mut self, rows: &[Row], progress: &Progress) {
        if self.live {
            let erase = self.erase();
            print_now(&erase);
            self.drawn = 0;
        } else {
            println!();
        }
        for line in table(rows) {
            println!("{line}");
        }
        println!("\n{}", progress.line());
    }

    /// ANSI: to the start of the frame's first line (`ESC [ n F`), then clear to the end of
    /// the screen (`ESC [ J`).
    fn erase(&self) -> String {
        if self.drawn == 0 {
            String::new()
        } else {
            format!("\x1b[{}F\x1b[J", self.drawn)
        }
    }
}

fn event_line(elapsed: Duration, source: &str, text: &str) -> String {
    format!("{:>6.1}s  {source:<12} {text}", elapsed.as_secs_f64())
}

fn print_now(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // The view is best effort: a closed terminal must not end the run.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
