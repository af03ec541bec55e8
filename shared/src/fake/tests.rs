//! One test per rule the fakes enforce, and the service's core loop run on them.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::error::ErrorClass;
use crate::events::{InstanceEvent, InstanceState};
use crate::model::{test_spec, Market, Node, NodeId, NodeSpec, NodeState, Persistence};
use crate::ports::{Claim, EniRequest, IdempotencyStore, Instances, LaunchRequest, Network, NodeStore};
use crate::service::{Outcome, Ports, Settings, Tether};

const SUBNET: &str = "subnet-1";

fn ec2() -> FakeEc2 {
    let ec2 = FakeEc2::new(42);
    ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().unwrap(), "us-east-1a");
    ec2
}

fn node_id(n: u8) -> NodeId {
    NodeId::parse(&format!("tn-{:032x}", n)).unwrap()
}

fn eni_request(node: u8, private_ip: Option<Ipv4Addr>) -> EniRequest {
    EniRequest { node_id: node_id(node), subnet_id: SUBNET.into(), security_group_ids: vec!["sg-1".into()], private_ip, secondary_ip_count: 0, ipv6_count: 0, tags: Default::default(), device_index: 0 }
}

async fn eni(ec2: &FakeEc2, node: u8) -> String {
    ec2.create_eni(&eni_request(node, None)).await.unwrap().id
}

fn request<'a>(id: &'a NodeId, spec: &'a NodeSpec, eni_id: &'a str, generation: u64, instance_type: &'a str, market: Market) -> LaunchRequest<'a> {
    LaunchRequest { node_id: id, generation, spec, eni_id, extra_enis: &[], instance_type, market, client_token: id.client_token(generation) }
}

fn code(e: &crate::AwsError) -> &str {
    e.code.as_deref().unwrap_or("")
}

// ---- private IPs ----

#[tokio::test]
async fn a_private_ip_held_by_an_eni_of_the_subnet_is_refused() {
    let ec2 = ec2();
    let ip = Ipv4Addr::new(10, 0, 1, 10);
    ec2.create_eni(&eni_request(1, Some(ip))).await.unwrap();
    let e = ec2.create_eni(&eni_request(2, Some(ip))).await.unwrap_err();
    assert_eq!(code(&e), "InvalidIPAddress.InUse");
    assert_eq!(e.message, "The specified address is already in use.");
    assert_eq!(e.class, ErrorClass::Permanent);
    assert!(ec2.private_ip_in_use(SUBNET, ip).await.unwrap());
}

#[tokio::test]
async fn a_private_ip_outside_the_cidr_is_refused() {
    let e = ec2().create_eni(&eni_request(1, Some(Ipv4Addr::new(10, 0, 9, 9)))).await.unwrap_err();
    assert_eq!(code(&e), "InvalidParameterValue");
    assert_eq!(e.message, "Address does not fall within the subnet's address range");
}

#[tokio::test]
async fn the_five_reserved_addresses_are_refused() {
    let ec2 = ec2();
    for last in [0, 1, 2, 3, 255] {
        let e = ec2.create_eni(&eni_request(last, Some(Ipv4Addr::new(10, 0, 1, last)))).await.unwrap_err();
        assert_eq!((code(&e), e.message.as_str()), ("InvalidParameterValue", "Address is in subnet's reserved address range"), ".{last}");
    }
    assert!(ec2.create_eni(&eni_request(4, Some(Ipv4Addr::new(10, 0, 1, 4)))).await.is_ok());
}

#[tokio::test]
async fn random_private_ips_are_unique_never_reserved_and_follow_the_seed() {
    async fn picks(seed: u64) -> (Vec<Ipv4Addr>, crate::AwsError) {
        let ec2 = FakeEc2::new(seed);
        ec2.set_throttling(false);
        ec2.add_subnet(SUBNET, "10.0.1.0/28".parse().unwrap(), "us-east-1a");
        let mut ips = Vec::new();
        for n in 0..11 {
            ips.push(ec2.create_eni(&eni_request(n, None)).await.unwrap().private_ip);
        }
        (ips, ec2.create_eni(&eni_request(11, None)).await.unwrap_err())
    }
    let (ips, full) = picks(7).await;
    let mut sorted = ips.clone();
    sorted.sort();
    let usable: Vec<Ipv4Addr> = (4..=14).map(|n| Ipv4Addr::new(10, 0, 1, n)).collect();
    assert_eq!(sorted, usable, "the 11 usable addresses of a /28, each once");
    assert_eq!(code(&full), "InsufficientFreeAddressesInSubnet");
    assert_eq!(picks(7).await.0, ips, "same seed, same picks");
}

// ---- launches on an ENI ----

