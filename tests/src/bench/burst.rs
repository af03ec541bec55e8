//! A mass interruption: N nodes' instances reclaimed (at once, or spread), their warnings
//! 120 s before, their `terminated` events delivered 0.5–3 s after; the intake delivers
//! them to the real handlers while the reconciler runs every minute. Measured until every
//! node runs a replacement, or 6.5 hours (Lambda keeps an asynchronous event 6 hours).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;
use tether::model::{Market, NodeState};
use tether::ports::Clock;
use tether::Tether;

use super::lambda::{AsyncInvoke, Concurrency, ACCOUNT_CONCURRENCY};
use super::queue::{self, BatchHandler, Mapping, Queue};
use super::world::{TetherFunction, World, INSTANCE_TYPES};

/// The warning comes this long before the instance is reclaimed.
const WARNING_AHEAD: Duration = Duration::from_secs(120);
/// A `terminated` event reaches its target 0.5–3 s after the instance terminated.
const DELIVERY_MS: (u64, u64) = (500, 3000);
const RECONCILER_EVERY: Duration = Duration::from_secs(60);
/// The template's timeouts.
const INTERRUPTION_TIMEOUT: Duration = Duration::from_secs(30);
const STATE_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const RECONCILER_TIMEOUT: Duration = Duration::from_secs(55);
const GIVE_UP_AFTER: Duration = Duration::from_secs(6 * 3600 + 1800);

#[derive(Clone, Debug)]
pub struct Burst {
    pub name: &'static str,
    pub nodes: usize,
    /// Reclaims spread uniformly over this long (zero: all at once).
    pub spread: Duration,
    /// The nodes' first instance type has no spot capacity in their AZ.
    pub first_type_out: bool,
}

/// How events reach the functions, and whether launches share the pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// The stack before the queues: each EventBridge event is an asynchronous invocation,
    /// each launch retries RunInstances on its own.
    Baseline,
    /// EventBridge → SQS → Lambda (event source mappings with `MaximumConcurrency`,
    /// `ReportBatchItemFailures`), launches on the shared pace.
    Queued,
    /// The queues without the pace: what the pace itself does.
    QueuedPaceOff,
}

impl Design {
    /// Its colour in the charts: the same in every chart.
    pub fn colour(self) -> plotters::style::RGBColor {
        match self {
            Design::Baseline => plotters::style::RGBColor(200, 60, 40),
            Design::Queued => plotters::style::RGBColor(30, 110, 200),
            Design::QueuedPaceOff => plotters::style::RGBColor(120, 120, 120),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Design::Baseline => "baseline",
            Design::Queued => "queued",
            Design::QueuedPaceOff => "queued-pace-off",
        }
    }
}

/// The stack's event source mappings (a share of 10 of the account's concurrency: 7 for
/// state changes, 2 for warnings, 1 for the reconciler).
pub const STATE_CHANGE_MAPPING: Mapping = Mapping {
    batch_size: 10,
    maximum_concurrency: 7,
    function_timeout: Duration::from_secs(90),
    visibility_timeout: Duration::from_secs(540),
    max_receive_count: 5,
};
pub const INTERRUPTION_MAPPING: Mapping = Mapping {
    batch_size: 10,
    maximum_concurrency: 2,
    function_timeout: Duration::from_secs(30),
    visibility_timeout: Duration::from_secs(180),
    max_receive_count: 5,
};

pub struct BurstResult {
    /// From the first reclaim until the last node runs again; `None` if some never did.
    pub all_running_s: Option<f64>,
    pub bound_s: f64,
    pub launched_twice: usize,
    pub lost: usize,
    pub run_instances_calls: u64,
    pub throttled: u64,
    pub peak_concurrency: usize,
    /// The most AWS calls the handling of one `terminated` event took (every delivery).
    pub calls_per_replacement: u32,
    /// p99 of (first RunInstances − delivery) over the events no throttle held back.
    pub added_delay_p99_ms: Option<u64>,
    pub dead_lettered: u64,
    pub lambda_throttles: u64,
    /// Launches sent to a (type, market) EC2 had refused for capacity, after that refusal
    /// came back, while the node had another candidate left untried.
    pub second_attempts: u64,
    /// Seconds after the first reclaim at which each node ran again, sorted.
    pub back_at: Vec<f64>,
}

impl BurstResult {
    pub fn ratio(&self) -> Option<f64> {
        self.all_running_s.map(|s| s / self.bound_s)
    }
}

