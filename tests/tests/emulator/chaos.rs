//! A smaller chaos batch through the real handlers against the emulator: seeded moves
//! (spot interruptions and hand terminations, events duplicated, reordered, dropped and
//! retried as Lambda does, invocations cut short between two AWS calls, users pausing,
//! resuming and recycling, reconciler runs), then settling, then the invariants of the
//! in-process chaos test (`tether::fake::chaos::violations`), read from the emulator.
//!
//! `CHAOS_EMULATOR_SCENARIOS` sets how many scenarios run (default 8), from
//! `CHAOS_EMULATOR_FIRST_SEED` (default 1). Where an invocation is cut short depends on the
//! emulator's timing, so a seed replays its moves, not always its exact cut points.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use serde_json::{json, Value};
use tether::fake::{EipView, EniView, InstanceView};
use tether::ports::ElasticIpInfo;
use tether::{Node, NodeId, NodeState, Persistence, Settings, TetherError};
use tether_tests::event_source::{generation_of, invoke_target, market_of, node_instances, node_of, tag_value, Delivery, EventSource};
use tether_tests::events::{interruption_warning, invocation};
use tether_tests::{fast_settings, Fixture, SetupError};

const MOVES: usize = 30;
/// An invocation's time; a cut-short one holds its event until then.
const BUDGET: Duration = Duration::from_secs(3);
const SETTLE_ROUNDS: usize = 12;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

#[tokio::test]
async fn chaos_through_the_real_handlers_keeps_every_invariant() -> Result<(), SetupError> {
    let count = env_number("CHAOS_EMULATOR_SCENARIOS", 8);
    let first = env_number("CHAOS_EMULATOR_FIRST_SEED", 1);
    let mut failures = Vec::new();
    let (mut launches, mut cut_short) = (0, 0);
    for seed in first..first + count {
        let mut world = World::new(seed).await?;
        let problems = world.run().await?;
        launches += world.node_records().await?.iter().map(|n| n.generation).sum::<u64>();
        cut_short += world.log.iter().filter(|line| line.contains("cut short")).count();
        if std::env::var_os("CHAOS_EMULATOR_LOG").is_some() {
            println!("seed {seed}:\n  {}", world.log.join("\n  "));
        }
        if !problems.is_empty() {
            failures.push(format!("seed {seed}: {problems:?}\n  moves: {:#?}", world.log));
        }
    }
    // Also shows the batch did something: generations launched, invocations cut short.
    println!("chaos (emulator): scenarios={count} launches={launches} cut_short={cut_short} violations={}", failures.len());
    assert!(failures.is_empty(), "{}\nreplay: CHAOS_EMULATOR_FIRST_SEED=<seed> CHAOS_EMULATOR_SCENARIOS=1", failures.join("\n"));
    Ok(())
}

struct World {
    fx: Fixture,
    rng: fastrand::Rng,
    nodes: Vec<NodeId>,
    bus: Vec<Delivery>,
    /// The local event source (only the states it sees: the seeds replay as before).
    source: EventSource,
    warnings_sent: BTreeMap<String, usize>,
    generations: BTreeMap<NodeId, u64>,
    log: Vec<String>,
}

impl World {
    async fn new(seed: u64) -> Result<World, SetupError> {
        // Invocations here never overlap (a cut-short one is dead), so the reconciler may
        // carry on stalled work at once instead of after five minutes.
        let settings = Settings { stuck_after: Duration::ZERO, ..fast_settings() };
        let fx = Fixture::with_settings(settings).await?;
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut nodes = Vec::new();
        for n in 0..rng.u8(1..=3) {
            let persistence = Persistence {
                private_ip: rng.bool().then(|| fx.subnet_ip(20 + n)),
                allocate_elastic_ip: rng.bool(),
                ..Persistence::default()
            };
            let node = fx.tether.create_node(fx.spec(&["m5.large", "m6i.large"]), persistence, Some("chaos")).await?;
            nodes.push(node.id);
        }
        Ok(World { fx, rng, nodes, bus: Vec::new(), source: EventSource::new(), warnings_sent: BTreeMap::new(), generations: BTreeMap::new(), log: Vec::new() })
    }

    async fn run(&mut self) -> Result<Vec<String>, SetupError> {
        for id in self.nodes.clone() {
            self.fx.tether.resume(&id, self.fx.tether.deadline_in(BUDGET), None).await?;
        }
        self.collect_events().await?;
        for _ in 0..MOVES {
            self.chaos_move().await?;
            self.collect_events().await?;
            if let Some(problem) = self.generation_went_back().await? {
                return Ok(vec![problem]);
            }
        }
        self.settle().await?;
        let nodes = self.node_records().await?;
        let (instances, enis, eips) = self.observe().await?;
        Ok(tether::fake::chaos::violations(&self.nodes, &nodes, &instances, &enis, &eips, &BTreeSet::new(), &self.warnings_sent, &BTreeMap::new()))
    }

