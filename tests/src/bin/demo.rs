//! `make demo`: a spot market against the local AWS emulator, with every Tether function
//! running locally, as they would in Lambda.
//!
//! The operator creates the nodes with the `tether` CLI (SigV4-signed, through the local
//! API front to the `api` function), each with a data volume (10 GiB gp3 at /dev/sdf):
//! some with a chosen private IP, some with an Elastic IP (the first with both). Then, for
//! a while, the spot market interrupts instances at random: a spot warning (an EventBridge
//! event) goes to the `interruption` function, and the instance is reclaimed in the
//! emulator a little later. A local event source polls the emulator and delivers
//! EventBridge state-change events to the `state-change` function, which launches each
//! replacement on the node's ENI (and attaches the node's data volume to it once it runs);
//! the `reconciler` runs on its schedule. The operator also creates a stateful group with
//! the CLI (a pool of 3 chosen private IPs and 2 Elastic IPs, target 3, a data volume in
//! the member template), whose members the market interrupts like any node, and scales it
//! to 2, back to 3 and then to 4 while the market runs. At the end the market stops, every
//! node comes back, and the verdict is computed from what the emulator reported about every
//! generation and every member.
//!
//! Options (environment variables; `make demo DEMO_NODES=5 ...` sets them):
//!
//! | variable       | default | meaning                                                  |
//! | -------------- | ------- | -------------------------------------------------------- |
//! | `DEMO_NODES`   | 3       | nodes to create (1 to 50)                                |
//! | `DEMO_SECONDS` | 45      | how long the market sends interruptions (wall clock)     |
//! | `DEMO_RATE`    | 4       | interruptions per node per minute, on average            |
//! | `DEMO_SEED`    | 5       | seeds the market: the same seed makes the same moves     |
//!
//! On a terminal the view is a table redrawn in place; otherwise one line per event.
//! Every line, and the functions' own logs, also go to `target/tether-demo.log`.
//! Exits non-zero if a node lost its private IP, Elastic IP or data volume, if the
//! replacements launched differ from the instances the market reclaimed, or if the group is
//! short of a running member, a pool address, a pool Elastic IP or the paused member's own
//! ENI.

use std::path::PathBuf;
use std::time::Duration;

use aws_credential_types::Credentials;
use tether_cli::Environment;
use tether_tests::demo::group::{summarize_group, DemoGroup};
use tether_tests::demo::nodes::{chooses_private_ip, create_node};
use tether_tests::demo::observed::median;
use tether_tests::demo::options::Options;
use tether_tests::demo::simulation::{Finished, Simulation, VISIBILITY};
use tether_tests::demo::summary::summarize;
use tether_tests::demo::view::View;
use tether_tests::local_api::{LocalApi, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use tether_tests::queues::LocalQueues;
use tether_tests::{Fixture, SetupError, REGION};

/// The group's members the market may interrupt: its pool of 3, and one beyond.
const GROUP_SLOTS: usize = 4;

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("demo failed: a node did not keep its identity or data volume, replacements and reclaimed instances differ, or the group is not as scaled");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            std::process::exit(1);
        }
    }
}

