//! Events through SQS queues, as the stack meant for them delivers them: batches of up to 3
//! messages handled by `tether::intake`; a message SQS shows again while its first handler
//! still runs (its visibility timeout passed); the failed items of a batch (or every item of
//! a batch whose invocation failed or died) delivered again, counting a receive, and
//! dead-lettered after `MAX_RECEIVES`; waiting events put back by the functions themselves.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::super::executor::{Delivery, Finished, Job, Origin};
use super::World;
use crate::error::AwsError;
use crate::events::{ReceivedEvent, REBALANCE_RECOMMENDATION, SPOT_INTERRUPTION_WARNING, STATE_CHANGE_NOTIFICATION};
use crate::ports::EventQueue;
use crate::service::Tether;

/// The queues' `maxReceiveCount`.
const MAX_RECEIVES: u8 = 5;
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:tether-chaos";

/// The bodies the functions put back on the queue, with their delays.
#[derive(Default)]
pub struct ChaosQueue(Mutex<Vec<(String, Duration)>>);

#[async_trait]
impl EventQueue for ChaosQueue {
    async fn requeue(&self, _queue_arn: &str, body: &str, delay: Duration) -> Result<(), AwsError> {
        crate::fake::clock::yield_now().await;
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((body.to_owned(), delay));
        Ok(())
    }
}

/// One invocation of a function on a batch: every detail type the functions serve (the
/// chaos test has one bus for all of them).
pub fn job(tether: Tether, queue: Arc<ChaosQueue>, deliveries: Vec<Delivery>, invocation_id: String, deadline: DateTime<Utc>) -> Job {
    Box::pin(async move {
        let records: Vec<serde_json::Value> = deliveries
            .iter()
            .enumerate()
            .map(|(i, d)| serde_json::json!({"messageId": format!("m{i}"), "body": d.event.to_eventbridge(&d.id, d.sent).to_string(), "eventSourceARN": QUEUE_ARN}))
            .collect();
        let payload = serde_json::json!({"Records": records});
        let served = [SPOT_INTERRUPTION_WARNING, REBALANCE_RECOMMENDATION, STATE_CHANGE_NOTIFICATION];
        let answer = crate::intake::handle_batch(&tether, &*queue, &payload, &invocation_id, deadline, &served).await;
        let failed = answer["batchItemFailures"]
            .as_array()
            .map(|items| items.iter().filter_map(|i| i["itemIdentifier"].as_str()?.strip_prefix('m')?.parse().ok()).collect())
            .unwrap_or_default();
        Finished::Redeliver(failed)
    })
}

impl World {
    /// A batch of `first` and up to 2 more messages from the bus; each may also stay on the
    /// bus (SQS shows it again while this batch still runs).
    pub(super) fn start_batch(&mut self, first: Delivery) {
        let mut batch = vec![first];
        while batch.len() < 3 && !self.bus.is_empty() && self.rng.bool() {
            let index = self.rng.usize(..self.bus.len());
            let delivery = if self.rng.u8(0..5) == 0 { self.bus[index].clone() } else { self.bus.swap_remove(index) };
            batch.push(delivery);
        }
        for delivery in &mut batch {
            delivery.attempt += 1;
        }
        let ids: Vec<&str> = batch.iter().map(|d| d.id.as_str()).collect();
        self.note(format!("batch of {ids:?}"));
        self.start(Origin::Batch(batch));
    }

    /// A message whose handling failed (reported, or its invocation failed or died): SQS
    /// delivers it again after its visibility timeout, unless its receives are spent.
    pub(super) fn receive_failed(&mut self, delivery: Delivery, why: &str) {
        if delivery.attempt >= MAX_RECEIVES {
            self.note(format!("message of event {} dead-lettered after {MAX_RECEIVES} receives ({why})", delivery.id));
        } else {
            self.note(format!("message of event {} visible again ({why})", delivery.id));
            self.bus.push(delivery);
        }
    }

    /// The events the functions put back on the queue: new messages (no receives yet),
    /// shown once their delay (in whole seconds, as SQS counts it) has passed.
    pub(super) fn take_requeued(&mut self) {
        let bodies = std::mem::take(&mut *self.requeued.0.lock().unwrap_or_else(PoisonError::into_inner));
        for (body, delay) in bodies {
            let Ok(received) = serde_json::from_str(&body).map_err(|e| e.to_string()).and_then(|v| ReceivedEvent::parse(v).map_err(|e| e.to_string())) else {
                self.note(format!("unreadable re-queued body: {body}"));
                continue;
            };
            let id = received.id.unwrap_or_default();
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            self.note(format!("event {id} re-queued by its function for {seconds} s"));
            let sent = received.time.unwrap_or_else(|| self.now());
            self.delayed.push((self.now() + Duration::from_secs(seconds), Delivery { id, event: received.event, sent, attempt: 0 }));
        }
        self.release_delayed();
    }

    /// The delayed messages whose delay has passed go on the bus.
    pub(super) fn release_delayed(&mut self) {
        let now = self.now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed).into_iter().partition(|(at, _)| *at <= now);
        self.delayed = later;
        self.bus.extend(due.into_iter().map(|(_, delivery)| delivery));
    }
}
