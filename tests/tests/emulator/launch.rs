//! What every instance of a node launches with, read back from the emulator's instances:
//! the instance metadata service's settings (IMDSv2 required unless the spec says otherwise).

use std::time::Duration;

use aws_sdk_ec2::types::{HttpTokensState, Instance};
use tether::lifecycle::NodePatch;
use tether::model::{HttpTokens, MetadataOptions};
use tether::ports::NodeStore;
use tether::{Node, Persistence, TetherError};
use tether_tests::{Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

/// The current instance of `node`, as the emulator reports it.
async fn current_instance(fx: &Fixture, node: &Node) -> Result<Instance, SetupError> {
    let node = fx.tether.node(&node.id).await?;
    fx.instance(node.instance_id().ok_or("the node runs no instance")?).await
}

/// (tokens, hop limit) of an instance's metadata service.
fn metadata(instance: &Instance) -> (Option<HttpTokensState>, Option<i32>) {
    let options = instance.metadata_options();
    (options.and_then(|o| o.http_tokens()).cloned(), options.and_then(|o| o.http_put_response_hop_limit()))
}

#[tokio::test]
async fn imdsv2_is_required_by_default_on_every_generation_until_a_patch_changes_it() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = fx.tether.create_node(fx.spec(&["m5.large"]), Persistence::default(), None).await?;
    assert_eq!(node.spec.metadata_options, Some(MetadataOptions::default()), "the create fills in the default");
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    assert_eq!(metadata(&current_instance(&fx, &node).await?), (Some(HttpTokensState::Required), Some(2)), "generation 1");
    fx.interrupt_node(&node.id, BUDGET).await?;
    assert_eq!(metadata(&current_instance(&fx, &node).await?), (Some(HttpTokensState::Required), Some(2)), "generation 2");

    let optional = MetadataOptions { http_tokens: HttpTokens::Optional, http_put_response_hop_limit: 1, ..MetadataOptions::default() };
    fx.tether.patch(&node.id, &NodePatch { metadata_options: Some(optional), ..NodePatch::default() }, None).await?;
    fx.interrupt_node(&node.id, BUDGET).await?;
    assert_eq!(metadata(&current_instance(&fx, &node).await?), (Some(HttpTokensState::Optional), Some(1)), "generation 3, after the patch");
    Ok(())
}

#[tokio::test]
async fn a_node_made_before_metadata_options_launches_as_it_did() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // A record written before the field existed: no metadata options in its spec.
    let node = Node::new(fx.spec(&["m5.large"]), Persistence::default(), chrono::Utc::now());
    assert_eq!(node.spec.metadata_options, None);
    fx.store.create(&node).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    // Nothing sent: EC2's (here the emulator's) own default, IMDSv1 allowed.
    assert_eq!(metadata(&current_instance(&fx, &node).await?).0, Some(HttpTokensState::Optional));
    assert_eq!(fx.tether.node(&node.id).await?.spec.metadata_options, None, "kept until a patch sets it");
    Ok(())
}

#[tokio::test]
async fn a_hop_limit_ec2_refuses_is_refused_naming_the_field() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    for hops in [0, 65] {
        let spec = tether::NodeSpec { metadata_options: Some(MetadataOptions { http_put_response_hop_limit: hops, ..MetadataOptions::default() }), ..fx.spec(&["m5.large"]) };
        match fx.tether.create_node(spec, Persistence::default(), None).await {
            Err(TetherError::Invalid { field, reason }) => {
                assert_eq!(field, "spec.metadata_options.http_put_response_hop_limit");
                assert!(reason.contains("1 to 64"), "{reason}");
            }
            other => panic!("{hops} hops: {other:?}"),
        }
    }
    let node = fx.tether.create_node(fx.spec(&["m5.large"]), Persistence::default(), None).await?;
    let patch = NodePatch { metadata_options: Some(MetadataOptions { http_put_response_hop_limit: 65, ..MetadataOptions::default() }), ..NodePatch::default() };
    let refused = fx.tether.patch(&node.id, &patch, None).await;
    assert!(matches!(&refused, Err(TetherError::Invalid { field, .. }) if field == "metadata_options.http_put_response_hop_limit"), "{refused:?}");
    Ok(())
}

/// (IOPS, throughput) of the volume an instance has at `device`.
async fn provisioned(fx: &Fixture, instance: &Instance, device: &str) -> Result<(Option<i32>, Option<i32>), SetupError> {
    let mapping = instance.block_device_mappings().iter().find(|m| m.device_name() == Some(device)).ok_or("no such device")?;
    let volume_id = mapping.ebs().and_then(|e| e.volume_id()).ok_or("a mapping without its volume")?;
    let described = fx.ec2.describe_volumes().volume_ids(volume_id).send().await?;
    let volume = described.volumes().first().ok_or("volume not found")?;
    Ok((volume.iops(), volume.throughput()))
}

