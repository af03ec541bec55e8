//! The run: the spot market, the local event source, the functions and the view in one
//! loop of short ticks. Each tick the market sends the warnings and reclaims the
//! instances that are due; then the event source puts the events on the stack's queues
//! (the emulator's SQS) and the functions take batches from them, in turn, until nothing
//! is visible; every ten seconds the reconciler runs, as its schedule would. One
//! invocation at a time with one message each (the stack's batches hold up to ten), so
//! that each event's AWS calls can be counted.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether::ports::NodeStore;
use tether_cli::state_name;
use tether::{NodeId, NodeState};

use super::group::DemoGroup;
use super::market::{Market, WARNING_LEAD};
use super::observed::{state_of, Ledger, Snapshot};
use super::options::Options;
use super::view::{Progress, Row, View};
use crate::event_source::{market_of, node_of, EventSource};
use crate::events::{interruption_warning, invocation, scheduled_event};
use crate::queues::{LocalQueue, LocalQueues};
use crate::{Fixture, SetupError};

const TICK: Duration = Duration::from_millis(100);
/// The real schedule is one minute; the demo's market is shorter.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// After the market closes: how long every node has to be running again.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Each invocation's time before its deadline.
const BUDGET: Duration = Duration::from_secs(30);
/// How long a received message stays hidden, and each event invocation's time (Lambda
/// requires the first to be at least the second; the stack's is 6 × the function's
/// timeout): a demo need not wait minutes for a failed event to come back.
pub const VISIBILITY: Duration = Duration::from_secs(10);

/// What the run did, for the final report.
#[derive(Debug, Default)]
pub struct Stats {
    pub planned: usize,
    pub warnings_sent: usize,
    pub reclaimed: usize,
    /// The instances the market reclaimed (their successors are replacements).
    pub reclaimed_ids: BTreeSet<String>,
    /// Warned instances a group's scale-down paused before the market reclaimed them.
    pub paused_first: usize,
    /// Planned interruptions still waiting for their node to run when the market closed.
    pub not_sent: usize,
    pub deliveries_interruption: usize,
    pub deliveries_state_change: usize,
    pub retries: usize,
    pub reconciler_runs: usize,
    /// The AWS calls of each invocation that launched a replacement.
    pub replacement_calls: Vec<Vec<String>>,
    /// How long after the market closed every node was running again.
    pub settled_after: Option<Duration>,
    /// What went wrong on the way: an event Lambda gave up on, a node in error, no settling.
    pub problems: Vec<String>,
}

pub struct Finished {
    pub ledger: Ledger,
    pub stats: Stats,
    pub group: Option<DemoGroup>,
}

pub struct Simulation<'a> {
    fx: &'a Fixture,
    nodes: Vec<NodeId>,
    /// The group, and the CLI's environment its scale steps run in.
    group: Option<(DemoGroup, tether_cli::Environment)>,
    market_time: Duration,
    market: Market,
    source: EventSource,
    queues: LocalQueues,
    /// Events the market or the source made, on their way to the queues.
    outbox: VecDeque<Value>,
    snapshot: Snapshot,
    ledger: Ledger,
    view: View,
    started: Instant,
    next_reconcile: Duration,
    stats: Stats,
}

