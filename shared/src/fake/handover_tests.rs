//! The hand-over after a spot interruption warning (`spec.handover_after_warning_seconds`)
//! in a fake world on a virtual clock: warnings through the queued intake as the deployed
//! stack delivers them, the waiting warning put back on its queue with its delay (and
//! delivered again only once the clock has passed it, as SQS does), EC2's own events for
//! the instance, and what EC2 was asked (TerminateInstances counted by the fake).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::*;
use crate::events::{InstanceEvent, REBALANCE_RECOMMENDATION, SPOT_INTERRUPTION_WARNING};
use crate::model::{test_spec, InterruptionAction, Node, NodeSpec, NodeState, Persistence};
use crate::ports::{Clock, EventQueue};
use crate::service::{Outcome, Ports, Settings, Tether};

const SUBNET: &str = "subnet-1";
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:tether-interruption";

/// The interruption queue: what the function put back, with when SQS shows it again.
#[derive(Default)]
struct DelayingQueue {
    clock: Mutex<Option<FakeClock>>,
    waiting: Mutex<Vec<(String, DateTime<Utc>)>>,
    delays: Mutex<Vec<Duration>>,
}

#[async_trait::async_trait]
impl EventQueue for DelayingQueue {
    async fn requeue(&self, _queue_arn: &str, body: &str, delay: Duration) -> Result<(), crate::AwsError> {
        let now = self.clock.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(Clock::now).unwrap_or_default();
        // SQS counts whole seconds (the adapter rounds up).
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).push((body.to_owned(), now + Duration::from_secs(seconds)));
        self.delays.lock().unwrap_or_else(PoisonError::into_inner).push(delay);
        Ok(())
    }
}

struct World {
    clock: FakeClock,
    ec2: Arc<FakeEc2>,
    tether: Tether,
    queue: DelayingQueue,
    deliveries: usize,
}

impl World {
    fn new() -> World {
        let start = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let clock = FakeClock::starting_at(start);
        let ec2 = Arc::new(FakeEc2::new(11));
        ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().unwrap(), "us-east-1a");
        ec2.set_throttling(false);
        let store = Arc::new(FakeStore::new());
        let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
        let tether = Tether::new(ports, Settings::default()).with_clock(Arc::new(clock.clone()));
        let queue = DelayingQueue { clock: Mutex::new(Some(clock.clone())), ..DelayingQueue::default() };
        World { clock, ec2, tether, queue, deliveries: 0 }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn pass(&self, seconds: u64) {
        self.clock.advance(Duration::from_secs(seconds));
        self.ec2.advance_clock(Duration::from_secs(seconds));
    }

    fn deadline(&self) -> DateTime<Utc> {
        self.tether.deadline_in(Duration::from_secs(30))
    }

    /// A node (with `handover` seconds, or none) created and resumed: (node, its instance).
    async fn running_node(&self, handover: Option<u8>) -> (Node, String) {
        let spec = NodeSpec { subnet_id: SUBNET.into(), handover_after_warning_seconds: handover, ..test_spec(&["m5.large"], true) };
        let node = self.tether.create_node(spec, Persistence { allocate_elastic_ip: true, ..Persistence::default() }, None).await.expect("created");
        let Outcome::Launched { instance_id, .. } = self.tether.resume(&node.id, self.deadline(), None).await.expect("resumed") else { panic!("not launched") };
        self.ec2_moves_on().await;
        (self.tether.node(&node.id).await.expect("a node"), instance_id)
    }

    /// EC2 warns of an interruption now: the EventBridge event, as its rule puts it on the queue.
    fn warning(&self, event_id: &str, instance_id: &str, action: InterruptionAction) -> String {
        let event = InstanceEvent::InterruptionWarning { instance_id: instance_id.to_owned(), action };
        event.to_eventbridge(event_id, self.now()).to_string()
    }

    /// One batch of these message bodies to the `interruption` function; its answer.
    async fn deliver(&mut self, bodies: &[String]) -> Value {
        let records: Vec<Value> = bodies
            .iter()
            .map(|body| {
                self.deliveries += 1;
                json!({"messageId": format!("m-{}", self.deliveries), "body": body, "eventSourceARN": QUEUE_ARN})
            })
            .collect();
        let payload = json!({ "Records": records });
        let request_id = format!("req-{}", self.deliveries);
        crate::intake::handle_batch(&self.tether, &self.queue, &payload, &request_id, self.deadline(), &[SPOT_INTERRUPTION_WARNING, REBALANCE_RECOMMENDATION]).await
    }

