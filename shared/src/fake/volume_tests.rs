//! Data volumes on the fakes: made once in the ENI's AZ, attached to each generation once it
//! runs, never launched without, released as the deallocation policy says.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::conditions::ConditionKind;
use crate::data_volumes::DataVolume;
use crate::deallocation::{DeallocationPolicy, VolumeFate};
use crate::model::{test_spec, NodeSpec, NodeState, Persistence};
use crate::service::{Outcome, Ports, Settings, Tether};
use crate::volumes::VolumeType;

const SUBNET: &str = "subnet-1";

fn world() -> (Arc<FakeEc2>, Tether) {
    let ec2 = Arc::new(FakeEc2::new(11));
    // Nothing to pace here; a deallocation waits for its instance's termination in retries.
    ec2.set_throttling(false);
    ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().expect("cidr"), "us-east-1b");
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store, network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let settings = Settings { retry_min_delay: Duration::from_millis(1), retry_max_delay: Duration::from_millis(5), ..Settings::default() };
    (ec2, Tether::new(ports, settings))
}

fn deadline() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + Duration::from_secs(30)
}

fn with_data(policy: DeallocationPolicy) -> NodeSpec {
    let data = DataVolume { device_name: "/dev/sdf".into(), volume_size_gib: 100, volume_type: VolumeType::Gp3, iops: None, throughput_mibps: None, encrypted: Some(true), kms_key_id: None };
    NodeSpec { subnet_id: SUBNET.into(), data_volumes: vec![data], deallocation: policy, ..test_spec(&["m5.large"], true) }
}

/// EC2 moves on a step, and every event it sent is delivered.
async fn deliver(ec2: &FakeEc2, tether: &Tether, tag: &str) {
    for outcome in deliver_all(ec2, tether, tag).await {
        outcome.expect("event handled");
    }
}

/// The same, with each event's outcome (a retryable failure is Lambda's to retry).
async fn deliver_all(ec2: &FakeEc2, tether: &Tether, tag: &str) -> Vec<Result<Outcome, crate::service::TetherError>> {
    ec2.advance();
    let mut outcomes = Vec::new();
    for (n, event) in ec2.take_events().into_iter().enumerate() {
        outcomes.push(tether.handle_event(&format!("{tag}-{n}"), "inv", &event, deadline()).await);
    }
    outcomes
}

#[tokio::test]
async fn the_same_volume_follows_the_node_to_each_generation_once_it_runs() {
    let (ec2, tether) = world();
    let node = tether.create_node(with_data(DeallocationPolicy::default()), Persistence::default(), None).await.expect("create");
    tether.resume(&node.id, deadline(), None).await.expect("resume");
    let [volume] = ec2.volumes().try_into().expect("one volume");
    assert_eq!((volume.availability_zone.as_str(), volume.size_gib), ("us-east-1b", 100), "in the ENI's AZ");
    assert_eq!(volume.attachment, None, "a pending instance takes no volume yet");
    for generation in 1..=3 {
        // The instance's `running` event attaches it.
        deliver(&ec2, &tether, &format!("g{generation}")).await;
        let current = tether.node(&node.id).await.expect("node");
        assert_eq!((current.state, current.generation), (NodeState::Running, generation));
        let instance = current.instance_id().expect("instance").to_owned();
        let seen: Vec<_> = ec2.volumes().into_iter().map(|v| (v.id, v.attachment)).collect();
        assert_eq!(seen, vec![(volume.id.clone(), Some((instance.clone(), "/dev/sdf".to_owned())))], "generation {generation}");
        let view = crate::views::NodeView::from(&current);
        assert!(view.data_volumes[0].attached, "{view:?}");
        // Interrupted: the replacement boots on the ENI, and gets the same volume once it runs.
        ec2.reclaim(&instance);
        deliver(&ec2, &tether, &format!("t{generation}")).await;
    }

    // Detached by hand from the running instance: the reconciler attaches it again.
    let current = tether.node(&node.id).await.expect("node");
    deliver(&ec2, &tether, "last").await;
    assert!(ec2.hand_detach_volume(&volume.id));
    tether.reconcile(deadline()).await.expect("reconcile");
    let instance = tether.node(&node.id).await.expect("node").instance_id().map(str::to_owned);
    assert_eq!(ec2.volumes()[0].attachment.as_ref().map(|a| a.0.clone()), instance, "attached again ({current:?})");
}

