//! Launch templates as a node's base, read back from the emulator: the template's
//! instance-level security groups go on the node's ENI (never on RunInstances), its settings
//! reach every generation under the spec's own, a later version's groups follow at the next
//! launch, and what Tether cannot carry is refused at create naming the field.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::types::{
    HttpTokensState, Instance, LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataOptionsRequest,
    RequestLaunchTemplateData,
};
use tether::launch_options::LaunchTemplateRef;
use tether::model::{ExtraEni, SecondaryIps};
use tether::volumes::{BlockDevice, VolumeType};
use tether::{Node, NodeSpec, NodeState, Persistence, TetherError};
use tether_tests::event_source::invoke_target;
use tether_tests::events::state_change;
use tether_tests::{Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

/// A security group of the fixture's VPC.
async fn security_group(fx: &Fixture, name: &str) -> Result<String, SetupError> {
    let group = fx.ec2.create_security_group().group_name(format!("{name}-{}", fx.table_name)).description(name).vpc_id(&fx.vpc_id).send().await?;
    Ok(group.group_id().ok_or("no group id")?.to_owned())
}

/// A template with the fixture's AMI, m5.large, instance-level `groups`, IMDSv2 required at
/// one hop; its id.
async fn template(fx: &Fixture, groups: &[String]) -> Result<String, SetupError> {
    let metadata = LaunchTemplateInstanceMetadataOptionsRequest::builder().http_tokens(LaunchTemplateHttpTokensState::Required).http_put_response_hop_limit(1).build();
    let data = RequestLaunchTemplateData::builder()
        .image_id(&fx.image_id)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .set_security_group_ids(Some(groups.to_vec()))
        .metadata_options(metadata)
        .build();
    let created = fx.ec2.create_launch_template().launch_template_name(format!("db-{}", fx.table_name)).launch_template_data(data).send().await?;
    Ok(created.launch_template().and_then(|t| t.launch_template_id()).ok_or("no template id")?.to_owned())
}

/// What each generation must show the same: (ENI, private IP, secondary IPs, the ENI's
/// groups, root size and type, tokens, hop limit, instance type, the ENI and private IP at
/// device index 1).
type Launched = (String, String, Vec<String>, Vec<String>, (i32, String), Option<HttpTokensState>, Option<i32>, String, Option<(String, String)>);

async fn launched_as(fx: &Fixture, node: &Node) -> Result<Launched, SetupError> {
    let node = fx.tether.node(&node.id).await?;
    let instance: Instance = fx.instance(node.instance_id().ok_or("no instance")?).await?;
    let primary = instance.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0)).ok_or("no primary ENI")?;
    let eni = fx.eni(primary.network_interface_id().ok_or("no ENI id")?).await?;
    let mut groups: Vec<String> = eni.groups().iter().filter_map(|g| g.group_id()).map(str::to_owned).collect();
    groups.sort();
    let secondary = eni.private_ip_addresses().iter().filter(|a| a.primary() != Some(true)).filter_map(|a| a.private_ip_address()).map(str::to_owned).collect();
    let root = instance.block_device_mappings().iter().find(|m| m.device_name() == Some("/dev/sda1")).and_then(|m| m.ebs()).and_then(|e| e.volume_id()).ok_or("no root")?;
    let described = fx.ec2.describe_volumes().volume_ids(root).send().await?;
    let volume = described.volumes().first().ok_or("no root volume")?;
    let metadata = instance.metadata_options();
    let extra = instance.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(1));
    Ok((
        eni.network_interface_id().unwrap_or_default().to_owned(),
        eni.private_ip_address().unwrap_or_default().to_owned(),
        secondary,
        groups,
        (volume.size().unwrap_or(0), volume.volume_type().map(|t| t.as_str().to_owned()).unwrap_or_default()),
        metadata.and_then(|m| m.http_tokens()).cloned(),
        metadata.and_then(|m| m.http_put_response_hop_limit()),
        instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        extra.map(|n| (n.network_interface_id().unwrap_or_default().to_owned(), n.private_ip_address().unwrap_or_default().to_owned())),
    ))
}

fn based_on(template_id: &str) -> Option<LaunchTemplateRef> {
    Some(LaunchTemplateRef { id: Some(template_id.to_owned()), name: None, version: "$Latest".into() })
}

