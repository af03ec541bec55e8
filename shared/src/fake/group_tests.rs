//! Groups and address reservations through the service, on the fakes: each rule of a
//! stateful group, read back from what EC2 and the table hold.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::group::{GroupId, GroupState, MemberTemplate};
use crate::lifecycle::NodePatch;
use crate::model::{test_spec, Node, NodeSpec, NodeState, Persistence};
use crate::ports::{Address, EniRequest, Network, NodeStore, Registry};
use crate::service::{Ports, Settings, Tether, TetherError};
use crate::views::{CreateGroup, GroupPatch};

struct World {
    ec2: Arc<FakeEc2>,
    store: Arc<FakeStore>,
    tether: Tether,
}

fn world() -> World {
    world_with(Settings::default())
}

/// A world whose service has `base`'s stuck_after (the rest as `world`).
fn world_with(base: Settings) -> World {
    let ec2 = Arc::new(FakeEc2::new(7));
    // The service runs on the wall clock here; the fake's buckets refill on its own.
    ec2.set_throttling(false);
    ec2.add_subnet("subnet-a", "10.0.1.0/24".parse().expect("cidr"), "us-east-1a");
    ec2.add_subnet("subnet-b", "10.0.2.0/24".parse().expect("cidr"), "us-east-1b");
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let settings = Settings {
        retry_min_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        deadline_margin: Duration::from_millis(100),
        launches_per_second: 1000,
        launch_burst: 1000,
        // EC2 does not throttle here: nothing to pace.
        pace: false,
        stuck_after: base.stuck_after,
        ..Settings::default()
    };
    World { ec2, store, tether: Tether::new(ports, settings) }
}

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, host)
}

/// Short: a launch waiting for an ENI gives up soon and is carried on by the events.
fn deadline() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + Duration::from_secs(1)
}

fn request(pool: &[u8], eips: Vec<String>, target: u32) -> CreateGroup {
    CreateGroup {
        name: "cassandra".into(),
        subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
        template: MemberTemplate::of_spec(test_spec(&["m5.large"], true)),
        target_capacity: target,
        private_ip_pool: pool.iter().map(|h| ip(*h)).collect(),
        elastic_ip_pool: eips,
        max_unavailable: 1,
        deletion_protection: true,
        schedules: Vec::new(),
    }
}

impl World {
    fn eips(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.ec2.hand_allocate_eip().expect("an Elastic IP").0).collect()
    }

    /// EC2 finishes what it started and its events reach the functions.
    async fn pump(&self) {
        for round in 0..5 {
            self.ec2.advance();
            for (n, event) in self.ec2.take_events().into_iter().enumerate() {
                let id = format!("ev-{round}-{n}-{}", self.ec2.call_count("RunInstances"));
                let _ = self.tether.handle_event(&id, "invocation", &event, deadline()).await;
            }
        }
    }

    /// Runs the group's controller (EC2 and its events in between) until it has nothing
    /// left to do.
    async fn settle(&self, id: &GroupId) {
        for _ in 0..10 {
            let run = self.tether.run_group(id, deadline()).await.expect("a group run");
            self.pump().await;
            if run.done.is_empty() && run.skipped.is_empty() && run.left == 0 {
                return;
            }
        }
        panic!("group {id} never settled");
    }

    /// Pool members in pool-address order, then the others by ordinal.
    async fn members(&self, id: &GroupId) -> Vec<Node> {
        let mut members = self.store.members(id).await.expect("members");
        members.sort_by_key(|m| {
            let g = m.group.as_ref();
            (g.and_then(|g| g.pool_ip).is_none(), g.and_then(|g| g.pool_ip), g.map(|g| g.ordinal))
        });
        members
    }

    fn state_of(&self, members: &[Node], pool_host: u8) -> Vec<NodeState> {
        members.iter().filter(|m| m.group.as_ref().and_then(|g| g.pool_ip) == Some(ip(pool_host))).map(|m| m.state).collect()
    }

    fn running(&self, members: &[Node]) -> usize {
        members.iter().filter(|m| m.state == NodeState::Running).count()
    }
}