async fn run() -> Result<bool, SetupError> {
    let options = Options::from_env()?;
    let log = init_file_tracing()?;
    println!(
        "Tether spot-market demo: {} nodes, {} interruptions per node per minute for {} s, seed {}",
        options.nodes,
        options.rate_per_node_minute,
        options.market_time.as_secs(),
        options.seed
    );
    println!("(DEMO_NODES, DEMO_RATE, DEMO_SECONDS, DEMO_SEED change them; every event is also in {})\n", log.display());
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    println!("emulator: {} (moto, patched to AWS's EC2 rules; see tests/emulator/README.md)", tether_tests::Emulator::shared().endpoint);
    println!("API: {} (SigV4-checking front for the api function)", api.url);
    let queues = LocalQueues::create(&fx.sqs, &fx.table_name, VISIBILITY).await?;
    println!("queues: {} and {} (the emulator's SQS; a local poller delivers their batches as Lambda's event source mapping would)\n", queues.interruptions.url, queues.state_changes.url);
    let env = Environment {
        api_url: Some(api.url.clone()),
        region: Some(REGION.to_owned()),
        credentials: Some(Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "demo")),
        poll_interval: Duration::from_millis(100),
        ..Environment::default()
    };
    // The nodes with a chosen private IP first: EC2 picks the others' anywhere in the
    // subnet, and could take an address chosen for a node created after it.
    let (chosen, picked): (Vec<usize>, Vec<usize>) = (0..options.nodes).partition(|n| chooses_private_ip(*n));
    let mut intents = Vec::new();
    for n in chosen.into_iter().chain(picked) {
        intents.push(create_node(&fx, &env, n).await?);
    }
    println!();

    let group = DemoGroup::create(&fx, &env, options.market_time).await?;
    println!();

    let view = View::for_stdout();
    let nodes = intents.iter().map(|i| i.id.clone()).collect();
    let Finished { ledger, stats, group } = Simulation::new(&fx, queues.clone(), nodes, Some((group, env)), GROUP_SLOTS, &options, view).run().await?;
    let group = group.ok_or("the simulation lost its group")?;
    intents.extend(group.intents(&fx).await?);
    let mut summary = summarize(&fx, &intents, &ledger, &stats.reclaimed_ids).await?;
    // The summary's `nodes` are the single nodes; the group's members have their own fields.
    summary.nodes = options.nodes;
    let group_summary = summarize_group(&fx, &group).await?;

    println!("\nidentity, every generation as the emulator reported it while it ran:");
    for line in &summary.lines {
        println!("  {line}");
    }
    let mut call_counts: Vec<usize> = stats.replacement_calls.iter().map(Vec::len).collect();
    call_counts.sort();
    if let (Some(typical), Some(min), Some(max)) = (median(&call_counts), call_counts.first(), call_counts.last()) {
        let sequence = stats.replacement_calls.iter().find(|c| c.len() == typical).map(|c| c.join(", ")).unwrap_or_default();
        println!("\nper replacement: {typical} AWS calls (median of {}; min {min}, max {max})", call_counts.len());
        println!("  {sequence}");
    }
    if let Some((middle, longest)) = ledger.recovery_figures() {
        println!(
            "recovery (terminated event delivered -> replacement seen running): median {} ms, max {} ms",
            middle.as_millis(),
            longest.as_millis()
        );
    }
    let dead_lettered = queues.dead_lettered().await?;
    let settled = stats.settled_after.map_or_else(|| "never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "events delivered from the queues: {} to interruption, {} to state-change, {} delivered again; dead-lettered: {}; reconciler runs: {}",
        stats.deliveries_interruption, stats.deliveries_state_change, stats.retries, dead_lettered, stats.reconciler_runs
    );
    println!("every node running again {settled} after the market closed");
    for problem in stats.problems.iter().chain(&summary.problems).chain(&group_summary.problems) {
        println!("problem: {problem}");
    }
    println!("\n{} {}", summary.line(stats.warnings_sent), group_summary.fields());
    let every_reclaim_replaced = summary.replacements == stats.reclaimed && stats.reclaimed + stats.paused_first == stats.warnings_sent;
    Ok(summary.ok() && every_reclaim_replaced && dead_lettered == 0 && stats.problems.is_empty() && group_summary.ok())
}

/// The functions' logs and the demo's events to `target/tether-demo.log` (`RUST_LOG`
/// sets the level, default info): on stdout they would tear the live view.
fn init_file_tracing() -> Result<PathBuf, SetupError> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tether-demo.log");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(&path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::sync::Mutex::new(file)).try_init();
    Ok(path.canonicalize().unwrap_or(path))
}
