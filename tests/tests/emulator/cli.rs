//! The `tether` CLI, run in-process against the local API (the `api` function behind a
//! front that checks SigV4 as API Gateway does), on the emulator.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use tether::ports::NodeStore;
use tether::views::{NodeHistory, NodeList, NodeView, Problem};
use tether::NodeState;
use tether_cli::{Captured, Environment, RetryPolicy};
use tether_tests::local_api::{LocalApi, ACCESS_KEY_ID, ACCOUNT_ID, SECRET_ACCESS_KEY};
use tether_tests::{Fixture, SetupError};

/// The caller the local front reports for the test credentials.
fn caller() -> String {
    format!("arn:aws:iam::{ACCOUNT_ID}:user/{ACCESS_KEY_ID}")
}

/// The CLI's environment for a test: endpoint as if from TETHER_API_URL, fixed credentials
/// (no process-wide variables: tests run in parallel), quick polls and retries.
pub(crate) fn environment(url: &str, secret: &str) -> Environment {
    Environment {
        api_url: Some(url.to_owned()),
        region: Some("us-east-1".to_owned()),
        credentials: Some(Credentials::new(ACCESS_KEY_ID, secret, None, None, "cli-tests")),
        poll_interval: Duration::from_millis(50),
        retry: RetryPolicy { attempts: 3, base_delay: Duration::from_millis(10) },
    }
}

pub(crate) async fn tether(env: &Environment, args: &[&str]) -> Captured {
    tether_cli::run_captured(std::iter::once("tether").chain(args.iter().copied()), env).await
}

/// Runs a command with `--json` that must succeed; its answer.
pub(crate) async fn tether_json(env: &Environment, args: &[&str]) -> Result<serde_json::Value, SetupError> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = tether(env, &all).await;
    assert_eq!(out.code, 0, "tether {}: {out:?}", all.join(" "));
    Ok(serde_json::from_str(&out.stdout).map_err(|e| format!("tether {}: {e}: {}", all.join(" "), out.stdout))?)
}

/// A value of the human key/value block of one node (`private IP   10.0.1.90`).
pub(crate) fn field<'a>(block: &'a str, key: &str) -> Option<&'a str> {
    block.lines().find_map(|line| line.strip_prefix(key).filter(|rest| rest.starts_with("  ")).map(str::trim))
}

/// The `[ 0.3s] tn-… launching generation 1` progress line's node id.
fn node_in_progress(stderr: &str) -> Option<String> {
    stderr.split_whitespace().find(|w| w.starts_with("tn-")).map(str::to_owned)
}

#[tokio::test]
async fn a_node_goes_through_its_lifecycle_with_the_cli() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let (allocation_id, public_ip) = fx.allocate_eip().await?;

    // Every request below is signed by the CLI and checked by the front: this one too.
    let created = tether(
        &env,
        &[
            "nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id,
            "--instance-type", "m5.large", "--instance-type", "m6i.large",
            "--security-group", &fx.security_group_id, "--tag", "team=data",
            "--private-ip", "10.0.1.90", "--elastic-ip", &allocation_id, "--resume", "--wait",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}");
    let block = &created.stdout;
    assert_eq!(field(block, "state"), Some("running"), "{block}");
    assert_eq!(field(block, "private IP"), Some("10.0.1.90"), "{block}");
    assert_eq!(field(block, "public IP"), Some(public_ip.as_str()), "{block}");
    assert_eq!(field(block, "generation"), Some("1"));
    let id = field(block, "id").ok_or("no id in the block")?.to_owned();
    let first = field(block, "instance").ok_or("no instance")?.to_owned();
    let instance = fx.instance(&first).await?;
    assert_eq!(instance.private_ip_address(), Some("10.0.1.90"), "EC2 agrees");
    assert_eq!(instance.public_ip_address(), Some(public_ip.as_str()));

    let shown = tether(&env, &["nodes", "show", &id]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    assert_eq!(field(&shown.stdout, "instance types"), Some("m5.large, m6i.large"), "ordered as given");
    assert_eq!(field(&shown.stdout, "tags"), Some("team=data"));
    assert_eq!(field(&shown.stdout, "elastic IP"), Some(allocation_id.as_str()));
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "show", &id]).await?)?;
    assert_eq!(node.id.as_str(), id);
    assert_eq!(node.instance_id.as_deref(), Some(first.as_str()));
    assert_eq!(node.spec.instance_types, ["m5.large", "m6i.large"]);
    assert_eq!(node.persistence.private_ip.map(|ip| ip.to_string()).as_deref(), Some("10.0.1.90"));
    let eni_id = node.eni_id.clone().ok_or("no ENI")?;

    let listed = tether(&env, &["nodes", "list"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    let header = listed.stdout.lines().next().ok_or("no table")?;
    for column in ["ID", "STATE", "GEN", "INSTANCE", "TYPE", "MARKET", "PRIVATE IP", "PUBLIC IP"] {
        assert!(header.contains(column), "{header}");
    }
    let row: Vec<&str> = listed.stdout.lines().nth(1).ok_or("no row")?.split_whitespace().collect();
    assert_eq!(row, [id.as_str(), "running", "1", first.as_str(), "m5.large", "spot", "10.0.1.90", public_ip.as_str()]);

    let paused = tether(&env, &["nodes", "pause", &id]).await;
    assert_eq!((paused.code, field(&paused.stdout, "state")), (0, Some("paused")), "{paused:?}");
    assert_eq!(field(&paused.stdout, "instance"), Some("-"));
    assert_eq!(fx.instance(&first).await?.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("terminated"));

    let resumed = tether(&env, &["nodes", "resume", &id, "--wait"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!((field(&resumed.stdout, "state"), field(&resumed.stdout, "generation")), (Some("running"), Some("2")));
    assert_eq!(field(&resumed.stdout, "private IP"), Some("10.0.1.90"));
    assert_eq!(field(&resumed.stdout, "public IP"), Some(public_ip.as_str()));
    let second = field(&resumed.stdout, "instance").ok_or("no instance")?.to_owned();
    assert_ne!(second, first);

    let recycled: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "recycle", &id, "--wait"]).await?)?;
    assert_eq!((recycled.state, recycled.generation), (NodeState::Running, 3));
    assert_ne!(recycled.instance_id.as_deref(), Some(second.as_str()));
    assert_eq!(recycled.eni_id.as_deref(), Some(eni_id.as_str()), "same ENI");

    // The history names each action and who asked for it.
    let history = tether(&env, &["nodes", "history", &id]).await;
    assert_eq!(history.code, 0, "{history:?}");
    for action in ["created", "resume requested", "pause requested", "recycle requested"] {
        let line = history.stdout.lines().find(|l| l.contains(action)).ok_or(format!("no `{action}` in {}", history.stdout))?;
        assert!(line.trim_end().ends_with(&caller()), "{line}");
    }
    let entries: NodeHistory = serde_json::from_value(tether_json(&env, &["nodes", "history", &id]).await?)?;
    assert!(entries.entries.iter().filter(|e| e.by.as_deref() == Some(caller().as_str())).count() >= 5, "{entries:?}");

    let gone = tether(&env, &["nodes", "deallocate", &id, "--wait"]).await;
    assert_eq!((gone.code, field(&gone.stdout, "state")), (0, Some("deallocated")), "{gone:?}");
    assert!(fx.ec2.describe_network_interfaces().network_interface_ids(&eni_id).send().await.is_err(), "ENI deleted");
    let eip = fx.ec2.describe_addresses().allocation_ids(&allocation_id).send().await?;
    assert_eq!(eip.addresses().first().ok_or("the user's Elastic IP must remain")?.association_id(), None);

    let refused = tether(&env, &["nodes", "resume", &id]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.starts_with("error: ") && refused.stderr.contains("deallocated"), "{}", refused.stderr);
    Ok(())
}