impl<'a> Simulation<'a> {
    /// The market over `nodes`, and over `group`'s members (up to `group_slots` of them).
    pub fn new(fx: &'a Fixture, queues: LocalQueues, nodes: Vec<NodeId>, group: Option<(DemoGroup, tether_cli::Environment)>, group_slots: usize, options: &Options, view: View) -> Simulation<'a> {
        let market = Market::plan(options, nodes.len() + group_slots);
        let stats = Stats { planned: market.planned_total(), ..Stats::default() };
        Simulation {
            fx,
            nodes,
            group,
            market_time: options.market_time,
            market,
            source: EventSource::with_implied_states(),
            queues,
            outbox: VecDeque::new(),
            snapshot: Snapshot::default(),
            ledger: Ledger::default(),
            view,
            started: Instant::now(),
            next_reconcile: RECONCILE_EVERY,
            stats,
        }
    }

    pub async fn run(mut self) -> Result<Finished, SetupError> {
        self.started = Instant::now();
        self.take_members().await?;
        loop {
            let tick = Instant::now();
            let now = self.started.elapsed();
            if now < self.market_time {
                self.send_warnings(now);
                self.scale_group(now).await?;
            } else if !self.market.is_closed() {
                self.close_market(now);
            }
            self.reclaim(now).await?;
            self.pump().await?;
            if now >= self.next_reconcile {
                self.reconcile().await;
                self.next_reconcile += RECONCILE_EVERY;
            }
            if self.view.due() {
                let (rows, progress) = self.frame().await?;
                self.view.draw(&rows, &progress);
            }
            if self.market.is_closed() && self.done_settling().await? {
                break;
            }
            tokio::time::sleep(TICK.saturating_sub(tick.elapsed())).await;
        }
        let (rows, progress) = self.frame().await?;
        self.view.finish(&rows, &progress);
        self.stats.warnings_sent = self.market.sent();
        Ok(Finished { ledger: self.ledger, stats: self.stats, group: self.group.map(|(g, _)| g) })
    }

    /// The group's scale step due now, if any; new members join the market.
    async fn scale_group(&mut self, now: Duration) -> Result<(), SetupError> {
        let Some((group, env)) = self.group.as_mut() else { return Ok(()) };
        if let Some(text) = group.step_due(now, self.fx, env).await? {
            self.view.event(now, "operator", &text);
            self.take_members().await?;
        }
        Ok(())
    }

    /// The group's members the simulation does not follow yet, after the nodes.
    async fn take_members(&mut self) -> Result<(), SetupError> {
        let Some((group, _)) = &self.group else { return Ok(()) };
        for member in group.members(self.fx).await? {
            if !self.nodes.contains(&member) {
                self.nodes.push(member);
            }
        }
        Ok(())
    }

    /// The market's due interruptions: a spot warning on the bus for each.
    fn send_warnings(&mut self, now: Duration) {
        let (nodes, snapshot) = (&self.nodes, &self.snapshot);
        // A slot of a group member not made yet has no instance to interrupt.
        let running = |node: usize| snapshot.running(nodes.get(node)?).and_then(|i| i.instance_id()).map(str::to_owned);
        for (node, instance_id) in self.market.warnings_due(now, running) {
            let text = format!(
                "interruption warning for {instance_id} ({}); reclaimed in {} s",
                short(&self.nodes[node]),
                WARNING_LEAD.as_secs()
            );
            self.view.event(now, "market", &text);
            self.outbox.push_back(interruption_warning(&instance_id, "terminate"));
        }
    }

    /// No more warnings; the instances already warned are still reclaimed, as on AWS.
    fn close_market(&mut self, now: Duration) {
        self.stats.not_sent = self.market.close();
        let waiting = match self.stats.not_sent {
            0 => String::new(),
            n => format!("; {n} planned interruptions not sent (their nodes were still recovering)"),
        };
        self.view.event(now, "market", &format!("closed; interruptions sent: {}{waiting}", self.market.sent()));
    }

    /// Terminates the warned instances whose time is up, as AWS reclaims them. One a
    /// group's scale-down paused meanwhile is gone already: nothing to reclaim.
    async fn reclaim(&mut self, now: Duration) -> Result<(), SetupError> {
        for warned in self.market.reclaims_due(now) {
            let state = self.fx.instance(&warned.instance_id).await?.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned());
            if matches!(state.as_deref(), Some("shutting-down" | "terminated")) {
                self.stats.paused_first += 1;
                self.view.event(self.started.elapsed(), "market", &format!("{} was paused before its reclaim", warned.instance_id));
                continue;
            }
            self.fx.interrupt(&warned.instance_id).await?;
            self.stats.reclaimed += 1;
            self.stats.reclaimed_ids.insert(warned.instance_id.clone());
            self.view.event(self.started.elapsed(), "market", &format!("reclaimed {} ({})", warned.instance_id, short(&self.nodes[warned.node])));
        }
        Ok(())
    }

