//! Each AWS rule Tether depends on, proven against the emulator. Each test fails if the
//! launcher patch that enforces its rule is disabled (TETHER_MOTO_DISABLE=<name>).

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{NetworkInterfaceStatus, Placement, SubnetCidrReservationType};
use tether_tests::{on_eni, Fixture, SetupError};

/// Creates an ENI in the fixture's subnet, optionally at `ip`.
async fn create_eni(fx: &Fixture, ip: Option<String>) -> Result<String, SetupError> {
    let out = fx
        .ec2
        .create_network_interface()
        .subnet_id(&fx.subnet_id)
        .set_private_ip_address(ip)
        .send()
        .await?;
    Ok(out.network_interface().and_then(|e| e.network_interface_id()).ok_or("no ENI id")?.to_owned())
}

async fn launch_on_eni(fx: &Fixture, eni_id: &str) -> Result<String, aws_sdk_ec2::Error> {
    let out = fx.run_one()
        .network_interfaces(on_eni(eni_id))
        .send()
        .await?;
    Ok(out.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_owned())
}

fn code(err: &aws_sdk_ec2::Error) -> String {
    err.code().unwrap_or("none").to_owned()
}

#[tokio::test]
async fn terminating_an_instance_releases_its_enis() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // Kept ENI: DeleteOnTermination=false.
    let kept = create_eni(&fx, None).await?;
    let on_kept = launch_on_eni(&fx, &kept).await?;
    // An ENI created by the launch itself: DeleteOnTermination=true by default.
    let out = fx.run_one()
        .subnet_id(&fx.subnet_id)
        .send()
        .await?;
    let with_own = out.instances().first().ok_or("no instance")?;
    let own_eni = with_own.network_interfaces().first().and_then(|n| n.network_interface_id()).ok_or("no ENI")?.to_owned();
    let with_own_id = with_own.instance_id().ok_or("no id")?.to_owned();
    assert_eq!(fx.eni(&kept).await?.status(), Some(&NetworkInterfaceStatus::InUse));

    fx.ec2.terminate_instances().instance_ids(&on_kept).instance_ids(&with_own_id).send().await?;

    let released = fx.eni(&kept).await?;
    assert_eq!(released.status(), Some(&NetworkInterfaceStatus::Available), "DeleteOnTermination=false ENI is released");
    assert!(released.attachment().is_none(), "released ENI has no attachment: {:?}", released.attachment());
    let deleted = fx.ec2.describe_network_interfaces().network_interface_ids(&own_eni).send().await;
    match deleted {
        Err(e) => assert_eq!(e.code(), Some("InvalidNetworkInterfaceID.NotFound")),
        Ok(out) => panic!("DeleteOnTermination=true ENI still exists: {:?}", out.network_interfaces()),
    }
    Ok(())
}

#[tokio::test]
async fn launching_on_an_eni_in_use_fails_and_launches_nothing() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let first = launch_on_eni(&fx, &eni).await?;
    let second = launch_on_eni(&fx, &eni).await.expect_err("second launch on an in-use ENI must fail");
    assert_eq!(code(&second), "InvalidNetworkInterface.InUse");
    assert_eq!(fx.instances_in_vpc().await?, vec![first.clone()], "only the first instance exists");
    let delete = fx.ec2.delete_network_interface().network_interface_id(&eni).send().await;
    assert_eq!(delete.map_err(|e| e.code().map(str::to_owned)).err().flatten().as_deref(), Some("InvalidNetworkInterface.InUse"), "an attached ENI cannot be deleted");

    // Once the first is gone, the ENI is free again and the next launch boots on it.
    fx.interrupt(&first).await?;
    let third = launch_on_eni(&fx, &eni).await.map_err(|e| format!("launch on released ENI: {e}"))?;
    let instance = fx.instance(&third).await?;
    let primary = instance.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    assert_eq!(primary.and_then(|n| n.network_interface_id()), Some(eni.as_str()));
    Ok(())
}

#[tokio::test]
async fn deleting_an_eni_disassociates_its_elastic_ip() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let (allocation_id, _) = fx.allocate_eip().await?;
    fx.ec2.associate_address().allocation_id(&allocation_id).network_interface_id(&eni).send().await?;
    assert_eq!(fx.cloud_eip(&allocation_id).await?.network_interface_id(), Some(eni.as_str()));

    fx.ec2.delete_network_interface().network_interface_id(&eni).send().await?;

    // Still allocated, associated with nothing.
    let eip = fx.cloud_eip(&allocation_id).await?;
    let shown = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_owned);
    assert_eq!(shown(eip.association_id()), None, "no association after the ENI is deleted: {eip:?}");
    assert_eq!(shown(eip.network_interface_id()), None, "no ENI: {eip:?}");
    assert_eq!(shown(eip.private_ip_address()), None, "no private IP: {eip:?}");
    assert_eq!(shown(eip.instance_id()), None, "no instance: {eip:?}");
    // Free to be used by another ENI without AllowReassociation.
    let other = create_eni(&fx, None).await?;
    let again = fx.ec2.associate_address().allocation_id(&allocation_id).network_interface_id(&other).allow_reassociation(false).send().await;
    assert!(again.is_ok(), "the Elastic IP is free again: {:?}", again.map_err(|e| e.code().map(str::to_owned)));
    assert_eq!(fx.cloud_eip(&allocation_id).await?.network_interface_id(), Some(other.as_str()));
    Ok(())
}

#[tokio::test]
async fn requested_private_ips_are_checked_as_aws_does() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let taken = fx.subnet_ip(50).to_string();
    create_eni(&fx, Some(taken.clone())).await?;

    let in_use = create_eni(&fx, Some(taken)).await.expect_err("duplicate IP");
    assert_eq!(sdk_code(&in_use), "InvalidIPAddress.InUse");

    let outside = create_eni(&fx, Some("10.0.2.10".into())).await.expect_err("outside the subnet");
    assert_eq!(sdk_code(&outside), "InvalidParameterValue");

    // AWS reserves the network address, the next three, and the last address.
    for host in [0u8, 1, 2, 3, 255] {
        let reserved = create_eni(&fx, Some(fx.subnet_ip(host).to_string())).await.expect_err("reserved");
        assert_eq!(sdk_code(&reserved), "InvalidParameterValue", "10.0.1.{host} is reserved");
    }
    Ok(())
}

#[tokio::test]
async fn random_private_ips_are_unique_and_never_reserved() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // A /28 has 16 addresses; AWS reserves 5, leaving 11.
    let subnet = fx
        .ec2
        .create_subnet()
        .vpc_id(&fx.vpc_id)
        .cidr_block("10.0.9.0/28")
        .availability_zone(&fx.availability_zone)
        .send()
        .await?;
    let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet")?.to_owned();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..11 {
        let out = fx.ec2.create_network_interface().subnet_id(&subnet_id).send().await?;
        let ip = out.network_interface().and_then(|e| e.private_ip_address()).ok_or("no IP")?.to_owned();
        let last: u8 = ip.rsplit('.').next().and_then(|o| o.parse().ok()).ok_or("bad IP")?;
        assert!((4..15).contains(&last), "{ip} is reserved or outside 10.0.9.0/28");
        assert!(seen.insert(ip.clone()), "{ip} was handed out twice");
    }
    let full = fx.ec2.create_network_interface().subnet_id(&subnet_id).send().await.expect_err("subnet is full");
    assert_eq!(full.code(), Some("InsufficientFreeAddressesInSubnet"));
    Ok(())
}