/// `tether nodes update` sends PATCH with only the settings given; the API's refusals come
/// back as the field and the detail.
#[tokio::test]
async fn update_changes_launch_settings_and_prints_the_field_of_a_bad_value() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let images = fx.ec2.describe_images().owners("amazon").send().await?;
    let other_image = images.images().iter().filter_map(|i| i.image_id()).find(|i| *i != fx.image_id).ok_or("one AMI only")?.to_owned();
    let created = tether_json(&env, &["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large", "--tag", "team=data", "--key-name", "ops", "--handover-after-warning", "30"]).await?;
    let id = created["id"].as_str().ok_or("no id")?.to_owned();
    assert_eq!(created["spec"]["handover_after_warning_seconds"], 30, "{created}");

    let updated = tether(&env, &["nodes", "update", &id, "--image", &other_image]).await;
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_eq!(field(&updated.stdout, "image"), Some(other_image.as_str()), "{}", updated.stdout);
    let shown: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "show", &id]).await?)?;
    assert_eq!(shown.spec.image_id, other_image);
    assert_eq!(shown.spec.instance_types, ["m5.large"], "what was not given is kept");
    assert_eq!(shown.spec.key_name.as_deref(), Some("ops"));

    let args = [
        "nodes", "update", &id, "--instance-type", "m6i.large", "--instance-type", "m5.large", "--tag", "team=db", "--tag", "tier=1",
        "--key-name", "", "--no-on-demand-fallback", "--revert-to-spot", "always",
    ];
    let node: NodeView = serde_json::from_value(tether_json(&env, &args).await?)?;
    assert_eq!(node.spec.instance_types, ["m6i.large", "m5.large"], "ordered as given, replacing the list");
    assert_eq!(node.spec.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), ["team=db", "tier=1"]);
    assert_eq!(node.spec.key_name, None, "'' removes the key pair");
    assert!(!node.spec.fallback_to_on_demand);
    assert_eq!(node.spec.revert_to_spot, tether::model::RevertToSpot::Always);
    assert_eq!(node.spec.image_id, other_image, "kept");
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "update", &id, "--no-tags", "--on-demand-fallback"]).await?)?;
    assert!(node.spec.tags.is_empty() && node.spec.fallback_to_on_demand, "{:?}", node.spec);
    // Created without metadata flags: IMDSv2 required; the flags replace the settings.
    let defaults = tether::model::MetadataOptions::default();
    assert_eq!(node.spec.metadata_options, Some(defaults));
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "update", &id, "--imds-v1", "--metadata-hop-limit", "3"]).await?)?;
    let allowing_v1 = tether::model::MetadataOptions { http_tokens: tether::model::HttpTokens::Optional, http_put_response_hop_limit: 3, ..defaults };
    assert_eq!(node.spec.metadata_options, Some(allowing_v1));
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "update", &id, "--imds-v2-only"]).await?)?;
    assert_eq!(node.spec.metadata_options, Some(defaults), "the hop limit not given takes its default");
    let out_of_range = tether(&env, &["nodes", "update", &id, "--metadata-hop-limit", "65"]).await;
    assert_eq!(out_of_range.code, 2, "clap refuses it before any request: {out_of_range:?}");
    let handing_over = tether(&env, &["nodes", "update", &id, "--handover-after-warning", "45"]).await;
    assert_eq!(field(&handing_over.stdout, "hand over"), Some("45 s after a spot warning"), "{handing_over:?}");
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "show", &id]).await?)?;
    assert_eq!(node.spec.handover_after_warning_seconds, Some(45));
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "update", &id, "--handover-after-warning", "off"]).await?)?;
    assert_eq!(node.spec.handover_after_warning_seconds, None, "`off`: AWS terminates the instance");
    let too_late = tether(&env, &["nodes", "update", &id, "--handover-after-warning", "111"]).await;
    assert_eq!(too_late.code, 2, "clap refuses it before any request: {too_late:?}");
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "update", &id, "--block-device", "/dev/xvda=100:gp3", "--block-device", "/dev/sdf=20"]).await?)?;
    let devices: Vec<(&str, u32, &str)> = node.spec.block_devices.iter().map(|d| (d.device_name.as_str(), d.volume_size_gib, d.volume_type.as_str())).collect();
    assert_eq!(devices, [("/dev/xvda", 100, "gp3"), ("/dev/sdf", 20, "gp3")]);
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "update", &id, "--no-block-devices"]).await?)?;
    assert!(node.spec.block_devices.is_empty(), "back to the AMI's volumes");
    let refused = tether(&env, &["nodes", "update", &id, "--block-device", "/dev/sdf=5:st1"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("field: block_devices[0].volume_size_gib"), "{}", refused.stderr);
    let history = tether(&env, &["nodes", "history", &id]).await;
    assert!(history.stdout.contains("spec changed (image_id)"), "{}", history.stdout);

    // Bad values: the API's detail and field, exit 1, nothing changed.
    for (flag, value, field_name, says) in [
        ("--image", "notanami", "image_id", "AMI id"),
        ("--instance-type", "m99.huge", "instance_types", "m99.huge"),
        ("--tag", "aws:owner=me", "tags.aws:owner", "aws:"),
    ] {
        let refused = tether(&env, &["nodes", "update", &id, flag, value]).await;
        assert_eq!(refused.code, 1, "{flag} {value}: {refused:?}");
        let lines: Vec<&str> = refused.stderr.lines().collect();
        assert!(lines.first().is_some_and(|l| l.starts_with("error: ") && l.contains(says)), "{flag} {value}: {lines:?}");
        assert!(lines.contains(&format!("field: {field_name}").as_str()), "{flag} {value}: {lines:?}");
    }
    let unchanged: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "show", &id]).await?)?;
    assert_eq!((unchanged.spec.image_id.as_str(), unchanged.version), (other_image.as_str(), node.version));

    // Nothing to change, or both ways of one setting: usage errors (exit 2), nothing sent.
    let nothing = tether(&env, &["nodes", "update", &id]).await;
    assert_eq!(nothing.code, 2, "{nothing:?}");
    assert!(nothing.stderr.contains("--image"), "the usage names the settings: {}", nothing.stderr);
    let both = tether(&env, &["nodes", "update", &id, "--on-demand-fallback", "--no-on-demand-fallback"]).await;
    assert_eq!(both.code, 2, "{both:?}");
    Ok(())
}