    /// The event source and the functions in turn until no event is visible: poll, queue
    /// what changed, deliver one batch, poll ...
    async fn pump(&mut self) -> Result<(), SetupError> {
        loop {
            self.snapshot = Snapshot::poll(&self.fx.ec2, &self.nodes).await?;
            for recovery in self.ledger.observe(&self.snapshot, Instant::now()) {
                let seen = self.ledger.sightings.get(&recovery.instance_id);
                let addresses = seen.map(|s| format!("{} / {}", or_dash(&s.private_ip), or_dash(&s.public_ip))).unwrap_or_default();
                let text = format!(
                    "{} generation {} on {} ({addresses}), {} ms after its terminated event",
                    short(&recovery.node),
                    recovery.generation,
                    recovery.instance_id,
                    recovery.took.as_millis()
                );
                self.view.event(self.started.elapsed(), "recovered", &text);
            }
            self.outbox.extend(self.source.changes(&self.snapshot.instances));
            while let Some(event) = self.outbox.pop_front() {
                self.queues.send(&event).await?;
            }
            // Warnings first, as their own mapping would take them at once.
            let (interruptions, state_changes) = (self.queues.interruptions.clone(), self.queues.state_changes.clone());
            if !self.deliver(&interruptions).await? && !self.deliver(&state_changes).await? {
                return Ok(());
            }
        }
    }

    /// One batch of one message from `queue` to its function, as the event source mapping
    /// delivers it; false when no message was visible. A failed message comes back after
    /// the visibility timeout; one that waits was put back by the function itself.
    async fn deliver(&mut self, queue: &LocalQueue) -> Result<bool, SetupError> {
        let started = Instant::now();
        self.fx.calls.take();
        let Some(batch) = self.queues.deliver_batch(&self.fx.tether, &self.fx.requeue, queue, 1, VISIBILITY).await? else { return Ok(false) };
        let calls = self.fx.calls.take();
        let Some(payload) = batch.bodies.first() else { return Ok(true) };
        let instance_id = payload["detail"]["instance-id"].as_str().unwrap_or("?").to_owned();
        let state = payload["detail"]["state"].as_str().map(str::to_owned);
        // Recovery is timed from a reclaim's event (a group's scale-down terminates too).
        if state.as_deref() == Some("terminated") && self.stats.reclaimed_ids.contains(&instance_id) {
            self.ledger.terminated_delivered(&instance_id, started);
        }
        let function = if queue.to_state_change {
            self.stats.deliveries_state_change += 1;
            "state-change"
        } else {
            self.stats.deliveries_interruption += 1;
            "interruption"
        };
        let what = state.unwrap_or_else(|| "warning".into());
        let answer = if batch.failed > 0 {
            self.stats.retries += 1;
            format!("retryable failure, SQS delivers it again: {}", batch.error.as_deref().unwrap_or("named in batchItemFailures"))
        } else if calls.iter().any(|c| c.ends_with(".SendMessage")) {
            format!("waits: put back on its queue ({} AWS calls)", calls.len())
        } else {
            self.outcome(&instance_id, &calls).await?
        };
        if answer.starts_with("launched") {
            self.stats.replacement_calls.push(calls);
        }
        self.view.event(self.started.elapsed(), function, &format!("{what:<13} {instance_id}  {answer}"));
        Ok(true)
    }

    /// What a handled event did, read from the node's record (the batch's answer names only
    /// the messages to deliver again).
    async fn outcome(&self, instance_id: &str, calls: &[String]) -> Result<String, SetupError> {
        // The instance's tag names its node, even once the node runs another one.
        let instance = self.fx.instance(instance_id).await.ok();
        let node_id = instance.as_ref().and_then(node_of).and_then(NodeId::parse);
        let node = match node_id {
            Some(id) => self.fx.store.get(&id).await?,
            None => None,
        };
        let Some(node) = node else { return Ok(format!("ignored: not a node's instance ({} AWS calls)", calls.len())) };
        Ok(match (&node.state, calls.iter().any(|c| c.ends_with(".RunInstances"))) {
            (NodeState::Error, _) => {
                let reason = node.last_error.clone().unwrap_or_default();
                format!("node in error: {reason}")
            }
            (_, true) => format!("launched generation {} on {} ({} AWS calls)", node.generation, node.instance_id().unwrap_or("?"), calls.len()),
            (state, false) => format!("recorded: node {} ({} AWS calls)", state_name(*state), calls.len()),
        })
    }

