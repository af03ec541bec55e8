//! Invocations in flight, polled one step at a time in an order the scenario's seed picks.
//! Every fake AWS call yields first, so one poll runs an invocation up to its next AWS
//! call: interleaving invocations at random is two Lambdas racing, and dropping one
//! between polls is Lambda dying between two AWS calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::group::GroupId;
use crate::model::NodeId;
use crate::service::TetherError;
use crate::views::GroupPatch;

/// How an invocation ended, as Lambda sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Done,
    /// An error Lambda retries (the event is delivered again).
    Retry(String),
    /// A permanent failure: acknowledged (an event) or answered 4xx (a request).
    Failed(String),
    /// A batch from a queue answered: the messages (by their place in the batch) to deliver
    /// again (`batchItemFailures`); the others are deleted.
    Redeliver(Vec<usize>),
}

impl Finished {
    pub fn of<T>(result: Result<T, TetherError>) -> Self {
        match result {
            Ok(_) => Finished::Done,
            Err(e) if e.is_retryable() => Finished::Retry(e.to_string()),
            Err(e) => Finished::Failed(e.to_string()),
        }
    }
}

/// What started an invocation (so that a failed one can be retried as Lambda would).
#[derive(Clone, Debug)]
pub enum Origin {
    Event(Delivery),
    /// Messages of the queue between EventBridge and the functions, in one batch.
    Batch(Vec<Delivery>),
    User { node_id: NodeId, action: UserAction },
    /// A request about the group (or a run of its controller).
    Group { group_id: GroupId, action: GroupMove },
    Reconciler,
}

/// An EventBridge event on its way to the functions; a retry keeps the event's id.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub event: crate::events::InstanceEvent,
    /// When EC2 sent it (EventBridge's `time`).
    pub sent: chrono::DateTime<chrono::Utc>,
    /// 0 for the first delivery; Lambda's asynchronous invocation retries twice. Through a
    /// queue: the message's receives so far (dead-lettered after `MAX_RECEIVES`).
    pub attempt: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAction {
    Resume,
    Pause,
    Recycle,
    Deallocate { keep_eni: bool },
    /// A PATCH of the node's image to `ami-chaos<n>`: the next launch's RunInstances
    /// parameters change.
    ChangeImage { n: u8 },
}

/// What the API's client asks of a group. A retry sends the same request again (a PATCH
/// carries the whole new pool, computed from the group as the client read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupMove {
    Scale(u32),
    Patch(Box<GroupPatch>),
    Pause,
    Resume,
    /// The template's image changed to `ami-chaos<n>`, then a rolling recycle.
    Roll { n: u8 },
    /// One run of the group's controller, as the reconciler does.
    Run,
    /// Deletion protection turned off, then the group deallocated.
    Deallocate { keep_enis: bool },
}

pub type Job = Pin<Box<dyn Future<Output = Finished>>>;

pub struct Invocation {
    pub origin: Origin,
    pub job: Job,
}

impl Invocation {
    /// Runs the invocation up to its next AWS call (or its end).
    pub fn poll_once(&mut self) -> Option<Finished> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.job.as_mut().poll(&mut cx) {
            Poll::Ready(finished) => Some(finished),
            Poll::Pending => None,
        }
    }
}

/// Runs a future that needs no other invocation to progress (scenario set-up).
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
    }
    panic!("set-up future never finished (it sleeps on the virtual clock, which set-up does not move)");
}
