//! Events through a queue: EventBridge's rules target SQS queues, and Lambda's event source
//! mapping hands each function batches of messages, each an EventBridge event as its body.
//! Every message is handled on its own (concurrently within the batch: their launches share
//! the pace); the answer names the messages to deliver again (`batchItemFailures`, with
//! `ReportBatchItemFailures` on the mapping), so a failed event comes back alone:
//!
//! - handled, ignored, or never processable (not JSON, not an event this function serves):
//!   acknowledged (the latter logged and counted, never retried);
//! - waiting (no pace slot within the horizon, the ENI still attached, another invocation
//!   holding the event, a hand-over not yet due): put on the queue again with a delay and
//!   acknowledged, so that a healthy event never reaches the dead-letter queue for having
//!   waited;
//! - failed in a way a retry can help (throttling, a lost race): delivered again by SQS after
//!   its visibility timeout, counting a receive (the dead-letter queue takes it after
//!   `maxReceiveCount`).
//!
//! A payload that is no SQS batch is an EventBridge event invoked directly (the stack before
//! the queues): handled as before, so that events in flight during an upgrade are not lost.

use std::time::Duration;

use serde_json::{json, Value};
use tracing::{error, warn};

use crate::events::ReceivedEvent;
use crate::ports::EventQueue;
use crate::service::{Outcome, Tether, TetherError};

/// The longest delay SQS allows on a message.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// How long an event waits for an ENI still attached to the old instance, or for another
/// invocation holding it.
const WAIT_FOR_ENI: Duration = Duration::from_secs(10);
const WAIT_FOR_HOLDER: Duration = Duration::from_secs(30);

/// One SQS message, as Lambda delivers it.
struct Message<'a> {
    id: &'a str,
    body: &'a str,
    queue_arn: &'a str,
}

/// How one message ended.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    Done,
    /// Acknowledged: it can never be processed.
    Rejected(String),
    Wait(Duration),
    Retry(String),
}

/// Whether `payload` is an SQS batch (and not an EventBridge event invoked directly).
pub fn is_sqs_batch(payload: &Value) -> bool {
    payload.get("Records").is_some_and(Value::is_array)
}

/// Handles an SQS batch of EventBridge events of the `detail_types` this function serves;
/// the answer lists the messages to deliver again.
pub async fn handle_batch(
    tether: &Tether,
    queue: &dyn EventQueue,
    payload: &Value,
    request_id: &str,
    deadline: chrono::DateTime<chrono::Utc>,
    detail_types: &[&str],
) -> Value {
    let records = payload.get("Records").and_then(Value::as_array).cloned().unwrap_or_default();
    let messages: Vec<Option<Message<'_>>> = records
        .iter()
        .map(|r| {
            Some(Message {
                id: r.get("messageId")?.as_str()?,
                body: r.get("body")?.as_str()?,
                queue_arn: r.get("eventSourceARN").and_then(Value::as_str).unwrap_or_default(),
            })
        })
        .collect();
    let handled = futures_util::future::join_all(messages.iter().map(|m| async move {
        match m {
            Some(m) => (Some(m.id), handle_message(tether, queue, m, request_id, deadline, detail_types).await),
            None => (None, Handled::Rejected("a record without messageId or body".into())),
        }
    }))
    .await;
    let mut failures = Vec::new();
    for (id, outcome) in handled {
        match (id, outcome) {
            (_, Handled::Done | Handled::Wait(_)) => {}
            (_, Handled::Rejected(reason)) => {
                error!(message_id = id, %reason, "unprocessable message; acknowledged");
                tether.count_unprocessable_event();
            }
            (Some(id), Handled::Retry(_)) => failures.push(json!({"itemIdentifier": id})),
            (None, Handled::Retry(_)) => {}
        }
    }
    json!({"batchItemFailures": failures})
}

async fn handle_message(
    tether: &Tether,
    queue: &dyn EventQueue,
    message: &Message<'_>,
    request_id: &str,
    deadline: chrono::DateTime<chrono::Utc>,
    detail_types: &[&str],
) -> Handled {
    let outcome = handle_body(tether, message, request_id, deadline, detail_types).await;
    let Handled::Wait(delay) = outcome else { return outcome };
    match queue.requeue(message.queue_arn, message.body, delay.min(MAX_DELAY)).await {
        Ok(()) => Handled::Wait(delay),
        Err(e) => {
            warn!(message_id = message.id, error = %e, "could not put the waiting event back; SQS delivers it again");
            Handled::Retry(e.to_string())
        }
    }
}

async fn handle_body(tether: &Tether, message: &Message<'_>, request_id: &str, deadline: chrono::DateTime<chrono::Utc>, detail_types: &[&str]) -> Handled {
    let payload: Value = match serde_json::from_str(message.body) {
        Ok(payload) => payload,
        Err(e) => return Handled::Rejected(format!("the body is not JSON: {e}")),
    };
    let detail_type = payload.get("detail-type").and_then(Value::as_str).unwrap_or_default();
    if !detail_types.contains(&detail_type) {
        return Handled::Rejected(format!("detail-type `{detail_type}` not served here"));
    }
    let received = match ReceivedEvent::parse_all(payload) {
        Ok(received) => received,
        Err(reason) => return Handled::Rejected(reason.to_string()),
    };
    // An AWS Health event names many instances: each is an event of its own, and the message
    // is done once every one is (one to wait for or retry brings the whole message back; the
    // others are then duplicates, recognised by their ids).
    let mut handled = Handled::Done;
    for received in received {
        let one = handle_received(tether, message, request_id, deadline, received).await;
        handled = match (handled, one) {
            (retry @ Handled::Retry(_), _) | (_, retry @ Handled::Retry(_)) => retry,
            (Handled::Wait(a), Handled::Wait(b)) => Handled::Wait(a.min(b)),
            (wait @ Handled::Wait(_), _) | (_, wait @ Handled::Wait(_)) => wait,
            (rejected @ Handled::Rejected(_), _) | (_, rejected @ Handled::Rejected(_)) => rejected,
            (Handled::Done, Handled::Done) => Handled::Done,
        };
    }
    handled
}

async fn handle_received(tether: &Tether, message: &Message<'_>, request_id: &str, deadline: chrono::DateTime<chrono::Utc>, received: ReceivedEvent) -> Handled {
    // One delivery of this message: the event's claim names it.
    let invocation_id = format!("{request_id}/{}", message.id);
    let event_id = received.id.clone().unwrap_or_else(|| message.id.to_owned());
    match tether.handle_event_sent_at(&event_id, &invocation_id, &received.event, received.time, deadline).await {
        // A hand-over due later: the event comes back then (at least a second on, as SQS
        // counts delays in whole seconds).
        Ok(Outcome::Deferred { until, .. }) => Handled::Wait(tether.time_until(until).max(Duration::from_secs(1))),
        Ok(_) => Handled::Done,
        Err(TetherError::Paced { retry_after, .. }) => Handled::Wait(retry_after.max(Duration::from_secs(1))),
        Err(TetherError::EniStillAttached { .. }) => Handled::Wait(WAIT_FOR_ENI),
        Err(TetherError::EventInProgress { .. }) => Handled::Wait(WAIT_FOR_HOLDER),
        Err(e) if e.is_retryable() => Handled::Retry(e.to_string()),
        Err(e) => Handled::Rejected(e.to_string()),
    }
}
