//! Health healing against the emulator, through the real handlers: an instance whose status
//! check has failed long enough is recycled on its ENI by the reconciler (not sooner, not in
//! its grace period, not with auto_healing off); an AWS Health retirement event naming two
//! nodes' instances recycles both, once.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::json;
use tether::health::{AutoHealing, DailyWindow};
use tether::{Node, NodeSpec, NodeState, Persistence};
use tether_tests::events::{instance_retirement, invocation, scheduled_event};
use tether_tests::{Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

async fn reconcile(fx: &Fixture) -> Result<serde_json::Value, tether::TetherError> {
    tether_reconciler::handler(&fx.tether, invocation(scheduled_event("tether-reconciler"), BUDGET)).await
}

async fn running(fx: &Fixture, spec: NodeSpec) -> Result<Node, SetupError> {
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    Ok(fx.tether.node(&node.id).await?)
}

/// Fails the instance's status `check` (`instance` or `system`) since `ago`.
async fn impair(fx: &Fixture, instance_id: &str, check: &str, ago: TimeDelta) -> Result<(), SetupError> {
    let since = (Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let tags = [("tether-emulator:status", format!("{check}-impaired")), ("tether-emulator:impaired-since", since)];
    let tags = tags.into_iter().map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    fx.ec2.create_tags().resources(instance_id).set_tags(Some(tags.collect())).send().await?;
    Ok(())
}

#[tokio::test]
async fn an_impaired_instance_is_recycled_past_its_duration_and_only_then() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let quick = AutoHealing { grace_period_seconds: 0, ..AutoHealing::default() };
    let healed = running(&fx, NodeSpec { auto_healing: quick, ..fx.spec(&["m5.large"]) }).await?;
    let short = running(&fx, NodeSpec { auto_healing: quick, ..fx.spec(&["m5.large"]) }).await?;
    let graced = running(&fx, NodeSpec { auto_healing: AutoHealing { grace_period_seconds: 3600, ..quick }, ..fx.spec(&["m5.large"]) }).await?;
    let off = running(&fx, NodeSpec { auto_healing: AutoHealing { enabled: false, ..quick }, ..fx.spec(&["m5.large"]) }).await?;
    let instance = |n: &Node| n.instance_id().map(str::to_owned).ok_or("no instance");
    impair(&fx, &instance(&healed)?, "instance", TimeDelta::minutes(6)).await?;
    impair(&fx, &instance(&short)?, "instance", TimeDelta::minutes(2)).await?;
    impair(&fx, &instance(&graced)?, "system", TimeDelta::minutes(30)).await?;
    impair(&fx, &instance(&off)?, "system", TimeDelta::minutes(30)).await?;

    let report = reconcile(&fx).await?;
    assert_eq!(report["failed"], json!([]), "{report}");
    let after = fx.tether.node(&healed.id).await?;
    assert_eq!((after.state, after.generation), (NodeState::Running, 2), "{report}");
    let replacement = fx.instance(&instance(&after)?).await?;
    let eni = healed.eni.as_ref().ok_or("no ENI")?;
    let primary = replacement.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    assert_eq!(primary.and_then(|n| n.network_interface_id()), Some(eni.id.as_str()), "recycled on its ENI");
    let why = after.history.iter().find(|h| h.what.starts_with("auto_healing:")).map(|h| h.what.clone()).unwrap_or_default();
    assert!(why.contains("instance status") && why.contains(&instance(&healed)?), "{why}");
    for (node, what) in [(&short, "shorter than the duration"), (&graced, "inside the grace period"), (&off, "auto_healing off")] {
        let same = fx.tether.node(&node.id).await?;
        assert_eq!((same.generation, same.instance_id()), (1, node.instance_id()), "{what}");
    }
    // The OpenAPI field is the node's: shown as set.
    let view = serde_json::to_value(tether::views::NodeView::from(&fx.tether.node(&off.id).await?))?;
    assert_eq!(view["spec"]["auto_healing"]["enabled"], false, "{view}");
    Ok(())
}

#[tokio::test]
async fn a_retirement_event_naming_two_nodes_recycles_both_once_in_their_window() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // A daily window that is open now (it opened a minute ago): the recycle runs at once.
    let opened = Utc::now() - TimeDelta::minutes(1);
    let window = DailyWindow { start: opened.time(), end: (opened + TimeDelta::hours(2)).time() };
    let spec = NodeSpec { maintenance_window: Some(window), ..fx.spec(&["m5.large"]) };
    let a = running(&fx, spec.clone()).await?;
    let b = running(&fx, spec).await?;
    let instances: Vec<String> = [&a, &b].iter().filter_map(|n| n.instance_id().map(str::to_owned)).collect();
    let ids: Vec<&str> = instances.iter().map(String::as_str).collect();
    let arn = "arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED_emulator";
    let starts_at = Utc::now() + TimeDelta::hours(1);
    // The event, then its update under a new EventBridge id.
    for _ in 0..2 {
        let answer = tether_interruption::handler(&fx.tether, &fx.requeue, invocation(instance_retirement(arn, &ids, starts_at), BUDGET)).await?;
        assert!(answer["outcomes"].as_array().is_some_and(|o| o.len() == 2), "one outcome per instance: {answer}");
    }
    for (node, first) in [(&a, &instances[0]), (&b, &instances[1])] {
        let after = fx.tether.node(&node.id).await?;
        assert_eq!((after.state, after.generation), (NodeState::Running, 2), "{:?}", after.history);
        let recycles: Vec<_> = after.history.iter().filter(|h| h.what.contains(arn) && h.what.ends_with("recycled ahead of it")).collect();
        assert_eq!(recycles.len(), 1, "once: {:?}", after.history);
        assert_ne!(after.instance_id(), Some(first.as_str()), "off the retiring instance");
        assert_eq!(fx.instance(first).await?.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).as_deref(), Some("terminated"));
    }
    Ok(())
}