/// The address EC2 picks for a new ENI in `subnet_id`, or the error code.
async fn picked_for_eni(fx: &Fixture, subnet_id: &str) -> Result<String, String> {
    match fx.ec2.create_network_interface().subnet_id(subnet_id).send().await {
        Ok(out) => Ok(out.network_interface().and_then(|e| e.private_ip_address()).unwrap_or("no IP").to_owned()),
        Err(e) => Err(e.code().unwrap_or("none").to_owned()),
    }
}

/// The address EC2 picks for a new instance in `subnet_id` (its own ENI), or the error code.
async fn picked_for_instance(fx: &Fixture, subnet_id: &str) -> Result<String, String> {
    match fx.run_one().subnet_id(subnet_id).send().await {
        Ok(out) => Ok(out.instances().first().and_then(|i| i.private_ip_address()).unwrap_or("no IP").to_owned()),
        Err(e) => Err(e.code().unwrap_or("none").to_owned()),
    }
}

#[tokio::test]
async fn random_private_ips_never_take_an_explicit_reservation() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // A /28: 11 usable addresses, 10.0.9.4 to 10.0.9.14.
    let subnet = fx
        .ec2
        .create_subnet()
        .vpc_id(&fx.vpc_id)
        .cidr_block("10.0.9.0/28")
        .availability_zone(&fx.availability_zone)
        .send()
        .await?;
    let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet")?.to_owned();
    let ip = |host: u8| format!("10.0.9.{host}");
    let reserve = |cidr: String| {
        fx.ec2
            .create_subnet_cidr_reservation()
            .subnet_id(&subnet_id)
            .cidr(&cidr)
            .reservation_type(SubnetCidrReservationType::Explicit)
            .description(format!("reserved {cidr}"))
            .send()
    };
    let eni_at = |host: u8| fx.ec2.create_network_interface().subnet_id(&subnet_id).private_ip_address(ip(host)).send();

    // A reservation may cover an address in use; the ENI keeps it.
    let held = eni_at(4).await?;
    let held_id = held.network_interface().and_then(|e| e.network_interface_id()).ok_or("no ENI id")?.to_owned();
    let mut reservation_ids = std::collections::BTreeMap::new();
    for host in [4u8, 5, 6, 7] {
        let out = reserve(format!("{}/32", ip(host))).await?;
        let id = out.subnet_cidr_reservation().and_then(|r| r.subnet_cidr_reservation_id()).ok_or("no reservation id")?;
        reservation_ids.insert(host, id.to_owned());
    }
    assert_eq!(fx.eni(&held_id).await?.private_ip_address(), Some("10.0.9.4"), "a reservation unassigns nothing");
    let reserved: std::collections::BTreeSet<String> = [4u8, 5, 6, 7].into_iter().map(ip).collect();

    // EC2 hands out every other address (.8 to .14), never a reserved one, to ENIs and
    // instances that do not name their address, until only reserved ones are left.
    let mut picked = std::collections::BTreeSet::new();
    let full = loop {
        assert!(picked.len() <= 11, "more picks than addresses: {picked:?}");
        let got = if picked.len() % 2 == 0 {
            picked_for_eni(&fx, &subnet_id).await
        } else {
            picked_for_instance(&fx, &subnet_id).await
        };
        match got {
            Ok(address) => {
                assert!(!reserved.contains(&address), "EC2 picked {address}, which is explicitly reserved");
                assert!(picked.insert(address.clone()), "{address} was handed out twice");
            }
            Err(code) => break code,
        }
    };
    assert_eq!(full, "InsufficientFreeAddressesInSubnet", "after {picked:?}");
    assert_eq!(picked.len(), 7, "every unreserved address is picked: {picked:?}");
    assert_eq!(picked_for_eni(&fx, &subnet_id).await.err().as_deref(), Some("InsufficientFreeAddressesInSubnet"));
    assert_eq!(picked_for_instance(&fx, &subnet_id).await.err().as_deref(), Some("InsufficientFreeAddressesInSubnet"));

    // Named explicitly, a reserved address is assigned, subject to the usual in-use check.
    let named = eni_at(5).await.map_err(|e| format!("an ENI naming reserved 10.0.9.5: {:?}", e.code()))?;
    assert_eq!(named.network_interface().and_then(|e| e.private_ip_address()), Some("10.0.9.5"));
    let taken = eni_at(4).await.expect_err("10.0.9.4 is held by an ENI");
    assert_eq!(taken.code(), Some("InvalidIPAddress.InUse"));

    // Reservations in a VPC cannot overlap.
    let again = reserve(format!("{}/32", ip(6))).await.expect_err("10.0.9.6/32 is reserved already");
    assert_eq!(again.code(), Some("InvalidParameterValue"), "{again:?}");
    let wider = reserve("10.0.9.4/30".into()).await.expect_err("10.0.9.4/30 overlaps four reservations");
    assert_eq!(wider.code(), Some("InvalidParameterValue"), "{wider:?}");

    // Deleting a reservation makes its unused address available again.
    let seven = &reservation_ids[&7];
    fx.ec2.delete_subnet_cidr_reservation().subnet_cidr_reservation_id(seven).send().await?;
    assert_eq!(picked_for_eni(&fx, &subnet_id).await, Ok(ip(7)), "10.0.9.7 is the only unreserved free address");
    assert_eq!(picked_for_instance(&fx, &subnet_id).await.err().as_deref(), Some("InsufficientFreeAddressesInSubnet"), "10.0.9.6 is still reserved");
    let listed = fx.ec2.get_subnet_cidr_reservations().subnet_id(&subnet_id).send().await?;
    let mut cidrs: Vec<&str> = listed.subnet_ipv4_cidr_reservations().iter().filter_map(|r| r.cidr()).collect();
    cidrs.sort_unstable();
    assert_eq!(cidrs, ["10.0.9.4/32", "10.0.9.5/32", "10.0.9.6/32"]);
    // Each keeps its description (how Tether knows its own again).
    for r in listed.subnet_ipv4_cidr_reservations() {
        assert_eq!(r.description(), r.cidr().map(|c| format!("reserved {c}")).as_deref(), "{r:?}");
    }

    // An unknown reservation, or one deleted already, is not found.
    for id in [seven.as_str(), "scr-0123456789abcdef0"] {
        let gone = fx.ec2.delete_subnet_cidr_reservation().subnet_cidr_reservation_id(id).send().await.expect_err("no such reservation");
        assert_eq!(gone.code(), Some("InvalidSubnetCidrReservationID.NotFound"), "{id}: {gone:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_client_token_used_again_returns_the_original_instance() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let token = format!("tether-test-{}", fx.table_name);
    let launch = || {
        fx.run_one()
            .client_token(&token)
            .network_interfaces(on_eni(&eni))
            .send()
    };
    let first = launch().await?;
    let again = match launch().await {
        Ok(out) => out,
        Err(e) => panic!("a used ClientToken must return the original instance, got {:?}", e.code()),
    };
    let id = |out: &aws_sdk_ec2::operation::run_instances::RunInstancesOutput| {
        out.instances().first().and_then(|i| i.instance_id()).map(str::to_owned)
    };
    assert!(id(&first).is_some());
    assert_eq!(id(&first), id(&again), "same token, same instance");
    assert_eq!(first.reservation_id(), again.reservation_id());

    assert_eq!(fx.instances_in_vpc().await?.len(), 1, "nothing else launched");

    let first_id = id(&first).ok_or("no id")?;
    fx.interrupt(&first_id).await?;
    let after_termination = match launch().await {
        Ok(out) => out,
        Err(e) => panic!("a used ClientToken must still return the original instance, got {:?}", e.code()),
    };
    assert_eq!(id(&after_termination).as_deref(), Some(first_id.as_str()), "still the original after it terminated");
    // A terminated instance leaves the VPC; a new launch would be in it.
    assert_eq!(fx.instances_in_vpc().await?.len(), 0, "nothing launched after the termination either");
    Ok(())
}


#[tokio::test]
async fn an_eni_is_used_only_in_its_own_availability_zone() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let other_az = format!("{}b", tether_tests::REGION);
    let err = fx.run_one()
        .placement(Placement::builder().availability_zone(&other_az).build())
        .network_interfaces(on_eni(&eni))
        .send()
        .await
        .expect_err("an ENI cannot be used in another AZ");
    assert_eq!(err.code(), Some("InvalidParameterValue"), "{err:?}");
    assert_eq!(fx.eni(&eni).await?.status(), Some(&NetworkInterfaceStatus::Available), "nothing attached");

    // In its own AZ, the launch lands in that AZ.
    let id = launch_on_eni(&fx, &eni).await.map_err(|e| format!("{e}"))?;
    let instance = fx.instance(&id).await?;
    assert_eq!(instance.placement().and_then(|p| p.availability_zone()), Some(fx.availability_zone.as_str()));

    // Attaching it (as a second ENI) to an instance in another AZ fails too.
    let other_subnet = fx
        .ec2
        .create_subnet()
        .vpc_id(&fx.vpc_id)
        .cidr_block("10.0.2.0/24")
        .availability_zone(&other_az)
        .send()
        .await?;
    let other_subnet_id = other_subnet.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet")?;
    let elsewhere = fx.run_one()
        .subnet_id(other_subnet_id)
        .send()
        .await?;
    let elsewhere_id = elsewhere.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?;
    let spare = create_eni(&fx, None).await?;
    let attach = fx
        .ec2
        .attach_network_interface()
        .network_interface_id(&spare)
        .instance_id(elsewhere_id)
        .device_index(1)
        .send()
        .await
        .expect_err("attaching across AZs must fail");
    assert_eq!(attach.code(), Some("InvalidParameterCombination"), "{attach:?}");
    Ok(())
}

