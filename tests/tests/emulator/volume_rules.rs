//! EBS volume rules and instance status checks, proven against the emulator. Each test fails if
//! the launcher patch that enforces its rule is disabled (TETHER_MOTO_DISABLE=<name>); see
//! tests/emulator/README.md.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, Filter, InstanceBlockDeviceMappingSpecification, EbsInstanceBlockDeviceSpecification, Tag, VolumeState};
use tether_tests::{Fixture, SetupError};

/// The instance tag that makes the emulator fail an instance's status check (its only test hook).
const STATUS_TAG: &str = "tether-emulator:status";

/// One running instance in the fixture's subnet (its AZ); its id.
async fn launch(fx: &Fixture) -> Result<String, SetupError> {
    let out = fx.run_one().subnet_id(&fx.subnet_id).send().await?;
    Ok(out.instances().first().and_then(|i| i.instance_id()).ok_or("RunInstances returned no instance")?.to_owned())
}

/// A new 1 GiB volume in `zone`; its id.
async fn create_volume(fx: &Fixture, zone: &str) -> Result<String, SetupError> {
    let out = fx.ec2.create_volume().size(1).availability_zone(zone).send().await?;
    Ok(out.volume_id().ok_or("CreateVolume returned no id")?.to_owned())
}

/// The volume's state and its attachments as (instance, device), or `None` if it no longer exists.
async fn volume(fx: &Fixture, volume_id: &str) -> Result<Option<(VolumeState, Vec<(String, String)>)>, SetupError> {
    match fx.ec2.describe_volumes().volume_ids(volume_id).send().await {
        Ok(out) => {
            let volume = out.volumes().first().ok_or("DescribeVolumes returned no volume")?;
            let attachments = volume
                .attachments()
                .iter()
                .map(|a| (a.instance_id().unwrap_or_default().to_owned(), a.device().unwrap_or_default().to_owned()))
                .collect();
            Ok(Some((volume.state().cloned().ok_or("no volume state")?, attachments)))
        }
        Err(e) if e.code() == Some("InvalidVolume.NotFound") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An available volume with no attachment.
fn available() -> Option<(VolumeState, Vec<(String, String)>)> {
    Some((VolumeState::Available, Vec::new()))
}

/// An in-use volume attached to `instance_id` at `device`.
fn attached(instance_id: &str, device: &str) -> Option<(VolumeState, Vec<(String, String)>)> {
    Some((VolumeState::InUse, vec![(instance_id.to_owned(), device.to_owned())]))
}

/// The error code a request was refused with, or "accepted".
fn refused<T, E: ProvideErrorMetadata>(result: Result<T, SdkError<E>>) -> String {
    match result {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.code().unwrap_or("no code").to_owned(),
    }
}

/// device name -> (volume id, DeleteOnTermination) as DescribeInstances lists them.
async fn block_devices(fx: &Fixture, instance_id: &str) -> Result<std::collections::BTreeMap<String, (String, Option<bool>)>, SetupError> {
    let instance = fx.instance(instance_id).await?;
    Ok(instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            let ebs = m.ebs()?;
            Some((m.device_name()?.to_owned(), (ebs.volume_id()?.to_owned(), ebs.delete_on_termination())))
        })
        .collect())
}

