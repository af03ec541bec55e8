//! The EventBridge events Tether reacts to: AWS's envelope (from `aws_lambda_events`)
//! around Tether's own kebab-case detail structs.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::model::InterruptionAction;

pub const SOURCE_EC2: &str = "aws.ec2";
pub const SPOT_INTERRUPTION_WARNING: &str = "EC2 Spot Instance Interruption Warning";
pub const REBALANCE_RECOMMENDATION: &str = "EC2 Instance Rebalance Recommendation";
pub const STATE_CHANGE_NOTIFICATION: &str = "EC2 Instance State-change Notification";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SpotInterruptionDetail {
    pub instance_id: String,
    pub instance_action: InterruptionAction,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RebalanceRecommendationDetail {
    pub instance_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StateChangeDetail {
    pub instance_id: String,
    pub state: InstanceState,
}

/// EC2 instance states as the state-change notification spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Stopping,
    Stopped,
    Terminated,
}

/// What happened to an instance, keyed on `detail.instance-id` (never the ARN in `resources`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceEvent {
    InterruptionWarning { instance_id: String, action: InterruptionAction },
    RebalanceRecommendation { instance_id: String },
    StateChange { instance_id: String, state: InstanceState },
}

impl InstanceEvent {
    /// The event as EventBridge sends it (`id` its event id): what a queue carries.
    pub fn to_eventbridge(&self, id: &str, time: DateTime<Utc>) -> Value {
        let (detail_type, detail) = match self {
            InstanceEvent::InterruptionWarning { instance_id, action } => {
                (SPOT_INTERRUPTION_WARNING, serde_json::json!({"instance-id": instance_id, "instance-action": action}))
            }
            InstanceEvent::RebalanceRecommendation { instance_id } => (REBALANCE_RECOMMENDATION, serde_json::json!({"instance-id": instance_id})),
            InstanceEvent::StateChange { instance_id, state } => (STATE_CHANGE_NOTIFICATION, serde_json::json!({"instance-id": instance_id, "state": state})),
        };
        serde_json::json!({
            "version": "0", "id": id, "detail-type": detail_type, "source": SOURCE_EC2, "account": "123456789012",
            "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "region": "us-east-1",
            "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{}", self.instance_id())],
            "detail": detail,
        })
    }

    pub fn instance_id(&self) -> &str {
        match self {
            InstanceEvent::InterruptionWarning { instance_id, .. }
            | InstanceEvent::RebalanceRecommendation { instance_id }
            | InstanceEvent::StateChange { instance_id, .. } => instance_id,
        }
    }
}

/// A parsed event with the envelope fields worth logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// EventBridge's event id; absent only in hand-made payloads.
    pub id: Option<String>,
    pub time: Option<DateTime<Utc>>,
    pub event: InstanceEvent,
}

/// Why an event cannot be processed, ever: the handler logs it and acknowledges it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("not an EventBridge event: {0}")]
    Envelope(String),
    #[error("source is `{0}`, expected `aws.ec2`")]
    Source(String),
    #[error("detail-type `{0}` is not one Tether handles")]
    DetailType(String),
    #[error("detail of `{detail_type}` is invalid: {reason}")]
    Detail { detail_type: String, reason: String },
}

impl ReceivedEvent {
    pub fn parse(payload: Value) -> Result<Self, EventError> {
        let envelope: EventBridgeEvent<Value> =
            serde_json::from_value(payload).map_err(|e| EventError::Envelope(e.to_string()))?;
        if envelope.source != SOURCE_EC2 {
            return Err(EventError::Source(envelope.source));
        }
        let detail_type = envelope.detail_type.as_str();
        let event = match detail_type {
            SPOT_INTERRUPTION_WARNING => {
                let d: SpotInterruptionDetail = detail(detail_type, envelope.detail)?;
                InstanceEvent::InterruptionWarning { instance_id: d.instance_id, action: d.instance_action }
            }
            REBALANCE_RECOMMENDATION => {
                let d: RebalanceRecommendationDetail = detail(detail_type, envelope.detail)?;
                InstanceEvent::RebalanceRecommendation { instance_id: d.instance_id }
            }
            STATE_CHANGE_NOTIFICATION => {
                let d: StateChangeDetail = detail(detail_type, envelope.detail)?;
                InstanceEvent::StateChange { instance_id: d.instance_id, state: d.state }
            }
            other => return Err(EventError::DetailType(other.to_owned())),
        };
        if !event.instance_id().starts_with("i-") {
            return Err(EventError::Detail {
                detail_type: envelope.detail_type,
                reason: format!("instance-id `{}` is not an EC2 instance id", event.instance_id()),
            });
        }
        Ok(ReceivedEvent { id: envelope.id, time: envelope.time, event })
    }
}