#[tokio::test]
async fn a_paused_node_whose_volume_was_deleted_is_not_launched() {
    let (ec2, tether) = world();
    let node = tether.create_node(with_data(DeallocationPolicy::default()), Persistence::default(), None).await.expect("create");
    tether.resume(&node.id, deadline(), None).await.expect("resume");
    deliver(&ec2, &tether, "a").await;
    tether.pause(&node.id, deadline(), None).await.expect("pause");
    deliver(&ec2, &tether, "b").await;
    let volume = ec2.volumes()[0].id.clone();
    ec2.hand_delete_volume(&volume).expect("a detached volume can be deleted");
    let instances = ec2.instances().len();
    let Outcome::Failed { reason, .. } = tether.resume(&node.id, deadline(), None).await.expect("resume") else { panic!("launched without its data") };
    assert!(reason.contains(&volume) && reason.contains("/dev/sdf"), "{reason}");
    assert_eq!(ec2.instances().len(), instances, "nothing launched");
    assert_eq!(tether.node(&node.id).await.expect("node").state, NodeState::Error);
}

#[tokio::test]
async fn a_volume_attached_elsewhere_is_a_condition_cleared_once_it_is_back() {
    let (ec2, tether) = world();
    let node = tether.create_node(with_data(DeallocationPolicy::default()), Persistence::default(), None).await.expect("create");
    tether.resume(&node.id, deadline(), None).await.expect("resume");
    deliver(&ec2, &tether, "a").await;
    let volume = ec2.volumes()[0].id.clone();
    // Someone moves it to an instance of their own.
    let other = tether.create_node(NodeSpec { subnet_id: SUBNET.into(), ..test_spec(&["m5.large"], true) }, Persistence::default(), None).await.expect("other");
    tether.resume(&other.id, deadline(), None).await.expect("resume other");
    deliver(&ec2, &tether, "b").await;
    let theirs = tether.node(&other.id).await.expect("other").instance_id().expect("instance").to_owned();
    assert!(ec2.hand_detach_volume(&volume));
    ec2.hand_attach_volume(&volume, &theirs, "/dev/sdg").expect("attach by hand");
    tether.reconcile(deadline()).await.expect("reconcile");
    let degraded = tether.node(&node.id).await.expect("node");
    assert_eq!(degraded.state, NodeState::Running, "no ERROR: the volume exists");
    let message = degraded.condition(ConditionKind::DataVolumeNotAttached).map(|c| c.message.clone()).unwrap_or_default();
    assert!(message.contains(&volume) && message.contains(&theirs), "{message}");
    assert!(ec2.hand_detach_volume(&volume));
    tether.reconcile(deadline()).await.expect("reconcile");
    let healed = tether.node(&node.id).await.expect("node");
    assert!(healed.conditions.is_empty(), "{:?}", healed.conditions);
    assert_eq!(ec2.volumes().iter().find(|v| v.id == volume).and_then(|v| v.attachment.clone()).map(|a| a.0), healed.instance_id().map(str::to_owned));
}

#[tokio::test]
async fn deallocation_keeps_data_by_default_and_deletes_it_after_a_final_snapshot_when_asked() {
    for (fate, left) in [(VolumeFate::Keep, 1), (VolumeFate::Delete, 0), (VolumeFate::SnapshotAndDelete, 0)] {
        let (ec2, tether) = world();
        let policy = DeallocationPolicy { data_volumes: fate, ..DeallocationPolicy::default() };
        let node = tether.create_node(with_data(policy), Persistence::default(), None).await.expect("create");
        tether.resume(&node.id, deadline(), None).await.expect("resume");
        deliver(&ec2, &tether, "a").await;
        let volume = ec2.volumes()[0].id.clone();
        // The instance terminates, a final snapshot completes: the deallocation is carried on
        // (as the terminated event or the reconciler would) until it is done.
        let soon = || chrono::Utc::now() + Duration::from_millis(200);
        let _ = tether.deallocate(&node.id, false, soon(), None).await;
        for step in 0..4 {
            for outcome in deliver_all(&ec2, &tether, &format!("d{step}")).await {
                assert!(outcome.as_ref().is_ok_and(|o| !matches!(o, Outcome::Failed { .. })) || outcome.as_ref().is_err_and(|e| e.is_retryable()), "{outcome:?}");
            }
            if tether.node(&node.id).await.expect("node").state == NodeState::Deallocating {
                let _ = tether.deallocate(&node.id, false, soon(), None).await;
            }
        }
        let done = tether.node(&node.id).await.expect("node");
        assert_eq!(done.state, NodeState::Deallocated, "{fate:?}: {:?}", done.history.last());
        assert_eq!(ec2.volumes().len(), left, "{fate:?}");
        assert_eq!(done.data_volumes.len(), left, "{fate:?}: kept volumes stay on record");
        let snapshots = ec2.snapshots();
        assert_eq!(snapshots.len(), usize::from(fate == VolumeFate::SnapshotAndDelete), "{fate:?}");
        if fate == VolumeFate::SnapshotAndDelete {
            assert!(done.history.iter().any(|h| h.what.contains(&volume) && h.what.contains(&snapshots[0])), "{:?}", done.history);
        }
    }
}