/// `nodes create` takes a launch template (no --image or --instance-type then), extra ENIs
/// and the launch options; `nodes show` lists the extra ENIs; `nodes update` switches the
/// template and turns options off.
#[tokio::test]
async fn create_takes_a_launch_template_extra_enis_and_launch_options() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let back = fx.subnet("10.0.8.0/24").await?;
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(&fx.image_id).instance_type(aws_sdk_ec2::types::InstanceType::M5Large).build();
    let name = format!("cli-{}", fx.table_name);
    let made = fx.ec2.create_launch_template().launch_template_name(&name).launch_template_data(data).send().await?;
    let template_id = made.launch_template().and_then(|t| t.launch_template_id()).ok_or("no template id")?.to_owned();

    let extra = format!("1:{back}:10.0.8.30");
    let args = [
        "nodes", "create", "--subnet", &fx.subnet_id, "--launch-template", &format!("{name}:latest"), "--extra-eni", &extra, "--ebs-optimized",
        "--volume-tag", "backup=daily", "--capacity-reservation", "open", "--spot-max-price", "0.05",
    ];
    let node: NodeView = serde_json::from_value(tether_json(&env, &args).await?)?;
    let template = node.spec.launch_template.clone().ok_or("no template")?;
    assert_eq!((template.name.as_deref(), template.version.as_str(), node.spec.image_id.as_str()), (Some(name.as_str()), "$Latest", ""), "the template's image");
    assert_eq!(node.spec.extra_enis.iter().map(|e| (e.device_index, e.subnet_id.as_str(), e.private_ip.map(|ip| ip.to_string()))).collect::<Vec<_>>(), [(1, back.as_str(), Some("10.0.8.30".to_owned()))]);
    assert_eq!((node.spec.ebs_optimized, node.spec.spot_max_price.as_deref()), (Some(true), Some("0.05")));
    assert_eq!(node.spec.capacity_reservation, Some(tether::launch_options::CapacityReservation::Open));
    assert_eq!(node.spec.volume_tags.get("backup").map(String::as_str), Some("daily"));
    let id = node.id.to_string();
    let resumed = tether(&env, &["nodes", "resume", &id, "--wait"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    let shown = tether(&env, &["nodes", "show", &id]).await;
    let extra_line = field(&shown.stdout, "extra ENIs").ok_or_else(|| format!("no extra ENIs line: {}", shown.stdout))?;
    assert!(extra_line.starts_with("#1 eni-") && extra_line.contains("10.0.8.30") && extra_line.contains(&back), "{extra_line}");
    assert_eq!(field(&shown.stdout, "instance type"), Some("m5.large"), "the template's type: {}", shown.stdout);

    let args = ["nodes", "update", &id, "--launch-template", &format!("{template_id}:1"), "--spot-max-price", "off", "--capacity-reservation", "off"];
    let node: NodeView = serde_json::from_value(tether_json(&env, &args).await?)?;
    assert_eq!(node.spec.launch_template.as_ref().map(|t| (t.id.as_deref(), t.version.as_str())), Some((Some(template_id.as_str()), "1")));
    assert_eq!((node.spec.spot_max_price.as_ref(), node.spec.capacity_reservation.as_ref()), (None, None), "`off` removes them");

    // Neither an image nor a template, or a malformed extra ENI: clap's usage errors.
    let no_image = tether(&env, &["nodes", "create", "--subnet", &fx.subnet_id, "--instance-type", "m5.large"]).await;
    assert!(no_image.code == 2 && no_image.stderr.contains("--image"), "{no_image:?}");
    let bad_extra = tether(&env, &["nodes", "create", "--subnet", &fx.subnet_id, "--launch-template", &name, "--extra-eni", "one:subnet-1"]).await;
    assert!(bad_extra.code == 2 && bad_extra.stderr.contains("device index"), "{bad_extra:?}");
    Ok(())
}

/// `nodes create --data-volume` with a deallocation policy; `nodes show` lists the volume
/// attached; `nodes update` changes one field of the policy and keeps the others; the
/// deallocation does what the policy says to the volume (a final snapshot, then deleted)
/// and to the ENI (kept). `groups create` takes the same flags for its template.
#[tokio::test]
async fn data_volumes_and_the_deallocation_policy_with_the_cli() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let created = tether(
        &env,
        &[
            "nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large",
            "--data-volume", "/dev/sdf:20:gp3:4000:250", "--on-deallocate-enis", "keep", "--on-deallocate-data-volumes", "delete", "--resume", "--wait",
        ],
    )
    .await;
    assert_eq!((created.code, field(&created.stdout, "state")), (0, Some("running")), "{created:?}");
    let id = field(&created.stdout, "id").ok_or("no id")?.to_owned();
    let instance_id = field(&created.stdout, "instance").ok_or("no instance")?.to_owned();

    let shown = tether(&env, &["nodes", "show", &id]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    let line = field(&shown.stdout, "data volumes").ok_or_else(|| format!("no data volumes line: {}", shown.stdout))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.len() == 3 && words[0] == "/dev/sdf" && words[1].starts_with("vol-") && words[2] == "attached", "{line}");
    let volume_id = words[1].to_owned();
    assert_eq!(field(&shown.stdout, "deallocation"), Some("ENIs keep, data volumes delete, Elastic IP release"), "{}", shown.stdout);
    let attached = fx.volume_state(&volume_id).await?;
    assert_eq!(attached, Some(("in-use".to_owned(), Some(instance_id.clone()), Some("/dev/sdf".to_owned()))), "EC2 agrees");
    let made = fx.ec2.describe_volumes().volume_ids(&volume_id).send().await?;
    let made = made.volumes().first().ok_or("no volume")?;
    assert_eq!((made.size(), made.iops(), made.throughput()), (Some(20), Some(4000), Some(250)), "{made:?}");
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "show", &id]).await?)?;
    let eni_id = node.eni_id.clone().ok_or("no ENI")?;

    // One field of the policy changes; the CLI sends the node's policy back with it, so the
    // ENIs stay kept.
    let updated = tether(&env, &["nodes", "update", &id, "--on-deallocate-data-volumes", "snapshot-and-delete"]).await;
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_eq!(field(&updated.stdout, "deallocation"), Some("ENIs keep, data volumes snapshot-and-delete, Elastic IP release"), "{}", updated.stdout);
    let node: NodeView = serde_json::from_value(tether_json(&env, &["nodes", "show", &id]).await?)?;
    use tether::deallocation::{DeallocationPolicy, ElasticIpFate, EniFate, VolumeFate};
    let policy = DeallocationPolicy { enis: Some(EniFate::Keep), data_volumes: VolumeFate::SnapshotAndDelete, elastic_ip: ElasticIpFate::Release };
    assert_eq!(node.spec.deallocation, policy);
    let history = tether(&env, &["nodes", "history", &id]).await;
    assert!(history.stdout.contains("spec changed (deallocation)"), "{}", history.stdout);

    let gone = tether(&env, &["nodes", "deallocate", &id, "--wait"]).await;
    assert_eq!((gone.code, field(&gone.stdout, "state")), (0, Some("deallocated")), "{gone:?}");
    assert_eq!(fx.volume_state(&volume_id).await?, None, "the data volume is deleted");
    let filter = aws_sdk_ec2::types::Filter::builder().name("volume-id").values(&volume_id).build();
    let snapshots = fx.ec2.describe_snapshots().owner_ids("self").filters(filter).send().await?;
    let snapshot = snapshots.snapshots().first().and_then(|s| s.snapshot_id()).ok_or("no final snapshot")?.to_owned();
    assert!(fx.ec2.describe_network_interfaces().network_interface_ids(&eni_id).send().await.is_ok(), "the ENI is kept");
    assert_eq!(field(&gone.stdout, "data volumes"), Some("/dev/sdf 20 GiB gp3 4000 IOPS 250 MiB/s, deleted by the deallocation after a final snapshot (see `tether nodes history`)"), "{}", gone.stdout);
    let history = tether(&env, &["nodes", "history", &id]).await;
    assert!(history.stdout.contains(&format!("data volume {volume_id} (/dev/sdf) deleted after its final snapshot {snapshot}")), "{}", history.stdout);

    // Bad values are usage errors (exit 2) naming the flag and what it takes; nothing is sent.
    let create = ["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large"];
    for (more, says) in [
        (["--data-volume", "/dev/sdf=20"], "--data-volume <DEVICE:SIZE_GIB[:TYPE[:IOPS[:THROUGHPUT]]]>"),
        (["--data-volume", "/dev/sdf:20:gp4"], "gp3, gp2, io1, io2, st1, sc1 or standard"),
        (["--on-deallocate-data-volumes", "snapshot"], "--on-deallocate-data-volumes <keep|delete|snapshot-and-delete>"),
        (["--on-deallocate-enis", "drop"], "give delete, keep or default"),
        (["--on-deallocate-elastic-ip", "delete"], "give release or keep"),
    ] {
        let args: Vec<&str> = create.iter().chain(&more).copied().collect();
        let refused = tether(&env, &args).await;
        assert_eq!(refused.code, 2, "{more:?}: {refused:?}");
        assert!(refused.stderr.contains(says), "{more:?}: {}", refused.stderr);
    }
    let refused = tether(&env, &["nodes", "update", &id, "--on-deallocate-enis", "later"]).await;
    assert!(refused.code == 2 && refused.stderr.contains("give delete, keep or default"), "{refused:?}");
    let all: NodeList = serde_json::from_value(tether_json(&env, &["nodes", "list"]).await?)?;
    assert_eq!(all.nodes.len(), 1, "{all:?}");

    // A group's template takes the same flags.
    let group = tether(
        &env,
        &[
            "groups", "create", "--name", "data", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large", "--target", "0",
            "--data-volume", "/dev/sdf:50:gp3", "--encrypt-data-volumes", "--on-deallocate-data-volumes", "snapshot-and-delete", "--on-deallocate-elastic-ip", "keep",
        ],
    )
    .await;
    assert_eq!(group.code, 0, "{group:?}");
    assert_eq!(field(&group.stdout, "data volumes"), Some("/dev/sdf 50 GiB gp3 encrypted"), "{}", group.stdout);
    let template_policy = "ENIs default (delete; an imported instance's: keep), data volumes snapshot-and-delete, Elastic IP keep";
    assert_eq!(field(&group.stdout, "deallocation"), Some(template_policy), "{}", group.stdout);
    Ok(())
}