    /// The messages SQS shows again by now (their delay passed), taken off the queue.
    fn due_messages(&self) -> Vec<String> {
        let now = self.now();
        let mut waiting = self.queue.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(_, at)| *at <= now);
        *waiting = later;
        due.into_iter().map(|(body, _)| body).collect()
    }

    fn waiting(&self) -> usize {
        self.queue.waiting.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The clock moves on a second at a time for `seconds`, the queue delivering what falls due.
    async fn run_queue_for(&mut self, seconds: u64) {
        for _ in 0..seconds {
            self.pass(1);
            let due = self.due_messages();
            if !due.is_empty() {
                let answer = self.deliver(&due).await;
                assert_eq!(answer, json!({"batchItemFailures": []}));
            }
        }
    }

    fn terminations(&self) -> u64 {
        self.ec2.call_count("TerminateInstances")
    }

    fn state_of(&self, instance_id: &str) -> String {
        self.ec2.instances().into_iter().find(|i| i.id == instance_id).map(|i| i.state).unwrap_or_default()
    }

    /// EC2 moves on one step and its state-change events reach the `state-change` function.
    async fn ec2_moves_on(&self) {
        self.ec2.advance();
        for (n, event) in self.ec2.take_events().into_iter().enumerate() {
            if matches!(event, InstanceEvent::StateChange { .. }) {
                let id = format!("ev-state-{}-{n}", self.now().timestamp());
                let _ = self.tether.handle_event_sent_at(&id, "inv", &event, Some(self.now()), self.deadline()).await;
            }
        }
    }

    async fn node(&self, node: &Node) -> Node {
        self.tether.node(&node.id).await.expect("a node")
    }
}

fn handovers_recorded(node: &Node) -> usize {
    node.history.iter().filter(|h| h.what.contains("to hand over early")).count()
}

/// The whole path: the warning is recorded and put back for the delay (no invocation waits);
/// nothing is terminated before the delay has passed; then the warned instance is, the
/// history says so, and its termination launches the replacement on the same ENI.
#[tokio::test]
async fn the_warned_instance_is_terminated_once_the_delay_has_passed_and_the_replacement_follows_on_its_eni() {
    let mut world = World::new();
    let (node, first) = world.running_node(Some(30)).await;
    let (_, bystander) = world.running_node(Some(30)).await;
    let eni = node.eni.clone().expect("an ENI");
    let sent = world.now();
    let warning = world.warning("ev-warning", &first, InterruptionAction::Terminate);
    world.pass(1);
    assert_eq!(world.deliver(&[warning]).await, json!({"batchItemFailures": []}), "acknowledged: it waits on the queue");
    let warned = world.node(&node).await;
    assert_eq!(warned.state, NodeState::Recovering);
    let delays = world.queue.delays.lock().unwrap().clone();
    assert_eq!(delays, [Duration::from_secs(29)], "put back for the rest of the 30 s");

    // 28 seconds on (29 s after the warning): not terminated.
    world.run_queue_for(28).await;
    assert_eq!((world.terminations(), world.state_of(&first).as_str()), (0, "running"), "nothing before the delay");
    assert_eq!(world.waiting(), 1);

    // At 30 s: terminated, once, the warned instance only.
    world.run_queue_for(1).await;
    assert_eq!(world.terminations(), 1);
    assert_eq!(world.state_of(&first), "shutting-down");
    assert_eq!(world.state_of(&bystander), "running", "only the warned instance");
    let handed = world.node(&node).await;
    let record = handed.interruption.clone().expect("the warning's record");
    assert_eq!((record.sent_at, record.handed_over_at), (Some(sent), Some(sent + Duration::from_secs(30))));
    let last = handed.history.last().expect("history");
    assert_eq!(last.what, "terminated 30 s after the spot interruption warning to hand over early");
    assert_eq!((last.instance_id.as_deref(), last.generation, handed.state), (Some(first.as_str()), 1, NodeState::Recovering));
    assert_eq!(world.waiting(), 0, "nothing left on the queue");

    // EC2 terminates it; its `terminated` event launches the replacement on the same ENI.
    world.pass(3);
    world.ec2_moves_on().await;
    let replaced = world.node(&node).await;
    assert_eq!((replaced.state, replaced.generation), (NodeState::Running, 2), "{:?}", replaced.history);
    let second = replaced.instance_id().expect("the replacement").to_owned();
    let view = world.ec2.instances().into_iter().find(|i| i.id == second).expect("in EC2");
    assert_eq!((view.primary_eni_id.as_deref(), view.private_ip), (Some(eni.id.as_str()), Some(eni.private_ip)));
    assert_eq!(world.terminations(), 1, "AWS's own termination later changes nothing");
    // The warning delivered once more, late: nothing.
    world.pass(100);
    world.deliver(&[world.warning("ev-warning", &first, InterruptionAction::Terminate)]).await;
    assert_eq!((world.terminations(), world.waiting()), (1, 0));
}