#[tokio::test]
async fn a_node_from_a_template_with_instance_security_groups_keeps_everything_on_every_generation() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (web, db) = (security_group(&fx, "web").await?, security_group(&fx, "db").await?);
    let template_id = template(&fx, std::slice::from_ref(&web)).await?;
    let back = fx.subnet("10.0.8.0/24").await?;
    let root = BlockDevice { device_name: "/dev/sda1".into(), volume_size_gib: 100, volume_type: VolumeType::Gp3, iops: None, throughput_mibps: None, encrypted: None, kms_key_id: None, delete_on_termination: true };
    let spec = NodeSpec {
        image_id: String::new(),
        instance_types: Vec::new(),
        security_group_ids: Vec::new(),
        launch_template: based_on(&template_id),
        block_devices: vec![root],
        secondary_private_ips: Some(SecondaryIps { count: None, addresses: vec![Ipv4Addr::new(10, 0, 1, 20), Ipv4Addr::new(10, 0, 1, 21)] }),
        extra_enis: vec![ExtraEni { device_index: 1, subnet_id: back, security_group_ids: vec![db.clone()], private_ip: None, elastic_ip_allocation_id: None }],
        ..fx.spec(&[])
    };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    assert_eq!(node.spec.metadata_options, None, "the template's metadata settings stand: no default filled in");
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let first = launched_as(&fx, &node).await?;
    assert_eq!(first.2, vec!["10.0.1.20", "10.0.1.21"]);
    assert_eq!(first.3, vec![web.clone()], "the template's instance-level group is on the ENI");
    assert_eq!(first.4, (100, "gp3".to_owned()), "the spec's root");
    assert_eq!((first.5.clone(), first.6, first.7.as_str()), (Some(HttpTokensState::Required), Some(1), "m5.large"), "the template's metadata and type");
    let extra = fx.tether.node(&node.id).await?.extra_enis.first().map(|e| (e.id.clone(), e.private_ip.to_string()));
    assert!(extra.is_some() && first.8 == extra, "the extra ENI at device index 1: {:?}, recorded {extra:?}", first.8);
    assert_eq!(fx.eni(&first.8.clone().unwrap_or_default().0).await?.groups().iter().filter_map(|g| g.group_id()).collect::<Vec<_>>(), vec![db.as_str()], "its own group");
    for generation in 2..=4 {
        fx.interrupt_node(&node.id, BUDGET).await?;
        assert_eq!(launched_as(&fx, &node).await?, first, "generation {generation}");
    }

    // A new version with another group: the next launch puts it on the ENI.
    let data = RequestLaunchTemplateData::builder().security_group_ids(&db).build();
    fx.ec2.create_launch_template_version().launch_template_id(&template_id).source_version("1").launch_template_data(data).send().await?;
    fx.interrupt_node(&node.id, BUDGET).await?;
    let after = launched_as(&fx, &node).await?;
    assert_eq!((after.0.as_str(), after.3.clone()), (first.0.as_str(), vec![db]), "same ENI, the new version's group");
    assert_eq!((after.5, after.6), (first.5, first.6), "the rest of the template as before");
    Ok(())
}

#[tokio::test]
async fn a_template_tether_cannot_carry_is_refused_and_one_deleted_later_stops_the_node_naming_it() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let missing = NodeSpec { launch_template: based_on("lt-0123456789abcdef0"), ..fx.spec(&["m5.large"]) };
    match fx.tether.create_node(missing, Persistence::default(), None).await {
        Err(TetherError::Invalid { field, reason }) => assert_eq!((field.as_str(), reason.contains("does not exist")), ("spec.launch_template", true), "{reason}"),
        other => panic!("not refused: {other:?}"),
    }
    let with_nic = RequestLaunchTemplateData::builder()
        .image_id(&fx.image_id)
        .network_interfaces(aws_sdk_ec2::types::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder().device_index(0).subnet_id(&fx.subnet_id).build())
        .build();
    let created = fx.ec2.create_launch_template().launch_template_name(format!("nic-{}", fx.table_name)).launch_template_data(with_nic).send().await?;
    let nic_id = created.launch_template().and_then(|t| t.launch_template_id()).ok_or("no id")?;
    match fx.tether.create_node(NodeSpec { launch_template: based_on(nic_id), ..fx.spec(&["m5.large"]) }, Persistence::default(), None).await {
        Err(TetherError::Invalid { field, reason }) => assert_eq!((field.as_str(), reason.contains("NetworkInterfaces")), ("spec.launch_template", true), "{reason}"),
        other => panic!("not refused: {other:?}"),
    }

    let group = security_group(&fx, "app").await?;
    let template_id = template(&fx, &[group]).await?;
    let spec = NodeSpec { image_id: String::new(), instance_types: Vec::new(), security_group_ids: Vec::new(), launch_template: based_on(&template_id), ..fx.spec(&[]) };
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    fx.ec2.delete_launch_template().launch_template_id(&template_id).send().await?;
    let instance_id = fx.tether.node(&node.id).await?.instance_id().ok_or("no instance")?.to_owned();
    fx.interrupt(&instance_id).await?;
    invoke_target(&fx.tether, &fx.requeue, state_change(&instance_id, "terminated"), BUDGET).await?;
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Error);
    assert!(after.last_error.as_deref().is_some_and(|e| e.contains(&template_id) && e.contains("no longer exists")), "{:?}", after.last_error);
    assert!(fx.live_instances(&node.id).await?.is_empty(), "nothing launched");
    Ok(())
}