#[tokio::test]
async fn a_group_makes_one_paused_member_per_pool_address_and_keeps_its_target() {
    let w = world();
    let eips = w.eips(2);
    let group = w.tether.create_group(request(&[10, 11, 12], eips.clone(), 2), Some("tester")).await.expect("created");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    assert_eq!(members.len(), 3, "one member per pool address");
    assert_eq!(w.state_of(&members, 10), [NodeState::Running]);
    assert_eq!(w.state_of(&members, 11), [NodeState::Running]);
    assert_eq!(w.state_of(&members, 12), [NodeState::Paused], "beyond the target: paused, no ENI");
    assert!(members[2].eni.is_none());
    // Each running member is on its pool address, with a pool Elastic IP, in the subnet that holds it.
    for (member, host) in members.iter().zip([10, 11]) {
        let eni = member.eni.as_ref().expect("an ENI");
        assert_eq!((eni.private_ip, eni.availability_zone.as_str()), (ip(host), "us-east-1a"));
        assert!(member.elastic_ip.as_ref().is_some_and(|e| eips.contains(&e.allocation_id)), "{:?}", member.elastic_ip);
    }
    // Every pool address is reserved for the group, in the table and in EC2.
    let reservations = w.store.reservations_now();
    assert_eq!(reservations.len(), 5);
    assert!(reservations.iter().all(|r| r.owner == group.id.as_str()));
    let reserved: Vec<_> = w.ec2.subnet_reservations().into_iter().map(|(_, subnet, range)| (subnet, range.addr())).collect();
    assert_eq!(reserved.len(), 3, "{reserved:?}");
    assert!(reserved.contains(&("subnet-a".into(), ip(12))), "the paused member's address is kept from EC2's random picks");

    // Beyond the pool: an address EC2 picks, never a pool address, in the emptier subnet.
    w.tether.scale_group(&group.id, 4, None).await.expect("scaled");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    assert_eq!(w.running(&members), 4);
    let random = members.iter().find(|m| m.group.as_ref().is_some_and(|g| g.pool_ip.is_none())).expect("a random member");
    assert_eq!(random.spec.subnet_id, "subnet-b");
    assert!(random.elastic_ip.is_none(), "the pool's two Elastic IPs are held");
    assert_eq!(w.state_of(&members, 12), [NodeState::Running], "the paused pool member first");

    // Down to 1: the EC2-picked member first, then the pool from its end; identity kept.
    w.tether.scale_group(&group.id, 1, None).await.expect("scaled");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    assert_eq!(w.state_of(&members, 10), [NodeState::Running]);
    assert_eq!(w.state_of(&members, 11), [NodeState::Paused]);
    assert!(members.iter().filter(|m| m.state == NodeState::Paused).all(|m| m.eni.is_some()), "paused members keep their ENI");
    let (_, _, status) = w.tether.group_status(&group.id).await.expect("status");
    assert_eq!((status.running, status.paused, status.below_target), (1, 3, None));
}

#[tokio::test]
async fn a_deallocated_pool_member_is_replaced_for_the_same_address_and_its_elastic_ip_returns() {
    let w = world();
    let eips = w.eips(1);
    let group = w.tether.create_group(request(&[10], eips.clone(), 1), None).await.expect("created");
    w.settle(&group.id).await;
    let first = w.members(&group.id).await.remove(0);
    // The ENI is released once the instance has terminated: its event carries the deallocation on.
    let started = w.tether.deallocate(&first.id, false, deadline(), Some("someone")).await;
    assert!(matches!(started, Err(TetherError::EniStillAttached { .. })), "{started:?}");
    w.pump().await;
    assert_eq!(w.tether.node(&first.id).await.expect("node").state, NodeState::Deallocated);
    let eip = w.ec2.eips().into_iter().find(|e| e.info.allocation_id == eips[0]).expect("the user's Elastic IP stays");
    assert_eq!(eip.info.association_id, None, "disassociated, never released");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    assert_eq!(w.state_of(&members, 10), [NodeState::Deallocated, NodeState::Running]);
    let second = &members[1];
    assert_eq!(second.id, group.id.pool_member(ip(10), 2));
    assert_eq!(second.eni.as_ref().map(|e| e.private_ip), Some(ip(10)), "same address");
    assert_eq!(second.elastic_ip.as_ref().map(|e| e.allocation_id.as_str()), Some(eips[0].as_str()), "the Elastic IP came back to the pool and went to it");
}

#[tokio::test]
async fn a_member_paused_through_the_node_api_is_held_until_the_group_is_resumed() {
    let w = world();
    let group = w.tether.create_group(request(&[10, 11], vec![], 2), None).await.expect("created");
    w.settle(&group.id).await;
    let member = w.members(&group.id).await.remove(0);
    w.tether.pause(&member.id, deadline(), Some("operator")).await.expect("paused");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    assert_eq!(w.running(&members), 1, "not resumed, not replaced");
    let (_, _, status) = w.tether.group_status(&group.id).await.expect("status");
    assert_eq!(status.held, 1);
    assert!(status.below_target.as_deref().is_some_and(|w| w.contains("held")), "{status:?}");
    w.tether.resume_group(&group.id, None).await.expect("resumed");
    w.settle(&group.id).await;
    assert_eq!(w.running(&w.members(&group.id).await), 2);

    // A member the scale-down paused is the group's: resuming it by hand would only make
    // the group pause one again, so it is refused with the way to do it.
    w.tether.scale_group(&group.id, 1, None).await.expect("scaled down");
    w.settle(&group.id).await;
    let paused = w.members(&group.id).await.into_iter().find(|m| m.state == NodeState::Paused).expect("a paused member");
    let e = w.tether.resume(&paused.id, deadline(), Some("operator")).await.expect_err("refused");
    assert!(matches!(&e, TetherError::Conflict(why) if why.contains("tether groups scale")), "{e}");
}

