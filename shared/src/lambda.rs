//! What every Tether function does around its handler: logging, clients built once,
//! and the translation of an EventBridge invocation into a service call and back.

use std::sync::Arc;
use std::time::Duration;

pub use aws_config::SdkConfig;
use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use chrono::{DateTime, Utc};
use tracing::{error, warn};

use crate::aws::{dynamo::DynamoNodeStore, emf::EmfMetrics, ec2::Ec2Cloud, event_claims::DynamoEventClaims, idempotency::DynamoIdempotencyStore, pace::DynamoLaunchPace, queue::SqsEventQueue};
use crate::config::Config;
use crate::events::ReceivedEvent;
use crate::intake;
use crate::ports::EventQueue;
use crate::service::{Ports, Tether, TetherError};

/// Used when the invocation carries no deadline (local runs).
const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// JSON logs in Lambda, compact text elsewhere. `RUST_LOG` sets the level; default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let result = if in_lambda() {
        tracing::subscriber::set_global_default(json_logs(filter, std::io::stdout)).map_err(|e| e.to_string())
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).compact().try_init().map_err(|e| e.to_string())
    };
    // Already initialised (tests install their own): keep that one.
    let _ = result;
}

/// Lambda's log format: one JSON object per line with the event's fields and those of
/// every span it is in at the top level, so that each line about a node carries its
/// `node_id`, `instance_id` and `generation` (the service's spans hold them; the closest
/// span's value wins). No timestamp: CloudWatch stamps each line.
pub fn json_logs<W>(filter: tracing_subscriber::EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    let json = json_subscriber::layer()
        .with_current_span(false)
        .flatten_span_list_on_top_level(true)
        .flatten_event(true)
        .with_target(false)
        .without_time()
        .with_writer(writer);
    tracing_subscriber::registry().with(filter).with(json)
}

fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// Builds the service on AWS clients from an SDK config (endpoint, region, credentials).
pub fn tether_from_sdk(sdk: &SdkConfig, config: &Config) -> Tether {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let store = Arc::new(DynamoNodeStore::new(dynamodb.clone(), config.table_name.clone()));
    let events = DynamoEventClaims::new(dynamodb.clone(), config.table_name.clone());
    let ec2 = Arc::new(Ec2Cloud::new(aws_sdk_ec2::Client::new(sdk), config.table_name.clone()));
    let pace = Arc::new(DynamoLaunchPace::new(dynamodb, config.table_name.clone()));
    let ports = Ports { store: store.clone(), registry: store.clone(), events: Arc::new(events), bookmark: store, pace, network: ec2.clone(), volumes: ec2.clone(), instances: ec2 };
    let tether = Tether::new(ports, config.settings.clone());
    // Metrics only where CloudWatch reads them; locally they would be noise on stdout.
    if in_lambda() {
        tether.with_metrics(Arc::new(EmfMetrics::stdout(config.table_name.clone())))
    } else {
        tether
    }
}

/// The idempotency-key store in the same table.
pub fn idempotency_from_sdk(sdk: &SdkConfig, config: &Config) -> DynamoIdempotencyStore {
    DynamoIdempotencyStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table_name.clone())
}

/// AWS settings the standard way (environment, profile, role; `AWS_ENDPOINT_URL` too).
pub async fn load_sdk() -> SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Reads the config and builds the service on AWS clients.
pub async fn tether_from_env() -> Result<Tether, lambda_runtime::Error> {
    let config = Config::from_env()?;
    Ok(tether_from_sdk(&load_sdk().await, &config))
}

/// What an event function needs: the service, and the queue its waiting events go back to.
pub async fn event_function_from_env() -> Result<(Tether, SqsEventQueue), lambda_runtime::Error> {
    let config = Config::from_env()?;
    let sdk = load_sdk().await;
    Ok((tether_from_sdk(&sdk, &config), SqsEventQueue::new(aws_sdk_sqs::Client::new(&sdk))))
}

/// The invocation's deadline (Lambda gives it in milliseconds since the epoch).
pub fn deadline(context: &lambda_runtime::Context) -> DateTime<Utc> {
    i64::try_from(context.deadline)
        .ok()
        .filter(|ms| *ms > 0)
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(|| Utc::now() + DEFAULT_BUDGET)
}