fn sdk_code(err: &SetupError) -> String {
    err.downcast_ref::<aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::create_network_interface::CreateNetworkInterfaceError>>()
        .and_then(|e| e.code())
        .unwrap_or("not an EC2 error")
        .to_owned()
}

#[tokio::test]
async fn a_launch_s_block_device_settings_provision_its_volumes() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, VolumeType};
    let fx = Fixture::new().await?;
    let ebs = EbsBlockDevice::builder().volume_size(100).volume_type(VolumeType::Gp3).iops(6000).throughput(250).delete_on_termination(true).build();
    let run = fx.run_one().block_device_mappings(BlockDeviceMapping::builder().device_name("/dev/sdf").ebs(ebs).build()).send().await?;
    let instance_id = run.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();
    let instance = fx.instance(&instance_id).await?;
    let mapping = instance.block_device_mappings().iter().find(|m| m.device_name() == Some("/dev/sdf")).ok_or("no /dev/sdf")?;
    let volume_id = mapping.ebs().and_then(|e| e.volume_id()).ok_or("no volume")?;
    let described = fx.ec2.describe_volumes().volume_ids(volume_id).send().await?;
    let volume = described.volumes().first().ok_or("volume not found")?;
    assert_eq!((volume.size(), volume.iops(), volume.throughput()), (Some(100), Some(6000), Some(250)), "the volume as the launch asked: {volume:?}");
    Ok(())
}

/// A new interface for a launch, at `index` in `subnet_id`.
fn new_nic(index: i32, subnet_id: &str) -> aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification {
    aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder().device_index(index).subnet_id(subnet_id).build()
}

/// An existing ENI for a launch, at `index`.
fn existing_nic(index: i32, eni_id: &str) -> aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification {
    aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder().device_index(index).network_interface_id(eni_id).delete_on_termination(false).build()
}

#[tokio::test]
async fn network_interfaces_exclude_instance_level_security_groups() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let group_name = fx.ec2.describe_security_groups().group_ids(&fx.security_group_id).send().await?
        .security_groups().first().and_then(|g| g.group_name()).ok_or("no group name")?.to_owned();

    // An existing ENI with SecurityGroupIds, a new interface with SecurityGroupIds or
    // SecurityGroups (names): all refused, nothing launched.
    let on_existing = fx.run_one().network_interfaces(on_eni(&eni)).security_group_ids(&fx.security_group_id).send().await
        .expect_err("NetworkInterfaces with SecurityGroupIds must fail");
    assert_eq!(on_existing.code(), Some("InvalidParameterCombination"), "{on_existing:?}");
    let new_with_ids = fx.run_one().network_interfaces(new_nic(0, &fx.subnet_id)).security_group_ids(&fx.security_group_id).send().await
        .expect_err("a new interface with SecurityGroupIds must fail");
    assert_eq!(new_with_ids.code(), Some("InvalidParameterCombination"), "{new_with_ids:?}");
    let new_with_names = fx.run_one().network_interfaces(new_nic(0, &fx.subnet_id)).security_groups(&group_name).send().await
        .expect_err("a new interface with SecurityGroups must fail");
    assert_eq!(new_with_names.code(), Some("InvalidParameterCombination"), "{new_with_names:?}");
    assert_eq!(fx.instances_in_vpc().await?, Vec::<String>::new(), "nothing launched");
    assert_eq!(fx.eni(&eni).await?.status(), Some(&NetworkInterfaceStatus::Available), "the ENI is still free");

    // The groups belong on the interface.
    let spec = aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder().device_index(0).subnet_id(&fx.subnet_id).groups(&fx.security_group_id).build();
    let out = fx.run_one().network_interfaces(spec).send().await?;
    let instance = out.instances().first().ok_or("no instance")?;
    let groups: Vec<&str> = instance.network_interfaces().iter().flat_map(|n| n.groups()).filter_map(|g| g.group_id()).collect();
    assert_eq!(groups, [fx.security_group_id.as_str()]);
    Ok(())
}