/// (device, size GiB, type, encrypted) of every volume attached to an instance, by device.
async fn volumes(fx: &Fixture, instance: &Instance) -> Result<Vec<(String, i32, String, bool)>, SetupError> {
    let mut found = Vec::new();
    for mapping in instance.block_device_mappings() {
        let volume_id = mapping.ebs().and_then(|e| e.volume_id()).ok_or("a mapping without its volume")?;
        let described = fx.ec2.describe_volumes().volume_ids(volume_id).send().await?;
        let volume = described.volumes().first().ok_or("volume not found")?;
        let kind = volume.volume_type().map(|t| t.as_str().to_owned()).unwrap_or_default();
        found.push((mapping.device_name().unwrap_or_default().to_owned(), volume.size().unwrap_or(0), kind, volume.encrypted().unwrap_or(false)));
    }
    found.sort();
    Ok(found)
}

#[tokio::test]
async fn the_spec_s_volumes_come_with_every_generation() -> Result<(), SetupError> {
    use tether::volumes::{BlockDevice, VolumeType};
    let fx = Fixture::new().await?;
    let root = BlockDevice {
        device_name: "/dev/sda1".into(),
        volume_size_gib: 100,
        volume_type: VolumeType::Gp3,
        iops: Some(6_000),
        throughput_mibps: Some(250),
        encrypted: None,
        kms_key_id: None,
        delete_on_termination: true,
    };
    let scratch = BlockDevice { device_name: "/dev/sdf".into(), volume_size_gib: 20, volume_type: VolumeType::Gp2, iops: None, throughput_mibps: None, encrypted: Some(true), ..root.clone() };
    let spec = tether::NodeSpec { block_devices: vec![root, scratch], ..fx.spec(&["m5.large"]) };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let wanted = vec![("/dev/sda1".to_owned(), 100, "gp3".to_owned(), false), ("/dev/sdf".to_owned(), 20, "gp2".to_owned(), true)];
    for generation in 1..=2 {
        if generation > 1 {
            fx.interrupt_node(&node.id, BUDGET).await?;
        }
        let instance = current_instance(&fx, &node).await?;
        assert_eq!(volumes(&fx, &instance).await?, wanted, "generation {generation}");
        assert_eq!(provisioned(&fx, &instance, "/dev/sda1").await?, (Some(6_000), Some(250)), "generation {generation}'s root IOPS and throughput");
    }

    // Back to the AMI's volumes: the emulator's default root of 8 GiB.
    fx.tether.patch(&node.id, &NodePatch { block_devices: Some(Vec::new()), ..NodePatch::default() }, None).await?;
    fx.interrupt_node(&node.id, BUDGET).await?;
    let after = volumes(&fx, &current_instance(&fx, &node).await?).await?;
    assert_eq!(after.iter().map(|(d, s, ..)| (d.as_str(), *s)).collect::<Vec<_>>(), [("/dev/sda1", 8)], "generation 3: {after:?}");

    // What EC2 would refuse is refused before anything is made, naming the field.
    let bad = tether::volumes::BlockDevice { volume_type: VolumeType::Io1, iops: None, ..tether::volumes::BlockDevice { device_name: "/dev/sdg".into(), volume_size_gib: 50, volume_type: VolumeType::Gp3, iops: None, throughput_mibps: None, encrypted: None, kms_key_id: None, delete_on_termination: true } };
    let refused = fx.tether.create_node(tether::NodeSpec { block_devices: vec![bad.clone()], ..fx.spec(&["m5.large"]) }, Persistence::default(), None).await;
    assert!(matches!(&refused, Err(TetherError::Invalid { field, .. }) if field == "spec.block_devices[0].iops"), "{refused:?}");
    let refused = fx.tether.patch(&node.id, &NodePatch { block_devices: Some(vec![bad]), ..NodePatch::default() }, None).await;
    assert!(matches!(&refused, Err(TetherError::Invalid { field, .. }) if field == "block_devices[0].iops"), "{refused:?}");
    Ok(())
}

