//! `--wait`: what an action changed is read again until it is settled, with a progress
//! line on stderr whenever what it says changes.

use std::io::Write;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tether::views::NodeView;
use tether::NodeState;
use tokio::time::Instant;

use crate::output::{state_name, Shown};
use crate::{http, CliError, Planned, Session};

/// What `--wait` follows: a node or a group.
pub(crate) trait Watched: Shown + DeserializeOwned {
    /// `node`, `group`.
    const KIND: &'static str;
    fn id(&self) -> String;
    /// Where it is read again.
    fn path(&self) -> String;
    /// Done changing by itself.
    fn settled(&self) -> bool;
    /// The progress line after the time and the id; a line is printed whenever it changes.
    fn progress(&self) -> String;
    /// Why a wait that timed out did not end: `it is still launching (generation 1)`.
    fn unsettled(&self) -> String;
    /// Settled, but not as asked (a node in error): the reason.
    fn failure(&self) -> Option<String>;
    /// The commands to follow it with after a timeout.
    fn follow(&self) -> String;
}

impl Session<'_> {
    /// Polls `shown` until it is settled or `timeout` passes; one progress line per change.
    pub(crate) async fn wait<T: Watched>(
        &self,
        shown: (T, bytes::Bytes),
        timeout: Duration,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> Result<(T, bytes::Bytes), CliError> {
        let (mut value, mut raw) = shown;
        let start = Instant::now();
        let id = value.id();
        let mut last = None;
        let show = |value: &T, last: &mut Option<String>, err: &mut (dyn Write + Send)| {
            let line = value.progress();
            if last.as_ref() != Some(&line) {
                let _ = writeln!(err, "[{:>6.1}s] {id} {line}", start.elapsed().as_secs_f64());
                *last = Some(line);
            }
        };
        if !value.settled() {
            show(&value, &mut last, err);
        }
        let poll = Planned::get(value.path());
        while !value.settled() {
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                self.print(&value, &raw, out);
                return Err(CliError::Failed(format!(
                    "timed out after {}s waiting for {} {id}: {}\nfollow it with {}",
                    timeout.as_secs(),
                    T::KIND,
                    value.unsettled(),
                    value.follow()
                )));
            }
            tokio::time::sleep(self.env.poll_interval.min(timeout - elapsed)).await;
            (value, raw) = self.call_raw(&poll, err).await?;
            show(&value, &mut last, err);
        }
        if let Some(why) = value.failure() {
            self.print(&value, &raw, out);
            return Err(CliError::Failed(why));
        }
        Ok((value, raw))
    }
}

impl Watched for NodeView {
    const KIND: &'static str = "node";

    fn id(&self) -> String {
        self.id.to_string()
    }

    fn path(&self) -> String {
        format!("/nodes/{}", http::encode(self.id.as_str()))
    }

    /// Not in a state the node leaves by itself: a launch or deallocation going on, or an
    /// interrupted instance about to be replaced.
    fn settled(&self) -> bool {
        !matches!(self.state, NodeState::Launching | NodeState::Deallocating | NodeState::Recovering)
    }

    /// `launching generation 2`, `running i-0abc (m5.large, spot)`, …
    fn progress(&self) -> String {
        let state = state_name(self.state);
        match self.state {
            NodeState::Launching => format!("{state} generation {}", self.generation),
            NodeState::Running => format!(
                "{state} {} ({}, {})",
                self.instance_id.as_deref().unwrap_or("-"),
                self.instance_type.as_deref().unwrap_or("-"),
                self.market.map(|m| m.as_str()).unwrap_or("-")
            ),
            NodeState::Error => format!("{state}: {}", self.last_error.as_deref().unwrap_or("no reason recorded")),
            _ => state,
        }
    }

    fn unsettled(&self) -> String {
        let mut why = format!("it is still {} (generation {})", state_name(self.state), self.generation);
        if let Some(last) = &self.last_error {
            why.push_str(&format!("\nlast error: {last}"));
        }
        why
    }

    fn failure(&self) -> Option<String> {
        (self.state == NodeState::Error).then(|| {
            format!("node {} ended in state error\nlast error: {}", self.id, self.last_error.as_deref().unwrap_or("no reason recorded"))
        })
    }

    fn follow(&self) -> String {
        format!("`tether nodes show {}`", self.id)
    }
}