#[tokio::test]
async fn two_network_interfaces_at_one_device_index_are_refused() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let primary = create_eni(&fx, None).await?;
    let other = create_eni(&fx, None).await?;
    let extra = create_eni(&fx, None).await?;

    // Two existing ENIs at index 0; an existing and a new one at index 1.
    let both_primary = fx.run_one().network_interfaces(existing_nic(0, &primary)).network_interfaces(existing_nic(0, &other)).send().await
        .expect_err("two interfaces at device index 0 must fail");
    assert_eq!(both_primary.code(), Some("InvalidParameterValue"), "{both_primary:?}");
    assert!(both_primary.message().is_some_and(|m| m.contains("unique device index")), "{both_primary:?}");
    let both_second = fx.run_one().network_interfaces(existing_nic(0, &primary)).network_interfaces(existing_nic(1, &extra)).network_interfaces(new_nic(1, &fx.subnet_id)).send().await
        .expect_err("two interfaces at device index 1 must fail");
    assert_eq!(both_second.code(), Some("InvalidParameterValue"), "{both_second:?}");
    assert!(both_second.message().is_some_and(|m| m.contains("unique device index")), "{both_second:?}");
    assert_eq!(fx.instances_in_vpc().await?, Vec::<String>::new(), "nothing launched");
    for eni in [&primary, &other, &extra] {
        assert_eq!(fx.eni(eni).await?.status(), Some(&NetworkInterfaceStatus::Available), "{eni} is still free");
    }

    // Distinct indexes: each interface at its own.
    let out = fx.run_one().network_interfaces(existing_nic(0, &primary)).network_interfaces(existing_nic(1, &extra)).network_interfaces(new_nic(2, &fx.subnet_id)).send().await?;
    let instance_id = out.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?;
    let instance = fx.instance(instance_id).await?;
    let mut at: Vec<(i32, String)> = instance.network_interfaces().iter()
        .filter_map(|n| Some((n.attachment()?.device_index()?, n.network_interface_id()?.to_owned()))).collect();
    at.sort();
    assert_eq!(at.len(), 3, "{at:?}");
    assert_eq!((at[0].0, at[0].1.as_str()), (0, primary.as_str()));
    assert_eq!((at[1].0, at[1].1.as_str()), (1, extra.as_str()));
    assert_eq!(at[2].0, 2);
    Ok(())
}

#[tokio::test]
async fn an_extra_eni_from_another_availability_zone_is_refused() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let other_az = format!("{}b", tether_tests::REGION);
    let elsewhere = fx.ec2.create_subnet().vpc_id(&fx.vpc_id).cidr_block("10.0.2.0/24").availability_zone(&other_az).send().await?;
    let elsewhere = elsewhere.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet")?.to_owned();
    let primary = create_eni(&fx, None).await?;
    let far = fx.ec2.create_network_interface().subnet_id(&elsewhere).send().await?;
    let far = far.network_interface().and_then(|e| e.network_interface_id()).ok_or("no ENI id")?.to_owned();

    // An existing primary here and an existing extra ENI (index 1) in another AZ.
    let existing = fx.run_one().network_interfaces(existing_nic(0, &primary)).network_interfaces(existing_nic(1, &far)).send().await
        .expect_err("an ENI from another AZ at device index 1 must fail");
    assert_eq!(existing.code(), Some("InvalidParameterValue"), "{existing:?}");
    // The same with a new primary in the fixture's subnet.
    let new_primary = fx.run_one().network_interfaces(new_nic(0, &fx.subnet_id)).network_interfaces(existing_nic(1, &far)).send().await
        .expect_err("an ENI from another AZ next to a new primary must fail");
    assert_eq!(new_primary.code(), Some("InvalidParameterValue"), "{new_primary:?}");
    assert_eq!(fx.instances_in_vpc().await?, Vec::<String>::new(), "nothing launched");
    assert_eq!(fx.eni(&far).await?.status(), Some(&NetworkInterfaceStatus::Available), "the far ENI is still free");
    assert_eq!(fx.eni(&primary).await?.status(), Some(&NetworkInterfaceStatus::Available), "the primary is still free");
    Ok(())
}

/// The (address, primary) pairs DescribeNetworkInterfaces reports for an ENI, sorted.
async fn eni_addresses(fx: &Fixture, eni_id: &str) -> Result<Vec<(String, bool)>, SetupError> {
    let eni = fx.eni(eni_id).await?;
    let mut addresses: Vec<(String, bool)> = eni.private_ip_addresses().iter()
        .filter_map(|a| Some((a.private_ip_address()?.to_owned(), a.primary()?))).collect();
    addresses.sort();
    Ok(addresses)
}

#[tokio::test]
async fn secondary_private_ips_are_unique_in_the_subnet_and_never_reserved() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::PrivateIpAddressSpecification;
    let fx = Fixture::new().await?;
    let ip = |host: u8| fx.subnet_ip(host).to_string();
    let address = |host: u8, primary: bool| PrivateIpAddressSpecification::builder().private_ip_address(ip(host)).primary(primary).build();

    // An ENI with an explicit secondary: DescribeNetworkInterfaces reports it with Primary=false.
    let out = fx.ec2.create_network_interface().subnet_id(&fx.subnet_id).private_ip_addresses(address(20, true)).private_ip_addresses(address(21, false)).send().await?;
    let first = out.network_interface().and_then(|e| e.network_interface_id()).ok_or("no ENI id")?.to_owned();
    assert_eq!(eni_addresses(&fx, &first).await?, [(ip(20), true), (ip(21), false)]);
    assert_eq!(fx.eni(&first).await?.private_ip_address(), Some(ip(20).as_str()));
    // Another ENI cannot take the secondary, as its primary or as a secondary.
    let as_primary = create_eni(&fx, Some(ip(21))).await.expect_err("10.0.1.21 is held as a secondary");
    assert_eq!(sdk_code(&as_primary), "InvalidIPAddress.InUse");
    let as_secondary = fx.ec2.create_network_interface().subnet_id(&fx.subnet_id).private_ip_addresses(address(30, true)).private_ip_addresses(address(21, false)).send().await
        .expect_err("10.0.1.21 is held as a secondary");
    assert_eq!(as_secondary.code(), Some("InvalidIPAddress.InUse"), "{as_secondary:?}");

    // AssignPrivateIpAddresses naming an address: the same rules.
    let second = create_eni(&fx, None).await?;
    let before = eni_addresses(&fx, &second).await?;
    // A free address for the assignments below: not the one EC2 picked for this ENI.
    let free: u8 = if before[0].0 == ip(40) { 41 } else { 40 };
    let assign = |addresses: &[String]| fx.ec2.assign_private_ip_addresses().network_interface_id(&second).set_private_ip_addresses(Some(addresses.to_vec())).send();
    for (taken, whose) in [(ip(20), "the other ENI's primary"), (ip(21), "the other ENI's secondary"), (before[0].0.clone(), "this ENI's primary")] {
        let err = assign(std::slice::from_ref(&taken)).await.expect_err("an address in use cannot be assigned");
        assert_eq!(err.code(), Some("InvalidIPAddress.InUse"), "{taken} ({whose}): {err:?}");
    }
    for host in [0u8, 1, 2, 3, 255] {
        let err = assign(&[ip(host)]).await.expect_err("a reserved address cannot be assigned");
        assert_eq!(err.code(), Some("InvalidParameterValue"), "10.0.1.{host} is reserved: {err:?}");
    }
    let outside = assign(&["10.0.2.10".to_owned()]).await.expect_err("outside the subnet");
    assert_eq!(outside.code(), Some("InvalidParameterValue"), "{outside:?}");
    // One bad address fails the whole request.
    let mixed = assign(&[ip(free), ip(21)]).await.expect_err("10.0.1.21 is in use");
    assert_eq!(mixed.code(), Some("InvalidIPAddress.InUse"), "{mixed:?}");
    assert_eq!(eni_addresses(&fx, &second).await?, before, "a failed assignment assigns nothing");
    // A free address is assigned, as a secondary, and is then in use.
    assign(&[ip(free)]).await?;
    let mut expected = before.clone();
    expected.push((ip(free), false));
    expected.sort();
    assert_eq!(eni_addresses(&fx, &second).await?, expected);
    let again = fx.ec2.assign_private_ip_addresses().network_interface_id(&first).private_ip_addresses(ip(free)).send().await.expect_err("the address is now in use");
    assert_eq!(again.code(), Some("InvalidIPAddress.InUse"), "{again:?}");
    // With AllowReassignment, another ENI's secondary moves over.
    fx.ec2.assign_private_ip_addresses().network_interface_id(&first).private_ip_addresses(ip(free)).allow_reassignment(true).send().await?;
    assert_eq!(eni_addresses(&fx, &second).await?, before, "the address left the second ENI");
    assert_eq!(eni_addresses(&fx, &first).await?, [(ip(20), true), (ip(21), false), (ip(free), false)]);
    Ok(())
}

