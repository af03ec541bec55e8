//! EventBridge payloads for tests and the demo, made from the samples in `events/`
//! with the instance id, event id and time of the moment.

use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;

const WARNING: &str = include_str!("../../events/spot-interruption-warning.json");
const REBALANCE: &str = include_str!("../../events/rebalance-recommendation.json");
const STATE_CHANGE: &str = include_str!("../../events/instance-state-change-terminated.json");
const RETIREMENT: &str = include_str!("../../events/health-instance-retirement.json");

fn sample(text: &str, instance_id: &str) -> Value {
    let mut value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("events/ sample is not JSON: {e}"));
    value["id"] = Value::String(uuid::Uuid::new_v4().to_string());
    value["time"] = Value::String(chrono_now());
    value["detail"]["instance-id"] = Value::String(instance_id.to_owned());
    value["resources"] = serde_json::json!([format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")]);
    value
}

fn chrono_now() -> String {
    // RFC 3339 at seconds precision, as EventBridge sends.
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// "EC2 Spot Instance Interruption Warning" with `instance-action` terminate/stop/hibernate.
pub fn interruption_warning(instance_id: &str, action: &str) -> Value {
    let mut value = sample(WARNING, instance_id);
    value["detail"]["instance-action"] = Value::String(action.to_owned());
    value
}

pub fn rebalance_recommendation(instance_id: &str) -> Value {
    sample(REBALANCE, instance_id)
}

/// "EC2 Instance State-change Notification" with the given state.
pub fn state_change(instance_id: &str, state: &str) -> Value {
    let mut value = sample(STATE_CHANGE, instance_id);
    value["detail"]["state"] = Value::String(state.to_owned());
    value
}

/// An "AWS Health Event" scheduling the retirement of `instance_ids` at `starts_at`, as the
/// sample in `events/`, under a new EventBridge id (an update of the same event keeps
/// `event_arn`).
pub fn instance_retirement(event_arn: &str, instance_ids: &[&str], starts_at: chrono::DateTime<chrono::Utc>) -> Value {
    let mut value: Value = serde_json::from_str(RETIREMENT).unwrap_or_else(|e| panic!("events/ sample is not JSON: {e}"));
    value["id"] = Value::String(uuid::Uuid::new_v4().to_string());
    value["time"] = Value::String(chrono_now());
    value["resources"] = serde_json::json!(instance_ids);
    value["detail"]["eventArn"] = Value::String(event_arn.to_owned());
    value["detail"]["startTime"] = Value::String(starts_at.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
    value["detail"]["affectedEntities"] = serde_json::json!(instance_ids.iter().map(|i| serde_json::json!({"entityValue": i, "status": "PENDING"})).collect::<Vec<_>>());
    value
}

/// The "Scheduled Event" an EventBridge schedule rule (the reconciler's) sends.
pub fn scheduled_event(rule: &str) -> Value {
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": chrono_now(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{rule}")],
        "detail": {}
    })
}

/// A Lambda invocation of `payload` with `budget` left before its deadline.
pub fn invocation(payload: Value, budget: std::time::Duration) -> LambdaEvent<Value> {
    let mut context = Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    context.deadline = now_ms + budget.as_millis() as u64;
    LambdaEvent::new(payload, context)
}

/// A Lambda invocation of `payload` whose deadline is `deadline` (on a virtual clock).
pub fn invocation_at(payload: Value, deadline: chrono::DateTime<chrono::Utc>) -> LambdaEvent<Value> {
    let mut context = Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    context.deadline = u64::try_from(deadline.timestamp_millis()).unwrap_or(0);
    LambdaEvent::new(payload, context)
}
