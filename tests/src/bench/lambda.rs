//! Lambda as the stack configures it, with its documented behaviour: the account's
//! concurrency, asynchronous invocation (EventBridge's targets) with its retries, and
//! each function's timeout.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tether::ports::Clock;

use super::sim::{SimClock, Spawner};

/// Lambda's default concurrency for a whole account (the functions have no reservation).
pub const ACCOUNT_CONCURRENCY: usize = 1000;
/// Asynchronous invocation: a function error is retried after about 1 and then 2 minutes
/// (`MaximumRetryAttempts` 2, the template's setting); an event is kept at most 6 hours;
/// an invocation throttled for want of concurrency goes back to Lambda's queue and is
/// retried with backoff from 1 s up to 5 minutes.
pub const ASYNC_RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);
pub const THROTTLE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// The account's concurrency, shared by Tether's functions.
#[derive(Default)]
pub struct Concurrency {
    limit: usize,
    in_use: Cell<usize>,
    pub peak: Cell<usize>,
    pub throttles: Cell<u64>,
}

impl Concurrency {
    pub fn new(limit: usize) -> Rc<Self> {
        Rc::new(Concurrency { limit, ..Default::default() })
    }

    pub fn acquire(&self) -> bool {
        if self.in_use.get() >= self.limit {
            self.throttles.set(self.throttles.get() + 1);
            return false;
        }
        self.in_use.set(self.in_use.get() + 1);
        self.peak.set(self.peak.get().max(self.in_use.get()));
        true
    }

    pub fn release(&self) {
        self.in_use.set(self.in_use.get().saturating_sub(1));
    }
}

pub type Handler = Rc<dyn Fn(LambdaEvent<Value>) -> Pin<Box<dyn Future<Output = Result<(), String>>>>>;

/// A function: its handler (the real one), its timeout and its asynchronous retries.
#[derive(Clone)]
pub struct Function {
    pub handler: Handler,
    pub timeout: Duration,
    pub max_retries: usize,
    /// A scheduled run (the reconciler's): its failure drops no event, so it is no dead letter.
    pub scheduled: bool,
}

/// How the asynchronous deliveries of one run ended.
#[derive(Default)]
pub struct AsyncStats {
    /// Events Lambda gave up on (retries spent or too old): to the dead-letter queue.
    pub dead_lettered: Cell<u64>,
    pub errors: Cell<u64>,
    pub timeouts: Cell<u64>,
}

/// Lambda's asynchronous invocation of functions, on the simulation.
#[derive(Clone)]
pub struct AsyncInvoke {
    pub clock: SimClock,
    pub spawner: Spawner,
    pub concurrency: Rc<Concurrency>,
    pub stats: Rc<AsyncStats>,
    pub invocations: Rc<Cell<u64>>,
}

impl AsyncInvoke {
    /// Delivers `payload` to `function` after `after`, as EventBridge does to a Lambda target.
    pub fn deliver(&self, function: &Function, payload: Value, after: Duration) {
        let (this, function) = (self.clone(), function.clone());
        self.spawner.spawn(async move {
            this.clock.sleep(after).await;
            let received = this.clock.elapsed();
            let mut backoff = THROTTLE_BACKOFF.0;
            let mut attempt = 0;
            loop {
                if this.clock.elapsed() - received > MAX_EVENT_AGE {
                    this.stats.dead_lettered.set(this.stats.dead_lettered.get() + 1);
                    return;
                }
                if !this.concurrency.acquire() {
                    this.clock.sleep(backoff).await;
                    backoff = (backoff * 2).min(THROTTLE_BACKOFF.1);
                    continue;
                }
                let ok = this.invoke(&function, payload.clone()).await;
                this.concurrency.release();
                if ok {
                    return;
                }
                if attempt >= function.max_retries {
                    if !function.scheduled {
                        this.stats.dead_lettered.set(this.stats.dead_lettered.get() + 1);
                    }
                    return;
                }
                this.clock.sleep(ASYNC_RETRY_DELAYS[attempt.min(1)]).await;
                attempt += 1;
            }
        });
    }

    /// One invocation within the function's timeout; whether it succeeded.
    pub async fn invoke(&self, function: &Function, payload: Value) -> bool {
        self.invocations.set(self.invocations.get() + 1);
        let mut event = crate::events::invocation_at(payload, self.clock.now() + function.timeout);
        event.context.request_id = format!("req-{}", self.invocations.get());
        let run = (function.handler)(event);
        match select(run, self.clock.sleep(function.timeout)).await {
            Either::Left((Ok(()), _)) => true,
            Either::Left((Err(_), _)) => {
                self.stats.errors.set(self.stats.errors.get() + 1);
                false
            }
            Either::Right(_) => {
                self.stats.timeouts.set(self.stats.timeouts.get() + 1);
                false
            }
        }
    }
}
