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
pub const SOURCE_HEALTH: &str = "aws.health";
pub const HEALTH_EVENT: &str = "AWS Health Event";

/// An AWS Health event's detail, as much of it as Tether reads (AWS's camelCase names;
/// times in RFC 1123, `Wed, 25 Nov 2026 06:00:00 GMT`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthDetail {
    pub event_arn: String,
    pub service: String,
    pub event_type_code: String,
    #[serde(default)]
    pub event_type_category: String,
    pub start_time: String,
    #[serde(default)]
    pub affected_entities: Vec<AffectedEntity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffectedEntity {
    /// An instance id, or an instance ARN (`arn:aws:ec2:…:instance/i-…`): both are seen.
    pub entity_value: String,
}

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
    /// AWS scheduled a change to the instance (an AWS Health event: retirement, reboot,
    /// stop, maintenance) that starts at `starts_at`.
    MaintenanceScheduled { instance_id: String, type_code: String, event_arn: String, starts_at: DateTime<Utc> },
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
            InstanceEvent::MaintenanceScheduled { instance_id, type_code, event_arn, starts_at } => {
                return serde_json::json!({
                    "version": "0", "id": id, "detail-type": HEALTH_EVENT, "source": SOURCE_HEALTH, "account": "123456789012",
                    "time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "region": "us-east-1", "resources": [instance_id],
                    "detail": {
                        "eventArn": event_arn, "service": "EC2", "eventTypeCode": type_code, "eventTypeCategory": "scheduledChange",
                        "startTime": starts_at.to_rfc2822().replace("+0000", "GMT"), "statusCode": "upcoming",
                        "affectedEntities": [{"entityValue": instance_id, "status": "PENDING"}],
                    },
                });
            }
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
            | InstanceEvent::StateChange { instance_id, .. }
            | InstanceEvent::MaintenanceScheduled { instance_id, .. } => instance_id,
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
    #[error("source is `{0}`, expected `aws.ec2` or `aws.health`")]
    Source(String),
    #[error("detail-type `{0}` is not one Tether handles")]
    DetailType(String),
    #[error("detail of `{detail_type}` is invalid: {reason}")]
    Detail { detail_type: String, reason: String },
}

impl ReceivedEvent {
    /// Every instance event a payload carries: one for an EC2 event; one per affected
    /// instance for an AWS Health event about EC2 instances, each with its own id (the
    /// Health event's ARN and the instance: an update of the event, under a new EventBridge
    /// id, is the same event again for each instance).
    pub fn parse_all(payload: Value) -> Result<Vec<Self>, EventError> {
        if payload.get("source").and_then(Value::as_str) != Some(SOURCE_HEALTH) {
            return Self::parse(payload).map(|one| vec![one]);
        }
        let envelope: EventBridgeEvent<Value> = serde_json::from_value(payload).map_err(|e| EventError::Envelope(e.to_string()))?;
        if envelope.detail_type != HEALTH_EVENT {
            return Err(EventError::DetailType(envelope.detail_type));
        }
        let d: HealthDetail = detail(HEALTH_EVENT, envelope.detail)?;
        let invalid = |reason: String| EventError::Detail { detail_type: HEALTH_EVENT.to_owned(), reason };
        // Another scheduled change (a Dedicated Host's, an account notice): nothing to do.
        if d.service != "EC2" || !crate::health::recycles_ahead(&d.event_type_code) {
            return Ok(Vec::new());
        }
        let starts_at = DateTime::parse_from_rfc2822(&d.start_time).map_err(|e| invalid(format!("startTime `{}`: {e}", d.start_time)))?.with_timezone(&Utc);
        Ok(d.affected_entities
            .iter()
            .map(|e| e.entity_value.rsplit('/').next().unwrap_or_default())
            .filter(|id| id.starts_with("i-"))
            .map(|instance_id| ReceivedEvent {
                id: Some(format!("health:{}:{instance_id}", d.event_arn)),
                time: envelope.time,
                event: InstanceEvent::MaintenanceScheduled { instance_id: instance_id.to_owned(), type_code: d.event_type_code.clone(), event_arn: d.event_arn.clone(), starts_at },
            })
            .collect())
    }

    /// One EC2 event.
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
            let parsed = ReceivedEvent::parse_all(value);
            assert!(parsed.as_ref().is_ok_and(|events| !events.is_empty()), "{}: {:?}", path.display(), parsed);
            seen += 1;
        }
        assert!(seen >= 6, "expected the six event samples, found {seen}");
    }

    #[test]
    fn a_health_event_is_one_event_per_instance_keyed_on_its_arn_and_the_instance() {
        let sample = |name: &str| -> Value {
            let text = std::fs::read_to_string(format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"))).expect("sample");
            serde_json::from_str(&text).expect("JSON")
        };
        let first = ReceivedEvent::parse_all(sample("health-instance-retirement.json")).expect("parses");
        let instances: Vec<_> = first.iter().map(|r| r.event.instance_id().to_owned()).collect();
        assert_eq!(instances, vec!["i-0123456789abcdef0", "i-0fedcba9876543210"]);
        let InstanceEvent::MaintenanceScheduled { starts_at, type_code, .. } = &first[0].event else { panic!("{first:?}") };
        assert_eq!((starts_at.to_rfc3339(), type_code.as_str()), ("2026-11-25T06:00:00+00:00".to_owned(), "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED"));
        // The update comes under a new EventBridge id: the same events again.
        let update = ReceivedEvent::parse_all(sample("health-instance-retirement-update.json")).expect("parses");
        assert_eq!(first.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), update.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
        // An ARN as the entity names the instance too.
        let reboot = ReceivedEvent::parse_all(sample("health-scheduled-reboot.json")).expect("parses");
        assert!(reboot[0].event.instance_id().starts_with("i-"), "{reboot:?}");
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let event = InstanceEvent::MaintenanceScheduled { instance_id: "i-0d".into(), type_code: "AWS_EC2_INSTANCE_STOP_SCHEDULED".into(), event_arn: "arn:aws:health:us-east-1::event/EC2/x".into(), starts_at: at };
        assert_eq!(ReceivedEvent::parse_all(event.to_eventbridge("ev", at)).expect("parses")[0].event, event);
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