/// The lower bound on bringing `nodes` back: EC2's RunInstances bucket (5 at once, then 2
/// a second), plus the longest RunInstances latency.
pub fn bound_s(nodes: usize) -> f64 {
    (nodes.saturating_sub(5)) as f64 / 2.0 + 2.0
}

/// Where EventBridge's rules send the events.
#[derive(Clone)]
enum Target {
    Async { warning: super::lambda::Function, state_change: super::lambda::Function },
    Queues { warnings: Queue, state_changes: Queue },
}

impl Target {
    fn deliver_warning(&self, intake: &AsyncInvoke, payload: Value, after: Duration) {
        match self {
            Target::Async { warning, .. } => intake.deliver(warning, payload, after),
            Target::Queues { warnings, .. } => warnings.send(payload.to_string(), after),
        }
    }

    fn deliver_state_change(&self, intake: &AsyncInvoke, payload: Value, after: Duration) {
        match self {
            Target::Async { state_change, .. } => intake.deliver(state_change, payload, after),
            Target::Queues { state_changes, .. } => state_changes.send(payload.to_string(), after),
        }
    }
}

/// An event function consuming `queue` through its event source mapping.
fn batch_handler(tether: &Tether, queue: &Queue, function: TetherFunction) -> BatchHandler {
    let (tether, queue) = (tether.clone(), queue.clone());
    let invocations = Rc::new(std::cell::Cell::new(0u64));
    Rc::new(move |payload, deadline| {
        let (tether, queue, invocations) = (tether.clone(), queue.clone(), invocations.clone());
        Box::pin(async move {
            invocations.set(invocations.get() + 1);
            let mut event = crate::events::invocation_at(payload, deadline);
            // Deterministic per seed (the events' claims name the invocation).
            event.context.request_id = format!("{}-{}", queue.arn, invocations.get());
            function.invoke(&tether, &queue, event).await.map_err(|e| e.to_string())
        })
    })
}

fn with_id(mut payload: Value, id: String) -> Value {
    payload["id"] = Value::String(id);
    payload
}

