//! A node's network identity beyond its primary IP (secondary IPs, IPv6, source/dest check,
//! ENI tags) on the fakes: made with the ENI, kept across replacements, changed in place.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::events::{InstanceEvent, InstanceState};
use crate::lifecycle::NodePatch;
use crate::model::{test_spec, Ipv6Request, NodeSpec, Persistence, SecondaryIps};
use crate::ports::Instances;
use crate::service::{Outcome, Ports, Settings, Tether, TetherError};

const SUBNET: &str = "subnet-1";

fn world() -> (Arc<FakeEc2>, Tether) {
    let ec2 = Arc::new(FakeEc2::new(7));
    ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().expect("cidr"), "us-east-1a");
    ec2.add_ipv6_cidr(SUBNET, "2600:1f18:1:100::/64".parse().expect("cidr"));
    ec2.add_subnet("subnet-v4", "10.0.2.0/24".parse().expect("cidr"), "us-east-1a");
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store, network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let settings = Settings { retry_min_delay: Duration::from_millis(1), retry_max_delay: Duration::from_millis(5), ..Settings::default() };
    (ec2, Tether::new(ports, settings))
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

fn deadline() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + Duration::from_secs(30)
}

fn the_eni(ec2: &FakeEc2) -> EniView {
    let enis = ec2.enis();
    assert_eq!(enis.len(), 1, "one ENI: {enis:?}");
    enis[0].clone()
}

#[tokio::test]
async fn the_eni_is_made_with_its_addresses_and_settings_and_keeps_them_across_a_replacement() {
    let (ec2, tether) = world();
    let spec = NodeSpec {
        subnet_id: SUBNET.into(),
        secondary_private_ips: Some(SecondaryIps { count: None, addresses: vec![ip(20), ip(21)] }),
        ipv6: Some(Ipv6Request { count: Some(1), addresses: Vec::new() }),
        source_dest_check: false,
        eni_tags: [("role".to_owned(), "nat".to_owned())].into(),
        ..test_spec(&["m5.large"], true)
    };
    let node = tether.create_node(spec, Persistence { private_ip: Some(ip(10)), ..Persistence::default() }, None).await.expect("create");
    let Outcome::Launched { instance_id: first, .. } = tether.resume(&node.id, deadline(), None).await.expect("resume") else { panic!("no launch") };
    let eni = the_eni(&ec2);
    assert_eq!((eni.private_ip, eni.secondary_private_ips.clone()), (ip(10), vec![ip(20), ip(21)]));
    assert_eq!(eni.ipv6_addresses.len(), 1);
    assert!(!eni.source_dest_check);
    assert_eq!(eni.tags.get("role").map(String::as_str), Some("nat"));
    let recorded = tether.node(&node.id).await.expect("node").eni.expect("eni");
    assert_eq!((recorded.secondary_private_ips.clone(), recorded.ipv6_addresses.clone()), (eni.secondary_private_ips.clone(), eni.ipv6_addresses.clone()));

    ec2.terminate(&first).await.expect("terminate");
    ec2.advance();
    let gone = InstanceEvent::StateChange { instance_id: first, state: InstanceState::Terminated };
    let outcome = tether.handle_event("ev-1", "inv-1", &gone, deadline()).await.expect("event");
    assert!(matches!(outcome, Outcome::Launched { generation: 2, .. }), "{outcome:?}");
    let after = the_eni(&ec2);
    assert_eq!((after.id.clone(), after.secondary_private_ips.clone(), after.ipv6_addresses.clone(), after.source_dest_check), (eni.id, eni.secondary_private_ips, eni.ipv6_addresses, false));
}

