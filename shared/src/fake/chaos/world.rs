//! One scenario's world: fake EC2 and DynamoDB, the service on a virtual clock, the
//! EventBridge bus, the invocations in flight, and the random moves of the chaos phase.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::executor::{block_on, Delivery, Finished, GroupMove, Invocation, Origin, UserAction};
use crate::fake::{Fault, FakeClock, FakeEc2, FakeStore, FaultInjection, When};
use crate::group::GroupId;
use crate::model::{InterruptionAction, Market, NodeId, NodeSpec, NodeState, Persistence, RevertToSpot};
use crate::service::{Ports, Settings, Tether};

mod groups;
mod queue;

pub const SUBNET: &str = "subnet-chaos";
/// A group's second subnet, in another Availability Zone.
pub const SUBNET_B: &str = "subnet-chaos-b";
/// A second subnet in the nodes' Availability Zone, for their extra ENIs.
const SUBNET_EXTRA: &str = "subnet-chaos-extra";
const INSTANCE_TYPES: &[&str] = &["m5.large", "m6i.large", "c5.large"];
/// A Lambda function's timeout, as the invocations' deadline.
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The EC2 operations faults are injected into.
const EC2_OPERATIONS: &[&str] = &[
    "RunInstances",
    "TerminateInstances",
    "DescribeInstances",
    "CreateNetworkInterface",
    "DeleteNetworkInterface",
    "DescribeNetworkInterfaces",
    "AssociateAddress",
    "DisassociateAddress",
    "AllocateAddress",
    "ReleaseAddress",
    "DescribeAddresses",
    "CreateSubnetCidrReservation",
    "DeleteSubnetCidrReservation",
    "GetSubnetCidrReservations",
];
/// Settling: rounds of one virtual minute each; the world has settled when nothing changed
/// for longer than the reconciler's `stuck_after` (5 minutes), so that stalled work is seen.
const SETTLE_ROUNDS: usize = 60;
const QUIET_ROUNDS: usize = 7;
const DYNAMODB_OPERATIONS: &[&str] = &["GetItem", "PutItem", "UpdateItem", "Query", "Scan", "TransactWriteItems"];

#[derive(Clone, Copy, Debug)]
enum Move {
    Poll,
    Crash,
    Deliver,
    Drop,
    Ec2Progress,
    Warn,
    Reclaim,
    User,
    Reconcile,
    Fault,
    Capacity,
    Drift,
    Time,
    GroupScale,
    GroupPool,
    GroupElasticIps,
    GroupPause,
    GroupResume,
    GroupRoll,
    GroupRun,
    GroupDeallocate,
    /// A user's action on a member through the node API.
    Member,
    /// A running instance's status check fails (auto-healing's cause).
    Impair,
    /// AWS Health schedules a change to one or two nodes' instances.
    HealthEvent,
}

impl Move {
    fn about_group(self) -> bool {
        matches!(
            self,
            Move::GroupScale
                | Move::GroupPool
                | Move::GroupElasticIps
                | Move::GroupPause
                | Move::GroupResume
                | Move::GroupRoll
                | Move::GroupRun
                | Move::GroupDeallocate
                | Move::Member
        )
    }
}

const MOVES: &[(Move, u32)] = &[
    (Move::Poll, 60),
    (Move::Crash, 3),
    (Move::Deliver, 20),
    (Move::Drop, 1),
    (Move::Ec2Progress, 10),
    (Move::Warn, 3),
    (Move::Reclaim, 3),
    (Move::User, 5),
    (Move::Reconcile, 2),
    (Move::Fault, 3),
    (Move::Capacity, 2),
    (Move::Drift, 1),
    (Move::Time, 8),
    (Move::GroupScale, 2),
    (Move::GroupPool, 2),
    (Move::GroupElasticIps, 1),
    (Move::GroupPause, 1),
    (Move::GroupResume, 2),
    (Move::GroupRoll, 1),
    (Move::GroupRun, 2),
    (Move::GroupDeallocate, 1),
    (Move::Member, 4),
    (Move::Impair, 1),
    (Move::HealthEvent, 1),
];