    async fn chaos_move(&mut self) -> Result<(), SetupError> {
        match self.rng.u8(0..10) {
            0 | 1 => {
                let live = self.live_instances().await?;
                if live.is_empty() {
                    return Ok(());
                }
                let id = live[self.rng.usize(..live.len())].clone();
                // Mostly a spot interruption (warned first); sometimes a person terminating it.
                if self.rng.u8(0..3) > 0 {
                    self.bus.push(Delivery::new(interruption_warning(&id, "terminate")));
                    *self.warnings_sent.entry(id.clone()).or_default() += 1;
                }
                self.log.push(format!("terminate {id}"));
                self.fx.interrupt(&id).await?;
            }
            2..=5 if !self.bus.is_empty() => {
                let index = self.rng.usize(..self.bus.len());
                // EventBridge may deliver the same event twice.
                let delivery = if self.rng.u8(0..5) == 0 {
                    Delivery::new(self.bus[index].payload.clone())
                } else {
                    self.bus.swap_remove(index)
                };
                self.deliver(delivery, true).await;
            }
            6 if !self.bus.is_empty() => {
                let dropped = self.bus.swap_remove(self.rng.usize(..self.bus.len()));
                self.log.push(format!("drop {}", describe(&dropped.payload)));
            }
            7 | 8 => {
                let id = self.nodes[self.rng.usize(..self.nodes.len())].clone();
                let action = ["pause", "resume", "recycle"][self.rng.usize(..3)];
                let deadline = self.fx.tether.deadline_in(BUDGET);
                let tether = self.fx.tether.clone();
                let call = async move {
                    match action {
                        "pause" => tether.pause(&id, deadline, Some("chaos")).await,
                        "resume" => tether.resume(&id, deadline, Some("chaos")).await,
                        _ => tether.recycle(&id, deadline, Some("chaos")).await,
                    }
                };
                let finished = self.invoke(call, true).await;
                self.log.push(format!("user {action}: {finished}"));
            }
            _ => {
                let tether = self.fx.tether.clone();
                let call = async move { tether_reconciler::handler(&tether, invocation(json!({}), BUDGET)).await };
                let finished = self.invoke(call, true).await;
                self.log.push(format!("reconciler: {finished}"));
            }
        }
        Ok(())
    }

    /// Runs `call`, or (when `may_cut`, one time in four) cuts it short after a few
    /// milliseconds: Lambda dying between two AWS calls. Says how it ended.
    async fn invoke<T>(&mut self, call: impl std::future::Future<Output = Result<T, TetherError>>, may_cut: bool) -> String {
        let ended = if may_cut && self.rng.u8(0..4) == 0 {
            let after = Duration::from_millis(self.rng.u64(1..40));
            match tokio::time::timeout(after, call).await {
                Ok(result) => result.map(|_| ()),
                Err(_) => return format!("cut short after {after:?}"),
            }
        } else {
            call.await.map(|_| ())
        };
        match ended {
            Ok(()) => "done".into(),
            Err(e) if e.is_retryable() => format!("retryable: {e}"),
            Err(e) => format!("failed: {e}"),
        }
    }

    /// One delivery to its function; Lambda retries a failed or cut-short one twice.
    async fn deliver(&mut self, delivery: Delivery, chaos: bool) {
        let (tether, queue) = (self.fx.tether.clone(), self.fx.requeue.clone());
        let payload = delivery.payload.clone();
        // Invoked directly: the queued intake has its own emulator test (`queued`).
        let call = async move { invoke_target(&tether, &queue, payload, BUDGET).await };
        let finished = self.invoke(call, chaos).await;
        self.log.push(format!("deliver {} (attempt {}): {finished}", describe(&delivery.payload), delivery.attempt));
        let failed = finished.starts_with("cut short") || finished.starts_with("retryable");
        if failed {
            self.bus.extend(delivery.retry());
        }
    }

    /// Chaos stops: every event is delivered, the reconciler runs, until nothing changes.
    async fn settle(&mut self) -> Result<(), SetupError> {
        self.log.push("---- settling ----".into());
        let mut last = String::new();
        let mut quiet = 0;
        for _ in 0..SETTLE_ROUNDS {
            while !self.bus.is_empty() {
                let delivery = self.bus.swap_remove(self.rng.usize(..self.bus.len()));
                self.deliver(delivery, false).await;
                self.collect_events().await?;
            }
            let report = tether_reconciler::handler(&self.fx.tether, invocation(json!({}), Duration::from_secs(30))).await?;
            self.log.push(format!("reconciler: {report}"));
            self.collect_events().await?;
            let now = self.fingerprint().await?;
            quiet = if self.bus.is_empty() && now == last { quiet + 1 } else { 0 };
            if quiet == 2 {
                return Ok(());
            }
            last = now;
        }
        Err("the world never settled".into())
    }

    // ---- reading the emulator ----

    /// The local event source: a state-change event for every state change seen.
    async fn collect_events(&mut self) -> Result<(), SetupError> {
        let events = self.source.poll(&self.fx.ec2, &self.nodes).await?;
        self.bus.extend(events.into_iter().map(Delivery::new));
        Ok(())
    }

    async fn live_instances(&self) -> Result<Vec<String>, SetupError> {
        let mut live = Vec::new();
        for id in &self.nodes {
            live.extend(self.fx.live_instances(id).await?.iter().filter_map(|i| i.instance_id()).map(str::to_owned));
        }
        Ok(live)
    }