#[tokio::test]
async fn a_patch_changes_the_eni_in_place_and_says_so() {
    let (ec2, tether) = world();
    let spec = NodeSpec { subnet_id: SUBNET.into(), secondary_private_ips: Some(SecondaryIps { count: Some(2), addresses: Vec::new() }), ..test_spec(&["m5.large"], true) };
    let node = tether.create_node(spec, Persistence::default(), None).await.expect("create");
    tether.resume(&node.id, deadline(), None).await.expect("resume");
    let picked = the_eni(&ec2).secondary_private_ips;
    assert_eq!(picked.len(), 2);
    let launches = ec2.calls().get("RunInstances").copied();

    let patch = NodePatch {
        secondary_private_ips: Some(SecondaryIps { count: None, addresses: vec![picked[1], ip(30)] }),
        ipv6: Some(Ipv6Request { count: None, addresses: vec!["2600:1f18:1:100::99".parse::<Ipv6Addr>().expect("ip")] }),
        source_dest_check: Some(false),
        eni_tags: Some([("team".to_owned(), "net".to_owned())].into()),
        ..NodePatch::default()
    };
    let patched = tether.patch(&node.id, &patch, Some("alice")).await.expect("patch");
    let eni = the_eni(&ec2);
    assert_eq!(eni.secondary_private_ips, vec![picked[1], ip(30)]);
    assert_eq!(eni.ipv6_addresses, vec!["2600:1f18:1:100::99".parse::<Ipv6Addr>().expect("ip")]);
    assert!(!eni.source_dest_check);
    assert_eq!(eni.tags.get("team").map(String::as_str), Some("net"));
    assert_eq!(patched.eni.as_ref().map(|e| e.secondary_private_ips.clone()), Some(eni.secondary_private_ips.clone()));
    let said = patched.history.iter().map(|h| h.what.as_str()).collect::<Vec<_>>().join("\n");
    assert!(said.contains(&format!("secondary private IPs {} unassigned", picked[0])), "{said}");
    assert!(said.contains("secondary private IPs 10.0.1.30 assigned") && said.contains("source/destination check off"), "{said}");
    assert_eq!(ec2.calls().get("RunInstances").copied(), launches, "nothing launched for it");

    // Back to none: `{}`.
    let none = NodePatch { secondary_private_ips: Some(SecondaryIps { count: None, addresses: Vec::new() }), ..NodePatch::default() };
    let cleared = tether.patch(&node.id, &none, None).await.expect("patch");
    assert!(the_eni(&ec2).secondary_private_ips.is_empty());
    assert_eq!(cleared.spec.secondary_private_ips, None);
}

#[tokio::test]
async fn addresses_ec2_would_refuse_are_refused_before_anything_is_made() {
    let (ec2, tether) = world();
    let refused = |e: TetherError| match e {
        TetherError::Invalid { field, .. } => field,
        other => panic!("not a validation error: {other}"),
    };
    let with = |subnet: &str, secondary: Option<SecondaryIps>, ipv6: Option<Ipv6Request>| NodeSpec {
        subnet_id: subnet.into(),
        secondary_private_ips: secondary,
        ipv6,
        ..test_spec(&["m5.large"], true)
    };
    let primary = Persistence { private_ip: Some(ip(10)), ..Persistence::default() };
    let cases = [
        (with(SUBNET, Some(SecondaryIps { count: None, addresses: vec![ip(10)] }), None), "spec.secondary_private_ips.addresses[0]"),
        (with(SUBNET, Some(SecondaryIps { count: None, addresses: vec![ip(2)] }), None), "spec.secondary_private_ips.addresses[0]"),
        (with(SUBNET, Some(SecondaryIps { count: Some(1), addresses: vec![ip(20)] }), None), "spec.secondary_private_ips.count"),
        (with("subnet-v4", None, Some(Ipv6Request { count: Some(1), addresses: Vec::new() })), "spec.ipv6"),
        (with(SUBNET, None, Some(Ipv6Request { count: None, addresses: vec!["2600:1f18:9::1".parse().expect("ip")] })), "spec.ipv6.addresses[0]"),
    ];
    for (spec, field) in cases {
        let e = tether.create_node(spec, primary.clone(), None).await.expect_err("refused");
        assert_eq!(refused(e), field);
    }
    assert!(ec2.enis().is_empty());
}