#[tokio::test]
async fn picked_secondary_private_ips_are_free_and_never_reserved() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // A /28: 11 usable addresses, 10.0.9.4 to 10.0.9.14; .4 to .6 explicitly reserved.
    let subnet_id = fx.subnet("10.0.9.0/28").await?;
    for host in [4u8, 5, 6] {
        fx.ec2.create_subnet_cidr_reservation().subnet_id(&subnet_id).cidr(format!("10.0.9.{host}/32"))
            .reservation_type(SubnetCidrReservationType::Explicit).send().await?;
    }
    let held = fx.ec2.create_network_interface().subnet_id(&subnet_id).private_ip_address("10.0.9.10").secondary_private_ip_address_count(2).send().await?;
    let held_id = held.network_interface().and_then(|e| e.network_interface_id()).ok_or("no ENI id")?.to_owned();
    let eni = fx.ec2.create_network_interface().subnet_id(&subnet_id).send().await?;
    let eni_id = eni.network_interface().and_then(|e| e.network_interface_id()).ok_or("no ENI id")?.to_owned();

    // 8 unreserved addresses; 4 are taken (the first ENI's 3, this one's primary): 4 left,
    // asked for in two requests.
    let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for id in [&held_id, &eni_id] {
        for (address, _) in eni_addresses(&fx, id).await? {
            assert!(seen.insert(address.clone()), "{address} was handed out twice");
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    for count in [3, 1] {
        fx.ec2.assign_private_ip_addresses().network_interface_id(&eni_id).secondary_private_ip_address_count(count).send().await?;
    }
    let mut secondaries = 0;
    for id in [&held_id, &eni_id] {
        for (address, primary) in eni_addresses(&fx, id).await? {
            let last: u8 = address.rsplit('.').next().and_then(|o| o.parse().ok()).ok_or("bad IP")?;
            assert!((7..15).contains(&last), "{address} is reserved, explicitly reserved or outside 10.0.9.0/28");
            if !primary {
                secondaries += 1;
            }
        }
    }
    assert_eq!(secondaries, 6, "2 secondaries on the first ENI, 4 on the second");
    let mut all = std::collections::BTreeSet::new();
    for id in [&held_id, &eni_id] {
        all.extend(eni_addresses(&fx, id).await?.into_iter().map(|(a, _)| a));
    }
    assert_eq!(all.len(), 8, "every unreserved address exactly once: {all:?}");

    // None left: a count fails and assigns nothing.
    let full = fx.ec2.assign_private_ip_addresses().network_interface_id(&eni_id).secondary_private_ip_address_count(1).send().await
        .expect_err("the subnet has no unreserved free address");
    assert_eq!(full.code(), Some("InsufficientFreeAddressesInSubnet"), "{full:?}");
    assert_eq!(eni_addresses(&fx, &eni_id).await?.len(), 5);
    Ok(())
}

/// The IPv6 addresses DescribeNetworkInterfaces reports for an ENI, sorted.
async fn eni_ipv6(fx: &Fixture, eni_id: &str) -> Result<Vec<std::net::Ipv6Addr>, SetupError> {
    let eni = fx.eni(eni_id).await?;
    let mut ips: Vec<std::net::Ipv6Addr> = eni.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()?.parse().ok()).collect();
    ips.sort();
    Ok(ips)
}

#[tokio::test]
async fn ipv6_addresses_come_from_the_subnet_s_ipv6_cidr_and_are_unique() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::InstanceIpv6Address;
    use std::net::Ipv6Addr;
    let fx = Fixture::new().await?;
    // A dual-stack VPC: a subnet with an IPv6 /64 and one without.
    let vpc = fx.ec2.create_vpc().cidr_block("10.0.0.0/16").amazon_provided_ipv6_cidr_block(true).send().await?;
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).ok_or("no VPC id")?.to_owned();
    let described = fx.ec2.describe_vpcs().vpc_ids(&vpc_id).send().await?;
    let block = described.vpcs().first().and_then(|v| v.ipv6_cidr_block_association_set().first()).and_then(|a| a.ipv6_cidr_block()).ok_or("the VPC has no IPv6 CIDR")?.to_owned();
    let base: Ipv6Addr = block.split('/').next().unwrap_or_default().parse().map_err(|e| format!("{block}: {e}"))?;
    let s = base.segments();
    let host = |last: u16| Ipv6Addr::new(s[0], s[1], s[2], s[3] | 1, 0, 0, 0, last);
    let cidr = format!("{}/64", host(0));
    let subnet = |ipv4: &str, ipv6: Option<String>| fx.ec2.create_subnet().vpc_id(&vpc_id).cidr_block(ipv4).set_ipv6_cidr_block(ipv6).availability_zone(&fx.availability_zone).send();
    let dual = subnet("10.0.1.0/24", Some(cidr.clone())).await?.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet")?.to_owned();
    let ipv4_only = subnet("10.0.2.0/24", None).await?.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet")?.to_owned();
    let named = |ip: Ipv6Addr| InstanceIpv6Address::builder().ipv6_address(ip.to_string()).build();
    let ipv6_of = |out: &aws_sdk_ec2::operation::create_network_interface::CreateNetworkInterfaceOutput| -> Vec<Ipv6Addr> {
        out.network_interface().map(|e| e.ipv6_addresses()).unwrap_or_default().iter().filter_map(|a| a.ipv6_address()?.parse().ok()).collect()
    };
    let eni_id = |out: &aws_sdk_ec2::operation::create_network_interface::CreateNetworkInterfaceOutput| out.network_interface().and_then(|e| e.network_interface_id()).unwrap_or_default().to_owned();

    // A subnet without an IPv6 CIDR gives none, picked or named, at creation or later.
    let counted = fx.ec2.create_network_interface().subnet_id(&ipv4_only).ipv6_address_count(1).send().await.expect_err("no IPv6 CIDR: no count");
    assert_eq!(counted.code(), Some("InvalidParameterValue"), "{counted:?}");
    let given = fx.ec2.create_network_interface().subnet_id(&ipv4_only).ipv6_addresses(named(host(0x10))).send().await.expect_err("no IPv6 CIDR: no address");
    assert_eq!(given.code(), Some("InvalidParameterValue"), "{given:?}");
    let plain = fx.ec2.create_network_interface().subnet_id(&ipv4_only).send().await?;
    let later = fx.ec2.assign_ipv6_addresses().network_interface_id(eni_id(&plain)).ipv6_address_count(1).send().await.expect_err("no IPv6 CIDR: nothing to assign");
    assert_eq!(later.code(), Some("InvalidParameterValue"), "{later:?}");

    // Picked: inside the /64, distinct, not reserved.
    let first_net = u128::from(host(0));
    let in_cidr = |ip: Ipv6Addr| {
        let value = u128::from(ip);
        (value >> 64) == (first_net >> 64) && ![0u64, 1, 2, 3, u64::MAX].contains(&(value as u64))
    };
    let picked = fx.ec2.create_network_interface().subnet_id(&dual).ipv6_address_count(2).send().await?;
    let picked_ips = ipv6_of(&picked);
    assert_eq!(picked_ips.len(), 2, "{picked_ips:?}");
    assert_ne!(picked_ips[0], picked_ips[1]);
    for ip in &picked_ips {
        assert!(in_cidr(*ip), "{ip} is not a usable address of {cidr}");
    }

    // Named: in the CIDR, not reserved, not held by any ENI.
    let with_named = fx.ec2.create_network_interface().subnet_id(&dual).ipv6_addresses(named(host(0x10))).send().await?;
    assert_eq!(ipv6_of(&with_named), [host(0x10)]);
    for taken in [host(0x10), picked_ips[0]] {
        let err = fx.ec2.create_network_interface().subnet_id(&dual).ipv6_addresses(named(taken)).send().await.expect_err("an address in use");
        assert_eq!(err.code(), Some("InvalidIPAddress.InUse"), "{taken}: {err:?}");
    }
    let last = Ipv6Addr::new(s[0], s[1], s[2], s[3] | 1, 0xffff, 0xffff, 0xffff, 0xffff);
    for bad in [host(0), host(1), host(3), last, "2001:db8::10".parse()?] {
        let err = fx.ec2.create_network_interface().subnet_id(&dual).ipv6_addresses(named(bad)).send().await.expect_err("reserved or outside the subnet");
        assert_eq!(err.code(), Some("InvalidParameterValue"), "{bad}: {err:?}");
    }
    let both = fx.ec2.create_network_interface().subnet_id(&dual).ipv6_addresses(named(host(0x11))).ipv6_address_count(1).send().await.expect_err("a count and addresses");
    assert_eq!(both.code(), Some("InvalidParameterCombination"), "{both:?}");

    // AssignIpv6Addresses: the same rules; a failure assigns nothing.
    let target = eni_id(&with_named);
    for (taken, code) in [(picked_ips[1], "InvalidIPAddress.InUse"), (host(2), "InvalidParameterValue")] {
        let err = fx.ec2.assign_ipv6_addresses().network_interface_id(&target).ipv6_addresses(host(0x12).to_string()).ipv6_addresses(taken.to_string()).send().await.expect_err("one bad address");
        assert_eq!(err.code(), Some(code), "{taken}: {err:?}");
    }
    assert_eq!(eni_ipv6(&fx, &target).await?, [host(0x10)], "nothing assigned by the failures");
    fx.ec2.assign_ipv6_addresses().network_interface_id(&target).ipv6_addresses(host(0x12).to_string()).send().await?;
    fx.ec2.assign_ipv6_addresses().network_interface_id(&target).ipv6_address_count(1).send().await?;
    let now = eni_ipv6(&fx, &target).await?;
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&host(0x12)), "{now:?}");
    for ip in &now {
        assert!(in_cidr(*ip) && !picked_ips.contains(ip), "{ip}: in the subnet and on no other ENI");
    }
    Ok(())
}