pub fn run(burst: &Burst, design: Design, seed: u64) -> BurstResult {
    let world = World::new(burst.nodes, seed, design == Design::Queued);
    if burst.first_type_out {
        world.ec2.set_out_of_capacity(INSTANCE_TYPES[0], Market::Spot, true);
    }
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    // Times on the simulation's clock, from the scenario's start.
    let start = world.clock.elapsed();
    let mut plan: Vec<(Duration, usize)> = (0..burst.nodes)
        .map(|i| (start + WARNING_AHEAD + burst.spread.mul_f64(if burst.spread.is_zero() { 0.0 } else { rng.f64() }), i))
        .collect();
    plan.sort();
    let deliveries: Vec<Duration> = plan.iter().map(|_| Duration::from_millis(rng.u64(DELIVERY_MS.0..=DELIVERY_MS.1))).collect();
    let intake = AsyncInvoke {
        clock: world.clock.clone(),
        spawner: world.sim.spawner(),
        concurrency: Concurrency::new(ACCOUNT_CONCURRENCY),
        stats: Rc::default(),
        invocations: Rc::default(),
    };
    let warning_fn = world.function(INTERRUPTION_TIMEOUT, 2, TetherFunction::Interruption);
    let state_change_fn = world.function(STATE_CHANGE_TIMEOUT, 2, TetherFunction::StateChange);
    let reconciler_fn = super::lambda::Function { scheduled: true, ..world.function(RECONCILER_TIMEOUT, 0, TetherFunction::Reconciler) };
    let target = match design {
        Design::Baseline => Target::Async { warning: warning_fn, state_change: state_change_fn },
        Design::Queued | Design::QueuedPaceOff => {
            let spawner = world.sim.spawner();
            let warnings = Queue::new("tether-interruption", world.clock.clone());
            let state_changes = Queue::new("tether-state-change", world.clock.clone());
            queue::start(&spawner, &world.clock, &warnings, INTERRUPTION_MAPPING, batch_handler(&world.tether, &warnings, TetherFunction::Interruption), intake.concurrency.clone());
            queue::start(&spawner, &world.clock, &state_changes, STATE_CHANGE_MAPPING, batch_handler(&world.tether, &state_changes, TetherFunction::StateChange), intake.concurrency.clone());
            Target::Queues { warnings, state_changes }
        }
    };

    // The warnings, at once (EventBridge delivers each to its target).
    for (t0, i) in &plan {
        let instance = &world.nodes[*i].1;
        let payload = with_id(crate::events::interruption_warning(instance, "terminate"), format!("warn-{i}"));
        target.deliver_warning(&intake, payload, *t0 - WARNING_AHEAD - start);
    }
    // The reclaims, and each `terminated` event.
    let (clock, ec2, nodes) = (world.clock.clone(), world.ec2.clone(), world.nodes.clone());
    let reclaims = plan.clone();
    let spawner = world.sim.spawner();
    let (intake_for_events, target_for_events) = (intake.clone(), target.clone());
    // When each `terminated` event reached the intake (virtual ms), by node.
    let delivered = Rc::new(RefCell::new(vec![0u64; burst.nodes]));
    let delivered_at = delivered.clone();
    spawner.spawn(async move {
        for ((t0, i), delivery) in reclaims.iter().zip(deliveries) {
            let wait = t0.saturating_sub(clock.elapsed());
            clock.sleep(wait).await;
            let instance = &nodes[*i].1;
            ec2.reclaim(instance);
            ec2.advance_instance(instance);
            let payload = with_id(crate::events::state_change(instance, "terminated"), format!("term-{i}"));
            delivered_at.borrow_mut()[*i] = u64::try_from((clock.elapsed() + delivery).as_millis()).unwrap_or(u64::MAX);
            target_for_events.deliver_state_change(&intake_for_events, payload, delivery);
        }
    });
    // The reconciler's schedule.
    let (clock, intake_for_schedule) = (world.clock.clone(), intake.clone());
    spawner.spawn(async move {
        loop {
            clock.sleep(RECONCILER_EVERY).await;
            intake_for_schedule.deliver(&reconciler_fn, crate::events::scheduled_event("tether-reconciler"), Duration::ZERO);
        }
    });
    // EC2 moving on: pending instances run, shutting-down ones terminate.
    let (clock, ec2) = (world.clock.clone(), world.ec2.clone());
    spawner.spawn(async move {
        loop {
            clock.sleep(Duration::from_secs(5)).await;
            ec2.advance();
            ec2.take_events();
        }
    });
    let last_reclaim = plan.last().map(|(t0, _)| *t0).unwrap_or_default();
    let (clock, store) = (world.clock.clone(), world.store.clone());
    world.sim.run(async move {
        loop {
            let every = if clock.elapsed() < Duration::from_secs(7200) { 10 } else { 60 };
            clock.sleep(Duration::from_secs(every)).await;
            let all_back = store.nodes().iter().all(|n| n.state == NodeState::Running && n.generation >= 2);
            if (clock.elapsed() > last_reclaim && all_back) || clock.elapsed() > last_reclaim + GIVE_UP_AFTER {
                return;
            }
        }
    });
    let delivered = delivered.borrow().clone();
    if std::env::var_os("BENCH_DEBUG").is_some() {
        debug_histogram(&world);
    }
    let mut result = measure(&world, burst, &plan, &delivered, &intake);
    if let Target::Queues { warnings, state_changes } = &target {
        result.dead_lettered += warnings.dead_lettered() + state_changes.dead_lettered();
    }
    result
}

