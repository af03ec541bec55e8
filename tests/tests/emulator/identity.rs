//! A node's network identity beyond its primary IP, read back from the emulator: secondary
//! private IPs, IPv6 addresses, the source/destination check and the ENI's tags, made with
//! the ENI, the same on every generation, and changed in place by a PATCH.

use std::net::Ipv4Addr;
use std::time::Duration;

use tether::lifecycle::NodePatch;
use tether::model::{Ipv6Request, SecondaryIps};
use tether::{Node, NodeSpec, Persistence, TetherError};
use tether_tests::{Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

/// A subnet of the fixture's VPC with an IPv6 /64 (the VPC gets an Amazon-provided /56).
async fn dual_stack_subnet(fx: &Fixture) -> Result<String, SetupError> {
    let associated = fx.ec2.associate_vpc_cidr_block().vpc_id(&fx.vpc_id).amazon_provided_ipv6_cidr_block(true).send().await?;
    let block = associated.ipv6_cidr_block_association().and_then(|a| a.ipv6_cidr_block()).ok_or("no IPv6 block")?;
    let vpc_block: ipnet::Ipv6Net = block.parse().map_err(|e| format!("{block}: {e}"))?;
    let subnet_block = vpc_block.subnets(64).map_err(|e| e.to_string())?.next().ok_or("no /64")?;
    let subnet = fx
        .ec2
        .create_subnet()
        .vpc_id(&fx.vpc_id)
        .cidr_block("10.0.7.0/24")
        .ipv6_cidr_block(subnet_block.to_string())
        .availability_zone(&fx.availability_zone)
        .send()
        .await?;
    Ok(subnet.subnet().and_then(|s| s.subnet_id()).ok_or("CreateSubnet returned no id")?.to_owned())
}

/// What the emulator says is on the node's current instance's primary ENI: (ENI id,
/// secondary private IPs, IPv6 addresses, source/dest check, the `role` tag).
async fn on_the_eni(fx: &Fixture, node: &Node) -> Result<(String, Vec<String>, Vec<String>, Option<bool>, Option<String>), SetupError> {
    let node = fx.tether.node(&node.id).await?;
    let instance = fx.instance(node.instance_id().ok_or("no instance")?).await?;
    let primary = instance
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
        .and_then(|n| n.network_interface_id())
        .ok_or("no primary ENI")?;
    let eni = fx.eni(primary).await?;
    let secondary = eni.private_ip_addresses().iter().filter(|a| a.primary() != Some(true)).filter_map(|a| a.private_ip_address()).map(str::to_owned).collect();
    let ipv6 = eni.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()).map(str::to_owned).collect();
    let role = eni.tag_set().iter().find(|t| t.key() == Some("role")).and_then(|t| t.value()).map(str::to_owned);
    Ok((primary.to_owned(), secondary, ipv6, eni.source_dest_check(), role))
}

#[tokio::test]
async fn secondary_ips_ipv6_and_the_source_dest_check_stay_on_the_eni_of_every_generation() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let subnet_id = dual_stack_subnet(&fx).await?;
    let ip = |host| Ipv4Addr::new(10, 0, 7, host);
    let spec = NodeSpec {
        subnet_id,
        secondary_private_ips: Some(SecondaryIps { count: None, addresses: vec![ip(20), ip(21)] }),
        ipv6: Some(Ipv6Request { count: Some(1), addresses: Vec::new() }),
        source_dest_check: false,
        eni_tags: [("role".to_owned(), "nat".to_owned())].into(),
        ..fx.spec(&["m5.large"])
    };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    // Named, they are reserved with the node, as a chosen primary IP is: kept from EC2's picks.
    let reserved = fx.ec2.get_subnet_cidr_reservations().subnet_id(&node.spec.subnet_id).send().await?;
    let mut cidrs: Vec<&str> = reserved.subnet_ipv4_cidr_reservations().iter().filter_map(|r| r.cidr()).collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.0.7.20/32", "10.0.7.21/32"]);
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let first = on_the_eni(&fx, &node).await?;
    assert_eq!(first.1, vec!["10.0.7.20", "10.0.7.21"], "secondary IPs on generation 1");
    assert_eq!(first.2.len(), 1, "one IPv6 address: {first:?}");
    assert_eq!((first.3, first.4.as_deref()), (Some(false), Some("nat")));
    for generation in 2..=3 {
        fx.interrupt_node(&node.id, BUDGET).await?;
        assert_eq!(on_the_eni(&fx, &node).await?, first, "generation {generation}");
    }

    // A count keeps the two and adds one; nothing is launched for it.
    let instance = fx.tether.node(&node.id).await?.instance_id().map(str::to_owned);
    let patch = NodePatch { secondary_private_ips: Some(SecondaryIps { count: Some(3), addresses: Vec::new() }), source_dest_check: Some(true), ..NodePatch::default() };
    let patched = fx.tether.patch(&node.id, &patch, None).await?;
    let now = on_the_eni(&fx, &node).await?;
    assert_eq!((now.1.len(), &now.1[..2], now.3), (3, &first.1[..], Some(true)), "{now:?}");
    assert_eq!(patched.instance_id().map(str::to_owned), instance, "the instance runs on");
    let said = patched.history.iter().map(|h| h.what.as_str()).collect::<Vec<_>>().join("\n");
    assert!(said.contains(&format!("secondary private IPs {} assigned", now.1[2])) && said.contains("source/destination check on"), "{said}");
    Ok(())
}