/// EventBridge delivers at least once: the warning three times (two in one batch, one
/// later), each put back for its delay: one terminate, one hand-over in the history.
#[tokio::test]
async fn duplicated_warnings_terminate_once() {
    let mut world = World::new();
    let (node, first) = world.running_node(Some(10)).await;
    let warning = world.warning("ev-warning", &first, InterruptionAction::Terminate);
    world.deliver(&[warning.clone(), warning.clone()]).await;
    world.pass(4);
    world.deliver(std::slice::from_ref(&warning)).await;
    assert!(world.waiting() >= 2, "each copy waits on the queue: {}", world.waiting());
    world.run_queue_for(20).await;
    world.deliver(&[warning]).await;
    assert_eq!(world.terminations(), 1);
    // A copy that met another holding the event waits 30 s (`intake`), then is acknowledged.
    world.run_queue_for(60).await;
    assert_eq!(world.terminations(), 1);
    let after = world.node(&node).await;
    assert_eq!(handovers_recorded(&after), 1, "{:?}", after.history);
    assert_eq!(after.history.iter().filter(|h| h.what.starts_with("spot interruption warning")).count(), 1);
    assert_eq!(world.waiting(), 0);
}

/// A stop or hibernate interruption restarts the same instance: never handed over, even
/// with a delay of 0 and the reconciler running after it.
#[tokio::test]
async fn stop_and_hibernate_warnings_never_hand_over() {
    for action in [InterruptionAction::Stop, InterruptionAction::Hibernate] {
        let mut world = World::new();
        let (node, first) = world.running_node(Some(0)).await;
        world.deliver(&[world.warning("ev-warning", &first, action)]).await;
        world.run_queue_for(130).await;
        world.tether.reconcile(world.deadline()).await.expect("a reconciler run");
        assert_eq!((world.terminations(), world.waiting()), (0, 0), "{action:?}");
        assert_eq!(world.state_of(&first), "running");
        let after = world.node(&node).await;
        assert_eq!((after.state, handovers_recorded(&after)), (NodeState::Running, 0));
    }
}

/// Without the setting (the default) a terminate warning is recorded and nothing more: no
/// message put back, nothing terminated, whatever the time and the reconciler, as before.
#[tokio::test]
async fn without_the_setting_a_warning_is_only_recorded() {
    let mut world = World::new();
    let (node, first) = world.running_node(None).await;
    world.deliver(&[world.warning("ev-warning", &first, InterruptionAction::Terminate)]).await;
    world.run_queue_for(115).await;
    world.tether.reconcile(world.deadline()).await.expect("a reconciler run");
    assert_eq!((world.terminations(), world.waiting()), (0, 0));
    let after = world.node(&node).await;
    assert_eq!(after.state, NodeState::Recovering);
    assert_eq!(after.history.last().map(|h| h.what.as_str()), Some("spot interruption warning (terminate); recovering"));
    assert_eq!(after.interruption.and_then(|i| i.handed_over_at), None);
}