#[tokio::test]
async fn removing_pool_addresses_deallocates_members_that_never_ran_and_keeps_the_others() {
    let w = world();
    let group = w.tether.create_group(request(&[10, 11], vec![], 1), None).await.expect("created");
    w.settle(&group.id).await;
    let patch = GroupPatch { private_ip_pool: Some(vec![]), target_capacity: Some(0), ..GroupPatch::default() };
    w.tether.patch_group(&group.id, &patch, None).await.expect("patched");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    assert_eq!(w.state_of(&members, 10), [NodeState::Paused], "it ran: it keeps its address");
    assert_eq!(w.state_of(&members, 11), [NodeState::Deallocated], "never ran: deallocated");
    let kept = w.store.reservations_now();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].owner, members[0].id.as_str(), "the reservation passed to the member that kept the address");
    assert_eq!(w.ec2.subnet_reservations().len(), 1, "the released address is free for EC2 again");
}

#[tokio::test]
async fn refusals_name_the_address_and_why() {
    let w = world();
    let eips = w.eips(1);
    let group = w.tether.create_group(request(&[10], eips.clone(), 1), None).await.expect("created");
    w.settle(&group.id).await;
    let invalid = |e: TetherError| match e {
        TetherError::Invalid { field, reason } => format!("{field}: {reason}"),
        other => format!("not a 422: {other}"),
    };
    for (pool, says) in [(vec![10], "reserved by"), (vec![3], "reserves"), (vec![200, 200], "listed twice")] {
        let mut r = request(&[], vec![], 0);
        r.private_ip_pool = pool.iter().map(|h| ip(*h)).collect();
        let e = invalid(w.tether.create_group(r, None).await.expect_err("refused"));
        assert!(e.starts_with("private_ip_pool: ") && e.contains(says), "{e}");
    }
    let mut outside = request(&[], vec![], 0);
    outside.private_ip_pool = vec![Ipv4Addr::new(10, 9, 0, 5)];
    assert!(invalid(w.tether.create_group(outside, None).await.expect_err("refused")).contains("outside every subnet"));
    let e = invalid(w.tether.create_group(request(&[], eips.clone(), 0), None).await.expect_err("refused"));
    assert!(e.starts_with("elastic_ip_pool: "), "{e}");
    // A single node cannot take a pool address either.
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let taken = Persistence { private_ip: Some(ip(10)), ..Persistence::default() };
    assert!(invalid(w.tether.create_node(spec, taken, None).await.expect_err("refused")).contains(group.id.as_str()));
    assert_eq!(w.store.groups_now().len(), 1, "nothing created by a refused request");
    // An Elastic IP a member holds stays in the pool.
    let patch = GroupPatch { elastic_ip_pool: Some(vec![]), ..GroupPatch::default() };
    let e = w.tether.patch_group(&group.id, &patch, None).await.expect_err("refused");
    assert!(matches!(&e, TetherError::ConflictOn { field, reason } if field == "elastic_ip_pool" && reason.contains("held by member")), "{e}");
    // A member's launch settings are the group's.
    let member = w.members(&group.id).await.remove(0);
    let e = w.tether.patch(&member.id, &NodePatch { image_id: Some("ami-2".into()), ..NodePatch::default() }, None).await.expect_err("refused");
    assert!(matches!(&e, TetherError::Conflict(why) if why.contains("group's template")), "{e}");
}

/// Group changes are checked whole: every subnet removed, the VPC of the subnets kept, the
/// whole template as patched; a change to `max_unavailable` alone is kept.
#[tokio::test]
async fn group_changes_are_checked_whole_and_kept() {
    let w = world();
    w.ec2.add_subnet("subnet-c", "10.0.3.0/24".parse().expect("cidr"), "us-east-1c");
    w.ec2.add_subnet_in("vpc-other", "subnet-x", "10.9.0.0/24".parse().expect("cidr"), "us-east-1a");
    let mut r = request(&[], vec![], 2);
    r.subnet_ids.push("subnet-c".into());
    let group = w.tether.create_group(r, None).await.expect("created");
    w.settle(&group.id).await;
    let lives_in: Vec<String> = w.members(&group.id).await.iter().map(|m| m.spec.subnet_id.clone()).collect();
    assert_eq!(lives_in, ["subnet-a", "subnet-b"], "spread, the emptiest subnets first");
    // subnet-b, the second removed, has a member: refused although subnet-c has none.
    let patch = GroupPatch { subnet_ids: Some(vec!["subnet-a".into()]), ..GroupPatch::default() };
    let e = w.tether.patch_group(&group.id, &patch, None).await.expect_err("refused");
    assert!(matches!(&e, TetherError::ConflictOn { field, reason } if field == "subnet_ids" && reason.contains("subnet-b")), "{e}");
    // A subnet of another VPC than the group's, even added alone.
    let patch = GroupPatch { subnet_ids: Some(vec!["subnet-a".into(), "subnet-b".into(), "subnet-c".into(), "subnet-x".into()]), ..GroupPatch::default() };
    let e = w.tether.patch_group(&group.id, &patch, None).await.expect_err("refused");
    assert!(matches!(&e, TetherError::Invalid { field, reason } if field == "subnet_ids" && reason.contains("vpc-other")), "{e}");
    // The template as patched is checked as at creation.
    let patch = GroupPatch { template: Some(NodePatch { image_id: Some("not-an-ami".into()), ..NodePatch::default() }), ..GroupPatch::default() };
    let e = w.tether.patch_group(&group.id, &patch, None).await.expect_err("refused");
    assert!(matches!(&e, TetherError::Invalid { field, .. } if field == "template.image_id"), "{e}");
    let patch = GroupPatch { max_unavailable: Some(2), ..GroupPatch::default() };
    let patched = w.tether.patch_group(&group.id, &patch, None).await.expect("patched");
    assert_eq!(w.tether.group(&group.id).await.expect("group").max_unavailable, 2, "kept: {:?}", patched.history.last());
}