#[tokio::test]
async fn a_launch_on_an_eni_held_by_a_live_instance_is_refused() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::Spot)).await.unwrap();
    let e = ec2.launch(&request(&id, &spec, &eni, 2, "m5.large", Market::Spot)).await.unwrap_err();
    assert_eq!(code(&e), "InvalidNetworkInterface.InUse");
    assert_eq!(e.message, format!("Interface: [{eni}] in use."));
    assert_eq!(e.class, ErrorClass::EniInUse);
    assert_eq!(ec2.instances().len(), 1, "nothing launched");
}

#[tokio::test]
async fn a_launch_on_an_unknown_eni_is_not_found() {
    let ec2 = ec2();
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    let e = ec2.launch(&request(&id, &spec, "eni-nope", 1, "m5.large", Market::Spot)).await.unwrap_err();
    assert_eq!(code(&e), "InvalidNetworkInterfaceID.NotFound");
    assert_eq!(e.class, ErrorClass::NotFound);
}

#[tokio::test]
async fn the_same_client_token_and_parameters_return_the_same_instance() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    let req = request(&id, &spec, &eni, 1, "m5.large", Market::Spot);
    let first = ec2.launch(&req).await.unwrap();
    let again = ec2.launch(&req).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(ec2.instances().len(), 1);
    // Even after the instance is gone, with `gone` saying so.
    ec2.terminate(&first.id).await.unwrap();
    ec2.advance();
    let late = ec2.launch(&req).await.unwrap();
    assert_eq!((late.id.as_str(), late.gone), (first.id.as_str(), true));
    assert_eq!(ec2.instances().len(), 1);
}

#[tokio::test]
async fn the_same_client_token_with_other_parameters_is_a_mismatch() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large", "m6i.large"], true));
    ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::Spot)).await.unwrap();
    let e = ec2.launch(&request(&id, &spec, &eni, 1, "m6i.large", Market::Spot)).await.unwrap_err();
    assert_eq!(code(&e), "IdempotentParameterMismatch");
    assert_eq!(e.class, ErrorClass::Permanent);
    assert_eq!(ec2.instances().len(), 1);
}

#[tokio::test]
async fn a_failed_launch_does_not_use_up_its_client_token() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    ec2.set_out_of_capacity("m5.large", Market::Spot, true);
    let req = request(&id, &spec, &eni, 1, "m5.large", Market::Spot);
    assert_eq!(ec2.launch(&req).await.unwrap_err().class, ErrorClass::NoCapacity);
    assert_eq!(ec2.find_launched(&req.client_token).await.unwrap(), None);
    // Another candidate with the same token launches (no IdempotentParameterMismatch).
    let on_demand = ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::OnDemand)).await.unwrap();
    assert_eq!(on_demand.market, Market::OnDemand);
}

#[tokio::test]
async fn find_launched_finds_the_instance_of_a_client_token() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    assert_eq!(ec2.find_launched(&id.client_token(1)).await.unwrap(), None);
    let launched = ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::Spot)).await.unwrap();
    assert_eq!(ec2.find_launched(&id.client_token(1)).await.unwrap(), Some(launched));
    assert_eq!(ec2.find_launched(&id.client_token(2)).await.unwrap(), None);
}

#[tokio::test]
async fn a_capacity_outage_hits_one_type_on_one_market() {
    let ec2 = ec2();
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    ec2.set_out_of_capacity("m5.large", Market::Spot, true);
    let (a, b, c) = (eni(&ec2, 1).await, eni(&ec2, 2).await, eni(&ec2, 3).await);
    let e = ec2.launch(&request(&id, &spec, &a, 1, "m5.large", Market::Spot)).await.unwrap_err();
    assert_eq!(code(&e), "InsufficientInstanceCapacity");
    assert!(e.message.contains("us-east-1a"), "{}", e.message);
    assert!(ec2.launch(&request(&id, &spec, &b, 2, "m6i.large", Market::Spot)).await.is_ok());
    assert!(ec2.launch(&request(&id, &spec, &c, 3, "m5.large", Market::OnDemand)).await.is_ok());
    ec2.set_out_of_capacity("m5.large", Market::Spot, false);
    assert!(ec2.launch(&request(&id, &spec, &a, 1, "m5.large", Market::Spot)).await.is_ok());
}

// ---- termination and the ENI ----

