//! Virtual time for the chaos test, and the yield every fake AWS call makes first so that
//! a test's executor can interleave concurrent invocations (or drop one: a crash) between
//! any two calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ports::Clock;

/// A clock that moves only when the test moves it. Clones share the time.
#[derive(Clone, Debug)]
pub struct FakeClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl FakeClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        FakeClock { now: Arc::new(Mutex::new(start)) }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    fn read(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        self.read()
    }

    /// Ready once the test has moved the clock past the wake-up time.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (clock, until) = (self.clone(), self.read() + duration);
        Box::pin(std::future::poll_fn(move |cx: &mut Context<'_>| {
            if clock.read() >= until {
                Poll::Ready(())
            } else {
                // Asks to be polled again, so that any executor gets back to it.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }))
    }
}

/// Pending once, then ready: one point where the caller's executor may run something else.
pub(crate) fn yield_now() -> impl Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}

/// How the fakes' AWS calls take time: without one a call answers at once (the chaos
/// test), with one (the benchmark's model of AWS) the caller hears each answer when the
/// future `answer` returns is ready. It also sees every call and its outcome (a
/// throttled call included); `about` says what a launch was (`<instance type>/<market>`).
pub trait CallTiming: Send + Sync {
    fn answer(&self, service: &'static str, operation: &'static str, about: &str, error: Option<&crate::error::AwsError>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A fake's timing, set once (none by default).
#[derive(Default)]
pub(crate) struct Timing(std::sync::OnceLock<Arc<dyn CallTiming>>);

impl Timing {
    pub(crate) fn set(&self, timing: Arc<dyn CallTiming>) {
        // Set once, before the fake is used; a second setting is ignored.
        let _ = self.0.set(timing);
    }

    /// Waits until the caller hears the answer of `operation`.
    pub(crate) async fn answered<T>(&self, service: &'static str, operation: &'static str, about: &str, result: &Result<T, crate::error::AwsError>) {
        if let Some(timing) = self.0.get() {
            timing.answer(service, operation, about, result.as_ref().err()).await;
        }
    }
}