fn measure(world: &World, burst: &Burst, plan: &[(Duration, usize)], delivered: &[u64], intake: &AsyncInvoke) -> BurstResult {
    let first_reclaim = world.clock.now() - world.clock.elapsed() + plan.first().map(|(t0, _)| *t0).unwrap_or_default();
    let nodes = world.store.nodes();
    let mut back_at: Vec<f64> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Running && n.generation >= 2)
        .filter_map(|n| n.instance.as_ref())
        .map(|i| (i.launched_at - first_reclaim).num_milliseconds() as f64 / 1000.0)
        .collect();
    back_at.sort_by(f64::total_cmp);
    let lost = burst.nodes - back_at.len();
    let mut per_generation = std::collections::HashMap::new();
    for instance in world.ec2.instances() {
        if let (Some(node), Some(generation)) = (instance.node_id, instance.generation) {
            *per_generation.entry((node, generation)).or_insert(0usize) += 1;
        }
    }
    let launched_twice = per_generation.values().filter(|n| **n > 1).count();
    let calls = world.model.calls();
    let calls_per_replacement = (0..burst.nodes).filter_map(|i| calls.by_event.get(&format!("term-{i}")).copied()).max().unwrap_or(0);
    // Held back: a RunInstances throttled, or a launch that waited for its pace slot (sent
    // after its slot was answered, or its event took more than one slot: it waited outside).
    let held_back = |event: &str, sent: u64| calls.pace.get(event).is_some_and(|(takes, answered)| *takes > 1 || sent > *answered + 1);
    let mut delays: Vec<u64> = (0..burst.nodes)
        .filter_map(|i| {
            let event = format!("term-{i}");
            let (sent, throttled) = calls.run_instances.get(&event)?;
            (!throttled && !held_back(&event, *sent)).then(|| sent.saturating_sub(delivered[i]))
        })
        .collect();
    delays.sort_unstable();
    let added_delay_p99_ms = (!delays.is_empty()).then(|| delays[(delays.len() * 99).div_ceil(100).saturating_sub(1)]);
    // When EC2's first capacity refusal of each pool came back.
    let mut refused: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for launch in calls.launches.iter().filter(|l| l.error.as_deref() == Some("InsufficientInstanceCapacity")) {
        let at = refused.entry(launch.pool.as_str()).or_insert(u64::MAX);
        *at = (*at).min(launch.answered_ms);
    }
    let known_refused = |l: &&super::aws::Launch| refused.get(l.pool.as_str()).is_some_and(|at| l.sent_ms > *at);
    let second_attempts = calls.launches.iter().filter(known_refused).count() as u64;
    // Launches on a refused pool before its refusal could be known spend a token each: the
    // scenario's own bound counts them.
    let unavoidable = calls
        .launches
        .iter()
        .filter(|l| refused.get(l.pool.as_str()).is_some_and(|at| l.sent_ms <= *at) && l.error.as_deref() != Some("RequestLimitExceeded"))
        .count();
    BurstResult {
        all_running_s: (lost == 0).then(|| back_at.last().copied().unwrap_or(0.0)),
        bound_s: bound_s(burst.nodes + unavoidable),
        launched_twice,
        lost,
        run_instances_calls: calls.count(|op| op == "RunInstances"),
        throttled: calls.throttled("RunInstances"),
        peak_concurrency: intake.concurrency.peak.get(),
        calls_per_replacement,
        added_delay_p99_ms,
        dead_lettered: intake.stats.dead_lettered.get(),
        lambda_throttles: intake.concurrency.throttles.get(),
        second_attempts,
        back_at,
    }
}

/// The scenario's `bench:` line.
pub fn line(burst: &Burst, design: Design, r: &BurstResult, took: Duration) -> String {
    let all_running = r.all_running_s.map_or("never".to_owned(), |s| format!("{s:.1}"));
    let ratio = r.ratio().map_or("inf".to_owned(), |x| format!("{x:.2}"));
    let delay = r.added_delay_p99_ms.map_or("none".to_owned(), |ms| ms.to_string());
    format!(
        "bench: scenario={} design={} nodes={} all_running_s={all_running} bound_s={:.1} ratio={ratio} launched_twice={} lost={} run_instances_calls={} throttled={} peak_concurrency={} aws_calls_per_replacement={} added_delay_p99_ms={delay} second_attempts={} dead_lettered={} lambda_throttles={} wall_s={:.1}",
        burst.name,
        design.name(),
        burst.nodes,
        r.bound_s,
        r.launched_twice,
        r.lost,
        r.run_instances_calls,
        r.throttled,
        r.peak_concurrency,
        r.calls_per_replacement,
        r.second_attempts,
        r.dead_lettered,
        r.lambda_throttles,
        took.as_secs_f64()
    )
}

/// RunInstances sent per 30 s of the simulation (`BENCH_DEBUG=1`).
pub fn debug_histogram(world: &World) {
    let calls = world.model.calls();
    let mut buckets = std::collections::BTreeMap::new();
    for l in &calls.launches {
        *buckets.entry(l.sent_ms / 30_000).or_insert(0) += 1;
    }
    eprintln!("launches per 30 s: {buckets:?}");
    let first = calls.launches.first().map_or(0, |l| l.sent_ms);
    let early: Vec<String> = calls.launches.iter().take(12).map(|l| format!("{}{}", l.sent_ms - first, if l.error.is_some() { "!" } else { "" })).collect();
    eprintln!("first launches (ms after the first; ! refused): {early:?}");
    for (event, ops) in calls.ops_by_event.iter().filter(|(_, ops)| ops.len() > 6).take(10) {
        eprintln!("{event}: {} calls: {ops:?}", ops.len());
    }
}