/// Named secondary IPs are reserved with the node (in the table and the subnet), like its
/// primary IP: another node asking for one is refused, naming the field; a PATCH that
/// drops one releases it, one that names another claims it.
#[tokio::test]
async fn named_secondary_ips_are_reserved_with_the_node_and_released_by_a_patch() {
    let (ec2, tether) = world();
    tether.create_node(test_spec(&["m5.large"], true), Persistence { private_ip: Some(ip(50)), ..Persistence::default() }, None).await.expect("create");
    let asking = |addresses| NodeSpec { subnet_id: SUBNET.into(), secondary_private_ips: Some(SecondaryIps { count: None, addresses }), ..test_spec(&["m5.large"], true) };
    let refused = tether.create_node(asking(vec![ip(50)]), Persistence::default(), None).await;
    assert!(matches!(&refused, Err(TetherError::Invalid { field, reason }) if field == "spec.secondary_private_ips.addresses" && reason.contains("reserved")), "{refused:?}");
    let node = tether.create_node(asking(vec![ip(51)]), Persistence::default(), None).await.expect("create");
    let in_subnet = |ec2: &FakeEc2| ec2.subnet_reservations().into_iter().map(|(_, _, range)| range.addr()).collect::<Vec<_>>();
    assert!(in_subnet(&ec2).contains(&ip(51)), "kept from EC2's random picks: {:?}", in_subnet(&ec2));
    let refused = tether.create_node(asking(vec![ip(51)]), Persistence::default(), None).await;
    assert!(matches!(&refused, Err(TetherError::Invalid { field, .. }) if field == "spec.secondary_private_ips.addresses"), "{refused:?}");
    let taken = NodePatch { secondary_private_ips: Some(SecondaryIps { count: None, addresses: vec![ip(51), ip(50)] }), ..NodePatch::default() };
    let refused = tether.patch(&node.id, &taken, None).await;
    assert!(matches!(&refused, Err(TetherError::Invalid { field, .. }) if field == "secondary_private_ips.addresses"), "{refused:?}");

    let moved = NodePatch { secondary_private_ips: Some(SecondaryIps { count: None, addresses: vec![ip(52)] }), ..NodePatch::default() };
    tether.patch(&node.id, &moved, None).await.expect("patch");
    assert!(!in_subnet(&ec2).contains(&ip(51)) && in_subnet(&ec2).contains(&ip(52)), "{:?}", in_subnet(&ec2));
    tether.create_node(asking(vec![ip(51)]), Persistence::default(), None).await.expect("51 is free again");
    let refused = tether.create_node(asking(vec![ip(52)]), Persistence::default(), None).await;
    assert!(refused.is_err(), "52 is the node's now");
}

/// An extra ENI deleted by hand while its node is paused: the reconciler puts the node in
/// error naming it (the node cannot launch with its network as it was); a running node's
/// sweep never deletes its extra ENI.
#[tokio::test]
async fn an_extra_eni_deleted_by_hand_puts_the_node_in_error_naming_it() {
    let (ec2, tether) = world();
    let extra = crate::model::ExtraEni { device_index: 1, subnet_id: "subnet-v4".into(), security_group_ids: Vec::new(), private_ip: None, elastic_ip_allocation_id: None };
    let spec = NodeSpec { subnet_id: SUBNET.into(), extra_enis: vec![extra], ..test_spec(&["m5.large"], true) };
    let node = tether.create_node(spec, Persistence::default(), None).await.expect("create");
    tether.resume(&node.id, deadline(), None).await.expect("resume");
    tether.reconcile(deadline()).await.expect("reconcile");
    let running = tether.node(&node.id).await.expect("node");
    let recorded = running.extra_enis.first().cloned().expect("an extra ENI");
    assert!(ec2.enis().iter().any(|e| e.id == recorded.id && e.device_index == Some(1)), "attached at index 1, not swept");

    tether.pause(&node.id, deadline(), None).await.expect("pause");
    ec2.advance();
    ec2.hand_delete_eni(&recorded.id).expect("delete by hand");
    tether.reconcile(deadline()).await.expect("reconcile");
    let after = tether.node(&node.id).await.expect("node");
    assert_eq!(after.state, crate::model::NodeState::Error);
    assert!(after.last_error.as_deref().is_some_and(|e| e.contains(&recorded.id) && e.contains("device index 1")), "{:?}", after.last_error);
}
