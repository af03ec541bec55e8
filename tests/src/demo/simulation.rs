//! The run: the spot market, the local event source, the functions and the view in one
//! loop of short ticks. Each tick the market sends the warnings and reclaims the
//! instances that are due; then the event source and the functions take turns until
//! nothing is left to deliver; every ten seconds the reconciler runs, as its schedule
//! would. One invocation at a time, so that each one's AWS calls can be counted.

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
use crate::event_source::{invoke_target, market_of, Delivery, EventSource};
use crate::events::{interruption_warning, invocation, scheduled_event};
use crate::{Fixture, SetupError};

const TICK: Duration = Duration::from_millis(100);
/// The real schedule is one minute; the demo's market is shorter.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// After the market closes: how long every node has to be running again.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Each invocation's time before its deadline.
const BUDGET: Duration = Duration::from_secs(30);

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
    bus: VecDeque<Delivery>,
    snapshot: Snapshot,
    ledger: Ledger,
    view: View,
    started: Instant,
    next_reconcile: Duration,
    stats: Stats,
}

impl<'a> Simulation<'a> {
    /// The market over `nodes`, and over `group`'s members (up to `group_slots` of them).
    pub fn new(fx: &'a Fixture, nodes: Vec<NodeId>, group: Option<(DemoGroup, tether_cli::Environment)>, group_slots: usize, options: &Options, view: View) -> Simulation<'a> {
        let market = Market::plan(options, nodes.len() + group_slots);
        let stats = Stats { planned: market.planned_total(), ..Stats::default() };
        Simulation {
            fx,
            nodes,
            group,
            market_time: options.market_time,
            market,
            source: EventSource::with_implied_states(),
            bus: VecDeque::new(),
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
            self.bus.push_back(Delivery::new(interruption_warning(&instance_id, "terminate")));
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

    /// The event source and the functions in turn until no event is left: poll, deliver one, poll ...
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
            self.bus.extend(self.source.changes(&self.snapshot.instances).into_iter().map(Delivery::new));
            let Some(delivery) = self.bus.pop_front() else { return Ok(()) };
            self.deliver(delivery).await;
        }
    }

    /// One invocation of the function the event's rule targets; a retryable failure goes
    /// back on the bus while Lambda would still retry it.
    async fn deliver(&mut self, delivery: Delivery) {
        let instance_id = delivery.payload["detail"]["instance-id"].as_str().unwrap_or("?").to_owned();
        let state = delivery.payload["detail"]["state"].as_str().map(str::to_owned);
        let started = Instant::now();
        // Recovery is timed from a reclaim's event (a group's scale-down terminates too).
        if state.as_deref() == Some("terminated") && self.stats.reclaimed_ids.contains(&instance_id) {
            self.ledger.terminated_delivered(&instance_id, started);
        }
        if delivery.is_state_change() {
            self.stats.deliveries_state_change += 1;
        } else {
            self.stats.deliveries_interruption += 1;
        }
        self.fx.calls.take();
        let result = invoke_target(&self.fx.tether, delivery.payload.clone(), BUDGET).await;
        let calls = self.fx.calls.take();
        let function = if delivery.is_state_change() { "state-change" } else { "interruption" };
        let what = state.unwrap_or_else(|| "warning".into());
        let retry = if delivery.attempt > 0 { format!(" (retry {})", delivery.attempt) } else { String::new() };
        let answer = match result {
            Ok(answer) => {
                if answer["outcome"] == "launched" {
                    self.stats.replacement_calls.push(calls.clone());
                }
                if answer["outcome"] == "failed" {
                    self.stats.problems.push(format!("{what} of {instance_id}: {}", describe(&answer, calls.len())));
                }
                describe(&answer, calls.len())
            }
            // Retried at once: Lambda waits a minute or more, a demo need not.
            Err(e) => match delivery.clone().retry() {
                Some(again) => {
                    self.stats.retries += 1;
                    self.bus.push_back(again);
                    format!("retryable failure, Lambda retries: {e}")
                }
                None => {
                    self.stats.problems.push(format!("{what} of {instance_id}: given up after {} attempts: {e}", delivery.attempt + 1));
                    format!("failed, Lambda gives up: {e}")
                }
            },
        };
        self.view.event(self.started.elapsed(), function, &format!("{what:<13} {instance_id}  {answer}{retry}"));
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
        if self.market.reclaims_pending() || !self.bus.is_empty() {
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
fn describe(answer: &Value, calls: usize) -> String {
    let text = |key: &str| answer[key].as_str().unwrap_or("?").to_owned();
    match answer["outcome"].as_str().unwrap_or("?") {
        "launched" => format!(
            "launched generation {} on {} ({calls} AWS calls)",
            answer["generation"].as_u64().unwrap_or(0),
            text("instance_id")
        ),
        "recorded" => format!("recorded: node {}", text("state")),
        "ignored" => format!("ignored: {}", text("reason")),
        "failed" => format!("node in error: {}", text("reason")),
        other => format!("{other}: {}", text("reason")),
    }
}

/// `tn-` and the first 8 hex digits: enough to tell a demo's nodes apart.
pub fn short(id: &NodeId) -> String {
    id.as_str().chars().take(11).collect()
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into())
}