pub struct World {
    pub seed: u64,
    rng: fastrand::Rng,
    clock: FakeClock,
    pub ec2: Arc<FakeEc2>,
    pub store: Arc<FakeStore>,
    tether: Tether,
    pub created: Vec<NodeId>,
    /// The scenario's group, if it has one.
    group: Option<GroupId>,
    /// Whether this scenario may deallocate its group.
    group_deallocatable: bool,
    /// Every member ever seen (their records must never be lost either).
    pub members_seen: BTreeSet<NodeId>,
    bus: Vec<Delivery>,
    /// Events reach the functions through SQS queues (batches, partial failures, re-queued
    /// waits, dead-lettering) instead of Lambda's asynchronous invocation.
    queued: bool,
    /// What the functions put back on the queue (bodies), for the bus.
    requeued: Arc<queue::ChaosQueue>,
    /// Messages put back with a delay: on the bus again once the clock has passed it.
    delayed: Vec<(DateTime<Utc>, Delivery)>,
    running: Vec<Invocation>,
    /// Instances warned of an interruption, reclaimed (or stopped) later.
    doomed: Vec<(String, InterruptionAction)>,
    /// How many interruption warnings EC2 sent per instance.
    pub warnings_sent: BTreeMap<String, usize>,
    /// When EC2 first warned an instance that it would be terminated.
    pub terminate_warned: BTreeMap<String, DateTime<Utc>>,
    /// Nodes a hand-made drift (or their chosen private IP taken by another ENI) may rightly
    /// have put in ERROR.
    pub drifted: BTreeSet<NodeId>,
    /// The AWS Health events sent: (event ARN, instance).
    pub health_events: Vec<(String, String)>,
    seen_generations: BTreeMap<NodeId, u64>,
    events_emitted: u64,
    invocations_started: u64,
    /// What happened, for a failing seed's report.
    pub log: Vec<String>,
}