    async fn reconcile(&mut self) {
        self.fx.calls.take();
        let event = invocation(scheduled_event("tether-reconciler"), BUDGET);
        let text = match tether_reconciler::handler(&self.fx.tether, event).await {
            Ok(report) => {
                let count = |key: &str| report[key].as_array().map_or(0, Vec::len);
                let repaired = report["repaired"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; ")).unwrap_or_default();
                let detail = if repaired.is_empty() { String::new() } else { format!(": {repaired}") };
                format!(
                    "checked {} nodes, repaired {}, failed {}{detail}",
                    report["nodes_checked"].as_u64().unwrap_or(0),
                    count("repaired"),
                    count("failed")
                )
            }
            Err(e) => format!("failed (the next run tries again): {e}"),
        };
        self.stats.reconciler_runs += 1;
        self.fx.calls.take();
        self.view.event(self.started.elapsed(), "reconciler", &text);
    }

    /// Whether the run ends: every node is running again, or the settling time is up
    /// (a problem).
    async fn done_settling(&mut self) -> Result<bool, SetupError> {
        let after_close = self.started.elapsed().saturating_sub(self.market_time);
        if self.settled().await? {
            self.stats.settled_after = Some(after_close);
            return Ok(true);
        }
        if after_close >= SETTLE_LIMIT {
            self.stats.problems.push(format!("not every node was running again {} s after the market closed", SETTLE_LIMIT.as_secs()));
            return Ok(true);
        }
        Ok(false)
    }

    /// Every warned instance reclaimed, every event delivered, and every node running on
    /// one instance, the one its record names.
    async fn settled(&self) -> Result<bool, SetupError> {
        if self.market.reclaims_pending() || !self.outbox.is_empty() || self.queues.in_queues().await? > 0 {
            return Ok(false);
        }
        for id in &self.nodes {
            let Some(node) = self.fx.store.get(id).await? else { return Ok(false) };
            let running = self.snapshot.running(id).and_then(|i| i.instance_id());
            if node.state != NodeState::Running || running.is_none() || node.instance_id() != running || self.snapshot.live(id) != 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The table's rows (Tether's records, read without counting, and the last poll)
    /// and the progress line.
    async fn frame(&self) -> Result<(Vec<Row>, Progress), SetupError> {
        let mut rows = Vec::new();
        let mut recovering = 0;
        for id in &self.nodes {
            let node = self.fx.store.get(id).await?;
            let instance_id = node.as_ref().and_then(|n| n.instance_id()).map(str::to_owned);
            let instance = instance_id.as_deref().and_then(|i| self.snapshot.find(i));
            if node.as_ref().is_some_and(|n| n.state != NodeState::Running) {
                recovering += 1;
            }
            rows.push(Row {
                node: short(id),
                private_ip: or_dash(&instance.and_then(|i| i.private_ip_address()).map(str::to_owned)),
                public_ip: or_dash(&instance.and_then(|i| i.public_ip_address()).map(str::to_owned)),
                generation: node.as_ref().map_or(0, |n| n.generation),
                node_state: node.as_ref().map_or_else(|| "no record".into(), |n| state_name(n.state)),
                instance_id: instance_id.clone().unwrap_or_else(|| "-".into()),
                instance_state: instance.map_or("-", state_of).to_owned(),
                market_type: instance
                    .map(|i| {
                        format!("{} {}", market_of(i).as_str(), i.instance_type().map_or("?", |t| t.as_str()))
                    })
                    .unwrap_or_else(|| "-".into()),
            });
        }
        let progress = Progress {
            elapsed: self.started.elapsed(),
            market_time: self.market_time,
            market_closed: self.market.is_closed(),
            interruptions: self.market.sent(),
            planned: self.stats.planned,
            replacements: self.ledger.recoveries.len(),
            recovering,
            deliveries: self.stats.deliveries_interruption + self.stats.deliveries_state_change,
            reconciler_runs: self.stats.reconciler_runs,
        };
        Ok((rows, progress))
    }
}

/// A function's answer in a few words.
/// `tn-` and the first 8 hex digits: enough to tell a demo's nodes apart.
pub fn short(id: &NodeId) -> String {
    id.as_str().chars().take(11).collect()
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into())
}