/// The public IPv4 address DescribeNetworkInterfaces shows on an ENI.
async fn eni_public_ip(fx: &Fixture, eni_id: &str) -> Result<Option<String>, SetupError> {
    let eni = fx.eni(eni_id).await?;
    Ok(eni.association().and_then(|a| a.public_ip()).filter(|ip| !ip.is_empty()).map(str::to_owned))
}

/// The public IPv4 address DescribeInstances shows for an instance, and on its primary interface.
async fn instance_public_ip(fx: &Fixture, instance_id: &str) -> Result<(Option<String>, Option<String>), SetupError> {
    let instance = fx.instance(instance_id).await?;
    let primary = instance.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    let on_primary = primary.and_then(|n| n.association()).and_then(|a| a.public_ip()).filter(|ip| !ip.is_empty()).map(str::to_owned);
    Ok((instance.public_ip_address().filter(|ip| !ip.is_empty()).map(str::to_owned), on_primary))
}

#[tokio::test]
async fn an_eni_s_public_ip_setting_applies_while_it_is_eth0() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let extra = create_eni(&fx, None).await?;
    let set = |id: String, on: bool| fx.ec2.modify_network_interface_attribute().network_interface_id(id).associate_public_ip_address(on).send();

    // Set on a detached ENI: kept, no address until the ENI is an instance's eth0.
    set(eni.clone(), true).await?;
    assert_eq!(eni_public_ip(&fx, &eni).await?, None, "a detached ENI gets no public IP");
    let out = fx.run_one().network_interfaces(existing_nic(0, &eni)).network_interfaces(existing_nic(1, &extra)).send().await?;
    let first = out.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();
    let (shown, on_eth0) = instance_public_ip(&fx, &first).await?;
    assert!(shown.is_some(), "the instance launched on the ENI has a public IP");
    let address = shown.clone().unwrap_or_default();
    assert_eq!(on_eth0, shown, "PublicIpAddress is eth0's");
    assert_eq!(eni_public_ip(&fx, &eni).await?, shown, "the ENI shows it too");

    // Only eth0 gets one: the setting on the ENI at device index 1 gives it none.
    set(extra.clone(), true).await?;
    assert_eq!(eni_public_ip(&fx, &extra).await?, None, "device index 1 gets no public IP");
    assert_eq!(instance_public_ip(&fx, &first).await?.0.as_deref(), Some(address.as_str()));

    // false removes it; true gives a new one.
    set(eni.clone(), false).await?;
    assert_eq!(instance_public_ip(&fx, &first).await?, (None, None), "false removes the public IP");
    assert_eq!(eni_public_ip(&fx, &eni).await?, None);
    set(eni.clone(), true).await?;
    let again = instance_public_ip(&fx, &first).await?;
    assert!(again.0.is_some() && again.0 == again.1, "true gives a public IP again: {again:?}");

    // The address goes with the instance; the setting stays on the ENI for the next one.
    fx.interrupt(&first).await?;
    assert_eq!(eni_public_ip(&fx, &eni).await?, None, "released with the instance");
    let next = launch_on_eni(&fx, &eni).await?;
    let (shown, on_eth0) = instance_public_ip(&fx, &next).await?;
    assert!(shown.is_some() && shown == on_eth0, "the next instance on the ENI gets a public IP: {shown:?} {on_eth0:?}");

    // RunInstances may not ask for one on an existing ENI, nor with several interfaces.
    let spare = create_eni(&fx, None).await?;
    let with_id = aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder().device_index(0).network_interface_id(&spare).associate_public_ip_address(true).build();
    let err = fx.run_one().network_interfaces(with_id).send().await.expect_err("AssociatePublicIpAddress on an existing ENI");
    assert_eq!(err.code(), Some("InvalidParameterCombination"), "{err:?}");
    let new_eth0 = aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder().device_index(0).subnet_id(&fx.subnet_id).associate_public_ip_address(true).build();
    let err = fx.run_one().network_interfaces(new_eth0).network_interfaces(existing_nic(1, &spare)).send().await.expect_err("AssociatePublicIpAddress with two interfaces");
    assert_eq!(err.code(), Some("InvalidParameterCombination"), "{err:?}");
    assert_eq!(fx.eni(&spare).await?.status(), Some(&NetworkInterfaceStatus::Available), "nothing launched on the spare ENI");
    assert_eq!(fx.instances_in_vpc().await?, vec![next], "only the instance on the ENI runs");
    Ok(())
}

