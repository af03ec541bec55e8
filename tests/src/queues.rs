//! A local stand-in for the stack's intake, on the emulator's SQS: EventBridge's rules put
//! each event on its function's queue (state changes, and spot warnings with rebalance
//! recommendations), and a poller delivers batches to the real handlers as Lambda's event
//! source mapping does: up to `batch_size` messages received at once (hidden for the
//! queue's visibility timeout), the function invoked with them as an SQS event, the
//! messages it does not name in `batchItemFailures` deleted; the others reappear after the
//! visibility timeout, and the queue's redrive policy moves a message received
//! `max_receive_count` times to its dead-letter queue. Used by the emulator tests and
//! `make demo`.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{json, Value};
use tether::aws::queue::SqsEventQueue;
use tether::{Tether, TetherError};

use crate::events::invocation;
use crate::SetupError;

/// The stack's settings: a dead-letter queue after five receives, batches of ten.
pub const MAX_RECEIVE_COUNT: u32 = 5;
pub const BATCH_SIZE: i32 = 10;

/// One function's queue and its dead-letter queue.
#[derive(Clone, Debug)]
pub struct LocalQueue {
    pub url: String,
    pub arn: String,
    pub dead_letter_url: String,
    /// Which function consumes it.
    pub to_state_change: bool,
    pub visibility: Duration,
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct Batch {
    /// Each message's body, as received.
    pub bodies: Vec<Value>,
    /// How many the function named for another delivery (or all, when it failed whole).
    pub failed: usize,
    /// The function's error, when the whole invocation failed.
    pub error: Option<String>,
}

/// The two queues of a deployment, on the emulator.
#[derive(Clone, Debug)]
pub struct LocalQueues {
    sqs: aws_sdk_sqs::Client,
    pub state_changes: LocalQueue,
    pub interruptions: LocalQueue,
}

impl LocalQueues {
    /// Creates `<prefix>-state-change` and `<prefix>-interruption`, each with a dead-letter
    /// queue. `visibility`: how long a received message stays hidden (the stack's is 6 × the
    /// function's timeout; local runs use seconds so that a failed message comes back soon).
    pub async fn create(sqs: &aws_sdk_sqs::Client, prefix: &str, visibility: Duration) -> Result<LocalQueues, SetupError> {
        Ok(LocalQueues {
            sqs: sqs.clone(),
            state_changes: create_queue(sqs, &format!("{prefix}-state-change"), visibility, true).await?,
            interruptions: create_queue(sqs, &format!("{prefix}-interruption"), visibility, false).await?,
        })
    }

    /// Puts an EventBridge event on the queue its rule targets.
    pub async fn send(&self, payload: &Value) -> Result<(), SetupError> {
        let queue = if payload["detail-type"] == tether::events::STATE_CHANGE_NOTIFICATION { &self.state_changes } else { &self.interruptions };
        self.sqs.send_message().queue_url(&queue.url).message_body(payload.to_string()).send().await?;
        Ok(())
    }

    /// One receive on `queue` and, if it returned messages, one invocation of its function
    /// with them (`batch_size` at most) that has `budget` before its deadline; `None` when
    /// no message was visible.
    pub async fn deliver_batch(&self, tether: &Tether, requeue: &SqsEventQueue, queue: &LocalQueue, batch_size: i32, budget: Duration) -> Result<Option<Batch>, SetupError> {
        if budget > queue.visibility {
            // Lambda refuses such a mapping: the batch would reappear while still handled.
            return Err(format!("a function timeout of {budget:?} over the queue's visibility timeout of {:?}", queue.visibility).into());
        }
        let received = self
            .sqs
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(batch_size.clamp(1, 10))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await?;
        let messages = received.messages();
        if messages.is_empty() {
            return Ok(None);
        }
        let records: Vec<Value> = messages.iter().map(|m| record(m, &queue.arn)).collect();
        let bodies = messages.iter().map(|m| m.body().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null)).collect();
        let event = invocation(json!({ "Records": records }), budget);
        let answer: Result<Value, TetherError> = if queue.to_state_change {
            tether_state_change::handler(tether, requeue, event).await
        } else {
            tether_interruption::handler(tether, requeue, event).await
        };
        let (again, error): (BTreeSet<String>, _) = match answer {
            Ok(answer) => (
                answer["batchItemFailures"].as_array().into_iter().flatten().filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned)).collect(),
                None,
            ),
            // The whole batch comes back.
            Err(e) => (messages.iter().filter_map(|m| m.message_id().map(str::to_owned)).collect(), Some(e.to_string())),
        };
        for message in messages {
            if message.message_id().is_some_and(|id| again.contains(id)) {
                continue;
            }
            if let Some(handle) = message.receipt_handle() {
                match self.sqs.delete_message().queue_url(&queue.url).receipt_handle(handle).send().await {
                    // A handle from before the message was received again: SQS answers
                    // success and may keep the message (moto refuses it); either way it
                    // comes back, as on AWS.
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_receipt_handle_is_invalid()) => {}
                    deleted => {
                        deleted?;
                    }
                }
            }
        }
        Ok(Some(Batch { bodies, failed: again.len(), error }))
    }

    /// Messages in both queues, visible, in flight or delayed.
    pub async fn in_queues(&self) -> Result<u64, SetupError> {
        let mut total = 0;
        for queue in [&self.interruptions, &self.state_changes] {
            total += count(&self.sqs, &queue.url, true).await?;
        }
        Ok(total)
    }

    /// Messages in both dead-letter queues.
    pub async fn dead_lettered(&self) -> Result<u64, SetupError> {
        let mut total = 0;
        for queue in [&self.interruptions, &self.state_changes] {
            total += count(&self.sqs, &queue.dead_letter_url, false).await?;
        }
        Ok(total)
    }
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str, visibility: Duration, to_state_change: bool) -> Result<LocalQueue, SetupError> {
    let dead_letter_url = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await?.queue_url().ok_or("CreateQueue returned no URL")?.to_owned();
    let dead_letter_arn = queue_arn(sqs, &dead_letter_url).await?;
    let redrive = json!({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": MAX_RECEIVE_COUNT.to_string()}).to_string();
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility.as_secs().to_string())
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await?
        .queue_url()
        .ok_or("CreateQueue returned no URL")?
        .to_owned();
    let arn = queue_arn(sqs, &url).await?;
    Ok(LocalQueue { url, arn, dead_letter_url, to_state_change, visibility })
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, SetupError> {
    let attributes = sqs.get_queue_attributes().queue_url(url).attribute_names(QueueAttributeName::QueueArn).send().await?;
    Ok(attributes.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).ok_or("the queue has no ARN")?.clone())
}

async fn count(sqs: &aws_sdk_sqs::Client, url: &str, all: bool) -> Result<u64, SetupError> {
    let mut names = vec![QueueAttributeName::ApproximateNumberOfMessages];
    if all {
        names.extend([QueueAttributeName::ApproximateNumberOfMessagesNotVisible, QueueAttributeName::ApproximateNumberOfMessagesDelayed]);
    }
    let attributes = sqs.get_queue_attributes().queue_url(url).set_attribute_names(Some(names.clone())).send().await?;
    let values = attributes.attributes();
    Ok(names.iter().filter_map(|n| values.and_then(|v| v.get(n))).filter_map(|v| v.parse::<u64>().ok()).sum())
}

/// An SQS message as Lambda's event source mapping hands it to a function.
fn record(message: &aws_sdk_sqs::types::Message, queue_arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.as_str().to_owned(), Value::String(value.clone())))
        .collect();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(':').nth(3),
    })
}