#[tokio::test]
async fn attaching_and_detaching_volumes_check_volume_and_instance_states() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let first = launch(&fx).await?;
    let second = launch(&fx).await?;
    let attach = |volume_id: &str, instance_id: &str, device: &str| {
        fx.ec2.attach_volume().volume_id(volume_id).instance_id(instance_id).device(device).send()
    };
    let data = create_volume(&fx, &fx.availability_zone).await?;
    attach(&data, &first, "/dev/sdf").await?;
    assert_eq!(volume(&fx, &data).await?, attached(&first, "/dev/sdf"));

    // An attached volume cannot be attached again, to another instance or the same one.
    assert_eq!(refused(attach(&data, &second, "/dev/sdf").await), "VolumeInUse", "a volume in use is refused");
    assert_eq!(refused(attach(&data, &first, "/dev/sdg").await), "VolumeInUse", "also to its own instance");
    assert_eq!(volume(&fx, &data).await?, attached(&first, "/dev/sdf"), "still on the first instance only");
    assert!(!block_devices(&fx, &second).await?.contains_key("/dev/sdf"), "the second instance lists no /dev/sdf");

    // A device name the instance already uses.
    let spare = create_volume(&fx, &fx.availability_zone).await?;
    assert_eq!(refused(attach(&spare, &first, "/dev/sdf").await), "InvalidParameterValue", "attachment point in use");
    assert_eq!(volume(&fx, &spare).await?, available());
    assert_eq!(block_devices(&fx, &first).await?.get("/dev/sdf").map(|(v, _)| v.as_str()), Some(data.as_str()), "/dev/sdf keeps its volume");

    // A volume in another Availability Zone.
    let elsewhere = create_volume(&fx, "us-east-1b").await?;
    assert_eq!(refused(attach(&elsewhere, &first, "/dev/sdg").await), "InvalidVolume.ZoneMismatch");
    assert_eq!(volume(&fx, &elsewhere).await?, available());

    // An attached volume cannot be deleted (moto already held this); an available one cannot be detached.
    assert_eq!(refused(fx.ec2.delete_volume().volume_id(&data).send().await), "VolumeInUse");
    assert_eq!(refused(fx.ec2.detach_volume().volume_id(&spare).instance_id(&first).send().await), "IncorrectState");
    assert_eq!(refused(fx.ec2.detach_volume().volume_id(&spare).send().await), "IncorrectState", "without InstanceId too");

    // A terminated instance takes no volume; a stopped one does.
    fx.ec2.terminate_instances().instance_ids(&second).send().await?;
    assert_eq!(refused(attach(&spare, &second, "/dev/sdg").await), "IncorrectState", "terminated instance");
    assert_eq!(volume(&fx, &spare).await?, available());
    fx.ec2.stop_instances().instance_ids(&first).send().await?;
    attach(&spare, &first, "/dev/sdg").await.map_err(|e| format!("attach to a stopped instance: {:?}", e.code()))?;
    assert_eq!(volume(&fx, &spare).await?, attached(&first, "/dev/sdg"));

    // DetachVolume needs neither InstanceId nor Device; the volume is then free and deletable.
    fx.ec2.detach_volume().volume_id(&spare).send().await.map_err(|e| format!("detach without InstanceId: {:?}", e.code()))?;
    assert_eq!(volume(&fx, &spare).await?, available());
    fx.ec2.delete_volume().volume_id(&spare).send().await?;
    assert_eq!(volume(&fx, &spare).await?, None);
    Ok(())
}

#[tokio::test]
async fn terminating_an_instance_honours_each_volume_s_delete_on_termination() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let mapping = |device: &str, delete_on_termination: Option<bool>| {
        BlockDeviceMapping::builder()
            .device_name(device)
            .ebs(EbsBlockDevice::builder().volume_size(2).set_delete_on_termination(delete_on_termination).build())
            .build()
    };
    // A launch mapping without DeleteOnTermination deletes its volume (AWS's default for volumes attached
    // at launch through the API); false keeps it; true deletes it.
    let run = fx
        .run_one()
        .subnet_id(&fx.subnet_id)
        .block_device_mappings(mapping("/dev/xvda", None))
        .block_device_mappings(mapping("/dev/sdb", Some(false)))
        .block_device_mappings(mapping("/dev/sdc", Some(true)))
        .block_device_mappings(mapping("/dev/sdd", Some(true)))
        .send()
        .await?;
    let instance = run.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();
    let devices = block_devices(&fx, &instance).await?;
    let flag = |device: &str| devices.get(device).and_then(|(_, flag)| *flag);
    assert_eq!(flag("/dev/xvda"), Some(true), "a launch mapping without DeleteOnTermination defaults to true: {devices:?}");
    assert_eq!((flag("/dev/sdb"), flag("/dev/sdc"), flag("/dev/sdd")), (Some(false), Some(true), Some(true)));
    let volume_at = |device: &str| devices.get(device).map(|(v, _)| v.clone()).ok_or(format!("no volume at {device}"));
    let (root, kept, deleted, changed) = (volume_at("/dev/xvda")?, volume_at("/dev/sdb")?, volume_at("/dev/sdc")?, volume_at("/dev/sdd")?);

    // ModifyInstanceAttribute changes the flag (moto already did).
    fx.ec2
        .modify_instance_attribute()
        .instance_id(&instance)
        .block_device_mappings(
            InstanceBlockDeviceMappingSpecification::builder()
                .device_name("/dev/sdd")
                .ebs(EbsInstanceBlockDeviceSpecification::builder().delete_on_termination(false).build())
                .build(),
        )
        .send()
        .await?;

    // A volume attached after launch: DeleteOnTermination false, shown on the volume's attachment.
    let later = create_volume(&fx, &fx.availability_zone).await?;
    fx.ec2.attach_volume().volume_id(&later).instance_id(&instance).device("/dev/sdf").send().await?;
    let described = fx.ec2.describe_volumes().volume_ids(&later).send().await?;
    let attachment = described.volumes().first().and_then(|v| v.attachments().first()).ok_or("no attachment")?;
    assert_eq!(attachment.delete_on_termination(), Some(false), "an attached volume is kept by default: {attachment:?}");

    // A launch without BlockDeviceMappings: its root volume is deleted with it.
    let plain = launch(&fx).await?;
    let plain_root = block_devices(&fx, &plain).await?.into_values().next().map(|(v, _)| v).ok_or("no root volume")?;

    fx.ec2.terminate_instances().instance_ids(&instance).instance_ids(&plain).send().await?;

    assert_eq!(volume(&fx, &root).await?, None, "the mapping without DeleteOnTermination was deleted");
    assert_eq!(volume(&fx, &deleted).await?, None, "DeleteOnTermination=true was deleted");
    assert_eq!(volume(&fx, &plain_root).await?, None, "the default root volume was deleted");
    assert_eq!(volume(&fx, &kept).await?, available(), "DeleteOnTermination=false is kept, detached");
    assert_eq!(volume(&fx, &changed).await?, available(), "the flag as ModifyInstanceAttribute set it");
    assert_eq!(volume(&fx, &later).await?, available(), "the volume AttachVolume added is kept, detached");
    assert_eq!(block_devices(&fx, &instance).await?, Default::default(), "a terminated instance lists no volumes");
    // The kept volumes can be used again.
    let other = launch(&fx).await?;
    fx.ec2.attach_volume().volume_id(&kept).instance_id(&other).device("/dev/sdf").send().await?;
    assert_eq!(volume(&fx, &kept).await?, attached(&other, "/dev/sdf"));
    Ok(())
}