impl World {
    pub fn new(seed: u64, nodes: usize) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let start = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let clock = FakeClock::starting_at(start);
        let ec2 = Arc::new(FakeEc2::new(seed));
        ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().expect("a valid CIDR"), "us-east-1a");
        ec2.add_subnet(SUBNET_B, "10.0.2.0/24".parse().expect("a valid CIDR"), "us-east-1b");
        ec2.add_subnet(SUBNET_EXTRA, "10.0.3.0/24".parse().expect("a valid CIDR"), "us-east-1a");
        let store = Arc::new(FakeStore::new());
        let settings = Settings { jitter_seed: Some(seed), ..Settings::default() };
        let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
        let tether = Tether::new(ports, settings).with_clock(Arc::new(clock.clone()));
        let mut world = World {
            seed,
            rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
            clock,
            ec2,
            store,
            tether,
            created: Vec::new(),
            group: None,
            group_deallocatable: false,
            members_seen: BTreeSet::new(),
            bus: Vec::new(),
            queued: rng.bool(),
            requeued: Arc::default(),
            delayed: Vec::new(),
            running: Vec::new(),
            doomed: Vec::new(),
            warnings_sent: BTreeMap::new(),
            terminate_warned: BTreeMap::new(),
            drifted: BTreeSet::new(),
            health_events: Vec::new(),
            seen_generations: BTreeMap::new(),
            events_emitted: 0,
            invocations_started: 0,
            log: Vec::new(),
        };
        // Set-up is what users did before the chaos: no faults, no throttling.
        world.ec2.set_throttling(false);
        for n in 0..nodes {
            world.create_node(n, &mut rng);
        }
        if rng.bool() {
            world.create_group(&mut rng);
        }
        world.ec2.set_throttling(true);
        world
    }

    fn create_node(&mut self, n: usize, rng: &mut fastrand::Rng) {
        let spec = random_launch(rng);
        let private_ip = rng.bool().then(|| Ipv4Addr::new(10, 0, 1, 10 + n as u8));
        let persistence = match rng.u8(0..3) {
            0 => Persistence { private_ip, ..Persistence::default() },
            1 => {
                let (allocation_id, _) = self.ec2.hand_allocate_eip().expect("no Elastic IP limit is set");
                Persistence { private_ip, elastic_ip_allocation_id: Some(allocation_id), allocate_elastic_ip: false }
            }
            _ => Persistence { private_ip, elastic_ip_allocation_id: None, allocate_elastic_ip: true },
        };
        let id = NodeId::parse(&format!("tn-{:016x}{:016x}", self.seed, n)).expect("a valid node id");
        // Created as the API does: its chosen addresses reserved with it.
        let node = block_on(self.tether.create_node_as(id, spec, persistence, Some("chaos"))).expect("no fault is injected during set-up");
        self.note(format!("created {} {:?}", node.id, node.persistence));
        self.created.push(node.id.clone());
        // Most nodes are resumed at once; the others wait for a user's resume.
        if rng.u8(0..4) > 0 {
            self.start_user(node.id, UserAction::Resume);
        }
    }

    /// Logs a move: kept for a failing seed's report, and traced (a replayed seed's moves
    /// then appear among Tether's own logs, in order).
    fn note(&mut self, line: String) {
        tracing::info!(target: "chaos", "{line}");
        self.log.push(line);
    }

    /// The scenario's virtual time.
    pub fn now(&self) -> DateTime<Utc> {
        crate::ports::Clock::now(&self.clock)
    }

    // ---- invocations ----

    fn start(&mut self, origin: Origin) {
        let tether = self.tether.clone();
        let deadline = tether.deadline_in(FUNCTION_TIMEOUT);
        self.invocations_started += 1;
        let invocation_id = format!("invocation-{}", self.invocations_started);
        let job: super::executor::Job = match origin.clone() {
            Origin::Event(delivery) => Box::pin(async move {
                let id = delivery.id.clone();
                Finished::of(tether.handle_event_sent_at(&id, &invocation_id, &delivery.event, Some(delivery.sent), deadline).await)
            }),
            Origin::User { node_id, action } => Box::pin(async move {
                match action {
                    UserAction::Resume => Finished::of(tether.resume(&node_id, deadline, Some("chaos")).await),
                    UserAction::Pause => Finished::of(tether.pause(&node_id, deadline, Some("chaos")).await),
                    UserAction::Recycle => Finished::of(tether.recycle(&node_id, deadline, Some("chaos")).await),
                    UserAction::Deallocate { keep_eni } => Finished::of(tether.deallocate(&node_id, keep_eni, deadline, Some("chaos")).await),
                    UserAction::ChangeImage { n } => {
                        let patch = crate::lifecycle::NodePatch { image_id: Some(format!("ami-chaos{n}")), ..Default::default() };
                        Finished::of(tether.patch(&node_id, &patch, Some("chaos")).await)
                    }
                }
            }),
            Origin::Group { group_id, action } => Box::pin(async move { groups::run(&tether, &group_id, action, deadline).await }),
            Origin::Reconciler => Box::pin(async move { Finished::of(tether.reconcile(deadline).await) }),
            Origin::Batch(deliveries) => queue::job(tether, self.requeued.clone(), deliveries, invocation_id, deadline),
        };
        self.running.push(Invocation { origin, job });
    }

    fn start_user(&mut self, node_id: NodeId, action: UserAction) {
        self.note(format!("user {action:?} {node_id}"));
        self.start(Origin::User { node_id, action });
    }

    /// What Lambda (or the user) does after an invocation ended in error or died.
    fn after_failure(&mut self, origin: Origin, why: &str) {
        match origin {
            Origin::Event(mut delivery) if delivery.attempt < 2 => {
                delivery.attempt += 1;
                self.note(format!("event {} retried ({why})", delivery.id));
                self.bus.push(delivery);
            }
            Origin::Event(delivery) => self.note(format!("event {} dropped after 3 attempts ({why})", delivery.id)),
            Origin::User { node_id, action } if self.rng.bool() => {
                self.note(format!("user retries {action:?} {node_id} ({why})"));
                self.start(Origin::User { node_id, action });
            }
            Origin::Group { group_id, action } if action != GroupMove::Run && self.rng.bool() => {
                self.note(format!("user retries {action:?} {group_id} ({why})"));
                self.start(Origin::Group { group_id, action });
            }
            // SQS delivers each message of a failed batch again after its visibility timeout.
            Origin::Batch(deliveries) => {
                for delivery in deliveries {
                    self.receive_failed(delivery, why);
                }
            }
            Origin::User { .. } | Origin::Group { .. } | Origin::Reconciler => {}
        }
    }

    fn poll(&mut self, index: usize) -> bool {
        let Some(finished) = self.running[index].poll_once() else { return false };
        let invocation = self.running.swap_remove(index);
        match (finished, invocation.origin) {
            (Finished::Retry(why), origin) => self.after_failure(origin, &why),
            (Finished::Redeliver(failed), Origin::Batch(deliveries)) => {
                for (i, delivery) in deliveries.into_iter().enumerate().filter(|(i, _)| failed.contains(i)) {
                    self.note(format!("message {i} of a batch reported failed"));
                    self.receive_failed(delivery, "a batch item failure");
                }
            }
            _ => {}
        }
        self.take_requeued();
        true
    }

    // ---- the world moving on ----

    fn pass_time(&mut self, by: Duration) {
        self.clock.advance(by);
        self.ec2.advance_clock(by);
    }

    /// EC2's events go on the bus, each with its own id; so do the messages put back on a
    /// queue whose delay has passed.
    fn collect_events(&mut self) {
        let sent = self.now();
        for event in self.ec2.take_events() {
            self.events_emitted += 1;
            self.bus.push(Delivery { id: format!("ev-{}", self.events_emitted), event, sent, attempt: 0 });
        }
        self.release_delayed();
    }

    /// The interruption a warning announced.
    fn interrupt(&mut self, instance_id: &str, action: InterruptionAction) {
        match action {
            InterruptionAction::Terminate => self.ec2.reclaim(instance_id),
            InterruptionAction::Stop | InterruptionAction::Hibernate => self.ec2.stop(instance_id),
        }
    }

    fn any_node(&mut self) -> NodeId {
        self.created[self.rng.usize(..self.created.len())].clone()
    }

    /// One random move of the chaos phase.
    pub fn chaos_step(&mut self) {
        let available = |m: Move, w: &World| match m {
            Move::Poll | Move::Crash => !w.running.is_empty(),
            Move::Deliver | Move::Drop => !w.bus.is_empty(),
            Move::Reclaim => !w.doomed.is_empty(),
            Move::GroupDeallocate => w.group.is_some() && w.group_deallocatable,
            m if m.about_group() => w.group.is_some(),
            _ => true,
        };
        let total: u32 = MOVES.iter().filter(|(m, _)| available(*m, self)).map(|(_, w)| w).sum();
        let mut pick = self.rng.u32(0..total);
        let chosen = MOVES
            .iter()
            .filter(|(m, _)| available(*m, self))
            .find(|(_, w)| {
                let hit = pick < *w;
                pick = pick.saturating_sub(*w);
                hit
            })
            .map(|(m, _)| *m)
            .unwrap_or(Move::Time);
        self.apply(chosen);
        self.collect_events();
    }

    fn apply(&mut self, chosen: Move) {
        match chosen {
            Move::Poll => {
                let index = self.rng.usize(..self.running.len());
                self.poll(index);
            }
            Move::Crash => {
                let index = self.rng.usize(..self.running.len());
                let invocation = self.running.swap_remove(index);
                self.note(format!("crash {:?}", invocation.origin));
                self.after_failure(invocation.origin, "crashed");
            }
            Move::Deliver => {
                let index = self.rng.usize(..self.bus.len());
                // EventBridge may deliver the same event twice.
                let delivery = if self.rng.u8(0..5) == 0 { self.bus[index].clone() } else { self.bus.swap_remove(index) };
                self.note(format!("deliver {} {:?}", delivery.id, delivery.event));
                if self.queued {
                    self.start_batch(delivery);
                } else {
                    self.start(Origin::Event(delivery));
                }
            }
            Move::Drop => {
                let index = self.rng.usize(..self.bus.len());
                let delivery = self.bus.swap_remove(index);
                self.note(format!("drop {} {:?}", delivery.id, delivery.event));
            }
            Move::Ec2Progress => {
                let instances = self.ec2.instances();
                if !instances.is_empty() {
                    let id = instances[self.rng.usize(..instances.len())].id.clone();
                    if self.ec2.advance_instance(&id) {
                        self.note(format!("ec2 progresses {id}"));
                    }
                }
            }
            Move::Warn => {
                let running: Vec<String> =
                    self.ec2.instances().into_iter().filter(|i| i.state == "running" && i.node_id.is_some()).map(|i| i.id).collect();
                if !running.is_empty() {
                    let id = running[self.rng.usize(..running.len())].clone();
                    // Spot requests that stop (and later restart) instead of terminating.
                    let action = if self.rng.u8(0..3) == 0 { InterruptionAction::Stop } else { InterruptionAction::Terminate };
                    self.note(format!("spot warning ({action:?}) for {id}"));
                    self.ec2.warn_interruption(&id, action);
                    *self.warnings_sent.entry(id.clone()).or_default() += 1;
                    if action == InterruptionAction::Terminate {
                        let now = self.now();
                        self.terminate_warned.entry(id.clone()).or_insert(now);
                    }
                    self.doomed.push((id, action));
                }
            }
            Move::Reclaim => {
                let (id, action) = self.doomed.swap_remove(self.rng.usize(..self.doomed.len()));
                self.note(format!("spot interrupts ({action:?}) {id}"));
                self.interrupt(&id, action);
            }
            Move::User => {
                let node_id = self.any_node();
                let action = match self.rng.u8(0..12) {
                    0..=2 => UserAction::Resume,
                    3..=5 => UserAction::Pause,
                    6..=8 => UserAction::Recycle,
                    9 => UserAction::Deallocate { keep_eni: self.rng.bool() },
                    _ => UserAction::ChangeImage { n: self.rng.u8(1..4) },
                };
                self.start_user(node_id, action);
            }
            Move::Reconcile => {
                self.note("reconciler runs".into());
                self.start(Origin::Reconciler);
            }
            Move::Fault => self.inject_fault(),
            Move::Capacity => {
                let instance_type = INSTANCE_TYPES[self.rng.usize(..INSTANCE_TYPES.len())];
                let market = if self.rng.u8(0..3) == 0 { Market::OnDemand } else { Market::Spot };
                let out = self.rng.bool();
                self.note(format!("capacity {instance_type} {market:?} out={out}"));
                self.ec2.set_out_of_capacity(instance_type, market, out);
            }
            Move::Drift => self.drift(),
            Move::Impair => {
                let running: Vec<String> = self.ec2.instances().into_iter().filter(|i| i.state == "running" && i.node_id.is_some()).map(|i| i.id).collect();
                if !running.is_empty() {
                    let id = running[self.rng.usize(..running.len())].clone();
                    let check = if self.rng.bool() { "instance status" } else { "system status" };
                    let since = self.now() - chrono::TimeDelta::seconds(self.rng.i64(0..900));
                    self.note(format!("{check} of {id} impaired since {since}"));
                    self.ec2.impair(&id, check, Some(since));
                }
            }
            Move::HealthEvent => self.health_event(),
            Move::Time => {
                let by = Duration::from_millis(self.rng.u64(100..15_000));
                self.pass_time(by);
            }
            group_move => self.group_move(group_move),
        }
    }

    fn inject_fault(&mut self) {
        let when = if self.rng.bool() { When::Before } else { When::After };
        if self.rng.u8(0..3) == 0 {
            let operation = DYNAMODB_OPERATIONS[self.rng.usize(..DYNAMODB_OPERATIONS.len())];
            let code = ["ProvisionedThroughputExceededException", "InternalServerError"][self.rng.usize(..2)];
            let code = self.rng.bool().then(|| code.to_owned());
            self.note(format!("fault {operation} {code:?} {when:?}"));
            self.store.inject(operation, Fault { code, when });
        } else {
            let operation = EC2_OPERATIONS[self.rng.usize(..EC2_OPERATIONS.len())];
            let code = ["RequestLimitExceeded", "InternalError"][self.rng.usize(..2)];
            let code = self.rng.bool().then(|| code.to_owned());
            self.note(format!("fault {operation} {code:?} {when:?}"));
            self.ec2.inject(operation, Fault { code, when });
        }
    }

    /// AWS Health schedules the retirement of one or two nodes' instances, days ahead: one
    /// event for both, delivered (maybe twice) under its own id per instance, as the intake
    /// splits it, and maybe again as an update.
    fn health_event(&mut self) {
        let live: Vec<String> = self.ec2.instances().into_iter().filter(|i| i.is_live() && i.node_id.is_some()).map(|i| i.id).collect();
        if live.is_empty() {
            return;
        }
        let arn = format!("arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/chaos-{}", self.health_events.len());
        let starts_at = self.now() + chrono::TimeDelta::hours(self.rng.i64(1..72));
        let count = self.rng.usize(1..=live.len().min(2));
        let sent = self.now();
        for _ in 0..count {
            let instance_id = live[self.rng.usize(..live.len())].clone();
            self.note(format!("AWS Health {arn} for {instance_id}, from {starts_at}"));
            let event = crate::events::InstanceEvent::MaintenanceScheduled { instance_id: instance_id.clone(), type_code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(), event_arn: arn.clone(), starts_at };
            let id = format!("health:{arn}:{instance_id}");
            for _ in 0..self.rng.usize(1..=2) {
                self.bus.push(Delivery { id: id.clone(), event: event.clone(), sent, attempt: 0 });
            }
            self.health_events.push((arn.clone(), instance_id));
        }
    }

    /// Someone changes the node's network by hand.
    fn drift(&mut self) {
        let mut targets = self.created.clone();
        targets.extend(self.live_members());
        let node_id = targets[self.rng.usize(..targets.len())].clone();
        let Some(node) = self.store.nodes().into_iter().find(|n| n.id == node_id) else { return };
        match self.rng.u8(0..6) {
            0 => {
                if let Some(eip) = &node.elastic_ip {
                    self.note(format!("drift: {} disassociated from {node_id}", eip.allocation_id));
                    self.ec2.hand_disassociate_eip(&eip.allocation_id);
                }
            }
            1 => {
                if let Some(eip) = &node.elastic_ip {
                    let Ok(foreign) = self.ec2.hand_create_eni(SUBNET) else { return };
                    // Not a cause for ERROR: the node goes on with a condition naming `foreign`.
                    if self.ec2.hand_associate_eip(&eip.allocation_id, &foreign).is_ok() {
                        self.note(format!("drift: {} of {node_id} moved to {foreign}", eip.allocation_id));
                    }
                }
            }
            2 => {
                if let Some(eni) = &node.eni {
                    if self.ec2.hand_delete_eni(&eni.id).is_ok() {
                        self.note(format!("drift: ENI {} of {node_id} deleted", eni.id));
                        self.drifted.insert(node_id);
                    }
                }
            }
            3 => {
                if let Some(instance_id) = node.instance_id() {
                    self.note(format!("drift: {instance_id} of {node_id} terminated by hand"));
                    self.ec2.reclaim(instance_id);
                }
            }
            4 => {
                // A data volume detached from its instance by hand: attached again.
                if let Some(volume) = node.data_volumes.first() {
                    if self.ec2.hand_detach_volume(&volume.volume_id) {
                        self.note(format!("drift: data volume {} of {node_id} detached", volume.volume_id));
                    }
                }
            }
            _ => {
                // A detached data volume deleted by hand: the node must not run without it.
                if let Some(volume) = node.data_volumes.first() {
                    if self.ec2.hand_delete_volume(&volume.volume_id).is_ok() {
                        self.note(format!("drift: data volume {} of {node_id} deleted", volume.volume_id));
                        self.drifted.insert(node_id);
                    }
                }
            }
        }
    }

    /// Checked after every move: generations only grow (a violation names the node). Also
    /// notes the nodes whose chosen private IP another ENI holds: their first resume rightly
    /// fails (one whose chosen Elastic IP someone holds runs without it, with a condition).
    /// And notes every group member seen.
    pub fn after_move(&mut self) -> Result<(), String> {
        let enis = self.ec2.enis();
        for node in self.store.nodes() {
            if node.group.is_some() {
                self.members_seen.insert(node.id.clone());
            }
            if let Some(ip) = node.persistence.private_ip {
                if enis.iter().any(|e| e.private_ip == ip && e.node_id.as_deref() != Some(node.id.as_str())) {
                    self.drifted.insert(node.id.clone());
                }
            }
            let seen = self.seen_generations.entry(node.id.clone()).or_insert(node.generation);
            if node.generation < *seen {
                return Err(format!("generation of {} went back from {seen} to {}", node.id, node.generation));
            }
            *seen = node.generation;
        }
        Ok(())
    }

    // ---- settling ----

    /// Chaos stops (faults cleared, capacity back); events are delivered, EC2 finishes
    /// what it started, and the reconciler runs each virtual minute, until nothing changes.
    pub fn settle(&mut self) -> Result<(), String> {
        self.ec2.clear_faults();
        self.store.clear_faults();
        for instance_type in INSTANCE_TYPES {
            for market in [Market::Spot, Market::OnDemand] {
                self.ec2.set_out_of_capacity(instance_type, market, false);
            }
        }
        for (id, action) in std::mem::take(&mut self.doomed) {
            self.interrupt(&id, action);
        }
        self.note("---- settling ----".into());
        let mut last = String::new();
        let mut unchanged = 0;
        for _ in 0..SETTLE_ROUNDS {
            while !self.bus.is_empty() {
                let delivery = self.bus.swap_remove(self.rng.usize(..self.bus.len()));
                if self.queued {
                    self.start_batch(delivery);
                } else {
                    self.start(Origin::Event(delivery));
                }
            }
            self.run_all()?;
            self.ec2.advance();
            self.collect_events();
            self.pass_time(Duration::from_secs(60));
            self.start(Origin::Reconciler);
            self.run_all()?;
            self.collect_events();
            self.after_move()?;
            let now = self.fingerprint();
            if self.bus.is_empty() && self.delayed.is_empty() && now == last {
                unchanged += 1;
                if unchanged == QUIET_ROUNDS {
                    return Ok(());
                }
            } else {
                unchanged = 0;
            }
            last = now;
        }
        Err("the world never settled: something keeps changing after chaos stopped".into())
    }

    /// Polls every invocation in flight until all have ended, moving the clock on when
    /// all of them wait.
    fn run_all(&mut self) -> Result<(), String> {
        for _ in 0..20_000 {
            if self.running.is_empty() {
                return Ok(());
            }
            let mut progressed = false;
            let mut index = self.running.len();
            while index > 0 {
                index -= 1;
                progressed |= self.poll(index);
            }
            if !progressed {
                self.pass_time(Duration::from_millis(500));
                self.ec2.advance();
            }
            self.collect_events();
        }
        Err(format!("{} invocation(s) never finished", self.running.len()))
    }

    /// What the table and EC2 hold at the end, for a failing seed's report.
    pub(super) fn note_final_state(&mut self, seen: &super::check_groups::Seen<'_>) {
        self.log.push("---- final state ----".into());
        let mut lines: Vec<String> = seen.groups.iter().map(|g| format!("{} {:?} target {} pool {:?} Elastic IPs {:?}", g.id, g.state, g.target_capacity, g.private_ip_pool, g.elastic_ip_pool)).collect();
        for n in seen.nodes {
            let history: Vec<String> = n.history.iter().map(|h| format!("{} ({})", h.what, h.by.as_deref().unwrap_or("-"))).collect();
            lines.push(format!("{} {:?} {:?} {:?} ENI {:?}: {}", n.id, n.state, n.persistence, n.group, n.eni.as_ref().map(|e| (&e.id, e.private_ip)), history.join("; ")));
        }
        lines.extend(seen.reservations.iter().map(|r| format!("{r:?}")));
        lines.extend(seen.subnet_reservations.iter().map(|(id, subnet, range)| format!("subnet CIDR reservation {id} {range} in {subnet}")));
        self.log.extend(lines);
    }

    fn fingerprint(&self) -> String {
        let nodes: Vec<(String, u64, NodeState)> = self.store.nodes().into_iter().map(|n| (n.id.to_string(), n.version, n.state)).collect();
        let instances: Vec<(String, String)> = self.ec2.instances().into_iter().map(|i| (i.id, i.state)).collect();
        let enis: Vec<(String, Option<String>)> = self.ec2.enis().into_iter().map(|e| (e.id, e.instance_id)).collect();
        let eips: Vec<(String, Option<String>)> = self.ec2.eips().into_iter().map(|e| (e.info.allocation_id, e.info.network_interface_id)).collect();
        let groups: Vec<(String, u64)> = self.store.groups_now().into_iter().map(|g| (g.id.to_string(), g.version)).collect();
        let reservations: Vec<String> = self.store.reservations_now().into_iter().map(|r| format!("{r:?}")).collect();
        let subnet_reservations = self.ec2.subnet_reservations();
        // The sweep leaves a young one alone until it ages: the world is not settled while
        // one does (it changes the sweep's answer, and so the invariants', when it does).
        let young = self.ec2.subnet_reservations_made_since(self.now() - crate::ports::SUBNET_RESERVATION_GRACE);
        let reserved = self.store.reservations_now();
        let named = |subnet: &str, range: &ipnet::Ipv4Net| reserved.iter().any(|r| matches!(&r.address, crate::ports::Address::PrivateIp { subnet_id, ip } if subnet_id == subnet && range.contains(ip)));
        let young: Vec<&String> = subnet_reservations.iter().filter(|(id, subnet, range)| young.contains(id) && !named(subnet, range)).map(|(id, _, _)| id).collect();
        let volumes: Vec<(String, Option<(String, String)>)> = self.ec2.volumes().into_iter().map(|v| (v.id, v.attachment)).collect();
        format!("{nodes:?}{instances:?}{enis:?}{eips:?}{groups:?}{reservations:?}{subnet_reservations:?}{young:?}{volumes:?}")
    }
}