    async fn node_records(&self) -> Result<Vec<Node>, SetupError> {
        let mut nodes = Vec::new();
        for id in &self.nodes {
            nodes.push(self.fx.tether.node(id).await?);
        }
        Ok(nodes)
    }

    async fn generation_went_back(&mut self) -> Result<Option<String>, SetupError> {
        for node in self.node_records().await? {
            let seen = self.generations.entry(node.id.clone()).or_insert(node.generation);
            if node.generation < *seen {
                return Ok(Some(format!("generation of {} went back from {seen} to {}", node.id, node.generation)));
            }
            *seen = node.generation;
        }
        Ok(None)
    }

    async fn fingerprint(&self) -> Result<String, SetupError> {
        let nodes: Vec<(u64, NodeState)> = self.node_records().await?.iter().map(|n| (n.version, n.state)).collect();
        Ok(format!("{nodes:?} {:?}", self.source.last_seen()))
    }

    /// The emulator's instances, ENIs and Elastic IPs of this scenario, as the invariants read them.
    async fn observe(&self) -> Result<(Vec<InstanceView>, Vec<EniView>, Vec<EipView>), SetupError> {
        let tag = |tags: &[aws_sdk_ec2::types::Tag], key: &str| tag_value(tags, key).map(str::to_owned);
        let instances = node_instances(&self.fx.ec2, &self.nodes)
            .await?
            .iter()
            .map(|i| {
                let primary = i.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
                InstanceView {
                    id: i.instance_id().unwrap_or_default().to_owned(),
                    state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
                    instance_type: i.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                    market: market_of(i),
                    primary_eni_id: primary.and_then(|n| n.network_interface_id()).map(str::to_owned),
                    private_ip: i.private_ip_address().and_then(|ip| ip.parse().ok()),
                    public_ip: i.public_ip_address().map(str::to_owned),
                    node_id: node_of(i).map(str::to_owned),
                    generation: generation_of(i),
                    client_token: i.client_token().map(str::to_owned),
                }
            })
            .collect();
        let in_subnet = Filter::builder().name("subnet-id").values(&self.fx.subnet_id).build();
        let out = self.fx.ec2.describe_network_interfaces().filters(in_subnet).send().await?;
        let enis = out
            .network_interfaces()
            .iter()
            .map(|e| EniView {
                id: e.network_interface_id().unwrap_or_default().to_owned(),
                subnet_id: e.subnet_id().unwrap_or_default().to_owned(),
                private_ip: e.private_ip_address().and_then(|ip| ip.parse().ok()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                mac_address: e.mac_address().unwrap_or_default().to_owned(),
                availability_zone: e.availability_zone().unwrap_or_default().to_owned(),
                instance_id: e.attachment().and_then(|a| a.instance_id()).map(str::to_owned),
                device_index: e.attachment().and_then(|a| a.device_index()).and_then(|i| u8::try_from(i).ok()),
                delete_on_termination: e.attachment().and_then(|a| a.delete_on_termination()),
                node_id: tag(e.tag_set(), "tether:node-id"),
                secondary_private_ips: e.private_ip_addresses().iter().filter(|a| a.primary() != Some(true)).filter_map(|a| a.private_ip_address()?.parse().ok()).collect(),
                ipv6_addresses: e.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()?.parse().ok()).collect(),
                source_dest_check: e.source_dest_check().unwrap_or(true),
                // What the API describes is the address, not the setting: read off the association.
                public_ip: e.association().and_then(|a| a.public_ip()).is_some() && e.association().and_then(|a| a.allocation_id()).is_none(),
                tags: e.tag_set().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect(),
            })
            .collect();
        let ours: BTreeSet<&str> = self.nodes.iter().map(NodeId::as_str).collect();
        let out = self.fx.ec2.describe_addresses().filters(Filter::builder().name("tag-key").values("tether:node-id").build()).send().await?;
        let eips = out
            .addresses()
            .iter()
            .filter_map(|a| {
                let node_id = tag(a.tags(), "tether:node-id").filter(|id| ours.contains(id.as_str()))?;
                let info = ElasticIpInfo {
                    allocation_id: a.allocation_id()?.to_owned(),
                    public_ip: a.public_ip().unwrap_or_default().to_owned(),
                    network_interface_id: a.network_interface_id().map(str::to_owned),
                    association_id: a.association_id().map(str::to_owned),
                    instance_id: a.instance_id().map(str::to_owned),
                };
                Some(EipView { info, node_id: Some(node_id) })
            })
            .collect();
        Ok((instances, enis, eips))
    }
}

/// "state-change terminated i-..." or "warning i-...", for the log.
fn describe(payload: &Value) -> String {
    let id = payload["detail"]["instance-id"].as_str().unwrap_or("?");
    match payload["detail"]["state"].as_str() {
        Some(state) => format!("{} state {state} of {id}", payload["id"].as_str().unwrap_or("?")),
        None => format!("{} warning for {id}", payload["id"].as_str().unwrap_or("?")),
    }
}