#[tokio::test]
async fn a_launch_keeps_its_capacity_reservation_specification() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::{
        CapacityReservationInstancePlatform, CapacityReservationPreference, CapacityReservationSpecification, CapacityReservationTarget,
        InstanceMarketOptionsRequest, InstanceMatchCriteria, MarketType,
    };
    let fx = Fixture::new().await?;
    let launched = |out: aws_sdk_ec2::operation::run_instances::RunInstancesOutput| out.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_owned();
    let preference = |p: CapacityReservationPreference| CapacityReservationSpecification::builder().capacity_reservation_preference(p).build();
    let shown = |instance: &aws_sdk_ec2::types::Instance| {
        let spec = instance.capacity_reservation_specification();
        (
            spec.and_then(|s| s.capacity_reservation_preference()).cloned(),
            spec.and_then(|s| s.capacity_reservation_target()).and_then(|t| t.capacity_reservation_id()).map(str::to_owned),
            instance.capacity_reservation_id().map(str::to_owned),
        )
    };

    // Unspecified: open; `none` is kept as given.
    let plain = launched(fx.run_one().subnet_id(&fx.subnet_id).send().await?);
    assert_eq!(shown(&fx.instance(&plain).await?), (Some(CapacityReservationPreference::Open), None, None), "unspecified means open");
    let none = launched(fx.run_one().subnet_id(&fx.subnet_id).capacity_reservation_specification(preference(CapacityReservationPreference::None)).send().await?);
    assert_eq!(shown(&fx.instance(&none).await?).0, Some(CapacityReservationPreference::None));

    // A targeted reservation for one t3.micro in the fixture's AZ.
    let reservation = fx.ec2.create_capacity_reservation().instance_type("t3.micro").instance_platform(CapacityReservationInstancePlatform::LinuxUnix)
        .availability_zone(&fx.availability_zone).instance_count(1).instance_match_criteria(InstanceMatchCriteria::Targeted).send().await?;
    let reservation_id = reservation.capacity_reservation().and_then(|r| r.capacity_reservation_id()).ok_or("no reservation id")?.to_owned();
    let target = |id: &str| CapacityReservationSpecification::builder().capacity_reservation_target(CapacityReservationTarget::builder().capacity_reservation_id(id).build()).build();
    let available = || async {
        let out = fx.ec2.describe_capacity_reservations().capacity_reservation_ids(&reservation_id).send().await?;
        Ok::<_, SetupError>(out.capacity_reservations().first().and_then(|r| r.available_instance_count()))
    };
    assert_eq!(available().await?, Some(1));

    // An on-demand launch on an ENI targeting it runs in it.
    let eni = create_eni(&fx, None).await?;
    let on_eni = launched(fx.run_one().network_interfaces(on_eni(&eni)).capacity_reservation_specification(target(&reservation_id)).send().await?);
    let (_, targeted, running_in) = shown(&fx.instance(&on_eni).await?);
    assert_eq!(targeted.as_deref(), Some(reservation_id.as_str()), "the target is kept");
    assert_eq!(running_in.as_deref(), Some(reservation_id.as_str()), "the instance runs in the reservation");
    assert_eq!(available().await?, Some(0));

    // Refused: no instance left; an unknown reservation; a Spot launch with a target. Nothing launches.
    let before = fx.instances_in_vpc().await?.len();
    let full = fx.run_one().subnet_id(&fx.subnet_id).capacity_reservation_specification(target(&reservation_id)).send().await.expect_err("the reservation is used up");
    assert_eq!(full.code(), Some("ReservationCapacityExceeded"), "{full:?}");
    let unknown = fx.run_one().subnet_id(&fx.subnet_id).capacity_reservation_specification(target("cr-0123456789abcdef0")).send().await.expect_err("no such reservation");
    assert_eq!(unknown.code(), Some("InvalidCapacityReservationId.NotFound"), "{unknown:?}");
    let spot = InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).build();
    let on_spot = fx.run_one().subnet_id(&fx.subnet_id).instance_market_options(spot).capacity_reservation_specification(target(&reservation_id)).send().await.expect_err("Spot cannot use a reservation");
    assert_eq!(on_spot.code(), Some("InvalidParameterCombination"), "{on_spot:?}");
    assert_eq!(fx.instances_in_vpc().await?.len(), before, "nothing launched");

    // Terminating gives the instance back.
    fx.interrupt(&on_eni).await?;
    assert_eq!(available().await?, Some(1));
    let again = launched(fx.run_one().subnet_id(&fx.subnet_id).capacity_reservation_specification(target(&reservation_id)).send().await?);
    assert_eq!(shown(&fx.instance(&again).await?).2.as_deref(), Some(reservation_id.as_str()));
    Ok(())
}