/// The node's record as the API stored it.
async fn stored_spec(fx: &Fixture, id: &str) -> Result<tether::NodeSpec, SetupError> {
    let id = tether::NodeId::parse(id).ok_or("bad node id")?;
    Ok(fx.store.get(&id).await?.ok_or("node not stored")?.spec)
}

/// `nodes create` with schedules, a maintenance window and auto-healing settings; `nodes show`
/// prints them; `nodes update` turns healing off keeping its settings, removes the
/// schedules, changes one setting keeping the others, removes the window; the record says
/// so each time. Malformed values are usage errors, a cron the API refuses its 422.
#[tokio::test]
async fn auto_healing_the_maintenance_window_and_schedules_with_the_cli() -> Result<(), SetupError> {
    use tether::health::{AutoHealing, DailyWindow};
    use tether::schedules::{Schedule, ScheduledAction};
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let create = ["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large"];
    let flags = [
        "--schedule", "pause 0 20 * * 1-5 Europe/Paris", "--schedule", "resume 0 7 * * 1-5 Europe/Paris",
        "--maintenance-window", "02:00-04:30", "--unhealthy-after", "120", "--max-heals", "5/12",
    ];
    let created = tether(&env, &create.iter().chain(&flags).copied().collect::<Vec<_>>()).await;
    assert_eq!(created.code, 0, "{created:?}");
    let id = field(&created.stdout, "id").ok_or("no id")?.to_owned();
    let healing = AutoHealing { enabled: true, unhealthy_duration_seconds: 120, grace_period_seconds: 300, max_heals: 5, window_hours: 12 };
    let at = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default();
    let window = DailyWindow { start: at(2, 0), end: at(4, 30) };
    let paris = |action, cron: &str| Schedule { action, cron: cron.into(), time_zone: "Europe/Paris".into() };
    let spec = stored_spec(&fx, &id).await?;
    assert_eq!((spec.auto_healing, spec.maintenance_window), (healing, Some(window)));
    assert_eq!(spec.schedules, [paris(ScheduledAction::Pause, "0 20 * * 1-5"), paris(ScheduledAction::Resume, "0 7 * * 1-5")]);

    let shown = tether(&env, &["nodes", "show", &id]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    let block = &shown.stdout;
    assert_eq!(field(block, "auto-healing"), Some("on, after 120 s impaired, grace 300 s, at most 5 heals per 12 h"), "{block}");
    assert_eq!(field(block, "maintenance window"), Some("02:00-04:30 UTC"), "{block}");
    assert_eq!(field(block, "schedules"), Some("pause 0 20 * * 1-5 (Europe/Paris)"), "{block}");
    assert!(block.contains("\nschedules           pause 0 20 * * 1-5 (Europe/Paris)\n                    resume 0 7 * * 1-5 (Europe/Paris)\n"), "one line each: {block}");
    assert_eq!(created.stdout, *block, "create printed the same node");

    // Healing off: its other settings are kept (the CLI sends the node's back); the
    // schedules go, the window stays.
    let updated = tether(&env, &["nodes", "update", &id, "--no-auto-healing", "--no-schedules"]).await;
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_eq!((field(&updated.stdout, "auto-healing"), field(&updated.stdout, "schedules")), (Some("off"), Some("-")), "{}", updated.stdout);
    assert_eq!(field(&updated.stdout, "maintenance window"), Some("02:00-04:30 UTC"));
    let spec = stored_spec(&fx, &id).await?;
    assert_eq!((spec.auto_healing, spec.maintenance_window, spec.schedules.len()), (AutoHealing { enabled: false, ..healing }, Some(window), 0));
    let history = tether(&env, &["nodes", "history", &id]).await;
    assert!(history.stdout.contains("spec changed (auto_healing, schedules)"), "{}", history.stdout);

    // On again with fewer heals in the node's window (12 h, kept); the window removed; a
    // schedule in UTC.
    let updated = tether(&env, &["nodes", "update", &id, "--auto-healing", "--max-heals", "2", "--no-maintenance-window", "--schedule", "recycle @weekly"]).await;
    assert_eq!(updated.code, 0, "{updated:?}");
    assert_eq!(field(&updated.stdout, "auto-healing"), Some("on, after 120 s impaired, grace 300 s, at most 2 heals per 12 h"), "{}", updated.stdout);
    assert_eq!((field(&updated.stdout, "maintenance window"), field(&updated.stdout, "schedules")), (Some("-"), Some("recycle @weekly (UTC)")));
    let spec = stored_spec(&fx, &id).await?;
    assert_eq!((spec.auto_healing, spec.maintenance_window), (AutoHealing { max_heals: 2, ..healing }, None));
    assert_eq!(spec.schedules, [Schedule { action: ScheduledAction::Recycle, cron: "@weekly".into(), time_zone: "UTC".into() }]);

    // Malformed values are usage errors (exit 2) naming the flag and the form; nothing is sent.
    for (more, says) in [
        (["--schedule", "pause 0 20 * *"], "`0 20 * *` has 4 cron fields: give five"),
        (["--schedule", "stop 0 20 * * *"], "`stop` is no action: pause, resume or recycle"),
        (["--schedule", "pause 0 20 * * * Europe/Pariss"], "`Europe/Pariss` is no IANA time zone"),
        (["--maintenance-window", "2-4"], "--maintenance-window <HH:MM-HH:MM>"),
        (["--max-heals", "30"], "--max-heals <N[/HOURS]>"),
        (["--unhealthy-after", "10"], "--unhealthy-after <SECONDS>"),
    ] {
        for base in [&create[..], &["nodes", "update", &id]] {
            let refused = tether(&env, &base.iter().chain(&more).copied().collect::<Vec<_>>()).await;
            assert_eq!(refused.code, 2, "{more:?}: {refused:?}");
            assert!(refused.stderr.contains(says), "{more:?}: {}", refused.stderr);
        }
    }
    let refused = tether(&env, &["nodes", "update", &id, "--schedule", "pause", "0", "20", "*", "*", "*"]).await;
    assert!(refused.code == 2 && refused.stderr.contains("hint: give each --schedule as one quoted argument"), "unquoted: {refused:?}");
    // A pattern the API refuses: its 422, naming the schedule's field.
    let refused = tether(&env, &["nodes", "update", &id, "--schedule", "pause @daily", "--schedule", "pause 61 20 * * *"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.lines().any(|l| l.starts_with("field: ") && l.ends_with("schedules[1].cron")), "{}", refused.stderr);
    let refused = tether(&env, &create.iter().chain(&["--schedule", "pause 0 20 * * 1-5 UTC", "--schedule", "resume 0 25 * * *"]).copied().collect::<Vec<_>>()).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.lines().any(|l| l == "field: spec.schedules[1].cron"), "{}", refused.stderr);
    assert_eq!(stored_spec(&fx, &id).await?.schedules.len(), 1, "unchanged");
    let all: NodeList = serde_json::from_value(tether_json(&env, &["nodes", "list"]).await?)?;
    assert_eq!(all.nodes.len(), 1, "{all:?}");

    // A group's template takes the healing flags and the window (not schedules).
    let group = tether(
        &env,
        &[
            "groups", "create", "--name", "healing", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large", "--target", "0",
            "--healing-grace", "600", "--max-heals", "1/6", "--maintenance-window", "23:00-01:00",
        ],
    )
    .await;
    assert_eq!(group.code, 0, "{group:?}");
    assert_eq!(field(&group.stdout, "auto-healing"), Some("on, after 300 s impaired, grace 600 s, at most 1 heal per 6 h"), "{}", group.stdout);
    assert_eq!(field(&group.stdout, "maintenance window"), Some("23:00-01:00 UTC"), "{}", group.stdout);
    Ok(())
}

#[tokio::test]
async fn problems_print_error_and_field_and_exit_1() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let outside = ["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large", "--private-ip", "10.9.9.9"];

    let refused = tether(&env, &outside).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let lines: Vec<&str> = refused.stderr.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("error: ") && l.contains("10.9.9.9")), "{lines:?}");
    assert!(lines.contains(&"field: persistence.private_ip"), "{lines:?}");
    assert!(refused.stdout.is_empty(), "nothing on stdout without --json: {}", refused.stdout);

    let mut json_args = outside.to_vec();
    json_args.push("--json");
    let as_json = tether(&env, &json_args).await;
    assert_eq!(as_json.code, 1);
    let problem: Problem = serde_json::from_str(&as_json.stdout)?;
    assert_eq!((problem.status, problem.field.as_deref()), (422, Some("persistence.private_ip")));

    let missing = tether(&env, &["nodes", "show", "tn-00000000000000000000000000000000"]).await;
    assert_eq!(missing.code, 1);
    assert_eq!(missing.stderr.trim_end(), "error: node tn-00000000000000000000000000000000 not found");

    // Usage errors are clap's (exit 2), and a missing endpoint names both ways to give one.
    let usage = tether(&env, &["nodes", "create", "--image", &fx.image_id, "--instance-type", "m5.large"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
    assert!(usage.stderr.contains("--subnet"), "{}", usage.stderr);
    let nowhere = Environment { api_url: None, ..env.clone() };
    let no_endpoint = tether(&nowhere, &["nodes", "list"]).await;
    assert_eq!(no_endpoint.code, 2);
    assert!(no_endpoint.stderr.contains("--endpoint") && no_endpoint.stderr.contains("TETHER_API_URL"), "{}", no_endpoint.stderr);
    let flagged = tether(&nowhere, &["--endpoint", &api.url, "nodes", "list"]).await;
    assert_eq!(flagged.code, 0, "--endpoint works without TETHER_API_URL: {flagged:?}");

    // The Idempotency-Key is sent: the same key replays the first answer, and reusing it
    // for another request is refused with the field named.
    let create = |ip: &'static str| {
        vec!["nodes", "create", "--subnet", fx.subnet_id.as_str(), "--image", fx.image_id.as_str(), "--instance-type", "m5.large", "--private-ip", ip, "--idempotency-key", "cli-test-key-1"]
    };
    let once: NodeView = serde_json::from_value(tether_json(&env, &create("10.0.1.20")).await?)?;
    let again: NodeView = serde_json::from_value(tether_json(&env, &create("10.0.1.20")).await?)?;
    assert_eq!(once.id, again.id, "replayed, not created twice");
    let reused = tether(&env, &create("10.0.1.21")).await;
    assert_eq!(reused.code, 1, "{reused:?}");
    assert!(reused.stderr.lines().any(|l| l == "field: Idempotency-Key"), "{}", reused.stderr);
    let all: NodeList = serde_json::from_value(tether_json(&env, &["nodes", "list"]).await?)?;
    assert_eq!(all.nodes.len(), 1, "{all:?}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_or_region_gets_a_clear_403() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let wrong = environment(&api.url, "not-the-secret");
    let create = ["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large"];

    let refused = tether(&wrong, &create).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let first = refused.stderr.lines().next().ok_or("no error line")?;
    assert!(first.starts_with("error: HTTP 403") && first.contains("signature"), "{first}");
    assert!(refused.stderr.contains("hint: ") && refused.stderr.contains("--region"), "{}", refused.stderr);

    // The Region is part of the signature.
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let elsewhere = tether(&env, &["--region", "eu-west-1", "nodes", "list"]).await;
    assert_eq!(elsewhere.code, 1, "{elsewhere:?}");
    assert!(elsewhere.stderr.contains("HTTP 403") && elsewhere.stderr.contains("us-east-1/execute-api"), "{}", elsewhere.stderr);

    // Nothing was created; the right secret is accepted.
    let listed: NodeList = serde_json::from_value(tether_json(&env, &["nodes", "list"]).await?)?;
    assert!(listed.nodes.is_empty(), "{listed:?}");
    Ok(())
}

/// Where a concurrently running command writes, readable while it runs.
#[derive(Clone, Default)]
struct LiveOutput(Arc<Mutex<Vec<u8>>>);

impl LiveOutput {
    fn text(&self) -> String {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Waits (at most a minute) until the text contains `marker`.
    async fn wait_for(&self, marker: &str) -> Result<String, SetupError> {
        for _ in 0..1200 {
            let text = self.text();
            if text.contains(marker) {
                return Ok(text);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("`{marker}` never appeared in: {}", self.text()).into())
    }
}

impl Write for LiveOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn wait_follows_a_launch_and_reports_timeouts_and_errors() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    // The emulator has no capacity at all for this type: the node stays `launching`.
    let stuck = ["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "u-6tb1.112xlarge", "--resume", "--wait"];

    let mut args = stuck.to_vec();
    args.extend(["--timeout", "1"]);
    let timed_out = tether(&env, &args).await;
    assert_eq!(timed_out.code, 1, "{timed_out:?}");
    assert!(timed_out.stderr.contains("launching generation 1"), "progress shown: {}", timed_out.stderr);
    assert!(timed_out.stderr.contains("error: timed out after 1s") && timed_out.stderr.contains("still launching"), "{}", timed_out.stderr);
    assert!(timed_out.stderr.contains("InsufficientInstanceCapacity"), "the last error is shown: {}", timed_out.stderr);

    // Launching → running: the waiter polls while an operator fixes the types and resumes.
    let mut args = stuck.to_vec();
    args.extend(["--timeout", "120"]);
    let argv: Vec<&str> = std::iter::once("tether").chain(args.iter().copied()).collect();
    let (mut out, err) = (Vec::new(), LiveOutput::default());
    let mut err_writer = err.clone();
    let waiter = tether_cli::run(argv.clone(), &env, &mut out, &mut err_writer);
    let operator = async {
        let progress = err.wait_for("launching generation 1").await?;
        let id = tether::NodeId::parse(&node_in_progress(&progress).ok_or("no node id in the progress")?).ok_or("bad node id")?;
        let patch = tether::lifecycle::NodePatch { instance_types: Some(vec!["m5.large".into()]), ..Default::default() };
        fx.tether.patch(&id, &patch, None).await?;
        let resumed = tether(&env, &["nodes", "resume", id.as_str()]).await;
        assert_eq!(resumed.code, 0, "{resumed:?}");
        Ok::<_, SetupError>(id)
    };
    let (code, id) = tokio::join!(waiter, operator);
    let id = id?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out).into_owned(), err.text());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line per state: {stderr}");
    assert!(lines[0].contains(&format!("{id} launching generation 1")), "{stderr}");
    assert!(lines[1].contains(&format!("{id} running i-")) && lines[1].contains("m5.large"), "{stderr}");
    assert_eq!((field(&stdout, "state"), field(&stdout, "instance type")), (Some("running"), Some("m5.large")), "{stdout}");

    // Launching → error: the waiter stops, shows the node and its last error, exits 1.
    let (mut out, err) = (Vec::new(), LiveOutput::default());
    let mut err_writer = err.clone();
    let waiter = tether_cli::run(argv, &env, &mut out, &mut err_writer);
    let breaker = async {
        let progress = err.wait_for("launching generation 1").await?;
        let id = tether::NodeId::parse(&node_in_progress(&progress).ok_or("no node id in the progress")?).ok_or("bad node id")?;
        let node = fx.store.get(&id).await?.ok_or("node not stored")?;
        fx.store.save(&tether::lifecycle::failed(&node, "staged: the image is gone".into(), chrono::Utc::now())).await?;
        Ok::<_, SetupError>(id)
    };
    let (code, id) = tokio::join!(waiter, breaker);
    let id = id?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out).into_owned(), err.text());
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("{id} error: staged: the image is gone")), "progress shows the error: {stderr}");
    assert!(stderr.contains(&format!("error: node {id} ended in state error\nlast error: staged: the image is gone")), "{stderr}");
    assert_eq!(field(&stdout, "state"), Some("error"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn import_and_paged_listing() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    let env = environment(&api.url, SECRET_ACCESS_KEY);
    let launched = fx.run_one().subnet_id(&fx.subnet_id).private_ip_address("10.0.1.80").send().await?;
    let instance_id = launched.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();

    let imported = tether(&env, &["nodes", "import", &instance_id, "--instance-type", "m5.large", "--instance-type", "m6i.large", "--wait"]).await;
    assert_eq!(imported.code, 0, "{imported:?}");
    assert_eq!(field(&imported.stdout, "state"), Some("running"));
    assert_eq!(field(&imported.stdout, "instance"), Some(instance_id.as_str()));
    assert_eq!(field(&imported.stdout, "private IP"), Some("10.0.1.80"));
    assert_eq!(field(&imported.stdout, "instance types"), Some("m5.large, m6i.large"));
    let twice = tether(&env, &["nodes", "import", &instance_id]).await;
    assert_eq!(twice.code, 1, "already managed: {twice:?}");
    assert!(twice.stderr.starts_with("error: "), "{}", twice.stderr);

    for ip in ["10.0.1.81", "10.0.1.82"] {
        let c = tether(&env, &["nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id, "--instance-type", "m5.large", "--private-ip", ip]).await;
        assert_eq!(c.code, 0, "{c:?}");
    }
    let page = tether(&env, &["nodes", "list", "--limit", "1"]).await;
    assert_eq!(page.code, 0, "{page:?}");
    assert_eq!(page.stdout.lines().count(), 2, "header and one row: {}", page.stdout);
    assert!(page.stderr.contains("--all"), "says there is more: {}", page.stderr);
    let every: NodeList = serde_json::from_value(tether_json(&env, &["nodes", "list", "--limit", "1", "--all"]).await?)?;
    assert_eq!(every.nodes.len(), 3, "{every:?}");
    assert_eq!(every.next_token, None);
    let mut ids: Vec<&str> = every.nodes.iter().map(|n| n.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "no node twice");
    Ok(())
}

/// One request the fake API saw: path, Idempotency-Key, whether it was SigV4-signed.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    key: Option<String>,
    signed: bool,
}

/// The CLI's retries: 503 (with Retry-After) is retried with the same Idempotency-Key and
/// a fresh signature, until the answer is good.
#[tokio::test]
async fn a_503_is_retried_with_the_same_idempotency_key() -> Result<(), SetupError> {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let entry = Seen {
                        uri: request.uri().to_string(),
                        key: header("idempotency-key"),
                        signed: header("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 ")),
                    };
                    let count = log
                        .lock()
                        .map(|mut l| {
                            l.push(entry);
                            l.len()
                        })
                        .unwrap_or(0);
                    async move {
                        let mut response = if count <= 3 {
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from_static(b"{\"message\":\"busy\"}")));
                            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            r.headers_mut().insert("retry-after", hyper::header::HeaderValue::from_static("0"));
                            r
                        } else {
                            hyper::Response::new(Full::new(bytes::Bytes::from_static(b"{\"node_id\":\"tn-00000000000000000000000000000001\",\"entries\":[]}")))
                        };
                        response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    let env = Environment { retry: RetryPolicy { attempts: 4, base_delay: Duration::from_millis(10) }, ..environment(&url, SECRET_ACCESS_KEY) };

    // Three 503s, then an answer: a fourth try is allowed.
    let history = tether(&env, &["nodes", "history", "tn-00000000000000000000000000000001"]).await;
    assert_eq!(history.code, 0, "{history:?}");
    assert!(history.stdout.starts_with("TIME"), "{}", history.stdout);
    assert_eq!(history.stderr.matches("retrying").count(), 3, "{}", history.stderr);

    // Too many 503s: the last one is the error.
    if let Ok(mut l) = seen.lock() {
        l.clear();
    }
    let few = Environment { retry: RetryPolicy { attempts: 2, base_delay: Duration::from_millis(10) }, ..env.clone() };
    let paused = tether(&few, &["nodes", "pause", "tn-00000000000000000000000000000001"]).await;
    assert_eq!(paused.code, 1, "{paused:?}");
    assert!(paused.stderr.contains("error: HTTP 503 Service Unavailable: busy"), "{}", paused.stderr);
    let requests = seen.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests.iter().all(|r| r.uri == "/nodes/tn-00000000000000000000000000000001/pause" && r.signed), "{requests:?}");
    let key = requests[0].key.clone().ok_or("no Idempotency-Key")?;
    assert_eq!(uuid::Uuid::parse_str(&key).map(|u| u.get_version_num()).ok(), Some(4), "a fresh UUID: {key}");
    assert!(requests.iter().all(|r| r.key.as_deref() == Some(key.as_str())), "the same key on every try: {requests:?}");
    server.abort();
    Ok(())
}