/// A refused create or PATCH leaves no subnet CIDR reservation behind: each made ahead of
/// the claim is undone (they used to stay until a sweep).
#[tokio::test]
async fn a_refused_claim_leaves_no_subnet_reservation() {
    let w = world();
    // 10.0.1.11 is in use: 10.0.1.10, reserved ahead just before, is undone.
    w.ec2.hand_create_eni_at("subnet-a", Some(ip(11))).expect("an ENI on .11");
    let e = w.tether.create_group(request(&[10, 11], vec![], 0), None).await.expect_err("in use");
    assert!(e.to_string().contains("10.0.1.11 is already in use"), "{e}");
    // An Elastic IP refused: checked before any private IP is reserved in the subnet.
    let e = w.tether.create_group(request(&[10], vec!["eipalloc-nope".into()], 0), None).await.expect_err("no such Elastic IP");
    assert!(matches!(&e, TetherError::Invalid { field, .. } if field == "elastic_ip_pool"), "{e}");
    // A single node: its Elastic IP is checked first too.
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let persistence = Persistence { private_ip: Some(ip(12)), elastic_ip_allocation_id: Some("eipalloc-nope".into()), ..Persistence::default() };
    w.tether.create_node(spec, persistence, None).await.expect_err("no such Elastic IP");
    // A PATCH whose second new address is in use.
    let group = w.tether.create_group(request(&[], vec![], 0), None).await.expect("created");
    let patch = GroupPatch { private_ip_pool: Some(vec![ip(20), ip(11)]), ..GroupPatch::default() };
    w.tether.patch_group(&group.id, &patch, None).await.expect_err("in use");
    assert!(w.ec2.subnet_reservations().is_empty(), "{:?}", w.ec2.subnet_reservations());
    assert!(w.store.reservations_now().is_empty());
}

/// Two creates claiming one address at once: one gets it, the other is refused naming it
/// and its holder, and its subnet CIDR reservation (it found the winner's) is left alone.
#[tokio::test]
async fn two_concurrent_claims_of_one_address_make_one_holder() {
    let w = world();
    let (a, b) = tokio::join!(w.tether.create_group(request(&[10], vec![], 0), None), w.tether.create_group(request(&[10], vec![], 0), None));
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("one create wins, one is refused: {other:?}"),
    };
    assert!(matches!(&lost, TetherError::Invalid { field, reason } if field == "private_ip_pool" && reason.contains(won.id.as_str())), "{lost}");
    let address = Address::PrivateIp { subnet_id: "subnet-a".into(), ip: ip(10) };
    let held = w.store.reservation(&address).await.expect("read").expect("reserved");
    assert_eq!(held.owner, won.id.as_str());
    let in_ec2: Vec<String> = w.ec2.subnet_reservations().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(in_ec2.len(), 1, "the winner's, kept");
    assert_eq!(held.subnet_reservation.map(|s| s.id), in_ec2.first().cloned());
}