/// Handles what an event function is invoked with: a batch from its SQS queue (the
/// stack's intake, see `tether::intake`), or one EventBridge event invoked directly (the
/// stack before the queues: events Lambda already holds when a stack moves to the queues
/// are still handled).
pub async fn handle_intake(
    tether: &Tether,
    queue: &dyn EventQueue,
    event: LambdaEvent<Value>,
    detail_types: &[&str],
) -> Result<Value, TetherError> {
    if !intake::is_sqs_batch(&event.payload) {
        return handle_eventbridge(tether, event, detail_types).await;
    }
    let deadline = deadline(&event.context);
    Ok(intake::handle_batch(tether, queue, &event.payload, &event.context.request_id, deadline, detail_types).await)
}

/// Handles one EventBridge event of the `detail_types` this function serves.
///
/// Success (acknowledged) for events handled, ignored, or that can never be processed
/// (logged with the reason: no retry storm). An error only when a retry can help
/// (throttling, ENI not yet free, a lost race), so that Lambda retries.
pub async fn handle_eventbridge(
    tether: &Tether,
    event: LambdaEvent<Value>,
    detail_types: &[&str],
) -> Result<Value, TetherError> {
    let deadline = deadline(&event.context);
    let detail_type = event.payload.get("detail-type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !detail_types.contains(&detail_type.as_str()) {
        warn!(detail_type, request_id = event.context.request_id, "event of a type this function does not serve; acknowledged");
        tether.count_unprocessable_event();
        return Ok(json!({"outcome": "rejected", "reason": format!("detail-type `{detail_type}` not served here")}));
    }
    let received = match ReceivedEvent::parse_all(event.payload) {
        Ok(received) => received,
        Err(reason) => {
            error!(%reason, request_id = event.context.request_id, "unprocessable event; acknowledged");
            tether.count_unprocessable_event();
            return Ok(json!({"outcome": "rejected", "reason": reason.to_string()}));
        }
    };
    let invocation_id = event.context.request_id.as_str();
    // An AWS Health event names many instances: one answer each (an EC2 event: one).
    let mut answers = Vec::new();
    for received in received {
        // EventBridge always sets an id; a hand-made payload without one is its own event.
        let event_id = received.id.as_deref().unwrap_or(invocation_id);
        // The service logs the outcome (with the node's id, instance id and generation).
        answers.push(match tether.handle_event_sent_at(event_id, invocation_id, &received.event, received.time, deadline).await {
            Ok(outcome @ crate::service::Outcome::Deferred { .. }) => {
                // Invoked without a queue, nothing can deliver the event again at the due time:
                // the reconciler hands the instance over at its next run, or AWS terminates it.
                warn!(request_id = event.context.request_id, "hand-over deferred, but this invocation came without a queue to deliver the warning again: the reconciler or AWS terminates the instance");
                json!(outcome)
            }
            Ok(outcome) => json!(outcome),
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                tether.count_unprocessable_event();
                json!({"outcome": "rejected", "reason": e.to_string(), "code": e.aws_code()})
            }
        });
    }
    match <[Value; 1]>::try_from(answers) {
        Ok([one]) => Ok(one),
        Err(many) => Ok(json!({"outcomes": many})),
    }
}

/// What Lambda records for a failed invocation: AWS's error code as the error type (so
/// CloudWatch can filter on `InvalidNetworkInterface.InUse`, throttling, ...), else Tether's.
impl From<TetherError> for lambda_runtime::Diagnostic {
    fn from(e: TetherError) -> Self {
        let error_type = match e.aws_code() {
            Some(code) => code.to_owned(),
            None => match &e {
                TetherError::Aws(_) => "Tether.AwsNoResponse",
                TetherError::EniStillAttached { .. } => "Tether.EniStillAttached",
                TetherError::NoCapacity { .. } => "Tether.NoCapacity",
                TetherError::Paced { .. } => "Tether.Paced",
                TetherError::Contended { .. } => "Tether.Contended",
                TetherError::NodeNotFound(_) => "Tether.NodeNotFound",
                TetherError::GroupNotFound(_) => "Tether.GroupNotFound",
                TetherError::GroupContended { .. } => "Tether.Contended",
                TetherError::EventInProgress { .. } => "Tether.EventInProgress",
                TetherError::Invalid { .. } => "Tether.Invalid",
                TetherError::Conflict(_) | TetherError::ConflictOn { .. } => "Tether.Conflict",
            }
            .to_owned(),
        };
        lambda_runtime::Diagnostic { error_type, error_message: e.to_string() }
    }
}