#[tokio::test]
async fn the_eni_is_freed_only_once_the_instance_has_terminated() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    let first = ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::Spot)).await.unwrap();
    ec2.terminate(&first.id).await.unwrap();
    assert_eq!(ec2.describe_instance(&first.id).await.unwrap().unwrap().state, "shutting-down");
    let e = ec2.launch(&request(&id, &spec, &eni, 2, "m5.large", Market::Spot)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::EniInUse, "not yet free while shutting down");
    assert_eq!(ec2.advance(), 1);
    let gone = ec2.describe_instance(&first.id).await.unwrap().unwrap();
    assert_eq!((gone.state.as_str(), gone.primary_eni_id, gone.private_ip), ("terminated", None, None));
    let view = ec2.enis().into_iter().find(|e| e.id == eni).unwrap();
    assert_eq!(view.instance_id, None, "kept and available (DeleteOnTermination=false)");
    let second = ec2.launch(&request(&id, &spec, &eni, 2, "m5.large", Market::Spot)).await.unwrap();
    assert_ne!(second.id, first.id);
    // The events EC2 emitted, in order.
    let states: Vec<_> = ec2
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            InstanceEvent::StateChange { instance_id, state } if instance_id == first.id => Some(state),
            _ => None,
        })
        .collect();
    assert_eq!(states, [InstanceState::Pending, InstanceState::ShuttingDown, InstanceState::Terminated]);
    // Terminating what is gone or unknown is done.
    assert!(ec2.terminate(&first.id).await.is_ok());
    assert!(ec2.terminate("i-unknown").await.is_ok());
}

#[tokio::test]
async fn an_eni_attached_to_a_live_instance_cannot_be_deleted() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    let launched = ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::Spot)).await.unwrap();
    let e = ec2.delete_eni(&eni).await.unwrap_err();
    assert_eq!((code(&e), e.class), ("InvalidNetworkInterface.InUse", ErrorClass::EniInUse));
    ec2.terminate(&launched.id).await.unwrap();
    assert!(ec2.delete_eni(&eni).await.is_err(), "still attached while shutting down");
    ec2.advance();
    ec2.delete_eni(&eni).await.unwrap();
    assert!(ec2.enis().is_empty());
    assert!(ec2.delete_eni(&eni).await.is_ok(), "an ENI already gone counts as deleted");
}

// ---- Elastic IPs ----

#[tokio::test]
async fn an_elastic_ip_stays_on_the_eni_across_instances() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    let (allocation, public_ip) = ec2.allocate_eip(&id).await.unwrap();
    assert_eq!(ec2.allocate_eip(&id).await.unwrap(), (allocation.clone(), public_ip.clone()), "the node's earlier one");
    assert_eq!(ec2.eips()[0].node_id.as_deref(), Some(id.as_str()));
    assert_eq!(ec2.associate_eip(&allocation, &eni).await.unwrap(), public_ip);
    assert_eq!(ec2.associate_eip(&allocation, &eni).await.unwrap(), public_ip, "again: fine");
    let first = ec2.launch(&request(&id, &spec, &eni, 1, "m5.large", Market::Spot)).await.unwrap();
    assert_eq!(ec2.describe_instance(&first.id).await.unwrap().unwrap().public_ip.as_deref(), Some(public_ip.as_str()));
    assert_eq!(ec2.eip_on_eni(&eni).await.unwrap().unwrap().instance_id.as_deref(), Some(first.id.as_str()));
    ec2.terminate(&first.id).await.unwrap();
    ec2.advance();
    let kept = ec2.eip_on_eni(&eni).await.unwrap().unwrap();
    assert_eq!((kept.network_interface_id.as_deref(), kept.instance_id), (Some(eni.as_str()), None));
    let second = ec2.launch(&request(&id, &spec, &eni, 2, "m5.large", Market::Spot)).await.unwrap();
    let view = ec2.instances().into_iter().find(|i| i.id == second.id).unwrap();
    assert_eq!((view.public_ip.as_deref(), view.node_id.as_deref(), view.generation), (Some(public_ip.as_str()), Some(id.as_str()), Some(2)));
}

#[tokio::test]
async fn an_elastic_ip_held_elsewhere_is_not_taken() {
    let ec2 = ec2();
    let (mine, theirs) = (eni(&ec2, 1).await, ec2.hand_create_eni(SUBNET).unwrap());
    let (allocation, _) = ec2.hand_allocate_eip().unwrap();
    ec2.hand_associate_eip(&allocation, &theirs).unwrap();
    let e = ec2.associate_eip(&allocation, &mine).await.unwrap_err();
    assert_eq!((code(&e), e.class), ("Resource.AlreadyAssociated", ErrorClass::Permanent));
    assert!(e.message.contains(&theirs), "{}", e.message);
    // Disassociating from my ENI leaves theirs alone.
    ec2.disassociate_eip(&allocation, &mine).await.unwrap();
    assert_eq!(ec2.describe_eip(&allocation).await.unwrap().unwrap().network_interface_id.as_deref(), Some(theirs.as_str()));
    let missing = ec2.associate_eip("eipalloc-nope", &mine).await.unwrap_err();
    assert_eq!(code(&missing), "InvalidAllocationID.NotFound");
}