/// Launch settings drawn from the seed: 1 to 3 instance types in some order, on-demand
/// fallback mostly on, any `revert_to_spot` policy.
pub(super) fn random_launch(rng: &mut fastrand::Rng) -> NodeSpec {
    let mut types: Vec<String> = INSTANCE_TYPES.iter().map(|t| (*t).to_owned()).collect();
    rng.shuffle(&mut types);
    types.truncate(rng.usize(1..=INSTANCE_TYPES.len()));
    NodeSpec {
        subnet_id: SUBNET.into(),
        image_id: "ami-chaos".into(),
        instance_types: types,
        security_group_ids: vec!["sg-chaos".into()],
        fallback_to_on_demand: rng.u8(0..4) > 0,
        revert_to_spot: match rng.u8(0..3) {
            0 => RevertToSpot::Never,
            1 => RevertToSpot::Always,
            // The scenarios start at 08:00 UTC: a window the chaos phase runs into.
            _ => RevertToSpot::Window { start: time(8, 1), end: time(8, 20) },
        },
        metadata_options: match rng.u8(0..3) {
            // Absent: the create fills in IMDSv2 required.
            0 => None,
            1 => Some(crate::model::MetadataOptions::default()),
            _ => Some(crate::model::MetadataOptions { http_tokens: crate::model::HttpTokens::Optional, http_put_response_hop_limit: rng.u8(1..=64), ..Default::default() }),
        },
        // A third of the nodes hand over early: half of them within a few seconds (the
        // chaos phase's clock moves slowly, and reclaims come at random), half at any delay.
        handover_after_warning_seconds: match rng.u8(0..6) {
            0 => Some(rng.u8(0..=5)),
            1 => Some(rng.u8(0..=110)),
            _ => None,
        },
        block_devices: (0..rng.usize(0..3))
            .map(|i| crate::volumes::BlockDevice {
                device_name: format!("/dev/sd{}", char::from(b'f' + i as u8)),
                volume_size_gib: rng.u32(8..=200),
                volume_type: crate::volumes::VolumeType::Gp3,
                iops: None,
                throughput_mibps: None,
                encrypted: Some(rng.bool()),
                kms_key_id: None,
                delete_on_termination: true,
            })
            .collect(),
        // Drawn last, so that the draws above follow the seed as before. The ENI's own
        // identity: a third of the nodes with 1 to 3 secondary IPs EC2 picks, a quarter with
        // the source/destination check off.
        secondary_private_ips: (rng.u8(0..3) == 0).then(|| crate::model::SecondaryIps { count: Some(rng.u8(1..=3)), addresses: Vec::new() }),
        source_dest_check: rng.u8(0..4) > 0,
        // A quarter of the nodes are multi-homed: an extra ENI at device index 1 in another
        // subnet of their AZ (every chaos instance type takes at least 3 interfaces).
        extra_enis: (rng.u8(0..4) == 0)
            .then(|| crate::model::ExtraEni {
                device_index: 1,
                subnet_id: SUBNET_EXTRA.into(),
                security_group_ids: vec!["sg-chaos".into()],
                private_ip: None,
                elastic_ip_allocation_id: None,
            })
            .into_iter()
            .collect(),
        // Drawn after the above. A third of the nodes keep a data volume; what their
        // deallocation does with it, and how they heal, vary; an eighth have an hourly
        // schedule (the scenarios run for minutes: a slot may come in the chaos or the settling).
        data_volumes: (rng.u8(0..3) == 0)
            .then(|| crate::data_volumes::DataVolume {
                device_name: "/dev/sdp".into(),
                volume_size_gib: rng.u32(1..=100),
                volume_type: crate::volumes::VolumeType::Gp3,
                iops: None,
                throughput_mibps: None,
                encrypted: None,
                kms_key_id: None,
            })
            .into_iter()
            .collect(),
        deallocation: crate::deallocation::DeallocationPolicy {
            data_volumes: [crate::deallocation::VolumeFate::Keep, crate::deallocation::VolumeFate::Delete, crate::deallocation::VolumeFate::SnapshotAndDelete][rng.usize(..3)],
            ..Default::default()
        },
        auto_healing: crate::health::AutoHealing { enabled: rng.u8(0..4) > 0, grace_period_seconds: [0, 60, 300][rng.usize(..3)], ..Default::default() },
        schedules: (rng.u8(0..8) == 0)
            .then(|| crate::schedules::Schedule {
                action: [crate::schedules::ScheduledAction::Pause, crate::schedules::ScheduledAction::Resume, crate::schedules::ScheduledAction::Recycle][rng.usize(..3)],
                cron: format!("{} * * * *", rng.u8(0..60)),
                time_zone: "Europe/Paris".into(),
            })
            .into_iter()
            .collect(),
        ..NodeSpec::default()
    }
}

fn time(hour: u32, minute: u32) -> chrono::NaiveTime {
    chrono::NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or_default()
}
