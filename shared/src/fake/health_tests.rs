//! Health healing on the fakes: status checks failing long enough recycle the node on its
//! ENI (and no sooner, and not with auto_healing off); an AWS Health scheduled event
//! recycles each node it names once, in its maintenance window.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::events::{InstanceEvent, ReceivedEvent};
use crate::health::{AutoHealing, DailyWindow};
use crate::model::{test_spec, Node, NodeSpec, NodeState, Persistence};
use crate::service::{Ports, Settings, Tether};

const SUBNET: &str = "subnet-1";

fn world() -> (Arc<FakeEc2>, Tether) {
    let ec2 = Arc::new(FakeEc2::new(5));
    ec2.set_throttling(false);
    ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().expect("cidr"), "us-east-1a");
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store, network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let settings = Settings { retry_min_delay: Duration::from_millis(1), retry_max_delay: Duration::from_millis(5), deadline_margin: Duration::from_millis(100), ..Settings::default() };
    (ec2, Tether::new(ports, settings))
}

/// A reconciler run short enough that a launch waiting for its ENI gives up at once (the
/// old instance's termination event carries it on, below).
async fn reconcile(tether: &Tether) {
    tether.reconcile(tether.deadline_in(Duration::from_millis(400))).await.expect("reconcile");
}

/// EC2 moves on a step; every event it sent is delivered.
async fn deliver(ec2: &FakeEc2, tether: &Tether) {
    ec2.advance();
    for (n, event) in ec2.take_events().into_iter().enumerate() {
        let id = format!("ev-{}-{n}", uuid::Uuid::new_v4());
        tether.handle_event(&id, "inv", &event, tether.deadline_in(Duration::from_secs(5))).await.expect("event handled");
    }
}

/// A running node (its instance running in EC2) with this healing policy.
async fn running(ec2: &FakeEc2, tether: &Tether, auto_healing: AutoHealing, window: Option<DailyWindow>) -> Node {
    let spec = NodeSpec { subnet_id: SUBNET.into(), auto_healing, maintenance_window: window, ..test_spec(&["m5.large"], true) };
    let node = tether.create_node(spec, Persistence::default(), None).await.expect("create");
    tether.resume(&node.id, tether.deadline_in(Duration::from_secs(5)), None).await.expect("resume");
    deliver(ec2, tether).await;
    tether.node(&node.id).await.expect("node")
}

#[tokio::test]
async fn an_instance_impaired_past_the_duration_is_recycled_on_its_eni_and_not_before() {
    let (ec2, tether) = world();
    let policy = AutoHealing { grace_period_seconds: 0, ..AutoHealing::default() };
    let node = running(&ec2, &tether, policy, None).await;
    let first = node.instance_id().expect("instance").to_owned();
    ec2.impair(&first, "instance status", Some(Utc::now() - TimeDelta::seconds(240)));
    reconcile(&tether).await;
    assert_eq!(tether.node(&node.id).await.expect("node").generation, 1, "impaired for less than unhealthy_duration");
    ec2.impair(&first, "instance status", Some(Utc::now() - TimeDelta::seconds(360)));
    reconcile(&tether).await;
    deliver(&ec2, &tether).await;
    deliver(&ec2, &tether).await;
    let healed = tether.node(&node.id).await.expect("node");
    assert_eq!((healed.state, healed.generation), (NodeState::Running, 2), "{:?}", healed.history.last());
    assert_eq!(healed.eni.as_ref().map(|e| &e.id), node.eni.as_ref().map(|e| &e.id), "on its ENI");
    assert!(healed.history.iter().any(|h| h.what.starts_with(&format!("auto_healing: instance status of {first} impaired since"))), "{:?}", healed.history);
    assert_eq!(healed.heals.len(), 1);
}

#[tokio::test]
async fn no_heal_inside_the_grace_period_or_with_auto_healing_off() {
    let (ec2, tether) = world();
    let graced = running(&ec2, &tether, AutoHealing { grace_period_seconds: 3600, ..AutoHealing::default() }, None).await;
    let off = running(&ec2, &tether, AutoHealing { enabled: false, grace_period_seconds: 0, ..AutoHealing::default() }, None).await;
    for node in [&graced, &off] {
        ec2.impair(node.instance_id().expect("instance"), "system status", Some(Utc::now() - TimeDelta::seconds(1800)));
    }
    reconcile(&tether).await;
    for node in [&graced, &off] {
        let after = tether.node(&node.id).await.expect("node");
        assert_eq!((after.state, after.generation), (NodeState::Running, 1), "{:?}", after.history.last());
    }
}