#[tokio::test]
async fn a_schedule_set_through_the_api_pauses_then_resumes_the_node_at_its_slots() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let node = fx.tether.create_node(fx.spec(&["m5.large"]), Persistence { elastic_ip_allocation_id: Some(allocation_id), ..Persistence::default() }, None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let first = fx.tether.node(&node.id).await?;
    let path = format!("/nodes/{}", node.id);
    let every_minute = |action: &str| json!({"schedules": [{"action": action, "cron": "* * * * *", "time_zone": "America/New_York"}]});
    // The reconciler at the next slot: a minute on (the service's clock moved, EC2's not).
    let at_next_slot = || {
        let later = Utc::now() + TimeDelta::seconds(61);
        let tether = fx.tether.clone().with_clock(std::sync::Arc::new(tether::fake::FakeClock::starting_at(later)));
        (tether, tether_tests::events::invocation_at(scheduled_event("tether-reconciler"), later + TimeDelta::seconds(30)))
    };

    let (status, patched) = super::api::call(&fx, lambda_http::http::Method::PATCH, &path, Some(every_minute("pause"))).await?;
    assert_eq!(status, lambda_http::http::StatusCode::OK, "{patched}");
    assert_eq!(patched["spec"]["schedules"][0]["time_zone"], "America/New_York", "{patched}");
    let (later, run) = at_next_slot();
    tether_reconciler::handler(&later, run).await?;
    let paused = fx.tether.node(&node.id).await?;
    assert_eq!(paused.state, NodeState::Paused, "{:?}", paused.history.last());
    assert!(fx.instances_in_vpc().await?.is_empty() || fx.instance(first.instance_id().ok_or("no instance")?).await?.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() != "running"));

    super::api::call(&fx, lambda_http::http::Method::PATCH, &path, Some(every_minute("resume"))).await?;
    let (later, run) = at_next_slot();
    tether_reconciler::handler(&later, run).await?;
    let resumed = fx.tether.node(&node.id).await?;
    assert_eq!((resumed.state, resumed.generation), (NodeState::Running, 2), "{:?}", resumed.history);
    let instance = fx.instance(resumed.instance_id().ok_or("no instance")?).await?;
    assert_eq!(instance.private_ip_address(), first.eni.as_ref().map(|e| e.private_ip.to_string()).as_deref(), "the same private IP");
    assert_eq!(instance.public_ip_address(), Some(public_ip.as_str()), "the same Elastic IP");
    assert!(resumed.history.iter().any(|h| h.by.as_deref() == Some("schedule `* * * * *` (America/New_York)") && h.what.contains("resume")), "{:?}", resumed.history);
    Ok(())
}
