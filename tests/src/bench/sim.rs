//! A discrete-event simulation: futures on one thread, and a virtual clock that jumps to
//! the next timer whenever no future can make progress. The production code runs on it
//! unchanged (it sleeps through the `Clock` port), so hours of a mass interruption take
//! seconds, and a run is the same every time for one seed.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether::ports::Clock;

/// The virtual clock: milliseconds since the simulation started, and the timers waiting.
#[derive(Clone)]
pub struct SimClock {
    origin: DateTime<Utc>,
    state: Arc<Mutex<Timers>>,
}

#[derive(Default)]
struct Timers {
    now_ms: u64,
    next_seq: u64,
    /// (when, sequence): the sequence keeps timers of one instant in the order they were set.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    wakers: HashMap<u64, Waker>,
}

impl SimClock {
    pub fn starting_at(origin: DateTime<Utc>) -> Self {
        SimClock { origin, state: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.lock().now_ms)
    }

    /// Moves to the earliest timer and wakes every timer due by then; false if none is set.
    fn jump(&self) -> bool {
        let mut timers = self.lock();
        let Some(Reverse((when, _))) = timers.due.peek().copied() else { return false };
        timers.now_ms = timers.now_ms.max(when);
        while let Some(Reverse((when, seq))) = timers.due.peek().copied() {
            if when > timers.now_ms {
                break;
            }
            timers.due.pop();
            if let Some(waker) = timers.wakers.remove(&seq) {
                waker.wake();
            }
        }
        true
    }

    fn register(&self, until_ms: u64, waker: &Waker) {
        let mut timers = self.lock();
        let seq = timers.next_seq;
        timers.next_seq += 1;
        timers.due.push(Reverse((until_ms, seq)));
        timers.wakers.insert(seq, waker.clone());
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.origin + self.elapsed()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let clock = self.clone();
        let until = self.lock().now_ms + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2);
        let mut registered = false;
        Box::pin(std::future::poll_fn(move |cx: &mut Context<'_>| {
            if clock.lock().now_ms >= until {
                return Poll::Ready(());
            }
            // A spurious poll (another branch of a select woke the task) keeps the timer set.
            if !registered {
                clock.register(until, cx.waker());
                registered = true;
            }
            Poll::Pending
        }))
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct TaskWaker {
    id: usize,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner).push_back(self.id);
    }
}

/// Starts futures on the simulation (from anywhere inside it).
#[derive(Clone)]
pub struct Spawner(Rc<RefCell<Vec<Task>>>);

impl Spawner {
    pub fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.0.borrow_mut().push(Box::pin(task));
    }
}

/// The executor: runs `main` and every future spawned until `main` ends (the rest are
/// dropped then, as a Lambda environment is frozen).
pub struct Sim {
    pub clock: SimClock,
    spawner: Spawner,
}

impl Sim {
    pub fn new(origin: DateTime<Utc>) -> Self {
        Sim { clock: SimClock::starting_at(origin), spawner: Spawner(Rc::default()) }
    }

    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    pub fn run<T: 'static>(&self, main: impl Future<Output = T> + 'static) -> T {
        let result = Rc::new(RefCell::new(None));
        let out = result.clone();
        self.spawner.spawn(async move {
            let value = main.await;
            *out.borrow_mut() = Some(value);
        });
        let ready = Arc::new(Mutex::new(VecDeque::new()));
        let mut tasks: Vec<Option<(Task, Waker)>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        loop {
            for task in self.spawner.0.borrow_mut().drain(..) {
                let id = free.pop().unwrap_or_else(|| {
                    tasks.push(None);
                    tasks.len() - 1
                });
                let waker = Waker::from(Arc::new(TaskWaker { id, ready: ready.clone() }));
                tasks[id] = Some((task, waker));
                ready.lock().unwrap_or_else(PoisonError::into_inner).push_back(id);
            }
            let next = ready.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
            match next {
                Some(id) => {
                    let Some((task, waker)) = tasks.get_mut(id).and_then(Option::as_mut) else { continue };
                    let waker = waker.clone();
                    if task.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
                        tasks[id] = None;
                        free.push(id);
                    }
                    if let Some(value) = result.borrow_mut().take() {
                        return value;
                    }
                }
                None if !self.spawner.0.borrow().is_empty() => {}
                None => {
                    if !self.clock.jump() {
                        panic!("simulation stuck: no future can progress and no timer is set");
                    }
                }
            }
        }
    }
}