/// A paused member is resumed through the node API only while its group is active and
/// runs fewer members than it wants (its target less its held members).
#[tokio::test]
async fn a_member_is_resumed_by_hand_only_where_the_group_has_room() {
    let w = world();
    let group = w.tether.create_group(request(&[10, 11, 12], vec![], 2), None).await.expect("created");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    // Hold one running member: the group then wants 1, and runs 1.
    w.tether.pause(&members[0].id, deadline(), Some("operator")).await.expect("held");
    w.settle(&group.id).await;
    let spare = &members[2];
    let e = w.tether.resume(&spare.id, deadline(), Some("operator")).await.expect_err("no room");
    assert!(matches!(&e, TetherError::Conflict(why) if why.contains("1 held")), "{e}");
    // The held one may come back: it ends its hold.
    w.tether.resume(&members[0].id, deadline(), Some("operator")).await.expect("resumed");
    w.pump().await;
    w.settle(&group.id).await;
    assert_eq!(w.running(&w.members(&group.id).await), 2);
    // A paused group: nothing is resumed by hand, held or not.
    w.tether.pause(&members[0].id, deadline(), Some("operator")).await.expect("held");
    w.tether.pause_group(&group.id, None).await.expect("paused");
    w.settle(&group.id).await;
    for member in [&members[0], spare] {
        let e = w.tether.resume(&member.id, deadline(), Some("operator")).await.expect_err("the group is paused");
        assert!(matches!(&e, TetherError::Conflict(why) if why.contains("tether groups resume")), "{e}");
    }
}

#[tokio::test]
async fn a_template_change_rolls_through_the_members_without_changing_an_address() {
    let w = world();
    let group = w.tether.create_group(request(&[10, 11], vec![], 2), None).await.expect("created");
    w.settle(&group.id).await;
    let before: Vec<(String, Option<String>)> = w.members(&group.id).await.iter().map(|m| (m.eni.as_ref().expect("ENI").id.clone(), m.instance_id().map(str::to_owned))).collect();
    let patch = GroupPatch { template: Some(NodePatch { image_id: Some("ami-2".into()), ..NodePatch::default() }), ..GroupPatch::default() };
    w.tether.patch_group(&group.id, &patch, None).await.expect("patched");
    w.tether.recycle_group(&group.id, None).await.expect("rolling recycle");
    w.settle(&group.id).await;
    let after = w.members(&group.id).await;
    for (member, (eni, instance)) in after.iter().zip(&before) {
        assert_eq!(member.eni.as_ref().map(|e| &e.id), Some(eni), "same ENI");
        assert_ne!(member.instance_id().map(str::to_owned), *instance, "a new instance");
        assert_eq!(member.spec.image_id, "ami-2");
    }
    let group = w.tether.group(&group.id).await.expect("group");
    assert!(group.rollout.is_none(), "finished");
}

#[tokio::test]
async fn deallocating_a_group_needs_deletion_protection_off_and_releases_everything() {
    let w = world();
    let eips = w.eips(1);
    let group = w.tether.create_group(request(&[10, 11], eips.clone(), 1), None).await.expect("created");
    w.settle(&group.id).await;
    let e = w.tether.deallocate_group(&group.id, false, None).await.expect_err("protected");
    assert!(matches!(&e, TetherError::ConflictOn { field, reason } if field == "deletion_protection" && reason.contains("tether groups update")), "{e}");
    w.tether.patch_group(&group.id, &GroupPatch { deletion_protection: Some(false), ..GroupPatch::default() }, None).await.expect("off");
    w.tether.deallocate_group(&group.id, false, None).await.expect("deallocating");
    w.settle(&group.id).await;
    let group = w.tether.group(&group.id).await.expect("group");
    assert_eq!(group.state, GroupState::Deallocated);
    assert!(w.members(&group.id).await.iter().all(|m| m.state == NodeState::Deallocated));
    assert!(w.store.reservations_now().is_empty(), "{:?}", w.store.reservations_now());
    assert!(w.ec2.subnet_reservations().is_empty());
    assert!(w.ec2.enis().is_empty(), "ENIs deleted");
    assert!(w.ec2.eips().iter().all(|e| e.info.association_id.is_none()), "the user's Elastic IP left to them");
}

#[tokio::test]
async fn a_single_nodes_chosen_addresses_are_reserved_with_it_and_released_at_deallocation() {
    let w = world();
    let eips = w.eips(1);
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let chosen = Persistence { private_ip: Some(ip(50)), elastic_ip_allocation_id: Some(eips[0].clone()), allocate_elastic_ip: false };
    let node = w.tether.create_node(spec.clone(), chosen.clone(), None).await.expect("created");
    assert_eq!(w.store.reservations_now().len(), 2);
    assert_eq!(w.ec2.subnet_reservations().len(), 1);
    // A second node asking for the same address, before the first ever ran: refused.
    let e = w.tether.create_node(spec.clone(), Persistence { elastic_ip_allocation_id: None, ..chosen.clone() }, None).await.expect_err("refused");
    assert!(matches!(&e, TetherError::Invalid { field, reason } if field == "persistence.private_ip" && reason.contains(node.id.as_str())), "{e}");
    // EC2 does not hand the reserved address to an ENI that does not ask for it.
    for _ in 0..240 {
        let Ok(other) = w.ec2.hand_create_eni("subnet-a") else { break };
        assert!(w.ec2.enis().iter().all(|e| e.id != other || e.private_ip != ip(50)));
    }
    w.tether.deallocate(&node.id, false, deadline(), None).await.expect("deallocated");
    assert!(w.store.reservations_now().is_empty());
    assert!(w.ec2.subnet_reservations().is_empty());
}

