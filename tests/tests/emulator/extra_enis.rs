//! Extra ENIs (device indexes 1 and up) read back from the emulator: made at the first
//! resume, attached at their index with their address and Elastic IP on every generation,
//! deleted with the node; and what EC2 would refuse, refused at create naming the field.

use std::net::Ipv4Addr;
use std::time::Duration;

use tether::lifecycle::NodePatch;
use tether::model::ExtraEni;
use tether::{Node, NodeSpec, NodeState, Persistence, TetherError};
use tether_tests::{Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

/// The ENI attached to the node's current instance at `device_index`, as the emulator has
/// it: (ENI id, its private IP).
async fn attached_at(fx: &Fixture, node: &Node, device_index: i32) -> Result<(String, String), SetupError> {
    let node = fx.tether.node(&node.id).await?;
    let instance = fx.instance(node.instance_id().ok_or("no instance")?).await?;
    let eni = instance
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(device_index))
        .ok_or_else(|| format!("nothing at device index {device_index} of {:?}", instance.instance_id()))?;
    Ok((eni.network_interface_id().unwrap_or_default().to_owned(), eni.private_ip_address().unwrap_or_default().to_owned()))
}

fn invalid_field<T: std::fmt::Debug>(result: Result<T, TetherError>) -> String {
    match result {
        Err(TetherError::Invalid { field, .. }) => field,
        other => format!("not refused as invalid: {other:?}"),
    }
}

#[tokio::test]
async fn an_extra_eni_and_its_elastic_ip_come_with_every_generation_and_go_with_the_node() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let back = fx.subnet("10.0.8.0/24").await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let spec = NodeSpec {
        extra_enis: vec![ExtraEni {
            device_index: 1,
            subnet_id: back.clone(),
            security_group_ids: Vec::new(),
            private_ip: Some(Ipv4Addr::new(10, 0, 8, 20)),
            elastic_ip_allocation_id: Some(allocation_id.clone()),
        }],
        ..fx.spec(&["m5.large"])
    };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    // Its chosen address is reserved with the node, as a primary one is.
    let reserved = fx.ec2.get_subnet_cidr_reservations().subnet_id(&back).send().await?;
    assert_eq!(reserved.subnet_ipv4_cidr_reservations().iter().filter_map(|r| r.cidr()).collect::<Vec<_>>(), ["10.0.8.20/32"]);
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let running = fx.tether.node(&node.id).await?;
    let [extra] = running.extra_enis.as_slice() else { return Err(format!("one extra ENI recorded: {:?}", running.extra_enis).into()) };
    assert_eq!((extra.device_index, extra.subnet_id.as_str(), extra.private_ip), (1, back.as_str(), Ipv4Addr::new(10, 0, 8, 20)));
    let primary = running.eni.clone().ok_or("no ENI")?;
    let tags = fx.eni(&extra.id).await?.tag_set().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned()))).collect::<Vec<_>>();
    assert!(tags.contains(&("tether:device-index".to_owned(), "1".to_owned())), "{tags:?}");
    for generation in 1..=3 {
        if generation > 1 {
            fx.interrupt_node(&node.id, BUDGET).await?;
        }
        assert_eq!(attached_at(&fx, &node, 0).await?, (primary.id.clone(), primary.private_ip.to_string()), "generation {generation}: the node's ENI");
        assert_eq!(attached_at(&fx, &node, 1).await?, (extra.id.clone(), "10.0.8.20".to_owned()), "generation {generation}: the extra ENI");
        let eip = fx.cloud_eip(&allocation_id).await?;
        assert_eq!((eip.network_interface_id(), eip.public_ip()), (Some(extra.id.as_str()), Some(public_ip.as_str())), "generation {generation}");
    }
    assert_eq!(fx.tether.node(&node.id).await?.extra_enis, running.extra_enis, "recorded once, kept");

    // Deallocation deletes it, and leaves the Elastic IP (the user's) free and not released.
    let outcome = fx.tether.deallocate(&node.id, false, fx.tether.deadline_in(BUDGET), None).await?;
    assert!(matches!(outcome, tether::Outcome::Recorded { state: NodeState::Deallocated, .. }), "{outcome:?}");
    let gone = fx.ec2.describe_network_interfaces().filters(aws_sdk_ec2::types::Filter::builder().name("network-interface-id").values(&extra.id).build()).send().await?;
    assert!(gone.network_interfaces().is_empty(), "the extra ENI is deleted");
    let eip = fx.cloud_eip(&allocation_id).await?;
    assert_eq!((eip.association_id(), eip.public_ip()), (None, Some(public_ip.as_str())), "free, still allocated");
    let reserved = fx.ec2.get_subnet_cidr_reservations().subnet_id(&back).send().await?;
    assert!(reserved.subnet_ipv4_cidr_reservations().is_empty(), "the chosen address is released with the node");
    Ok(())
}