/// The AMI is read at create and at a PATCH of the image or volumes (DescribeImages): one
/// that does not exist, or a root volume smaller than its root snapshot, would fail every
/// launch, so it is refused naming the field, and nothing changes.
#[tokio::test]
async fn an_ami_that_does_not_exist_or_a_root_smaller_than_its_snapshot_is_refused() -> Result<(), SetupError> {
    use tether::volumes::{BlockDevice, VolumeType};
    let fx = Fixture::new().await?;
    let described = fx.ec2.describe_images().image_ids(&fx.image_id).send().await?;
    let image = described.images().first().ok_or("no image")?;
    let root = image.root_device_name().ok_or("no root device")?.to_owned();
    let snapshot = image.block_device_mappings().iter().find(|m| m.device_name() == Some(root.as_str())).and_then(|m| m.ebs()).and_then(|e| e.volume_size()).ok_or("no snapshot size")?;
    let volume = |size: i32| BlockDevice { device_name: root.clone(), volume_size_gib: size as u32, volume_type: VolumeType::Gp3, iops: None, throughput_mibps: None, encrypted: None, kms_key_id: None, delete_on_termination: true };
    let field = |r: Result<Node, TetherError>| match r {
        Err(TetherError::Invalid { field, reason }) => (field, reason),
        other => (format!("not refused: {other:?}"), String::new()),
    };

    let missing = tether::NodeSpec { image_id: "ami-0123456789abcdef0".into(), ..fx.spec(&["m5.large"]) };
    let (name, reason) = field(fx.tether.create_node(missing, Persistence::default(), None).await);
    assert_eq!(name, "spec.image_id", "{reason}");
    assert!(reason.contains("does not exist"), "{reason}");
    let small = tether::NodeSpec { block_devices: vec![volume(snapshot - 1)], ..fx.spec(&["m5.large"]) };
    let (name, reason) = field(fx.tether.create_node(small, Persistence::default(), None).await);
    assert_eq!(name, "spec.block_devices[0].volume_size_gib", "{reason}");
    assert!(reason.contains(&format!("{snapshot} GiB")), "{reason}");

    let node = fx.tether.create_node(tether::NodeSpec { block_devices: vec![volume(snapshot)], ..fx.spec(&["m5.large"]) }, Persistence::default(), None).await?;
    let (name, _) = field(fx.tether.patch(&node.id, &NodePatch { image_id: Some("ami-0123456789abcdef0".into()), ..NodePatch::default() }, None).await);
    assert_eq!(name, "image_id");
    let (name, _) = field(fx.tether.patch(&node.id, &NodePatch { block_devices: Some(vec![volume(1)]), ..NodePatch::default() }, None).await);
    assert_eq!(name, "block_devices[0].volume_size_gib");
    let kept = fx.tether.node(&node.id).await?;
    assert_eq!((kept.spec.image_id.as_str(), kept.spec.block_devices.first().map(|d| d.volume_size_gib)), (fx.image_id.as_str(), Some(snapshot as u32)), "unchanged");
    Ok(())
}

#[tokio::test]
async fn launch_options_reach_the_instance_and_a_reservation_only_the_on_demand_fallback() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::{CapacityReservationInstancePlatform, Filter, MonitoringState};
    use tether::model::CapacityReservation;
    let fx = Fixture::new().await?;
    // The emulator has no spot capacity for p5.48xlarge: the node falls back to on-demand.
    let reservation = fx
        .ec2
        .create_capacity_reservation()
        .instance_type("p5.48xlarge")
        .instance_platform(CapacityReservationInstancePlatform::LinuxUnix)
        .availability_zone(&fx.availability_zone)
        .instance_count(1)
        .send()
        .await?;
    let reservation_id = reservation.capacity_reservation().and_then(|r| r.capacity_reservation_id()).ok_or("no reservation id")?.to_owned();
    let spec = tether::NodeSpec {
        ebs_optimized: Some(true),
        detailed_monitoring: Some(true),
        spot_max_price: Some("0.50".into()),
        capacity_reservation: Some(CapacityReservation::ReservationId(reservation_id.clone())),
        volume_tags: [("backup".to_owned(), "daily".to_owned())].into(),
        ..fx.spec(&["p5.48xlarge"])
    };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let instance = current_instance(&fx, &node).await?;
    assert_eq!(instance.instance_lifecycle(), None, "on-demand after the spot attempt found no capacity");
    assert_eq!(instance.capacity_reservation_id(), Some(reservation_id.as_str()), "runs in the reservation");
    assert_eq!(instance.ebs_optimized(), Some(true));
    assert_eq!(instance.monitoring().and_then(|m| m.state()), Some(&MonitoringState::Enabled));
    let instance_id = instance.instance_id().ok_or("no id")?;
    let volumes = fx.ec2.describe_volumes().filters(Filter::builder().name("attachment.instance-id").values(instance_id).build()).send().await?;
    assert!(!volumes.volumes().is_empty(), "the instance has volumes");
    for volume in volumes.volumes() {
        let tag = |key: &str| volume.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned);
        assert_eq!((tag("backup"), tag("tether:node-id")), (Some("daily".to_owned()), Some(node.id.to_string())), "{volume:?}");
    }

    // A spot node with the same reservation launches on spot without it (EC2 refuses a
    // reservation target on a spot launch).
    let spot = tether::NodeSpec { capacity_reservation: Some(CapacityReservation::ReservationId(reservation_id)), ..fx.spec(&["m5.large"]) };
    let spot = fx.tether.create_node(spot, Persistence::default(), None).await?;
    fx.tether.resume(&spot.id, fx.tether.deadline_in(BUDGET), None).await?;
    let instance = current_instance(&fx, &spot).await?;
    assert_eq!(instance.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    assert_eq!(instance.capacity_reservation_specification().and_then(|s| s.capacity_reservation_target()), None);

    // Refused before anything is made, naming the field.
    let bad = tether::NodeSpec { spot_max_price: Some("cheap".into()), ..fx.spec(&["m5.large"]) };
    match fx.tether.create_node(bad, Persistence::default(), None).await {
        Err(TetherError::Invalid { field, .. }) => assert_eq!(field, "spec.spot_max_price"),
        other => panic!("not refused: {other:?}"),
    }
    Ok(())
}