#[tokio::test]
async fn nodes_older_than_reservations_get_theirs_from_the_reconciler() {
    let w = world();
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let mut old = Node::new(spec, Persistence { private_ip: Some(ip(60)), ..Persistence::default() }, chrono::Utc::now());
    old.addresses_reserved = false;
    w.store.create(&old).await.expect("an old record");
    w.tether.reconcile(deadline()).await.expect("reconciled");
    let reservations = w.store.reservations_now();
    assert_eq!(reservations.len(), 1);
    assert_eq!((reservations[0].owner.as_str(), &reservations[0].address), (old.id.as_str(), &Address::PrivateIp { subnet_id: "subnet-a".into(), ip: ip(60) }));
    assert!(w.tether.node(&old.id).await.expect("node").addresses_reserved);
    assert_eq!(w.ec2.subnet_reservations().len(), 1);
}

// ---- what the chaos test found (each fails without its fix) ----

/// The subnet CIDR reservation of an address leaving the pool is deleted only once the
/// change is written: a PATCH that fails leaves the address reserved in EC2 too (it used to
/// be deleted first, leaving a pool address EC2 could hand to any ENI, its reservation
/// naming a subnet CIDR reservation that no longer existed; chaos seed 293).
#[tokio::test]
async fn a_pool_edit_that_fails_leaves_the_address_reserved_in_ec2() {
    let w = world();
    let group = w.tether.create_group(request(&[10, 11], vec![], 0), None).await.expect("created");
    w.settle(&group.id).await;
    w.store.fail_next("TransactWriteItems", "InternalServerError");
    let patch = GroupPatch { private_ip_pool: Some(vec![ip(10)]), ..GroupPatch::default() };
    w.tether.patch_group(&group.id, &patch, None).await.expect_err("the write failed");
    let address = Address::PrivateIp { subnet_id: "subnet-a".into(), ip: ip(11) };
    let kept = w.store.reservation(&address).await.expect("read").expect("still reserved");
    let recorded = kept.subnet_reservation.expect("recorded").id;
    assert!(w.ec2.subnet_reservations().iter().any(|(id, _, _)| *id == recorded), "{recorded} still in EC2");
    // Written, it goes with the address.
    w.tether.patch_group(&group.id, &patch, None).await.expect("patched");
    w.settle(&group.id).await;
    assert!(w.ec2.subnet_reservations().iter().all(|(_, _, range)| range.addr() != ip(11)));
}

/// A subnet CIDR reservation made by an attempt that never heard back (or died before
/// recording it) is Tether's when found again, and goes with its address (it used to be
/// taken for the user's and kept for good; chaos seed 125).
#[tokio::test]
async fn a_subnet_reservation_whose_answer_was_lost_is_deleted_with_its_address() {
    let w = world();
    w.ec2.fail_next_after("CreateSubnetCidrReservation", "InternalError");
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let node = w.tether.create_node(spec, Persistence { private_ip: Some(ip(50)), ..Persistence::default() }, None).await.expect("created");
    let address = Address::PrivateIp { subnet_id: "subnet-a".into(), ip: ip(50) };
    let recorded = w.store.reservation(&address).await.expect("read").and_then(|r| r.subnet_reservation).expect("recorded");
    assert!(recorded.tethers, "found again by its description: {recorded:?}");
    w.tether.deallocate(&node.id, false, deadline(), None).await.expect("deallocated");
    assert!(w.ec2.subnet_reservations().is_empty(), "{:?}", w.ec2.subnet_reservations());
}

/// What a request left in EC2 after releasing an address (its delete failed, or it died
/// first) is deleted by the reconciler's sweep, also where no reservation is left at all,
/// once it is older than the grace a claim under way may need (chaos seed 443: a sweep
/// deleted one made ahead of a claim not yet written, and EC2 handed the address out).
#[tokio::test]
async fn the_sweep_deletes_a_subnet_reservation_no_reservation_names_once_past_its_grace() {
    let w = world();
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let node = w.tether.create_node(spec, Persistence { private_ip: Some(ip(50)), ..Persistence::default() }, None).await.expect("created");
    w.ec2.fail_next("DeleteSubnetCidrReservation", "InternalError");
    w.tether.deallocate(&node.id, false, deadline(), None).await.expect("deallocated");
    assert!(w.store.reservations_now().is_empty());
    assert_eq!(w.ec2.subnet_reservations().len(), 1, "left behind");
    // An old one of this deployment's, and the young one just left.
    let long_ago = chrono::Utc::now() - Duration::from_secs(3600);
    let old = crate::ports::tether_description(crate::fake::ec2::FAKE_DEPLOYMENT, ip(60), "tn-gone", long_ago);
    w.ec2.reserve_outside("subnet-a", ip(60).into(), &old).expect("made");
    w.tether.reconcile(deadline()).await.expect("reconciled");
    let left: Vec<_> = w.ec2.subnet_reservations().into_iter().map(|(_, _, range)| range.addr()).collect();
    assert_eq!(left, vec![ip(50)], "the old one deleted, the young one kept for now");
}