#[tokio::test]
async fn extra_enis_ec2_would_refuse_are_refused_naming_the_field() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let back = fx.subnet("10.0.9.0/24").await?;
    let elsewhere_az = format!("{}b", fx.availability_zone.trim_end_matches('a'));
    let elsewhere = fx.ec2.create_subnet().vpc_id(&fx.vpc_id).cidr_block("10.0.10.0/24").availability_zone(&elsewhere_az).send().await?;
    let elsewhere = elsewhere.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet id")?.to_owned();
    let extra = |device_index, subnet_id: &str| ExtraEni { device_index, subnet_id: subnet_id.to_owned(), security_group_ids: Vec::new(), private_ip: None, elastic_ip_allocation_id: None };
    let with = |types: &[&str], extras: Vec<ExtraEni>| NodeSpec { extra_enis: extras, ..fx.spec(types) };
    let create = |spec| fx.tether.create_node(spec, Persistence::default(), None);

    assert_eq!(invalid_field(create(with(&["m5.large"], vec![extra(1, &elsewhere)])).await), "spec.extra_enis[0].subnet_id", "another AZ");
    assert_eq!(invalid_field(create(with(&["m5.large"], vec![extra(1, &back), extra(1, &back)])).await), "spec.extra_enis[1].device_index");
    assert_eq!(invalid_field(create(with(&["m5.large"], vec![extra(0, &back)])).await), "spec.extra_enis[0].device_index");
    let outside = ExtraEni { private_ip: Some(Ipv4Addr::new(10, 0, 1, 30)), ..extra(1, &back) };
    assert_eq!(invalid_field(create(with(&["m5.large"], vec![outside])).await), "spec.extra_enis[0].private_ip");
    // EC2 gives a public IP only to an instance launched with one network interface.
    let public = NodeSpec { public_ip_assignment: tether::model::PublicIpAssignment::Assign, ..with(&["m5.large"], vec![extra(1, &back)]) };
    assert_eq!(invalid_field(create(public).await), "spec.public_ip_assignment");
    // t3.micro takes 2 network interfaces (DescribeInstanceTypes): the node's and one more.
    let two = vec![extra(1, &back), extra(2, &back)];
    match create(with(&["m5.large", "t3.micro"], two.clone())).await {
        Err(TetherError::Invalid { field, reason }) => {
            assert_eq!(field, "spec.extra_enis");
            assert!(reason.contains("t3.micro takes 2") && reason.contains("quota"), "{reason}");
        }
        other => return Err(format!("not refused: {other:?}").into()),
    }
    let in_back = aws_sdk_ec2::types::Filter::builder().name("subnet-id").values(&back).build();
    assert!(fx.ec2.describe_network_interfaces().filters(in_back).send().await?.network_interfaces().is_empty(), "nothing made for a refused node");

    // m5.large takes 3; a PATCH to t3.micro would leave no room.
    let node = create(with(&["m5.large"], two)).await?;
    let patch = NodePatch { instance_types: Some(vec!["t3.micro".to_owned()]), ..NodePatch::default() };
    assert_eq!(invalid_field(fx.tether.patch(&node.id, &patch, None).await), "instance_types");
    assert_eq!(fx.tether.node(&node.id).await?.spec.instance_types, vec!["m5.large"], "unchanged");
    Ok(())
}