#[tokio::test]
async fn an_associated_elastic_ip_is_released_only_after_disassociation() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (allocation, _) = ec2.allocate_eip(&node_id(1)).await.unwrap();
    ec2.associate_eip(&allocation, &eni).await.unwrap();
    let e = ec2.release_eip(&allocation).await.unwrap_err();
    assert_eq!(code(&e), "InvalidIPAddress.InUse");
    ec2.disassociate_eip(&allocation, &eni).await.unwrap();
    assert_eq!(ec2.eip_on_eni(&eni).await.unwrap(), None);
    ec2.release_eip(&allocation).await.unwrap();
    assert_eq!(ec2.describe_eip(&allocation).await.unwrap(), None);
    assert!(ec2.release_eip(&allocation).await.is_ok(), "released already counts as released");
}

#[tokio::test]
async fn deleting_an_eni_disassociates_its_elastic_ip() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (allocation, _) = ec2.allocate_eip(&node_id(1)).await.unwrap();
    ec2.associate_eip(&allocation, &eni).await.unwrap();
    ec2.delete_eni(&eni).await.unwrap();
    let eip = ec2.describe_eip(&allocation).await.unwrap().unwrap();
    assert_eq!((eip.network_interface_id, eip.association_id), (None, None));
}

// ---- throttling ----

#[tokio::test]
async fn run_instances_is_throttled_by_its_own_bucket_of_5_refilling_2_per_second() {
    let ec2 = ec2();
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    let mut enis = Vec::new();
    for n in 0..7 {
        enis.push(eni(&ec2, n).await);
    }
    for (g, eni) in enis.iter().take(5).enumerate() {
        ec2.launch(&request(&id, &spec, eni, g as u64 + 1, "m5.large", Market::Spot)).await.unwrap();
    }
    let e = ec2.launch(&request(&id, &spec, &enis[5], 6, "m5.large", Market::Spot)).await.unwrap_err();
    assert_eq!((code(&e), e.class), ("RequestLimitExceeded", ErrorClass::Transient));
    assert!(ec2.describe_subnet(SUBNET).await.is_ok(), "other classes have their own buckets");
    ec2.advance_clock(Duration::from_millis(499));
    assert!(ec2.launch(&request(&id, &spec, &enis[5], 6, "m5.large", Market::Spot)).await.is_err());
    ec2.advance_clock(Duration::from_millis(1));
    ec2.launch(&request(&id, &spec, &enis[5], 6, "m5.large", Market::Spot)).await.unwrap();
    assert_eq!(ec2.instances().len(), 6);
}

#[tokio::test]
async fn each_action_has_its_own_bucket_at_awss_figures() {
    let ec2 = ec2();
    for _ in 0..100 {
        ec2.describe_subnet(SUBNET).await.unwrap();
    }
    assert_eq!(code(&ec2.describe_subnet(SUBNET).await.unwrap_err()), "RequestLimitExceeded");
    assert!(ec2.describe_eip("eipalloc-unknown").await.is_ok(), "DescribeAddresses has its own bucket");
    for _ in 0..100 {
        ec2.terminate("i-unknown").await.unwrap();
    }
    assert_eq!(code(&ec2.terminate("i-unknown").await.unwrap_err()), "RequestLimitExceeded");
    for _ in 0..50 {
        ec2.release_eip("eipalloc-unknown").await.unwrap();
    }
    assert_eq!(code(&ec2.release_eip("eipalloc-unknown").await.unwrap_err()), "RequestLimitExceeded", "other mutating actions: 50");
    ec2.advance_clock(Duration::from_secs(1));
    assert!(ec2.describe_subnet(SUBNET).await.is_ok(), "20 per second back");
    assert!(ec2.terminate("i-unknown").await.is_ok(), "5 per second back");
    assert!(ec2.release_eip("eipalloc-unknown").await.is_ok(), "5 per second back");
    assert_eq!(ec2.call_count("DescribeSubnets"), 102);
}

// ---- injected faults ----

#[tokio::test]
async fn fail_next_fails_once_without_effect() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    ec2.fail_next("RunInstances", "InternalError");
    let req = request(&id, &spec, &eni, 1, "m5.large", Market::Spot);
    let e = ec2.launch(&req).await.unwrap_err();
    assert_eq!((code(&e), e.class, e.operation), ("InternalError", ErrorClass::Transient, "RunInstances"));
    assert!(ec2.instances().is_empty());
    assert!(ec2.launch(&req).await.is_ok(), "only the next call");
}