/// Between the warning and the due time the node is paused, recycled, deallocated, or its
/// instance is reclaimed early and replaced: the warning's delivery at the due time leaves
/// it (and its new instance) alone. A PATCH turning the setting off is followed too.
#[tokio::test]
async fn a_node_that_moved_on_before_the_delay_is_left_alone() {
    for meanwhile in ["pause", "recycle", "deallocate", "replaced", "turned off"] {
        let mut world = World::new();
        let (node, first) = world.running_node(Some(60)).await;
        world.deliver(&[world.warning("ev-warning", &first, InterruptionAction::Terminate)]).await;
        world.pass(5);
        // A short deadline: what waits for the ENI gives up at once (the test moves the clock).
        let short = world.tether.deadline_in(Duration::from_secs(1));
        match meanwhile {
            "pause" => drop(world.tether.pause(&node.id, short, None).await),
            "recycle" => drop(world.tether.recycle(&node.id, short, None).await),
            "deallocate" => drop(world.tether.deallocate(&node.id, false, short, None).await),
            "replaced" => {
                world.ec2.reclaim(&first);
                world.ec2_moves_on().await;
            }
            _ => {
                let off = crate::lifecycle::NodePatch { handover_after_warning_seconds: Some(None), ..Default::default() };
                world.tether.patch(&node.id, &off, None).await.expect("patched");
            }
        }
        let before = world.terminations();
        world.pass(1);
        world.ec2_moves_on().await;
        let moved_on = world.node(&node).await;
        world.run_queue_for(120).await;
        world.tether.reconcile(world.deadline()).await.expect("a reconciler run");
        world.ec2_moves_on().await;
        assert_eq!(world.terminations(), before, "{meanwhile}: nothing terminated by the hand-over");
        let after = world.node(&node).await;
        assert_eq!(handovers_recorded(&after), 0, "{meanwhile}: {:?}", after.history);
        assert_eq!(world.waiting(), 0, "{meanwhile}");
        if meanwhile == "replaced" || meanwhile == "recycle" {
            let current = after.instance_id().expect("a new instance").to_owned();
            assert_ne!(current, first);
            assert_eq!(world.state_of(&current), "running", "{meanwhile}: the new instance is left alone");
        }
        if meanwhile == "turned off" {
            assert_eq!((moved_on.state, world.state_of(&first).as_str()), (NodeState::Recovering, "running"), "left to AWS");
        }
    }
}

/// Without a queue (the function invoked directly, as before the stack's queues), the
/// warning cannot come back by itself: the reconciler hands the instance over at its next
/// run after the due time.
#[tokio::test]
async fn the_reconciler_hands_over_what_no_queue_brought_back() {
    let world = World::new();
    let (node, first) = world.running_node(Some(20)).await;
    let event = InstanceEvent::InterruptionWarning { instance_id: first.clone(), action: InterruptionAction::Terminate };
    let outcome = world.tether.handle_event_sent_at("ev-warning", "inv", &event, Some(world.now()), world.deadline()).await.expect("handled");
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome:?}");
    world.pass(10);
    world.tether.reconcile(world.deadline()).await.expect("a reconciler run");
    assert_eq!(world.terminations(), 0, "not due yet");
    world.pass(50);
    let report = world.tether.reconcile(world.deadline()).await.expect("a reconciler run");
    assert_eq!((world.terminations(), report.repaired.len()), (1, 1), "{report:?}");
    let after = world.node(&node).await;
    assert_eq!(after.history.last().map(|h| h.what.as_str()), Some("terminated 60 s after the spot interruption warning to hand over early"));
    // Delivered once more: nothing.
    world.tether.handle_event_sent_at("ev-warning", "inv-2", &event, None, world.deadline()).await.expect("handled");
    assert_eq!(world.terminations(), 1);
    assert!(!matches!(world.state_of(&first).as_str(), "running"));
}

/// The hand-over's log lines name the node, the instance and the generation.
#[tokio::test]
async fn the_hand_over_is_logged_with_the_node_instance_and_generation() {
    use crate::lambda::json_logs;
    use tracing_subscriber::EnvFilter;
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }
    let lines = Lines::default();
    let _logging = tracing::subscriber::set_default(json_logs(EnvFilter::new("info"), lines.clone()));
    // As in `observability_tests`: call sites first used without this subscriber are asked again.
    for round in 0..2 {
        tracing::callsite::rebuild_interest_cache();
        lines.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
        let mut world = World::new();
        let (node, first) = world.running_node(Some(5)).await;
        world.deliver(&[world.warning("ev-warning", &first, InterruptionAction::Terminate)]).await;
        world.run_queue_for(5).await;
        if round == 0 {
            continue;
        }
        let text = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned();
        let parsed: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let recorded = parsed.iter().find(|l| l["what"].as_str().is_some_and(|w| w.contains("to hand over early"))).unwrap_or_else(|| panic!("no hand-over line:\n{text}"));
        assert_eq!(recorded["node_id"].as_str(), Some(node.id.as_str()), "{recorded}");
        assert_eq!(recorded["instance_id"].as_str(), Some(first.as_str()), "{recorded}");
        assert_eq!(recorded["generation"], 1, "{recorded}");
        let terminated = parsed.iter().find(|l| l["message"] == "instance terminated").unwrap_or_else(|| panic!("no terminate line:\n{text}"));
        assert_eq!((terminated["node_id"].as_str(), terminated["terminated"].as_str()), (Some(node.id.as_str()), Some(first.as_str())));
        let deferred = parsed.iter().find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("hand-over not yet due"))).unwrap_or_else(|| panic!("no deferral line:\n{text}"));
        assert_eq!(deferred["node_id"].as_str(), Some(node.id.as_str()));
    }
}
