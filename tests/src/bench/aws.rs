//! The benchmark's model of AWS's answers: how long each call takes (the fixed
//! parameters), and what every call was, whom it served and whether it was throttled.
//! EC2's throttling itself is the fake's (its token buckets, on the virtual clock).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tether::error::AwsError;
use tether::fake::CallTiming;
use tether::ports::Clock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::sim::SimClock;

/// RunInstances answers after a uniform 0.5–2.0 s; other EC2 calls after 100 ms (a
/// throttled RunInstances too: EC2 refuses at once); DynamoDB after 10 ms.
pub const RUN_INSTANCES_LATENCY_MS: (u64, u64) = (500, 2000);
pub const EC2_LATENCY: Duration = Duration::from_millis(100);
pub const DYNAMODB_LATENCY: Duration = Duration::from_millis(10);

pub struct Launch {
    pub sent_ms: u64,
    pub answered_ms: u64,
    /// `<instance type>/<market>`.
    pub pool: String,
    pub error: Option<String>,
}

/// What the calls were.
#[derive(Default)]
pub struct Calls {
    /// Per operation: (calls, throttled).
    pub by_operation: BTreeMap<&'static str, (u64, u64)>,
    /// Per EventBridge event id (the service's `delivery` span): AWS calls made for it.
    pub by_event: HashMap<String, u32>,
    /// Per event id, the operations in order (kept with `BENCH_DEBUG`).
    pub ops_by_event: HashMap<String, Vec<&'static str>>,
    /// Per event id: when its first RunInstances was sent (virtual ms), and whether any of
    /// its RunInstances was throttled.
    pub run_instances: HashMap<String, (u64, bool)>,
    /// Per event id: its pace calls (UpdateItem) and when the last was answered (virtual ms).
    pub pace: HashMap<String, (u32, u64)>,
    /// Every RunInstances: sent (virtual ms), its latency, its pool, its error code.
    pub launches: Vec<Launch>,
}

impl Calls {
    pub fn count(&self, filter: impl Fn(&str) -> bool) -> u64 {
        self.by_operation.iter().filter(|(op, _)| filter(op)).map(|(_, (calls, _))| calls).sum()
    }

    pub fn throttled(&self, operation: &str) -> u64 {
        self.by_operation.get(operation).map_or(0, |(_, throttled)| *throttled)
    }
}

pub struct AwsModel {
    clock: SimClock,
    rng: Mutex<fastrand::Rng>,
    /// Off while the scenario is set up: calls take no time and are not counted.
    on: AtomicBool,
    /// `BENCH_DEBUG` is set: keep each event's operations.
    debug: bool,
    pub calls: Mutex<Calls>,
}

impl AwsModel {
    pub fn new(clock: SimClock, seed: u64) -> Self {
        let debug = std::env::var_os("BENCH_DEBUG").is_some();
        AwsModel { clock, rng: Mutex::new(fastrand::Rng::with_seed(seed)), on: AtomicBool::new(false), debug, calls: Mutex::default() }
    }

    pub fn switch(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    pub fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets what was counted (between the phases of one scenario).
    pub fn reset(&self) {
        *self.calls() = Calls::default();
    }
}

impl CallTiming for AwsModel {
    fn answer(&self, service: &'static str, operation: &'static str, about: &str, error: Option<&AwsError>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if !self.on.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(()));
        }
        let throttled = error.is_some_and(|e| e.code_is("RequestLimitExceeded"));
        let now_ms = u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let event = current_event();
        let latency = match (service, operation) {
            ("EC2", "RunInstances") if !throttled => {
                let (low, high) = RUN_INSTANCES_LATENCY_MS;
                Duration::from_millis(self.rng.lock().unwrap_or_else(PoisonError::into_inner).u64(low..=high))
            }
            ("EC2", _) => EC2_LATENCY,
            _ => DYNAMODB_LATENCY,
        };
        let mut calls = self.calls();
        let entry = calls.by_operation.entry(operation).or_default();
        entry.0 += 1;
        entry.1 += u64::from(throttled);
        if let Some(event) = &event {
            *calls.by_event.entry(event.clone()).or_default() += 1;
            if self.debug {
                calls.ops_by_event.entry(event.clone()).or_default().push(operation);
            }
        }
        if let (Some(event), "UpdateItem") = (&event, operation) {
            let entry = calls.pace.entry(event.clone()).or_default();
            entry.0 += 1;
            entry.1 = now_ms + u64::try_from(latency.as_millis()).unwrap_or(0);
        }
        if operation == "RunInstances" {
            let answered_ms = now_ms + u64::try_from(latency.as_millis()).unwrap_or(0);
            calls.launches.push(Launch { sent_ms: now_ms, answered_ms, pool: about.to_owned(), error: error.and_then(|e| e.code.clone()) });
            if let Some(event) = event {
                let first = calls.run_instances.entry(event).or_insert((now_ms, false));
                first.1 |= throttled;
            }
        }
        drop(calls);
        self.clock.sleep(latency)
    }
}

/// The EventBridge event the running code is handling: the `event_id` field of the
/// service's `delivery` span, if the current span is in one.
fn current_event() -> Option<String> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            span.scope().find_map(|s| s.extensions().get::<EventKey>().map(|k| k.0.clone()))
        })
        .flatten()
}

struct EventKey(String);

/// Notes each span's `event_id` (spans only: the bench records no log lines).
pub struct EventKeys;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for EventKeys {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if metadata.is_span() {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.is_span()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = EventIdVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(key), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(EventKey(key));
        }
    }
}

struct EventIdVisitor(Option<String>);

impl Visit for EventIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "event_id" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}

/// Installs the span layer for this thread's runs.
pub fn install_event_keys() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(EventKeys);
    // The bench installs it once, first thing; a second call keeps the first.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Shared handle.
pub type Model = Arc<AwsModel>;

/// The model's fixed parameters, for the bench's first line.
pub fn describe_model() -> String {
    format!(
        "ec2_buckets={} latency run_instances={:.1}-{:.1}s ec2={}ms dynamodb={}ms",
        tether::fake::EC2_BUCKETS.iter().map(|(name, burst, refill)| format!("{name}:{burst}+{refill}/s")).collect::<Vec<_>>().join(","),
        RUN_INSTANCES_LATENCY_MS.0 as f64 / 1000.0,
        RUN_INSTANCES_LATENCY_MS.1 as f64 / 1000.0,
        EC2_LATENCY.as_millis(),
        DYNAMODB_LATENCY.as_millis()
    )
}