#[tokio::test]
async fn launch_template_versions_read_back_as_stored() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::{
        CreditSpecificationRequest, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest, LaunchTemplateHttpTokensState,
        LaunchTemplateIamInstanceProfileSpecificationRequest, LaunchTemplateInstanceMarketOptionsRequest, LaunchTemplateInstanceMetadataOptionsRequest,
        LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplatePlacementRequest, LaunchTemplateSpotMarketOptionsRequest,
        LaunchTemplateTagSpecificationRequest, LaunchTemplatesMonitoringRequest, MarketType, RequestLaunchTemplateData, ResourceType, Tag, VolumeType,
    };
    let fx = Fixture::new().await?;
    let name = format!("tether-{}", fx.table_name);
    let user_data = "IyEvYmluL3NoCmVjaG8gdGV0aGVyCg==";
    let data = |instance_type: &str| {
        RequestLaunchTemplateData::builder()
            .image_id(&fx.image_id)
            .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
            .security_group_ids(&fx.security_group_id)
            .metadata_options(LaunchTemplateInstanceMetadataOptionsRequest::builder().http_tokens(LaunchTemplateHttpTokensState::Required).http_put_response_hop_limit(2).build())
            .block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name("/dev/xvda")
                    .ebs(LaunchTemplateEbsBlockDeviceRequest::builder().volume_size(20).volume_type(VolumeType::Gp3).iops(4000).throughput(200).delete_on_termination(true).encrypted(true).build())
                    .build(),
            )
            .network_interfaces(LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder().device_index(0).subnet_id(&fx.subnet_id).groups(&fx.security_group_id).delete_on_termination(true).build())
            .tag_specifications(LaunchTemplateTagSpecificationRequest::builder().resource_type(ResourceType::Instance).tags(Tag::builder().key("team").value("data").build()).build())
            .iam_instance_profile(LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name("tether-node").build())
            .instance_market_options(LaunchTemplateInstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(LaunchTemplateSpotMarketOptionsRequest::builder().max_price("0.05").build()).build())
            .placement(LaunchTemplatePlacementRequest::builder().availability_zone(&fx.availability_zone).build())
            .credit_specification(CreditSpecificationRequest::builder().cpu_credits("unlimited").build())
            .ebs_optimized(true)
            .monitoring(LaunchTemplatesMonitoringRequest::builder().enabled(true).build())
            .user_data(user_data)
            .build()
    };
    let created = fx.ec2.create_launch_template().launch_template_name(&name).launch_template_data(data("t3.micro")).send().await?;
    let id = created.launch_template().and_then(|t| t.launch_template_id()).ok_or("no template id")?.to_owned();
    fx.ec2.create_launch_template_version().launch_template_id(&id).launch_template_data(data("t3.small")).send().await?;
    // Version 3 from version 1, naming only its instance type: it keeps all of version 1's other settings.
    let only_type = RequestLaunchTemplateData::builder().instance_type(aws_sdk_ec2::types::InstanceType::T3Large).build();
    fx.ec2.create_launch_template_version().launch_template_id(&id).source_version("1").launch_template_data(only_type).send().await?;

    // (version number, default?, data) for one Versions value, by id or by name.
    let read = |by_name: bool, version: &str| {
        let request = fx.ec2.describe_launch_template_versions().versions(version);
        let request = if by_name { request.launch_template_name(&name) } else { request.launch_template_id(&id) };
        async move {
            let out = request.send().await?;
            let v = out.launch_template_versions().first().cloned().ok_or("no version")?;
            Ok::<_, SetupError>((v.version_number(), v.default_version(), v.launch_template_data().cloned().ok_or("no data")?))
        }
    };
    let check = |data: &aws_sdk_ec2::types::ResponseLaunchTemplateData, instance_type: &str| {
        assert_eq!(data.instance_type().map(|t| t.as_str()), Some(instance_type));
        assert_eq!(data.image_id(), Some(fx.image_id.as_str()));
        assert_eq!(data.security_group_ids(), std::slice::from_ref(&fx.security_group_id));
        let metadata = data.metadata_options().expect("MetadataOptions");
        assert_eq!((metadata.http_tokens(), metadata.http_put_response_hop_limit()), (Some(&LaunchTemplateHttpTokensState::Required), Some(2)));
        let mapping = data.block_device_mappings().first().expect("a block device mapping");
        let ebs = mapping.ebs().expect("Ebs");
        assert_eq!(mapping.device_name(), Some("/dev/xvda"));
        assert_eq!((ebs.volume_size(), ebs.volume_type(), ebs.iops(), ebs.throughput(), ebs.delete_on_termination(), ebs.encrypted()), (Some(20), Some(&VolumeType::Gp3), Some(4000), Some(200), Some(true), Some(true)));
        let nic = data.network_interfaces().first().expect("a network interface");
        assert_eq!((nic.device_index(), nic.subnet_id(), nic.groups(), nic.delete_on_termination()), (Some(0), Some(fx.subnet_id.as_str()), [fx.security_group_id.clone()].as_slice(), Some(true)));
        let tags = data.tag_specifications().first().expect("a tag specification");
        assert_eq!(tags.resource_type(), Some(&ResourceType::Instance));
        assert_eq!(tags.tags().iter().map(|t| (t.key(), t.value())).collect::<Vec<_>>(), [(Some("team"), Some("data"))]);
        assert_eq!(data.iam_instance_profile().and_then(|p| p.name()), Some("tether-node"));
        let market = data.instance_market_options().expect("InstanceMarketOptions");
        assert_eq!((market.market_type(), market.spot_options().and_then(|s| s.max_price())), (Some(&MarketType::Spot), Some("0.05")));
        assert_eq!(data.placement().and_then(|p| p.availability_zone()), Some(fx.availability_zone.as_str()));
        assert_eq!(data.credit_specification().and_then(|c| c.cpu_credits()), Some("unlimited"));
        assert_eq!((data.ebs_optimized(), data.monitoring().and_then(|m| m.enabled()), data.user_data()), (Some(true), Some(true), Some(user_data)));
    };

    for by_name in [false, true] {
        let (number, default, first) = read(by_name, "$Default").await?;
        assert_eq!((number, default), (Some(1), Some(true)), "by name: {by_name}");
        check(&first, "t3.micro");
        let (number, _, second) = read(by_name, "2").await?;
        assert_eq!(number, Some(2));
        check(&second, "t3.small");
        let (number, default, third) = read(by_name, "$Latest").await?;
        assert_eq!((number, default), (Some(3), Some(false)));
        check(&third, "t3.large");
    }
    fx.ec2.modify_launch_template().launch_template_id(&id).default_version("2").send().await?;
    assert_eq!(read(true, "$Default").await?.0, Some(2), "$Default follows ModifyLaunchTemplate");

    // Errors: an unknown template (by id, by name) or version.
    let err = fx.ec2.describe_launch_template_versions().launch_template_id("lt-0123456789abcdef0").versions("$Latest").send().await.expect_err("no such template id");
    assert_eq!(err.code(), Some("InvalidLaunchTemplateId.NotFound"), "{err:?}");
    let err = fx.ec2.describe_launch_template_versions().launch_template_name("tether-no-such-template").versions("$Latest").send().await.expect_err("no such template name");
    assert_eq!(err.code(), Some("InvalidLaunchTemplateName.NotFoundException"), "{err:?}");
    for version in ["7", "0"] {
        let err = fx.ec2.describe_launch_template_versions().launch_template_id(&id).versions(version).send().await.expect_err("no such version");
        assert_eq!(err.code(), Some("InvalidLaunchTemplateId.VersionNotFound"), "version {version}: {err:?}");
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_s_source_dest_check_is_its_primary_eni_s() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::AttributeBooleanValue;
    let fx = Fixture::new().await?;
    let eni = create_eni(&fx, None).await?;
    let check = |on: bool| AttributeBooleanValue::builder().value(on).build();
    let on_eni = |id: &str, on: bool| fx.ec2.modify_network_interface_attribute().network_interface_id(id).source_dest_check(check(on)).send();
    let shown = |instance: aws_sdk_ec2::types::Instance| {
        let primary = instance.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0)).and_then(|n| n.source_dest_check());
        (instance.source_dest_check(), primary)
    };

    // Off on a detached ENI: DescribeNetworkInterfaces shows it, and so does the instance launched on it.
    on_eni(&eni, false).await?;
    assert_eq!(fx.eni(&eni).await?.source_dest_check(), Some(false));
    let instance = launch_on_eni(&fx, &eni).await?;
    assert_eq!(shown(fx.instance(&instance).await?), (Some(false), Some(false)), "the instance's check is its primary ENI's");
    // On again through the ENI, then off through the instance: one attribute.
    on_eni(&eni, true).await?;
    assert_eq!(shown(fx.instance(&instance).await?), (Some(true), Some(true)));
    fx.ec2.modify_instance_attribute().instance_id(&instance).source_dest_check(check(false)).send().await?;
    assert_eq!(fx.eni(&eni).await?.source_dest_check(), Some(false), "ModifyInstanceAttribute writes to the primary ENI");
    assert_eq!(shown(fx.instance(&instance).await?), (Some(false), Some(false)));

    // With two interfaces the instance-level call cannot tell which one is meant.
    let primary = create_eni(&fx, None).await?;
    let extra = create_eni(&fx, None).await?;
    let out = fx.run_one().network_interfaces(existing_nic(0, &primary)).network_interfaces(existing_nic(1, &extra)).send().await?;
    let two = out.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();
    let err = fx.ec2.modify_instance_attribute().instance_id(&two).source_dest_check(check(false)).send().await.expect_err("two interfaces");
    assert_eq!(err.code(), Some("InvalidInstanceID"), "{err:?}");
    assert_eq!((fx.eni(&primary).await?.source_dest_check(), fx.eni(&extra).await?.source_dest_check()), (Some(true), Some(true)), "nothing changed");
    Ok(())
}
