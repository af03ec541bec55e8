//! Data volumes and the deallocation policy against the emulator, through the API and the
//! real handlers: the same volume on every generation, no launch without it, and what a
//! deallocation keeps.

use lambda_http::http::{Method, StatusCode};
use serde_json::{json, Value};
use tether_tests::{Fixture, SetupError};

use super::api::call;

const BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

fn body_with_data(fx: &Fixture, deallocation: Value) -> Value {
    json!({
        "spec": {
            "subnet_id": fx.subnet_id,
            "image_id": fx.image_id,
            "instance_types": ["m5.large"],
            "security_group_ids": [fx.security_group_id],
            "data_volumes": [{"device_name": "/dev/sdf", "volume_size_gib": 20, "volume_type": "gp3", "iops": 4000}],
            "deallocation": deallocation,
        },
        "resume": true,
    })
}

#[tokio::test]
async fn the_same_data_volume_is_attached_at_the_same_device_on_each_of_three_generations() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (status, node) = call(&fx, Method::POST, "/nodes", Some(body_with_data(&fx, json!({})))).await?;
    assert_eq!(status, StatusCode::CREATED, "{node}");
    let volume_id = node["data_volumes"][0]["volume_id"].as_str().ok_or("no data volume in the view")?.to_owned();
    let id = tether::NodeId::parse(node["id"].as_str().ok_or("no id")?).ok_or("bad id")?;
    let eni = fx.tether.node(&id).await?.eni.ok_or("no ENI")?;
    for generation in 1..=3 {
        let current = fx.tether.node(&id).await?;
        assert_eq!(current.generation, generation);
        let instance = current.instance_id().ok_or("no instance")?.to_owned();
        let seen = fx.volume_state(&volume_id).await?.ok_or("volume gone")?;
        assert_eq!(seen, ("in-use".to_owned(), Some(instance.clone()), Some("/dev/sdf".to_owned())), "generation {generation}");
        let (_, shown) = call(&fx, Method::GET, &format!("/nodes/{id}"), None).await?;
        assert_eq!(shown["data_volumes"][0]["attached"], true, "{shown}");
        assert_eq!(fx.instance(&instance).await?.placement().and_then(|p| p.availability_zone()), Some(eni.availability_zone.as_str()), "in the volume's AZ");
        if generation < 3 {
            fx.interrupt_node(&id, BUDGET).await?;
        }
    }
    let made = fx.ec2.describe_volumes().filters(aws_sdk_ec2::types::Filter::builder().name("tag:tether:node-id").values(id.as_str()).build()).send().await?;
    assert_eq!(made.volumes().len(), 1, "one data volume made, ever");
    assert_eq!(made.volumes()[0].iops(), Some(4000));
    Ok(())
}

#[tokio::test]
async fn a_paused_node_whose_data_volume_was_deleted_is_not_resumed() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(body_with_data(&fx, json!({})))).await?;
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let volume_id = node["data_volumes"][0]["volume_id"].as_str().ok_or("no data volume")?.to_owned();
    let (status, paused) = call(&fx, Method::POST, &format!("/nodes/{id}/pause"), None).await?;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(fx.volume_state(&volume_id).await?.map(|v| v.0).as_deref(), Some("available"), "kept by the pause, detached");
    fx.ec2.delete_volume().volume_id(&volume_id).send().await?;
    let before = fx.instances_in_vpc().await?;
    let (status, refused) = call(&fx, Method::POST, &format!("/nodes/{id}/resume"), None).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(&volume_id) && detail.contains("/dev/sdf"), "{detail}");
    assert_eq!(fx.instances_in_vpc().await?, before, "nothing launched");
    let (_, shown) = call(&fx, Method::GET, &format!("/nodes/{id}"), None).await?;
    assert_eq!(shown["state"], "error", "{shown}");
    Ok(())
}