#[tokio::test]
async fn fail_next_after_applies_the_effect_and_still_fails() {
    let ec2 = ec2();
    let eni = eni(&ec2, 1).await;
    let (id, spec) = (node_id(1), test_spec(&["m5.large"], true));
    ec2.inject("RunInstances", Fault { code: None, when: When::After });
    let req = request(&id, &spec, &eni, 1, "m5.large", Market::Spot);
    let e = ec2.launch(&req).await.unwrap_err();
    assert_eq!((e.code.as_deref(), e.class), (None, ErrorClass::Transient));
    assert_eq!(ec2.instances().len(), 1, "it launched all the same");
    let found = ec2.find_launched(&req.client_token).await.unwrap().unwrap();
    assert_eq!(ec2.launch(&req).await.unwrap(), found, "the retry gets the same instance");
    // A fault on one call of a composite port method: AssociateAddress after DescribeAddresses.
    let (allocation, _) = ec2.allocate_eip(&id).await.unwrap();
    ec2.fail_next_after("AssociateAddress", "InternalError");
    assert!(ec2.associate_eip(&allocation, &eni).await.is_err());
    assert_eq!(ec2.eip_on_eni(&eni).await.unwrap().map(|e| e.allocation_id), Some(allocation));
    assert_eq!(ec2.pending_faults(), 0);
}

// ---- instance types and import ----

#[tokio::test]
async fn types_not_offered_have_no_interface_limit() {
    let ec2 = ec2();
    let asked = ["m5.large".to_owned(), "x9.huge".to_owned(), "t3.micro".to_owned()];
    let limits = |l: Vec<(String, Option<u8>)>| l.into_iter().map(|(_, m)| m).collect::<Vec<_>>();
    assert_eq!(limits(ec2.interface_limits(&asked).await.unwrap()), [Some(3), None, Some(2)]);
    ec2.add_instance_type("x9.huge");
    assert_eq!(limits(ec2.interface_limits(&asked).await.unwrap()), [Some(3), Some(3), Some(2)]);
}

#[tokio::test]
async fn an_imported_instance_keeps_its_eni_after_adoption() {
    let ec2 = ec2();
    let instance_id = ec2.hand_run_instance(SUBNET, "m5.large", "ami-1").unwrap();
    let importable = ec2.importable(&instance_id).await.unwrap().unwrap();
    assert_eq!((importable.node_tag.as_deref(), importable.spec.subnet_id.as_str()), (None, SUBNET));
    let node = node_id(9);
    ec2.adopt(&node, &importable).await.unwrap();
    let eni = ec2.enis().into_iter().find(|e| e.id == importable.eni.id).unwrap();
    assert_eq!((eni.delete_on_termination, eni.node_id.as_deref()), (Some(false), Some(node.as_str())));
    ec2.terminate(&instance_id).await.unwrap();
    ec2.advance();
    assert_eq!(ec2.enis().len(), 1, "the ENI outlives it");
    assert_eq!(ec2.importable("i-unknown").await.unwrap(), None);
}

// ---- the node store ----

fn node() -> Node {
    Node::new(test_spec(&["m5.large"], true), Persistence::default(), chrono::DateTime::UNIX_EPOCH)
}

#[tokio::test]
async fn writes_are_conditional_on_the_version() {
    let store = FakeStore::new();
    let n = node();
    store.create(&n).await.unwrap();
    assert_eq!(store.create(&n).await.unwrap_err().class, ErrorClass::Conflict);
    let saved = store.save(&n).await.unwrap();
    assert_eq!(saved.version, 1);
    let stale = store.save(&n).await.unwrap_err();
    assert_eq!((code(&stale), stale.class), ("ConditionalCheckFailedException", ErrorClass::Conflict));
    assert_eq!(store.save(&saved).await.unwrap().version, 2);
    assert_eq!(store.get(&n.id).await.unwrap().unwrap().version, 2);
    assert_eq!(store.save(&node()).await.unwrap_err().class, ErrorClass::Conflict, "absent: no version");
}

#[tokio::test]
async fn find_by_instance_follows_the_current_instance() {
    let store = FakeStore::new();
    let mut n = node();
    store.create(&n).await.unwrap();
    n = crate::lifecycle::launched(&n, "i-1".into(), "m5.large".into(), Market::Spot, chrono::Utc::now());
    n = store.save(&n).await.unwrap();
    assert_eq!(store.find_by_instance("i-1").await.unwrap().map(|x| x.id), Some(n.id.clone()));
    n = crate::lifecycle::launched(&n, "i-2".into(), "m5.large".into(), Market::Spot, chrono::Utc::now());
    store.save(&n).await.unwrap();
    assert_eq!(store.find_by_instance("i-1").await.unwrap(), None);
    assert!(store.find_by_instance("i-2").await.unwrap().is_some());
}

#[tokio::test]
async fn list_pages_like_the_adapter() {
    let store = FakeStore::new();
    for _ in 0..5 {
        store.create(&node()).await.unwrap();
    }
    let (first, next) = store.list(2, None).await.unwrap();
    assert_eq!((first.len(), next.as_ref()), (2, Some(&first[1].id)));
    let (second, next) = store.list(2, next.as_ref()).await.unwrap();
    let (third, last) = store.list(2, next.as_ref()).await.unwrap();
    assert_eq!((second.len(), third.len(), last), (2, 1, None));
    let mut all: Vec<_> = first.iter().chain(&second).chain(&third).map(|n| n.id.clone()).collect();
    all.dedup();
    assert_eq!(all.len(), 5);
    let (exact, after) = store.list(5, None).await.unwrap();
    assert_eq!((exact.len(), store.list(5, after.as_ref()).await.unwrap().0.len()), (5, 0), "a full last page names its last id");
}