/// Subnet CIDR reservations this deployment did not make (another Tether stack's sharing the
/// subnet, the user's) are never deleted: not by the sweep, not with an address they cover
/// (the sweep used to delete every /32 described "Tether: …").
#[tokio::test]
async fn subnet_reservations_of_another_deployment_or_the_user_are_never_deleted() {
    let w = world();
    let other_stack = w.ec2.reserve_outside("subnet-a", "10.0.1.60/32".parse().expect("cidr"), "Tether (tether-other): 10.0.1.60 for tn-x").expect("made");
    let users = w.ec2.reserve_outside("subnet-a", "10.0.1.61/32".parse().expect("cidr"), "kept for the NAT").expect("made");
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    // Claimed here too (the other stack's table does not know this one's): its /32 is used.
    let node = w.tether.create_node(spec, Persistence { private_ip: Some(ip(60)), ..Persistence::default() }, None).await.expect("created");
    let address = Address::PrivateIp { subnet_id: "subnet-a".into(), ip: ip(60) };
    let recorded = w.store.reservation(&address).await.expect("read").and_then(|r| r.subnet_reservation).expect("recorded");
    assert_eq!((recorded.id.as_str(), recorded.tethers), (other_stack.as_str(), false));
    w.tether.reconcile(deadline()).await.expect("reconciled");
    w.tether.deallocate(&node.id, false, deadline(), None).await.expect("deallocated");
    w.tether.reconcile(deadline()).await.expect("reconciled");
    let left: Vec<String> = w.ec2.subnet_reservations().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(left, vec![other_stack, users]);
}

/// An address leaving the pool stays reserved for the member made for it until the group
/// deallocates it (if it never ran): a resume under way meanwhile launches the member on a
/// reserved address, which it then keeps (it was released at once, and the member launched
/// on an address nobody reserved; chaos seed 213).
#[tokio::test]
async fn a_member_resumed_as_its_address_leaves_the_pool_keeps_it_reserved() {
    let w = world();
    let group = w.tether.create_group(request(&[10], vec![], 0), None).await.expect("created");
    w.settle(&group.id).await;
    let member = w.members(&group.id).await.remove(0);
    // Held by a pause through the node API: a resume through it is then always allowed.
    w.tether.pause(&member.id, deadline(), Some("operator")).await.expect("held");
    let member = w.tether.node(&member.id).await.expect("member");
    let patch = GroupPatch { private_ip_pool: Some(vec![]), ..GroupPatch::default() };
    w.tether.patch_group(&group.id, &patch, None).await.expect("patched");
    let address = Address::PrivateIp { subnet_id: "subnet-a".into(), ip: ip(10) };
    let owner = |w: &World| w.store.reservations_now().into_iter().find(|r| r.address == address).map(|r| r.owner);
    assert_eq!(owner(&w), Some(member.id.to_string()), "passed to the member until it is deallocated");
    // Resumed through the node API before the group's controller deallocates it.
    w.tether.resume(&member.id, deadline(), Some("operator")).await.expect("resumed");
    w.pump().await;
    w.settle(&group.id).await;
    // It ran: not deallocated, it keeps its address (paused: the target is 0).
    let member = w.tether.node(&member.id).await.expect("member");
    assert_eq!((member.state, member.eni.as_ref().map(|e| e.private_ip)), (NodeState::Paused, Some(ip(10))));
    assert_eq!(owner(&w), Some(member.id.to_string()));
    assert!(w.ec2.subnet_reservations().iter().any(|(_, _, range)| range.addr() == ip(10)));
}

/// A member deallocated with its ENI kept gives its pool Elastic IP back free: it leaves the
/// kept ENI (it used to stay on it, and the next member given it went to ERROR; chaos seed 219).
#[tokio::test]
async fn a_member_deallocated_keeping_its_eni_gives_its_pool_elastic_ip_back_free() {
    let w = world();
    let eips = w.eips(1);
    let group = w.tether.create_group(request(&[], eips.clone(), 1), None).await.expect("created");
    w.settle(&group.id).await;
    let first = w.members(&group.id).await.remove(0);
    let _ = w.tether.deallocate(&first.id, true, deadline(), Some("operator")).await;
    w.pump().await;
    assert_eq!(w.tether.node(&first.id).await.expect("node").state, NodeState::Deallocated);
    assert!(w.ec2.eips().iter().all(|e| e.info.association_id.is_none()), "off the kept ENI");
    w.settle(&group.id).await;
    let members = w.members(&group.id).await;
    let next = members.iter().find(|m| m.id != first.id).expect("a new member");
    assert_eq!(next.state, NodeState::Running, "{:?}", next.last_error);
    assert_eq!(next.elastic_ip.as_ref().map(|e| e.allocation_id.as_str()), Some(eips[0].as_str()));
}

