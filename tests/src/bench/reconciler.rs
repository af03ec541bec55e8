//! The reconciler's cost at N running nodes with nothing happening: its schedule's runs,
//! through the real handler, until one full pass has covered every node (or 30 runs).

use std::time::Duration;

use serde_json::Value;
use tether::ports::Clock;

use super::world::World;

const RUNS: usize = 30;
const EVERY: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(55);

pub struct ReconcilerResult {
    pub nodes: usize,
    /// EC2 and DynamoDB-read calls made until the pass covered every node (or in all runs).
    pub ec2_calls: u64,
    pub dynamodb_reads: u64,
    /// Seconds from the first run until the pass covered every node; `None`: it never did.
    pub pass_s: Option<f64>,
    /// Describe (and Get) calls per second of the schedule (a run a minute), over the runs made.
    pub describe_per_s: f64,
    pub runs: usize,
    pub timeouts: usize,
}

pub fn run(nodes: usize, seed: u64) -> ReconcilerResult {
    let world = World::new(nodes, seed, true);
    let (tether, clock) = (world.tether.clone(), world.clock.clone());
    let (runs, timeouts, pass_s) = world.sim.run(async move {
        let started = clock.elapsed();
        let (mut checked, mut timeouts) = (0usize, 0usize);
        for run in 1..=RUNS {
            let event = crate::events::invocation_at(crate::events::scheduled_event("tether-reconciler"), clock.now() + TIMEOUT);
            let handler = Box::pin(tether_reconciler::handler(&tether, event));
            match futures_util::future::select(handler, clock.sleep(TIMEOUT)).await {
                futures_util::future::Either::Left((Ok(report), _)) => {
                    checked += report.get("nodes_checked").and_then(Value::as_u64).unwrap_or(0) as usize;
                    let complete = report.get("complete").and_then(Value::as_bool).unwrap_or(false);
                    if complete && checked >= nodes {
                        return (run, timeouts, Some((clock.elapsed() - started).as_secs_f64()));
                    }
                }
                futures_util::future::Either::Left((Err(_), _)) => {}
                futures_util::future::Either::Right(_) => timeouts += 1,
            }
            let next = started + EVERY * u32::try_from(run).unwrap_or(u32::MAX);
            clock.sleep(next.saturating_sub(clock.elapsed())).await;
        }
        (RUNS, timeouts, None)
    });
    let calls = world.model.calls();
    // The schedule's time: one run a minute.
    let elapsed = (EVERY * u32::try_from(runs).unwrap_or(u32::MAX)).as_secs_f64();
    ReconcilerResult {
        nodes,
        ec2_calls: calls.count(|op| !is_dynamodb(op)),
        dynamodb_reads: calls.count(|op| matches!(op, "GetItem" | "Query" | "Scan" | "BatchGetItem")),
        pass_s,
        describe_per_s: calls.count(|op| !is_dynamodb(op) && (op.starts_with("Describe") || op.starts_with("Get"))) as f64 / elapsed,
        runs,
        timeouts,
    }
}

fn is_dynamodb(operation: &str) -> bool {
    matches!(operation, "GetItem" | "Query" | "Scan" | "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems" | "BatchGetItem" | "BatchWriteItem")
}

pub fn line(r: &ReconcilerResult, design: &str) -> String {
    let pass = r.pass_s.map_or("never".to_owned(), |s| format!("{s:.1}"));
    format!(
        "bench: reconciler design={design} nodes={} ec2_calls_per_pass={} dynamodb_reads_per_pass={} pass_s={pass} describe_per_s={:.2} runs={} timeouts={}",
        r.nodes, r.ec2_calls, r.dynamodb_reads, r.describe_per_s, r.runs, r.timeouts
    )
}