#[tokio::test]
async fn store_faults_fail_the_named_operation() {
    let store = FakeStore::new();
    let n = node();
    store.create(&n).await.unwrap();
    store.fail_next_after("PutItem", "InternalServerError");
    let e = store.save(&n).await.unwrap_err();
    assert_eq!((e.service, e.class), ("DynamoDB", ErrorClass::Transient));
    assert_eq!(store.get(&n.id).await.unwrap().unwrap().version, 1, "the write happened");
    store.fail_next("GetItem", "ProvisionedThroughputExceededException");
    assert!(store.get(&n.id).await.is_err());
    assert_eq!(store.call_count("GetItem"), 2);
}

// ---- idempotency records ----

#[tokio::test]
async fn idempotency_claims_replay_and_mismatch() {
    let idem = FakeIdempotency::new();
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::New);
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::InProgress);
    assert_eq!(idem.claim("k", "other").await.unwrap(), Claim::Mismatch);
    idem.complete("k", "fp", 201, "{}").await.unwrap();
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::Replay { status: 201, body: "{}".into() });
    idem.release("k").await.unwrap();
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::New, "released: a new claim");
}

#[tokio::test]
async fn a_stale_claim_is_taken_over_and_an_answer_expires_after_a_day() {
    let idem = FakeIdempotency::new();
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::New);
    idem.advance_clock(Duration::from_secs(60));
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::InProgress, "60 s is not stale yet");
    idem.advance_clock(Duration::from_secs(1));
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::New, "stale: taken over");
    idem.complete("k", "fp", 200, "ok").await.unwrap();
    idem.advance_clock(Duration::from_secs(24 * 3600));
    assert!(matches!(idem.claim("k", "fp").await.unwrap(), Claim::Replay { .. }));
    idem.advance_clock(Duration::from_secs(1));
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::New, "expired");
    // complete after release writes the whole record again: its answer is replayed.
    idem.release("k").await.unwrap();
    idem.complete("k", "fp", 200, "ok").await.unwrap();
    assert_eq!(idem.claim("k", "fp").await.unwrap(), Claim::Replay { status: 200, body: "ok".into() });
    assert_eq!(idem.claim("k", "other").await.unwrap(), Claim::Mismatch);
}

// ---- the service on the fakes ----

#[tokio::test]
async fn a_node_comes_back_as_generation_2_on_the_same_eni_and_ip() {
    let ec2 = Arc::new(ec2());
    let store = Arc::new(FakeStore::new());
    let tether = Tether::new(
        Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() },
        Settings { retry_min_delay: Duration::from_millis(1), retry_max_delay: Duration::from_millis(5), ..Settings::default() },
    );
    let deadline = chrono::Utc::now() + Duration::from_secs(30);
    let spec = NodeSpec { subnet_id: SUBNET.into(), ..test_spec(&["m5.large"], true) };
    let persistence = Persistence { private_ip: Some(Ipv4Addr::new(10, 0, 1, 50)), allocate_elastic_ip: true, ..Persistence::default() };
    let created = tether.create_node(spec, persistence, None).await.unwrap();
    let Outcome::Launched { generation: 1, instance_id: first, .. } = tether.resume(&created.id, deadline, None).await.unwrap() else {
        panic!("resume did not launch")
    };
    let before = tether.node(&created.id).await.unwrap();
    let (eni, eip) = (before.eni.clone().unwrap(), before.elastic_ip.clone().unwrap());

    ec2.terminate(&first).await.unwrap();
    ec2.advance();
    let event = InstanceEvent::StateChange { instance_id: first.clone(), state: InstanceState::Terminated };
    let outcome = tether.handle_event("ev-1", "invocation-1", &event, deadline).await.unwrap();
    let Outcome::Launched { generation: 2, instance_id: second, .. } = outcome else { panic!("no replacement: {outcome:?}") };

    let node = tether.node(&created.id).await.unwrap();
    assert_eq!((node.state, node.generation, node.instance_id()), (NodeState::Running, 2, Some(second.as_str())));
    assert_eq!(node.eni.as_ref(), Some(&eni));
    let live: Vec<_> = ec2.instances().into_iter().filter(InstanceView::is_live).collect();
    assert_eq!(live.len(), 1, "exactly one live instance");
    let view = &live[0];
    assert_eq!(view.id, second);
    assert_eq!(view.primary_eni_id.as_deref(), Some(eni.id.as_str()));
    assert_eq!(view.private_ip, Some(Ipv4Addr::new(10, 0, 1, 50)));
    assert_eq!(view.public_ip.as_deref(), Some(eip.public_ip.as_str()));
    assert_eq!((view.node_id.as_deref(), view.generation), (Some(created.id.as_str()), Some(2)));
    assert_eq!((ec2.enis().len(), ec2.eips().len()), (1, 1), "nothing leaked");
}

