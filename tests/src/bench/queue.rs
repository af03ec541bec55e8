//! An SQS queue and Lambda's event source mapping on it, as documented: up to
//! `MaximumConcurrency` invocations at once, each with a batch of up to `BatchSize` visible
//! messages (no batching window); a received message is invisible for the visibility
//! timeout and counts a receive; the messages the answer lists in `batchItemFailures` (or
//! the whole batch, when the invocation fails or times out) come back after it; after
//! `maxReceiveCount` receives a message goes to the dead-letter queue. While every poller is
//! busy, messages wait in the queue unreceived.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{select, Either};
use serde_json::{json, Value};
use tether::error::AwsError;
use tether::ports::{Clock, EventQueue};

use super::lambda::Concurrency;
use super::sim::{SimClock, Spawner};

/// How long an idle poller waits before it looks again (a long poll answers as soon as a
/// message arrives; this is the model's granularity).
const POLL_EVERY: Duration = Duration::from_millis(100);

struct Message {
    id: String,
    body: String,
    visible_at: Duration,
    receives: u32,
}

#[derive(Default)]
struct State {
    messages: VecDeque<Message>,
    next_id: u64,
    dead_lettered: u64,
    sent: u64,
}

/// The queue; `requeue` is SendMessage with DelaySeconds.
#[derive(Clone)]
pub struct Queue {
    pub arn: String,
    clock: SimClock,
    state: Arc<Mutex<State>>,
}

impl Queue {
    pub fn new(name: &str, clock: SimClock) -> Self {
        Queue { arn: format!("arn:aws:sqs:us-east-1:123456789012:{name}"), clock, state: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn send(&self, body: String, delay: Duration) {
        let visible_at = self.clock.elapsed() + delay;
        let mut state = self.lock();
        state.next_id += 1;
        state.sent += 1;
        let id = format!("msg-{}", state.next_id);
        state.messages.push_back(Message { id, body, visible_at, receives: 0 });
    }

    pub fn dead_lettered(&self) -> u64 {
        self.lock().dead_lettered
    }

    /// SendMessage calls (EventBridge's and requeues).
    pub fn sent(&self) -> u64 {
        self.lock().sent
    }

    /// Up to `max` visible messages, each made invisible and counted a receive; those past
    /// `max_receives` go to the dead-letter queue instead.
    fn receive(&self, max: usize, visibility: Duration, max_receives: u32) -> Vec<(String, String)> {
        let now = self.clock.elapsed();
        let mut state = self.lock();
        let mut batch = Vec::new();
        let mut dead = 0;
        for message in state.messages.iter_mut().filter(|m| m.visible_at <= now) {
            if batch.len() == max {
                break;
            }
            message.receives += 1;
            message.visible_at = now + visibility;
            if message.receives > max_receives {
                if std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("dead-lettered at {now:?} from {}: {}", self.arn, message.body.chars().take(160).collect::<String>());
                }
                dead += 1;
                message.visible_at = Duration::MAX;
                continue;
            }
            batch.push((message.id.clone(), message.body.clone()));
        }
        state.dead_lettered += dead;
        state.messages.retain(|m| m.visible_at != Duration::MAX);
        batch
    }

    fn delete(&self, ids: &[String]) {
        self.lock().messages.retain(|m| !ids.contains(&m.id));
    }
}

#[async_trait]
impl EventQueue for Queue {
    async fn requeue(&self, _queue_arn: &str, body: &str, delay: Duration) -> Result<(), AwsError> {
        self.send(body.to_owned(), delay);
        Ok(())
    }
}

pub type BatchHandler = Rc<dyn Fn(Value, chrono::DateTime<chrono::Utc>) -> Pin<Box<dyn Future<Output = Result<Value, String>>>>>;

/// The event source mapping's settings (the stack's).
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    pub batch_size: usize,
    pub maximum_concurrency: usize,
    pub function_timeout: Duration,
    pub visibility_timeout: Duration,
    pub max_receive_count: u32,
}

/// Starts the mapping's pollers on the simulation.
pub fn start(spawner: &Spawner, clock: &SimClock, queue: &Queue, mapping: Mapping, handler: BatchHandler, concurrency: Rc<Concurrency>) {
    for _ in 0..mapping.maximum_concurrency {
        let (clock, queue, handler, concurrency) = (clock.clone(), queue.clone(), handler.clone(), concurrency.clone());
        spawner.spawn(async move {
            loop {
                let batch = queue.receive(mapping.batch_size, mapping.visibility_timeout, mapping.max_receive_count);
                if batch.is_empty() {
                    clock.sleep(POLL_EVERY).await;
                    continue;
                }
                if !concurrency.acquire() {
                    // The account has no concurrency left: the messages come back later.
                    clock.sleep(POLL_EVERY).await;
                    continue;
                }
                let records: Vec<Value> = batch.iter().map(|(id, body)| json!({"messageId": id, "body": body, "eventSourceARN": queue.arn})).collect();
                let deadline = clock.now() + mapping.function_timeout;
                let run = handler(json!({"Records": records}), deadline);
                let answer = match select(run, clock.sleep(mapping.function_timeout)).await {
                    Either::Left((Ok(answer), _)) => Some(answer),
                    _ => None,
                };
                concurrency.release();
                let Some(answer) = answer else { continue };
                let failed: Vec<String> = answer
                    .get("batchItemFailures")
                    .and_then(Value::as_array)
                    .map(|f| f.iter().filter_map(|i| i.get("itemIdentifier").and_then(Value::as_str).map(str::to_owned)).collect())
                    .unwrap_or_default();
                let done: Vec<String> = batch.into_iter().map(|(id, _)| id).filter(|id| !failed.contains(id)).collect();
                queue.delete(&done);
            }
        });
    }
}