/// (instance status, system status) of each instance DescribeInstanceStatus returned, by id.
type Statuses = std::collections::BTreeMap<String, (String, String)>;

fn statuses(out: &aws_sdk_ec2::operation::describe_instance_status::DescribeInstanceStatusOutput) -> Statuses {
    let summary = |s: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| s.and_then(|s| s.status()).map(|s| s.as_str().to_owned()).unwrap_or_default();
    out.instance_statuses()
        .iter()
        .map(|s| (s.instance_id().unwrap_or_default().to_owned(), (summary(s.instance_status()), summary(s.system_status()))))
        .collect()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn pair(instance: &str, system: &str) -> (String, String) {
    (instance.to_owned(), system.to_owned())
}

#[tokio::test]
async fn instance_status_answers_as_aws_does() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let healthy = launch(&fx).await?;
    let sick_system = launch(&fx).await?;
    let stopped = launch(&fx).await?;
    let terminated = launch(&fx).await?;
    // Six instances whose status check fails, so that a page of 5 cannot hold them all.
    let batch = fx.run_one().subnet_id(&fx.subnet_id).min_count(6).max_count(6).send().await?;
    let sick: Vec<String> = batch.instances().iter().filter_map(|i| i.instance_id()).map(str::to_owned).collect();
    assert_eq!(sick.len(), 6);
    let tag = |value: &str| Tag::builder().key(STATUS_TAG).value(value).build();
    fx.ec2.create_tags().set_resources(Some(sick.clone())).tags(tag("instance-impaired")).send().await?;
    fx.ec2.create_tags().resources(&sick_system).tags(tag("system-impaired")).send().await?;
    fx.ec2.stop_instances().instance_ids(&stopped).send().await?;
    fx.ec2.terminate_instances().instance_ids(&terminated).send().await?;
    let ours = [healthy.clone(), sick_system.clone(), stopped.clone(), terminated.clone(), sick[0].clone()];

    // By id: running instances only, each with its checks.
    let out = fx.ec2.describe_instance_status().set_instance_ids(Some(ours.to_vec())).send().await?;
    let expected: Statuses = [
        (healthy.clone(), pair("ok", "ok")),
        (sick_system.clone(), pair("ok", "impaired")),
        (sick[0].clone(), pair("impaired", "ok")),
    ]
    .into_iter()
    .collect();
    assert_eq!(statuses(&out), expected, "running instances, with the status the tag asks for");
    let impaired = out.instance_statuses().iter().find(|s| s.instance_id() == Some(sick[0].as_str())).and_then(|s| s.instance_status()).ok_or("no status")?;
    let detail = impaired.details().first().ok_or("an impaired check has details")?;
    assert_eq!((detail.status().map(|s| s.as_str()), detail.impaired_since().is_some()), (Some("failed"), true), "{detail:?}");

    // IncludeAllInstances: the others too, not-applicable.
    let out = fx.ec2.describe_instance_status().set_instance_ids(Some(ours.to_vec())).include_all_instances(true).send().await?;
    let all = statuses(&out);
    assert_eq!(all.get(&stopped), Some(&pair("not-applicable", "not-applicable")), "{all:?}");
    assert_eq!(all.get(&terminated), Some(&pair("not-applicable", "not-applicable")), "{all:?}");
    assert_eq!(all.len(), 5);

    // Filters on the checks, across the whole emulator (other tests impair instances of
    // their own too): of this test's instances, the impaired ones.
    let launched: std::collections::BTreeSet<&String> = ours.iter().chain(&sick).collect();
    let of_ours = |found: Statuses| found.into_keys().filter(|k| launched.contains(k)).collect::<Vec<_>>();
    let impaired = of_ours(statuses(&fx.ec2.describe_instance_status().filters(filter("instance-status.status", "impaired")).send().await?));
    assert_eq!(impaired, { let mut s = sick.clone(); s.sort(); s }, "instance-status.status=impaired");
    let impaired = of_ours(statuses(&fx.ec2.describe_instance_status().filters(filter("system-status.status", "impaired")).send().await?));
    assert_eq!(impaired, [sick_system.clone()], "system-status.status=impaired");
    let mine = fx.ec2.describe_instance_status().set_instance_ids(Some(ours.to_vec())).include_all_instances(true);
    let not_applicable = statuses(&mine.clone().filters(filter("instance-status.status", "not-applicable")).send().await?);
    assert_eq!(not_applicable.keys().cloned().collect::<std::collections::BTreeSet<_>>(), [stopped.clone(), terminated.clone()].into(), "not-applicable");
    let ok = statuses(&mine.clone().filters(filter("instance-status.status", "ok")).filters(filter("system-status.status", "ok")).send().await?);
    assert_eq!(ok.keys().collect::<Vec<_>>(), [&healthy], "filters are ANDed");
    let either = statuses(&mine.filters(Filter::builder().name("system-status.status").values("impaired").values("not-applicable").build()).send().await?);
    assert_eq!(either.len(), 3, "a filter's values are ORed: {either:?}");

    // MaxResults: 5 to 1000, never with InstanceIds; NextToken pages on.
    assert_eq!(refused(fx.ec2.describe_instance_status().instance_ids(&healthy).max_results(5).send().await), "InvalidParameterCombination");
    assert_eq!(refused(fx.ec2.describe_instance_status().max_results(4).send().await), "InvalidParameterValue");
    assert_eq!(refused(fx.ec2.describe_instance_status().max_results(1001).send().await), "InvalidParameterValue");
    let mut pages = Vec::new();
    let mut token = None;
    loop {
        let out = fx.ec2.describe_instance_status().filters(filter("instance-status.status", "impaired")).max_results(5).set_next_token(token).send().await?;
        pages.push(statuses(&out).into_keys().collect::<Vec<_>>());
        token = out.next_token().map(str::to_owned);
        if token.is_none() || pages.len() > 10 {
            break;
        }
    }
    // At least this test's 6 impaired instances, in pages of 5 (all full but the last).
    assert!(pages.len() >= 2 && pages[..pages.len() - 1].iter().all(|p| p.len() == 5) && pages.last().is_some_and(|p| (1..=5).contains(&p.len())), "pages of 5: {pages:?}");
    let mut listed: Vec<String> = pages.concat();
    listed.sort();
    let total = listed.len();
    listed.dedup();
    assert_eq!(listed.len(), total, "each once: {pages:?}");
    assert_eq!(listed.into_iter().filter(|k| launched.contains(k)).collect::<Vec<_>>(), { let mut s = sick.clone(); s.sort(); s }, "each of ours listed");

    // The tag gone, the check passes again.
    fx.ec2.delete_tags().resources(&sick[0]).tags(Tag::builder().key(STATUS_TAG).build()).send().await?;
    let out = fx.ec2.describe_instance_status().instance_ids(&sick[0]).send().await?;
    assert_eq!(statuses(&out).get(&sick[0]), Some(&pair("ok", "ok")));
    Ok(())
}