/// With more nodes than one run checks, each run goes on where the last one stopped, and
/// the run that reaches the last node sends the next one back to the first.
#[tokio::test]
async fn reconciler_runs_take_turns_through_more_nodes_than_one_run_checks() {
    let ec2 = Arc::new(ec2());
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), volumes: ec2.clone(), instances: ec2 };
    let tether = Tether::new(ports, Settings { reconcile_max_nodes: 2, ..Settings::default() });
    let spec = NodeSpec { subnet_id: SUBNET.into(), ..test_spec(&["m5.large"], true) };
    for _ in 0..5 {
        tether.create_node(spec.clone(), Persistence::default(), None).await.unwrap();
    }
    let deadline = || chrono::Utc::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let report = tether.reconcile(deadline()).await.unwrap();
        runs.push((report.nodes_checked, report.complete, report.started_after.is_some()));
        let (page, _) = tether.nodes(0, report.started_after.as_ref()).await.unwrap();
        seen.extend(page.into_iter().take(report.nodes_checked).map(|n| n.id));
    }
    assert_eq!(runs, [(2, false, false), (2, false, true), (1, true, true), (2, false, false)]);
    let all: std::collections::BTreeSet<_> = store.nodes().into_iter().map(|n| n.id).collect();
    let first_three_runs: std::collections::BTreeSet<_> = seen[..5].iter().cloned().collect();
    assert_eq!(first_three_runs, all, "every node checked once in three runs");
}

// ---- the RunInstances pace ----

#[tokio::test]
async fn the_pace_gives_five_slots_at_once_then_one_every_half_second_within_its_horizon() {
    use crate::ports::LaunchPace;
    let store = FakeStore::new();
    let now = chrono::Utc::now();
    let horizon = Duration::from_secs(2);
    let mut slots = Vec::new();
    for _ in 0..9 {
        slots.push(store.take(now, horizon).await.expect("slot").at);
    }
    let offsets: Vec<Option<i64>> = slots.iter().map(|at| at.map(|at| (at - now).num_milliseconds())).collect();
    assert_eq!(offsets, vec![Some(0), Some(0), Some(0), Some(0), Some(0), Some(500), Some(1000), Some(1500), Some(2000)]);
    let full = store.take(now, horizon).await.expect("answered");
    assert_eq!(full.at, None, "the tenth is beyond the 2 s horizon and takes no slot");
    assert_eq!((full.next_free - now).num_milliseconds(), 2500);
    // After a quiet while the burst is back.
    let later = now + Duration::from_secs(10);
    assert_eq!(store.take(later, horizon).await.expect("slot").at, Some(later));
    // Refused pools come with every slot until they expire.
    store.refuse_pool("m5.large/spot/us-east-1a", later + Duration::from_secs(180)).await.expect("noted");
    let slot = store.take(later, horizon).await.expect("slot");
    assert_eq!(slot.refused.keys().collect::<Vec<_>>(), vec!["m5.large/spot/us-east-1a"]);
    let expired = store.take(later + Duration::from_secs(181), horizon).await.expect("slot");
    assert!(expired.refused.is_empty());
}

// ---- events through a queue ----

/// The queue's SendMessage, recorded.
#[derive(Default)]
struct RecordedQueue(std::sync::Mutex<Vec<(String, Duration)>>);

#[async_trait::async_trait]
impl crate::ports::EventQueue for RecordedQueue {
    async fn requeue(&self, _queue_arn: &str, body: &str, delay: Duration) -> Result<(), crate::AwsError> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((body.to_owned(), delay));
        Ok(())
    }
}