#[tokio::test]
async fn ipv6_in_a_subnet_without_an_ipv6_block_is_refused_naming_the_field() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let spec = NodeSpec { ipv6: Some(Ipv6Request { count: Some(1), addresses: Vec::new() }), ..fx.spec(&["m5.large"]) };
    match fx.tether.create_node(spec, Persistence::default(), None).await {
        Err(TetherError::Invalid { field, reason }) => {
            assert_eq!(field, "spec.ipv6");
            assert!(reason.contains("no IPv6 CIDR block"), "{reason}");
        }
        other => panic!("not refused: {other:?}"),
    }
    Ok(())
}

/// The public IPv4 address EC2 reports for the node's current instance.
async fn public_ip(fx: &Fixture, node: &Node) -> Result<Option<String>, SetupError> {
    let node = fx.tether.node(&node.id).await?;
    Ok(fx.instance(node.instance_id().ok_or("no instance")?).await?.public_ip_address().map(str::to_owned))
}

#[tokio::test]
async fn an_assigned_public_ip_comes_with_every_generation_and_a_patch_takes_it_away() -> Result<(), SetupError> {
    use tether::model::PublicIpAssignment;
    let fx = Fixture::new().await?;
    let spec = NodeSpec { public_ip_assignment: PublicIpAssignment::Assign, ..fx.spec(&["m5.large"]) };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    assert!(public_ip(&fx, &node).await?.is_some(), "generation 1 has a public IP");
    fx.interrupt_node(&node.id, BUDGET).await?;
    assert!(public_ip(&fx, &node).await?.is_some(), "generation 2 has one too (the setting is the ENI's)");

    let patch = NodePatch { public_ip_assignment: Some(PublicIpAssignment::None), ..NodePatch::default() };
    let patched = fx.tether.patch(&node.id, &patch, None).await?;
    assert_eq!(public_ip(&fx, &node).await?, None, "taken away from the running instance");
    assert!(patched.history.iter().any(|h| h.what.contains("public IP removed")), "{:?}", patched.history);
    fx.interrupt_node(&node.id, BUDGET).await?;
    assert_eq!(public_ip(&fx, &node).await?, None, "and from the next generation");

    // `subnet_default` follows the subnet's auto-assign setting.
    let subnet_id = fx.subnet("10.0.8.0/24").await?;
    let on = aws_sdk_ec2::types::AttributeBooleanValue::builder().value(true).build();
    fx.ec2.modify_subnet_attribute().subnet_id(&subnet_id).map_public_ip_on_launch(on).send().await?;
    let spec = NodeSpec { subnet_id, public_ip_assignment: PublicIpAssignment::SubnetDefault, ..fx.spec(&["m5.large"]) };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    assert!(public_ip(&fx, &node).await?.is_some(), "the subnet assigns public IPs");

    // Beside an Elastic IP it is refused: the Elastic IP is the public address.
    let with_eip = Persistence { allocate_elastic_ip: true, ..Persistence::default() };
    match fx.tether.create_node(NodeSpec { public_ip_assignment: PublicIpAssignment::Assign, ..fx.spec(&["m5.large"]) }, with_eip, None).await {
        Err(TetherError::Invalid { field, .. }) => assert_eq!(field, "spec.public_ip_assignment"),
        other => panic!("not refused: {other:?}"),
    }
    Ok(())
}