/// A member's first launch waits while Tether's own leftover ENI (of a node deallocated while
/// its launch raced it) holds the member's pool address, instead of going to ERROR for good:
/// the sweep deletes the leftover, then the launch goes on (chaos seed 3714).
#[tokio::test]
async fn a_members_launch_waits_for_a_leftover_eni_on_its_address() {
    let w = world_with(Settings { stuck_after: Duration::ZERO, ..Settings::default() });
    let group = w.tether.create_group(request(&[10], vec![], 0), None).await.expect("created");
    w.settle(&group.id).await;
    // A node deallocated while its first launch was making its ENI: the ENI is on no record.
    let spec = NodeSpec { subnet_id: "subnet-a".into(), ..test_spec(&["m5.large"], true) };
    let mut gone = Node::new(spec, Persistence::default(), chrono::Utc::now());
    gone.state = NodeState::Deallocated;
    w.store.create(&gone).await.expect("a record");
    let request = EniRequest { node_id: gone.id.clone(), subnet_id: "subnet-a".into(), security_group_ids: vec![], private_ip: Some(ip(10)), secondary_ip_count: 0, ipv6_count: 0, tags: Default::default(), device_index: 0 };
    w.ec2.create_eni(&request).await.expect("the leftover");
    w.tether.scale_group(&group.id, 1, None).await.expect("scaled");
    let _ = w.tether.run_group(&group.id, deadline()).await.expect("a run");
    let member = w.members(&group.id).await.remove(0);
    assert_eq!(member.state, NodeState::Launching, "waiting, not in ERROR: {:?}", member.last_error);
    assert!(member.last_error.as_deref().is_some_and(|e| e.contains("still held")), "{:?}", member.last_error);
    for _ in 0..3 {
        w.tether.reconcile(deadline()).await.expect("reconciled");
        w.pump().await;
    }
    let member = w.tether.node(&member.id).await.expect("member");
    assert_eq!((member.state, member.eni.as_ref().map(|e| e.private_ip)), (NodeState::Running, Some(ip(10))));
}

/// A pool Elastic IP a late launch of a deallocated member put back on that member's kept ENI
/// is the pool's: the member it is handed to next takes it off (it used to go to ERROR;
/// chaos seed 227139).
#[tokio::test]
async fn a_pool_elastic_ip_left_on_a_deallocated_members_kept_eni_is_taken_back() {
    let w = world();
    let eips = w.eips(1);
    let group = w.tether.create_group(request(&[], eips.clone(), 1), None).await.expect("created");
    w.settle(&group.id).await;
    let first = w.members(&group.id).await.remove(0);
    let kept = first.eni.clone().expect("an ENI");
    let _ = w.tether.deallocate(&first.id, true, deadline(), Some("operator")).await;
    w.pump().await;
    assert_eq!(w.tether.node(&first.id).await.expect("node").state, NodeState::Deallocated);
    // What a launch of the first member, retrying its association, did after the deallocation.
    w.ec2.hand_associate_eip(&eips[0], &kept.id).expect("associated");
    w.settle(&group.id).await;
    let next = w.members(&group.id).await.into_iter().find(|m| m.id != first.id).expect("a new member");
    assert_eq!(next.state, NodeState::Running, "{:?}", next.last_error);
    let on = w.ec2.eips().into_iter().find(|e| e.info.allocation_id == eips[0]).and_then(|e| e.info.network_interface_id);
    assert_eq!(on, next.eni.as_ref().map(|e| e.id.clone()), "on the new member's ENI");
}

#[tokio::test]
async fn a_group_schedule_pauses_the_whole_group_once_per_slot() {
    let w = world();
    let mut create = request(&[20, 21], Vec::new(), 2);
    create.schedules = vec![crate::schedules::Schedule { action: crate::schedules::ScheduledAction::Pause, cron: "* * * * *".into(), time_zone: "Asia/Tokyo".into() }];
    let group = w.tether.create_group(create, None).await.expect("created");
    let later = w.tether.clone().with_clock(Arc::new(crate::fake::FakeClock::starting_at(chrono::Utc::now() + chrono::TimeDelta::seconds(61))));
    later.reconcile(later.deadline_in(Duration::from_secs(5))).await.expect("reconcile");
    let paused = w.tether.group(&group.id).await.expect("group");
    assert_eq!(paused.state, GroupState::Paused, "{:?}", paused.history);
    let runs = paused.history.iter().filter(|h| h.by.as_deref() == Some("schedule `* * * * *` (Asia/Tokyo)")).count();
    later.reconcile(later.deadline_in(Duration::from_secs(5))).await.expect("reconcile");
    let again = w.tether.group(&group.id).await.expect("group");
    assert_eq!(again.history.iter().filter(|h| h.by.as_deref() == Some("schedule `* * * * *` (Asia/Tokyo)")).count(), runs, "once per slot");
}