#[tokio::test]
async fn a_retirement_event_naming_two_nodes_recycles_both_once_in_their_window() {
    let (ec2, tether) = world();
    // A window that opens in a second; the event starts a second after that.
    let opens = Utc::now() + TimeDelta::seconds(1);
    let window = DailyWindow { start: opens.time(), end: (opens + TimeDelta::hours(1)).time() };
    let starts_at = opens + TimeDelta::seconds(1);
    let a = running(&ec2, &tether, AutoHealing::default(), Some(window)).await;
    let b = running(&ec2, &tether, AutoHealing::default(), Some(window)).await;
    let arn = "arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/x";
    let payload = |ids: &[&str], event_id: &str| -> serde_json::Value {
        let event = InstanceEvent::MaintenanceScheduled { instance_id: ids[0].into(), type_code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(), event_arn: arn.into(), starts_at };
        let mut value = event.to_eventbridge(event_id, Utc::now());
        value["detail"]["affectedEntities"] = serde_json::json!(ids.iter().map(|i| serde_json::json!({"entityValue": i})).collect::<Vec<_>>());
        value
    };
    let instances = [a.instance_id().expect("a"), b.instance_id().expect("b")];
    // One event naming both, then its update under a new EventBridge id: one plan per node.
    for event_id in ["first", "update"] {
        for received in ReceivedEvent::parse_all(payload(&instances, event_id)).expect("parses") {
            let id = received.id.clone().expect("id");
            tether.handle_event(&id, "inv", &received.event, tether.deadline_in(Duration::from_secs(5))).await.expect("handled");
        }
    }
    for node in [&a, &b] {
        let planned = tether.node(&node.id).await.expect("node");
        assert_eq!(planned.planned_recycle.as_ref().map(|p| p.at), Some(window.last_start_before(starts_at)), "the last window before the event");
        assert_eq!(planned.history.iter().filter(|h| h.what.contains("recycle planned")).count(), 1, "once");
        assert_eq!(planned.generation, 1, "not before the window");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    reconcile(&tether).await;
    deliver(&ec2, &tether).await;
    deliver(&ec2, &tether).await;
    reconcile(&tether).await;
    for node in [&a, &b] {
        let after = tether.node(&node.id).await.expect("node");
        assert_eq!((after.state, after.generation, after.planned_recycle.clone()), (NodeState::Running, 2, None), "{:?}", after.history);
        let recycled: Vec<&DateTime<Utc>> = after.history.iter().filter(|h| h.what.ends_with("recycled ahead of it")).map(|h| &h.at).collect();
        assert_eq!(recycled.len(), 1, "once: {:?}", after.history);
        assert!(*recycled[0] >= window.last_start_before(starts_at), "in the window");
    }
}

#[tokio::test]
async fn a_schedule_pauses_and_resumes_the_node_once_per_slot_keeping_its_identity() {
    use crate::schedules::{Schedule, ScheduledAction};
    let (ec2, tether) = world();
    let every_minute = |action| Schedule { action, cron: "* * * * *".into(), time_zone: "Europe/Paris".into() };
    let node = running(&ec2, &tether, AutoHealing::default(), None).await;
    let eni = node.eni.clone().expect("eni");
    let patch = crate::lifecycle::NodePatch { schedules: Some(vec![every_minute(ScheduledAction::Pause)]), ..Default::default() };
    tether.patch(&node.id, &patch, None).await.expect("patched");
    let at_next_minute = |tether: &Tether| {
        let clock = crate::fake::FakeClock::starting_at(Utc::now() + TimeDelta::seconds(61));
        tether.clone().with_clock(Arc::new(clock))
    };
    let later = at_next_minute(&tether);
    later.reconcile(later.deadline_in(Duration::from_secs(5))).await.expect("reconcile");
    deliver(&ec2, &tether).await;
    let paused = tether.node(&node.id).await.expect("node");
    assert_eq!(paused.state, NodeState::Paused, "{:?}", paused.history.last());
    assert_eq!(paused.history.iter().filter(|h| h.by.as_deref() == Some("schedule `* * * * *` (Europe/Paris)")).count(), 1);
    // The same slot again: nothing.
    later.reconcile(later.deadline_in(Duration::from_secs(5))).await.expect("reconcile");
    assert_eq!(tether.node(&node.id).await.expect("node").version, paused.version, "once per slot");

    let patch = crate::lifecycle::NodePatch { schedules: Some(vec![every_minute(ScheduledAction::Resume)]), ..Default::default() };
    tether.patch(&node.id, &patch, None).await.expect("patched");
    let later = at_next_minute(&tether);
    later.reconcile(later.deadline_in(Duration::from_secs(5))).await.expect("reconcile");
    let resumed = tether.node(&node.id).await.expect("node");
    assert_eq!((resumed.state, resumed.generation), (NodeState::Running, 2), "{:?}", resumed.history.last());
    assert_eq!(resumed.eni.map(|e| e.id), Some(eni.id), "the same ENI");
}