#[tokio::test]
async fn a_queued_batch_acknowledges_what_it_handled_or_can_never_handle_and_requeues_what_waits_for_the_pace() {
    let ec2 = Arc::new(ec2());
    ec2.set_throttling(false);
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let tether = Tether::new(ports, Settings { retry_min_delay: Duration::from_millis(1), retry_max_delay: Duration::from_millis(5), ..Settings::default() });
    let deadline = chrono::Utc::now() + Duration::from_secs(30);
    let mut instances = Vec::new();
    for _ in 0..1 {
        let node = tether.create_node(NodeSpec { subnet_id: SUBNET.into(), ..test_spec(&["m5.large"], true) }, Persistence::default(), None).await.unwrap();
        let Outcome::Launched { instance_id, .. } = tether.resume(&node.id, deadline, None).await.unwrap() else { panic!("not launched") };
        instances.push(instance_id);
    }
    // Other launches took the pace's burst and more: the next slot is about 3.5 s away.
    for _ in 0..12 {
        crate::ports::LaunchPace::take(&*store, chrono::Utc::now(), Duration::from_secs(60)).await.unwrap();
    }
    for id in &instances {
        ec2.reclaim(id);
    }
    ec2.advance();
    let terminated = |i: usize| {
        serde_json::json!({"id": format!("ev-{i}"), "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {"instance-id": instances[i], "state": "terminated"}})
    };
    let records = serde_json::json!({"Records": [
        {"messageId": "m-0", "body": terminated(0).to_string(), "eventSourceARN": "arn:aws:sqs:us-east-1:1:q"},
        {"messageId": "m-gone", "body": serde_json::json!({"id": "ev-x", "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {"instance-id": "i-nobodys", "state": "terminated"}}).to_string(), "eventSourceARN": "arn:aws:sqs:us-east-1:1:q"},
        {"messageId": "m-bad", "body": "not json", "eventSourceARN": "arn:aws:sqs:us-east-1:1:q"},
        {"messageId": "m-other", "body": serde_json::json!({"detail-type": "EC2 Spot Instance Interruption Warning"}).to_string(), "eventSourceARN": "arn:aws:sqs:us-east-1:1:q"},
    ]});
    let queue = RecordedQueue::default();
    // A deadline this close leaves no slot within the horizon: the event waits outside.
    let soon = chrono::Utc::now() + Duration::from_secs(6);
    let answer = crate::intake::handle_batch(&tether, &queue, &records, "req-1", soon, &["EC2 Instance State-change Notification"]).await;
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}), "nothing for SQS to deliver again");
    let requeued = queue.0.lock().unwrap().clone();
    assert_eq!(requeued.len(), 1, "the waiting event is put back once: {requeued:?}");
    assert!(requeued[0].0.contains(instances[0].as_str()) && requeued[0].1 > Duration::ZERO);
    // Delivered again with time to wait for its slot, it launches the replacement.
    let again = serde_json::json!({"Records": [{"messageId": "m-0b", "body": requeued[0].0, "eventSourceARN": "arn:aws:sqs:us-east-1:1:q"}]});
    let answer = crate::intake::handle_batch(&tether, &queue, &again, "req-2", deadline, &["EC2 Instance State-change Notification"]).await;
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));
    let node = store.nodes().into_iter().find(|n| n.generation == 2).expect("a replacement");
    assert_eq!(node.state, NodeState::Running);
}

// ---- the reconciler in bulk ----

/// One run over 1,500 running nodes costs EC2 pages, not nodes: two pages of instances, two
/// of ENIs, the Elastic IPs twice (all, and Tether's); a node whose instance is gone from the
/// bulk view is described alone (fresh, never an eventually consistent absence) and recovered.
#[tokio::test]
async fn a_reconciler_run_costs_pages_and_describes_alone_only_what_the_bulk_view_cannot_answer() {
    let ec2 = Arc::new(ec2());
    ec2.set_throttling(false);
    ec2.add_subnet("subnet-big", "10.1.0.0/20".parse().unwrap(), "us-east-1a");
    let store = Arc::new(FakeStore::new());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let tether = Tether::new(ports, Settings { pace: false, ..Settings::default() });
    let deadline = || chrono::Utc::now() + Duration::from_secs(30);
    let spec = NodeSpec { subnet_id: "subnet-big".into(), ..test_spec(&["m5.large"], true) };
    let mut instances = Vec::new();
    for _ in 0..1500 {
        let node = tether.create_node(spec.clone(), Persistence::default(), None).await.unwrap();
        let Outcome::Launched { instance_id, .. } = tether.resume(&node.id, deadline(), None).await.unwrap() else { panic!("not launched") };
        instances.push(instance_id);
    }
    let before = ec2.calls();
    let report = tether.reconcile(deadline()).await.unwrap();
    assert_eq!((report.nodes_checked, report.complete, report.failed.len()), (1500, true, 0), "{report:?}");
    let spent = |op: &str, before: &std::collections::BTreeMap<&str, u64>| ec2.call_count(op) - before.get(op).copied().unwrap_or(0);
    assert_eq!(
        [spent("DescribeInstances", &before), spent("DescribeNetworkInterfaces", &before), spent("DescribeAddresses", &before)],
        [2, 2, 2],
        "pages of 1,000, and the addresses twice"
    );
    // One instance reclaimed without an event: the next run describes that node alone.
    ec2.reclaim(&instances[7]);
    ec2.advance();
    let before = ec2.calls();
    let report = tether.reconcile(deadline()).await.unwrap();
    assert_eq!(spent("DescribeInstances", &before), 2 + 1, "the pages, then the one node alone: {report:?}");
    assert_eq!(report.repaired.len(), 1, "{report:?}");
    assert!(store.nodes().iter().all(|n| n.state == NodeState::Running));
}