/// An import keeps the instance's extra ENI (tagged, kept when the instance goes) and copies
/// its user data and its volumes' shapes; it lists each volume and says it stays the
/// instance's: the replacement gets a new, empty one at the same device, and the old one
/// (kept by hand: DeleteOnTermination off) is left detached with its data.
#[tokio::test]
async fn an_import_keeps_the_extra_eni_and_says_the_volumes_stay_the_instance_s() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceNetworkInterfaceSpecification, VolumeType};
    let fx = Fixture::new().await?;
    let back = fx.subnet("10.0.8.0/24").await?;
    let made = fx.ec2.create_network_interface().subnet_id(&back).private_ip_address("10.0.8.40").send().await?;
    let extra_id = made.network_interface().and_then(|n| n.network_interface_id()).ok_or("no ENI")?.to_owned();
    let nic = |index: i32| InstanceNetworkInterfaceSpecification::builder().device_index(index);
    let volume = |device: &str, size: i32, kind: VolumeType, delete: bool| {
        BlockDeviceMapping::builder().device_name(device).ebs(EbsBlockDevice::builder().volume_size(size).volume_type(kind).delete_on_termination(delete).build()).build()
    };
    let launched = fx
        .run_one()
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .network_interfaces(nic(0).subnet_id(&fx.subnet_id).private_ip_address("10.0.1.81").build())
        .network_interfaces(nic(1).network_interface_id(&extra_id).build())
        .block_device_mappings(volume("/dev/sda1", 30, VolumeType::Gp3, true))
        .block_device_mappings(volume("/dev/sdf", 20, VolumeType::Gp2, false))
        .user_data(aws_smithy_types::base64::encode("#!/bin/sh\necho imported\n"))
        .send()
        .await?;
    let instance_id = launched.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();

    let request = tether::ImportRequest { instance_id: instance_id.clone(), instance_types: None, fallback_to_on_demand: None, revert_to_spot: None, keep_volumes: false };
    let node = fx.tether.import_instance(&request, None).await?;
    let [extra] = node.extra_enis.as_slice() else { return Err(format!("one extra ENI: {:?}", node.extra_enis).into()) };
    assert_eq!((extra.id.as_str(), extra.device_index, extra.private_ip), (extra_id.as_str(), 1, Ipv4Addr::new(10, 0, 8, 40)));
    assert_eq!(node.spec.extra_enis.first().map(|e| (e.subnet_id.as_str(), e.private_ip)), Some((back.as_str(), Some(extra.private_ip))));
    assert_eq!(node.spec.user_data.as_deref(), Some("#!/bin/sh\necho imported\n"), "user data copied");
    let shapes: Vec<(&str, u32, &str)> = node.spec.block_devices.iter().map(|d| (d.device_name.as_str(), d.volume_size_gib, d.volume_type.as_str())).collect();
    assert_eq!(shapes, [("/dev/sda1", 30, "gp3"), ("/dev/sdf", 20, "gp2")], "the volumes' shapes");
    let listed: Vec<(&str, bool, bool)> = node.imported_volumes.iter().map(|v| (v.device_name.as_str(), v.root, v.survives_replacement)).collect();
    assert_eq!(listed, [("/dev/sda1", true, false), ("/dev/sdf", false, true)]);
    let old_data = node.imported_volumes[1].volume_id.clone();
    let said = node.history.iter().find(|h| h.what.contains(&old_data)).map(|h| h.what.clone()).unwrap_or_default();
    assert!(said.contains("a new, empty volume at /dev/sdf") && said.contains("not its data") && said.contains("does not attach it again"), "{said}");
    let adopted = fx.eni(&extra_id).await?;
    assert_eq!(adopted.attachment().and_then(|a| a.delete_on_termination()), Some(false), "the extra ENI outlives the instance");
    assert!(adopted.tag_set().iter().any(|t| t.key() == Some("tether:device-index") && t.value() == Some("1")));

    fx.interrupt_node(&node.id, BUDGET).await?;
    assert_eq!(attached_at(&fx, &node, 1).await?, (extra_id.clone(), "10.0.8.40".to_owned()), "the replacement has the extra ENI");
    let replacement = fx.instance(fx.tether.node(&node.id).await?.instance_id().ok_or("no instance")?).await?;
    let sdf = replacement.block_device_mappings().iter().find(|m| m.device_name() == Some("/dev/sdf")).and_then(|m| m.ebs()).and_then(|e| e.volume_id()).ok_or("no /dev/sdf")?;
    assert_ne!(sdf, old_data, "a new volume, not the imported instance's");
    let old = fx.ec2.describe_volumes().volume_ids(&old_data).send().await?;
    assert_eq!(old.volumes().first().and_then(|v| v.state()).map(|s| s.as_str()), Some("available"), "kept by hand, detached, with its data");
    Ok(())
}