#[tokio::test]
async fn deallocation_keeps_data_unless_its_policy_deletes_it_after_a_final_snapshot() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    for (policy, kept) in [(json!({}), true), (json!({"data_volumes": "snapshot_and_delete"}), false)] {
        let (_, node) = call(&fx, Method::POST, "/nodes", Some(body_with_data(&fx, policy.clone()))).await?;
        let id = node["id"].as_str().ok_or("no id")?.to_owned();
        let volume_id = node["data_volumes"][0]["volume_id"].as_str().ok_or("no data volume")?.to_owned();
        assert_eq!(node["spec"]["deallocation"]["data_volumes"], if kept { "keep" } else { "snapshot_and_delete" }, "{node}");
        let (status, done) = call(&fx, Method::POST, &format!("/nodes/{id}/deallocate"), None).await?;
        assert_eq!((status, done["state"].as_str()), (StatusCode::OK, Some("deallocated")), "{done}");
        let left = fx.volume_state(&volume_id).await?;
        let snapshots = fx.ec2.describe_snapshots().owner_ids("self").filters(aws_sdk_ec2::types::Filter::builder().name("volume-id").values(&volume_id).build()).send().await?;
        if kept {
            assert_eq!(left.map(|v| v.0).as_deref(), Some("available"), "{policy}: kept, detached");
            assert_eq!(done["data_volumes"][0]["volume_id"], volume_id.as_str(), "kept volumes stay on record: {done}");
            assert!(snapshots.snapshots().is_empty());
        } else {
            assert_eq!(left, None, "{policy}: deleted");
            let snapshot = snapshots.snapshots().first().and_then(|s| s.snapshot_id()).ok_or("no final snapshot")?;
            let (_, history) = call(&fx, Method::GET, &format!("/nodes/{id}/history"), None).await?;
            assert!(history.to_string().contains(snapshot), "{history}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_imported_node_keeps_its_eni_at_deallocation_unless_its_policy_deletes_it() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    for (policy, eni_kept) in [(None, true), (Some(json!({"deallocation": {"enis": "delete"}})), false)] {
        let launched = fx.run_one().subnet_id(&fx.subnet_id).send().await?;
        let instance = launched.instances().first().ok_or("no instance")?;
        let instance_id = instance.instance_id().ok_or("no id")?.to_owned();
        let eni_id = instance.network_interfaces().first().and_then(|n| n.network_interface_id()).ok_or("no ENI")?.to_owned();
        let (status, node) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": instance_id}))).await?;
        assert_eq!(status, StatusCode::CREATED, "{node}");
        let id = node["id"].as_str().ok_or("no id")?.to_owned();
        if let Some(patch) = &policy {
            let (status, patched) = call(&fx, Method::PATCH, &format!("/nodes/{id}"), Some(patch.clone())).await?;
            assert_eq!(status, StatusCode::OK, "{patched}");
        }
        let (status, done) = call(&fx, Method::POST, &format!("/nodes/{id}/deallocate"), None).await?;
        assert_eq!((status, done["state"].as_str()), (StatusCode::OK, Some("deallocated")), "{done}");
        let exists = fx.ec2.describe_network_interfaces().filters(aws_sdk_ec2::types::Filter::builder().name("network-interface-id").values(&eni_id).build()).send().await?;
        assert_eq!(!exists.network_interfaces().is_empty(), eni_kept, "{policy:?}: {done}");
    }
    Ok(())
}

/// The demo's data volume verdict is read from the emulator: `same_volumes=yes` for a node
/// created as the demo creates it and replaced twice, and `no` once another volume is put at
/// its device on the running instance by hand (as if a replacement had been given a fresh
/// volume), naming that volume.
#[tokio::test]
async fn the_demos_volume_summary_says_no_when_a_generation_has_another_volume() -> Result<(), SetupError> {
    use tether_tests::demo::nodes::{create_node, DATA_DEVICE};
    use tether_tests::demo::observed::{Ledger, Snapshot};
    use tether_tests::demo::summary::summarize;
    let fx = Fixture::new().await?;
    let api = tether_tests::local_api::LocalApi::start(fx.api.clone()).await?;
    let env = tether_cli::Environment {
        api_url: Some(api.url.clone()),
        region: Some(tether_tests::REGION.to_owned()),
        credentials: Some(aws_credential_types::Credentials::new(
            tether_tests::local_api::ACCESS_KEY_ID,
            tether_tests::local_api::SECRET_ACCESS_KEY,
            None,
            None,
            "demo-test",
        )),
        poll_interval: std::time::Duration::from_millis(50),
        ..tether_cli::Environment::default()
    };
    let intent = create_node(&fx, &env, 0).await?;
    let nodes = [intent.id.clone()];
    let mut ledger = Ledger::default();
    let mut reclaimed = std::collections::BTreeSet::new();
    ledger.observe(&Snapshot::poll(&fx.ec2, &nodes).await?, std::time::Instant::now());
    for _ in 0..2 {
        reclaimed.insert(fx.tether.node(&intent.id).await?.instance_id().ok_or("no instance")?.to_owned());
        fx.interrupt_node(&intent.id, BUDGET).await?;
        ledger.observe(&Snapshot::poll(&fx.ec2, &nodes).await?, std::time::Instant::now());
    }
    let summary = summarize(&fx, std::slice::from_ref(&intent), &ledger, &reclaimed).await?;
    assert!(summary.line(2).ends_with("replacements=2 same_private_ip=yes same_eip=yes same_volumes=yes"), "{} {:?}", summary.line(2), summary.problems);
    assert!(summary.lines[1].ends_with(&format!("at {DATA_DEVICE} on 3/3 and now")), "{:?}", summary.lines);
    assert!(summary.ok());

    let running = fx.tether.node(&intent.id).await?.instance_id().ok_or("no instance")?.to_owned();
    let made = fx.ec2.describe_volumes().filters(aws_sdk_ec2::types::Filter::builder().name("tag:tether:node-id").values(intent.id.as_str()).build()).send().await?;
    let volume_id = made.volumes().first().and_then(|v| v.volume_id()).ok_or("no data volume")?.to_owned();
    fx.ec2.detach_volume().volume_id(&volume_id).send().await?;
    let other = fx.ec2.create_volume().availability_zone(&fx.availability_zone).size(10).send().await?.volume_id().ok_or("no volume made")?.to_owned();
    fx.ec2.attach_volume().volume_id(&other).instance_id(&running).device(DATA_DEVICE).send().await?;
    ledger.observe(&Snapshot::poll(&fx.ec2, &nodes).await?, std::time::Instant::now());
    let summary = summarize(&fx, std::slice::from_ref(&intent), &ledger, &reclaimed).await?;
    assert!(summary.line(2).ends_with("same_volumes=no"), "{}", summary.line(2));
    assert!(summary.lines[1].ends_with(&format!("{volume_id} at {DATA_DEVICE} on 2/3 but not now")), "{:?}", summary.lines);
    assert!(summary.problems.iter().any(|p| p.contains(&format!("{other} at {DATA_DEVICE}"))), "{:?}", summary.problems);
    assert!(!summary.ok());
    Ok(())
}

#[tokio::test]
async fn an_imported_instance_s_own_volume_kept_at_import_follows_the_node() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let data = aws_sdk_ec2::types::BlockDeviceMapping::builder()
        .device_name("/dev/sdg")
        .ebs(aws_sdk_ec2::types::EbsBlockDevice::builder().volume_size(30).volume_type(aws_sdk_ec2::types::VolumeType::Gp3).build())
        .build();
    let launched = fx.run_one().subnet_id(&fx.subnet_id).block_device_mappings(data).send().await?;
    let instance_id = launched.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();
    let own = fx.instance(&instance_id).await?;
    let volume_id = own.block_device_mappings().iter().find(|m| m.device_name() == Some("/dev/sdg")).and_then(|m| m.ebs()).and_then(|e| e.volume_id()).ok_or("no volume at /dev/sdg")?.to_owned();
    let (status, node) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": instance_id, "keep_volumes": true}))).await?;
    assert_eq!(status, StatusCode::CREATED, "{node}");
    assert_eq!((node["data_volumes"][0]["volume_id"].as_str(), node["data_volumes"][0]["created_by_tether"].as_bool()), (Some(volume_id.as_str()), Some(false)), "{node}");
    let id = tether::NodeId::parse(node["id"].as_str().ok_or("no id")?).ok_or("bad id")?;
    // The instance goes: the volume outlives it, and the replacement gets it at /dev/sdg.
    fx.interrupt_node(&id, BUDGET).await?;
    let after = fx.tether.node(&id).await?;
    assert_eq!(after.generation, 2);
    let seen = fx.volume_state(&volume_id).await?.ok_or("the kept volume was deleted with the instance")?;
    assert_eq!(seen, ("in-use".to_owned(), after.instance_id().map(str::to_owned), Some("/dev/sdg".to_owned())));
    // Deallocated with the default policy: the user's volume is kept.
    let (_, done) = call(&fx, Method::POST, &format!("/nodes/{id}/deallocate"), None).await?;
    assert_eq!(done["state"], "deallocated", "{done}");
    assert_eq!(fx.volume_state(&volume_id).await?.map(|v| v.0).as_deref(), Some("available"));
    Ok(())
}
