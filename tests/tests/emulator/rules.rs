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