fn detail<T: DeserializeOwned>(detail_type: &str, detail: Value) -> Result<T, EventError> {
    serde_json::from_value(detail).map_err(|e| EventError::Detail {
        detail_type: detail_type.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(detail_type: &str, detail: Value) -> Value {
        json!({
            "version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
            "detail-type": detail_type, "source": "aws.ec2", "account": "123456789012",
            "time": "2026-11-21T07:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0000000000000000a"],
            "detail": detail,
        })
    }

    #[test]
    fn an_event_as_eventbridge_sends_it_parses_back_to_itself() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        for event in [
            InstanceEvent::InterruptionWarning { instance_id: "i-0a".into(), action: crate::model::InterruptionAction::Hibernate },
            InstanceEvent::RebalanceRecommendation { instance_id: "i-0b".into() },
            InstanceEvent::StateChange { instance_id: "i-0c".into(), state: InstanceState::ShuttingDown },
        ] {
            let received = ReceivedEvent::parse(event.to_eventbridge("ev-1", now)).expect("parses");
            assert_eq!((received.id.as_deref(), received.event), (Some("ev-1"), event));
        }
    }

    #[test]
    fn parses_each_sample_in_events_dir() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("events/ exists") {
            let path = entry.expect("readable entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable sample");
            let value: Value = serde_json::from_str(&text).expect("sample is JSON");
            let parsed = ReceivedEvent::parse(value);
            assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed);
            seen += 1;
        }
        assert!(seen >= 3, "expected the three event samples, found {seen}");
    }

    #[test]
    fn parses_interruption_warning_by_detail_instance_id() {
        let parsed = ReceivedEvent::parse(envelope(
            SPOT_INTERRUPTION_WARNING,
            json!({"instance-id": "i-0abc", "instance-action": "stop"}),
        ))
        .expect("valid");
        assert_eq!(
            parsed.event,
            InstanceEvent::InterruptionWarning { instance_id: "i-0abc".into(), action: InterruptionAction::Stop }
        );
    }

    #[test]
    fn parses_state_change_states() {
        for (raw, state) in [("shutting-down", InstanceState::ShuttingDown), ("terminated", InstanceState::Terminated)] {
            let parsed = ReceivedEvent::parse(envelope(
                STATE_CHANGE_NOTIFICATION,
                json!({"instance-id": "i-1", "state": raw}),
            ))
            .expect("valid");
            assert_eq!(parsed.event, InstanceEvent::StateChange { instance_id: "i-1".into(), state });
        }
    }

    #[test]
    fn rejects_what_tether_cannot_use() {
        let wrong_source = {
            let mut v = envelope(REBALANCE_RECOMMENDATION, json!({"instance-id": "i-1"}));
            v["source"] = json!("aws.s3");
            v
        };
        assert_eq!(ReceivedEvent::parse(wrong_source), Err(EventError::Source("aws.s3".into())));
        assert!(matches!(
            ReceivedEvent::parse(envelope("EC2 AMI State Change", json!({}))),
            Err(EventError::DetailType(_))
        ));
        assert!(matches!(
            ReceivedEvent::parse(envelope(STATE_CHANGE_NOTIFICATION, json!({"instance-id": "i-1", "state": "melting"}))),
            Err(EventError::Detail { .. })
        ));
        assert!(matches!(
            ReceivedEvent::parse(envelope(STATE_CHANGE_NOTIFICATION, json!({"instance-id": "vol-1", "state": "running"}))),
            Err(EventError::Detail { .. })
        ));
        assert!(matches!(ReceivedEvent::parse(json!("hello")), Err(EventError::Envelope(_))));
    }
}
