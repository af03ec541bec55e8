//! The reconciler function against the emulator: what events missed is caught on the next
//! run (a lost termination, a launch that died before recording its instance, drift).

use std::time::Duration;

use serde_json::{json, Value};
use tether::ports::NodeStore;
use tether::{Node, NodeState, Persistence};
use tether_tests::events::{invocation, scheduled_event};
use tether_tests::{Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

async fn reconcile(fx: &Fixture) -> Result<Value, tether::TetherError> {
    tether_reconciler::handler(&fx.tether, invocation(scheduled_event("tether-reconciler"), BUDGET)).await
}

async fn running_node(fx: &Fixture, persistence: Persistence) -> Result<Node, SetupError> {
    let node = fx.tether.create_node(fx.spec(&["m5.large"]), persistence, None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    Ok(fx.tether.node(&node.id).await?)
}

#[tokio::test]
async fn a_termination_whose_events_were_lost_is_recovered_by_the_next_run() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let node = running_node(&fx, Persistence { elastic_ip_allocation_id: Some(allocation_id), ..Persistence::default() }).await?;
    let first = node.instance_id().ok_or("no instance")?.to_owned();
    fx.interrupt(&first).await?;
    // No event is delivered: only the reconciler can notice.
    let report = reconcile(&fx).await?;
    assert_eq!(report["failed"], json!([]), "{report}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!((after.state, after.generation), (NodeState::Running, 2), "{report}");
    let second = after.instance_id().ok_or("no instance")?;
    assert_ne!(second, first);
    let instance = fx.instance(second).await?;
    let eni = node.eni.as_ref().ok_or("no ENI")?;
    assert_eq!(instance.private_ip_address(), Some(eni.private_ip.to_string().as_str()), "same private IP");
    assert_eq!(instance.public_ip_address(), Some(public_ip.as_str()), "same Elastic IP");
    // A second run finds nothing to do.
    let again = reconcile(&fx).await?;
    assert_eq!(again["repaired"], json!([]), "{again}");
    Ok(())
}

#[tokio::test]
async fn an_elastic_ip_disassociated_by_hand_is_associated_again() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence { allocate_elastic_ip: true, ..Persistence::default() }).await?;
    let eip = node.elastic_ip.clone().ok_or("no Elastic IP")?;
    let association = fx.cloud_eip(&eip.allocation_id).await?.association_id().ok_or("not associated")?.to_owned();
    fx.ec2.disassociate_address().association_id(association).send().await?;
    let report = reconcile(&fx).await?;
    let on_eni = fx.cloud_eip(&eip.allocation_id).await?.network_interface_id().map(str::to_owned);
    assert_eq!(on_eni.as_deref(), node.eni.as_ref().map(|e| e.id.as_str()), "{report}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Running);
    assert!(after.history.iter().any(|h| h.what.contains("found disassociated")), "drift is in the history");
    Ok(())
}

#[tokio::test]
async fn an_elastic_ip_taken_by_something_else_is_a_condition_the_node_is_recovered_with_and_healed_of() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let node = running_node(&fx, Persistence { elastic_ip_allocation_id: Some(allocation_id.clone()), ..Persistence::default() }).await?;
    let eni = node.eni.clone().ok_or("no ENI")?;
    let other = fx.ec2.create_network_interface().subnet_id(&fx.subnet_id).send().await?;
    let other_id = other.network_interface().and_then(|n| n.network_interface_id()).ok_or("no ENI")?.to_owned();
    fx.ec2.associate_address().allocation_id(&allocation_id).network_interface_id(&other_id).allow_reassociation(true).send().await?;
    reconcile(&fx).await?;
    // Interrupted while degraded: replaced on its ENI with its private IP all the same.
    fx.interrupt_node(&node.id, BUDGET).await?;
    let after = fx.tether.node(&node.id).await?;
    assert_eq!((after.state, after.generation, after.last_error.as_deref()), (NodeState::Running, 2, None));
    let instance = fx.instance(after.instance_id().ok_or("no instance")?).await?;
    let primary = instance.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    assert_eq!(primary.and_then(|n| n.network_interface_id()), Some(eni.id.as_str()), "on its ENI");
    assert_eq!(instance.private_ip_address(), Some(eni.private_ip.to_string().as_str()));
    // The API shows the condition, naming the holder; no fight over the Elastic IP.
    let view = serde_json::to_value(tether::views::NodeView::from(&after))?;
    assert_eq!(view["conditions"][0]["kind"], "elastic_ip_elsewhere", "{view}");
    let message = view["conditions"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&allocation_id) && message.contains(&other_id), "{message}");
    assert_eq!(fx.cloud_eip(&allocation_id).await?.network_interface_id(), Some(other_id.as_str()));
    assert!(after.history.iter().any(|h| h.what.starts_with("condition elastic_ip_elsewhere:")));

    // Freed by the person: back on the node's ENI at the next run, and the condition cleared.
    let association = fx.cloud_eip(&allocation_id).await?.association_id().ok_or("not associated")?.to_owned();
    fx.ec2.disassociate_address().association_id(association).send().await?;
    let report = reconcile(&fx).await?;
    assert_eq!(fx.cloud_eip(&allocation_id).await?.network_interface_id(), Some(eni.id.as_str()), "{report}");
    let healed = fx.tether.node(&node.id).await?;
    assert!(healed.conditions.is_empty(), "{:?}", healed.conditions);
    let instance = fx.instance(healed.instance_id().ok_or("no instance")?).await?;
    assert_eq!(instance.public_ip_address(), Some(public_ip.as_str()));
    Ok(())
}

#[tokio::test]
async fn an_instance_of_a_paused_node_is_terminated_and_a_stalled_launch_carried_on() -> Result<(), SetupError> {
    let fx = Fixture::with_settings(tether::Settings { stuck_after: Duration::ZERO, ..tether_tests::fast_settings() }).await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = node.instance_id().ok_or("no instance")?.to_owned();
    // A pause whose terminate never happened (the invocation died after recording it).
    let mut paused = node.clone();
    paused.state = NodeState::Paused;
    let paused = fx.store.save(&paused).await?;
    let report = reconcile(&fx).await?;
    assert!(fx.live_instances(&node.id).await?.is_empty(), "unwanted instance terminated: {report}");
    // A resume that died right after recording `launching`.
    let mut launching = paused.clone();
    launching.state = NodeState::Launching;
    launching.generation += 1;
    fx.store.save(&launching).await?;
    let report = reconcile(&fx).await?;
    let after = fx.tether.node(&node.id).await?;
    assert_eq!((after.state, after.generation), (NodeState::Running, 2), "{report}");
    assert_ne!(after.instance_id(), Some(first.as_str()));
    assert_eq!(fx.live_instances(&node.id).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_eni_and_elastic_ip_left_by_a_deallocation_that_died_are_removed() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence { allocate_elastic_ip: true, ..Persistence::default() }).await?;
    fx.tether.pause(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let paused = fx.tether.node(&node.id).await?;
    let eni_id = paused.eni.as_ref().ok_or("no ENI")?.id.clone();
    let allocation_id = paused.elastic_ip.as_ref().ok_or("no Elastic IP")?.allocation_id.clone();
    // What a cut-short deallocation can leave: the ENI and the Elastic IP still there (the
    // Elastic IP still on the ENI), the record no longer naming them. Deleting the ENI
    // disassociates its Elastic IP, as on AWS (tests/emulator/README.md, `eni-delete`), so
    // the run that deletes the ENI can release the Elastic IP too.
    assert_eq!(fx.cloud_eip(&allocation_id).await?.network_interface_id(), Some(eni_id.as_str()), "still associated");
    let mut deallocated = paused.clone();
    deallocated.state = NodeState::Deallocated;
    deallocated.eni = None;
    deallocated.elastic_ip = None;
    fx.store.save(&deallocated).await?;
    let first = reconcile(&fx).await?;
    let second = reconcile(&fx).await?;
    assert_eq!(second["repaired"], json!([]), "one run removes both: {first} {second}");
    let enis = fx.ec2.describe_network_interfaces().filters(aws_sdk_ec2::types::Filter::builder().name("network-interface-id").values(&eni_id).build()).send().await?;
    assert!(enis.network_interfaces().is_empty(), "leftover ENI deleted: {first} {second}");
    let eips = fx.ec2.describe_addresses().filters(aws_sdk_ec2::types::Filter::builder().name("allocation-id").values(&allocation_id).build()).send().await?;
    assert!(eips.addresses().is_empty(), "leftover Elastic IP released: {first} {second}");
    Ok(())
}

/// A Tether-allocated Elastic IP that a person associated with another ENI is theirs now:
/// deallocating the node deletes its ENI but does not release that Elastic IP (the history
/// says why), and the reconciler's sweep leaves it where it is.
#[tokio::test]
async fn a_tether_elastic_ip_associated_elsewhere_is_not_released_at_deallocation() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence { allocate_elastic_ip: true, ..Persistence::default() }).await?;
    let eip = node.elastic_ip.clone().ok_or("no Elastic IP")?;
    assert!(eip.allocated_by_tether);
    let eni_id = node.eni.as_ref().ok_or("no ENI")?.id.clone();
    let other = fx.ec2.create_network_interface().subnet_id(&fx.subnet_id).send().await?;
    let other_id = other.network_interface().and_then(|n| n.network_interface_id()).ok_or("no ENI")?.to_owned();
    fx.ec2.associate_address().allocation_id(&eip.allocation_id).network_interface_id(&other_id).allow_reassociation(true).send().await?;

    let outcome = fx.tether.deallocate(&node.id, false, fx.tether.deadline_in(BUDGET), None).await?;
    assert!(matches!(outcome, tether::Outcome::Recorded { state: NodeState::Deallocated, .. }), "{outcome:?}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Deallocated);
    assert_eq!((after.eni.as_ref(), after.elastic_ip.as_ref()), (None, None), "nothing recorded any more");
    let why = format!("Elastic IP {} not released: associated with {other_id} outside Tether", eip.allocation_id);
    assert!(after.history.iter().any(|h| h.what == why), "{:?}", after.history);
    let enis = fx.ec2.describe_network_interfaces().filters(aws_sdk_ec2::types::Filter::builder().name("network-interface-id").values(&eni_id).build()).send().await?;
    assert!(enis.network_interfaces().is_empty(), "the node's ENI is deleted");
    let kept = fx.cloud_eip(&eip.allocation_id).await?;
    assert_eq!((kept.network_interface_id(), kept.public_ip()), (Some(other_id.as_str()), Some(eip.public_ip.as_str())), "still where the person put it");

    let report = reconcile(&fx).await?;
    assert_eq!(report["failed"], json!([]), "{report}");
    assert_eq!(fx.cloud_eip(&eip.allocation_id).await?.network_interface_id(), Some(other_id.as_str()), "the sweep leaves it alone: {report}");
    Ok(())
}

/// A node that fell back to on-demand stays there by default; with `revert_to_spot: always`
/// the next run recycles it onto spot, on the same ENI, and does not move it again.
#[tokio::test]
async fn an_on_demand_node_goes_back_to_spot_when_its_policy_allows() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // The emulator has no spot capacity for p5.48xlarge (tests/emulator/README.md).
    let node = fx.tether.create_node(fx.spec(&["p5.48xlarge"]), Persistence::default(), None).await?;
    fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let on_demand = fx.tether.node(&node.id).await?;
    assert_eq!(on_demand.instance.as_ref().map(|i| i.market), Some(tether::Market::OnDemand));
    reconcile(&fx).await?;
    assert_eq!(fx.tether.node(&node.id).await?.generation, on_demand.generation, "never is the default");

    let patch = tether::lifecycle::NodePatch {
        instance_types: Some(vec!["m5.large".into(), "p5.48xlarge".into()]),
        revert_to_spot: Some(tether::model::RevertToSpot::Always),
        ..Default::default()
    };
    fx.tether.patch(&node.id, &patch, None).await?;
    let report = reconcile(&fx).await?;
    assert_eq!(report["failed"], json!([]), "{report}");
    let spot = fx.tether.node(&node.id).await?;
    assert_eq!((spot.state, spot.generation), (NodeState::Running, on_demand.generation + 1), "{report}");
    let instance = spot.instance.as_ref().ok_or("no instance")?;
    assert_eq!((instance.market, instance.instance_type.as_str()), (tether::Market::Spot, "m5.large"));
    assert_eq!(spot.eni, on_demand.eni, "same ENI, same private IP");
    let old = fx.instance(on_demand.instance_id().ok_or("no instance")?).await?;
    assert_eq!(old.state().and_then(|s| s.name()).map(|n| n.as_str()), Some("terminated"));

    reconcile(&fx).await?;
    assert_eq!(fx.tether.node(&node.id).await?.generation, spot.generation, "on spot now: left alone");
    Ok(())
}

/// With more nodes than one run checks, the bookmark in DynamoDB makes the next run go on
/// where the last one stopped, and the run that reaches the end sends the next one back.
#[tokio::test]
async fn runs_take_turns_through_more_nodes_than_one_run_checks() -> Result<(), SetupError> {
    let fx = Fixture::with_settings(tether::Settings { reconcile_max_nodes: 1, ..tether_tests::fast_settings() }).await?;
    for _ in 0..2 {
        fx.tether.create_node(fx.spec(&["m5.large"]), Persistence::default(), None).await?;
    }
    let first = reconcile(&fx).await?;
    assert_eq!((&first["nodes_checked"], &first["complete"], &first["started_after"]), (&json!(1), &json!(false), &Value::Null), "{first}");
    let second = reconcile(&fx).await?;
    assert_eq!((&second["nodes_checked"], &second["complete"]), (&json!(1), &json!(true)), "{second}");
    assert!(second["started_after"].is_string(), "went on after the first run's node: {second}");
    let third = reconcile(&fx).await?;
    assert_eq!(third["started_after"], Value::Null, "back to the first node: {third}");
    Ok(())
}

/// A measurement, not part of `make test` (several minutes): with 2,000 running nodes, one
/// reconciler run costs EC2 pages, not nodes, through the real adapters and EC2's real page
/// sizes (DescribeInstances and DescribeNetworkInterfaces in pages of 1,000, DescribeAddresses
/// in one), as `make bench` counts them on the fakes (2 + 2 + 2 at 2,000 nodes): it checks
/// every node and describes none alone. Run it with `cargo test -p tether-tests --test emulator
/// -- --ignored a_reconciler_run_over_2000 --nocapture`.
#[tokio::test]
#[ignore = "a measurement: run it by name"]
async fn a_reconciler_run_over_2000_nodes_costs_pages_not_nodes() -> Result<(), SetupError> {
    const NODES: usize = 2000;
    let fx = Fixture::new().await?;
    let subnet_id = fx.subnet("10.0.16.0/20").await?;
    let spec = tether::NodeSpec { subnet_id, ..fx.spec(&["m5.large"]) };
    fx.stage_running_nodes(&spec, NODES, false).await?;
    fx.calls.take();
    // The emulator answers a page of 1,000 instances in seconds, not AWS's milliseconds: the
    // run gets the time it needs here.
    let run_started = std::time::Instant::now();
    let report = tether_reconciler::handler(&fx.tether, invocation(scheduled_event("tether-reconciler"), Duration::from_secs(600))).await?;
    let run_took = run_started.elapsed().as_secs_f64();
    let calls = fx.calls.take();
    let count = |name: &str| calls.iter().filter(|c| c.as_str() == name).count();
    let ec2: Vec<&String> = calls.iter().filter(|c| c.starts_with("EC2.")).collect();
    println!(
        "reconciler over {NODES} nodes: {} EC2 calls (DescribeInstances {}, DescribeNetworkInterfaces {}, DescribeAddresses {}), {} DynamoDB calls; checked {} in {run_took:.1} s",
        ec2.len(),
        count("EC2.DescribeInstances"),
        count("EC2.DescribeNetworkInterfaces"),
        count("EC2.DescribeAddresses"),
        calls.len() - ec2.len(),
        report["nodes_checked"]
    );
    assert_eq!(report["nodes_checked"], json!(NODES), "{report}");
    assert_eq!(report["failed"], json!([]), "{report}");
    // The bench's count, within one page per kind (moto may answer a listing in one page).
    for (name, pages) in [("EC2.DescribeInstances", 2), ("EC2.DescribeNetworkInterfaces", 2), ("EC2.DescribeAddresses", 2)] {
        assert!(count(name).abs_diff(pages) <= 1, "{name}: {} calls, the bench counts {pages}", count(name));
    }
    assert!(ec2.len() <= 8, "no node described alone: {ec2:?}");
    Ok(())
}

#[tokio::test]
async fn listing_reads_only_nodes_once_the_reconciler_has_put_old_records_in_the_index() -> Result<(), SetupError> {
    use aws_sdk_dynamodb::types::AttributeValue;
    use tether::aws::dynamo::{KIND_ATTRIBUTE, KIND_INDEX, PARTITION_KEY};
    let fx = Fixture::new().await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(fx.tether.create_node(fx.spec(&["m5.large"]), Persistence::default(), None).await?.id);
    }
    ids.sort();
    // A record written before `kind` existed (an older Tether, or one still running during
    // an upgrade), and many items of other kinds (event claims, idempotency keys).
    let key = |id: &tether::NodeId| AttributeValue::S(format!("node#{id}"));
    fx.dynamodb.update_item().table_name(&fx.table_name).key(PARTITION_KEY, key(&ids[1])).update_expression("REMOVE #k").expression_attribute_names("#k", KIND_ATTRIBUTE).send().await?;
    for n in 0..200 {
        fx.dynamodb.put_item().table_name(&fx.table_name).item(PARTITION_KEY, AttributeValue::S(format!("event#e-{n}"))).item("invocation_id", AttributeValue::S("i".into())).send().await?;
    }
    let listed = |page: &[Node]| page.iter().map(|n| n.id.clone()).collect::<Vec<_>>();

    // Before the reconciler has checked the index: the table is scanned, every node listed.
    fx.calls.take();
    let (mut page, _) = fx.tether.nodes(0, None).await?;
    page.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(listed(&page), ids);
    assert!(fx.calls.take().iter().any(|c| c == "DynamoDB.Scan"), "the old listing until the index is known complete");

    let report = reconcile(&fx).await?;
    assert_eq!(report["failed"], json!([]), "{report}");
    let mended = fx.dynamodb.get_item().table_name(&fx.table_name).key(PARTITION_KEY, key(&ids[1])).send().await?;
    assert_eq!(mended.item().and_then(|i| i.get(KIND_ATTRIBUTE)).and_then(|k| k.as_s().ok()).map(String::as_str), Some("node"));

    // From now on a page of nodes is one Query on the index, in id order, and the index
    // holds the nodes alone.
    fx.calls.take();
    let (first, cursor) = fx.tether.nodes(2, None).await?;
    let (second, end) = fx.tether.nodes(2, cursor.as_ref()).await?;
    assert_eq!([listed(&first), listed(&second)].concat(), ids);
    assert_eq!(cursor.as_ref(), Some(&ids[1]));
    let calls = fx.calls.take();
    assert!(calls.iter().all(|c| c == "DynamoDB.Query" || c == "DynamoDB.GetItem"), "{calls:?}");
    let (_, after_last) = fx.tether.nodes(2, end.as_ref()).await.map(|(p, c)| (p.len(), c))?;
    assert!(end.is_none() || after_last.is_none(), "the listing ends");
    let indexed = fx.dynamodb.scan().table_name(&fx.table_name).index_name(KIND_INDEX).send().await?;
    assert_eq!(indexed.scanned_count(), 4, "the index holds the 4 nodes and nothing else");
    Ok(())
}

#[tokio::test]
async fn listing_scans_while_the_index_cannot_be_read() -> Result<(), SetupError> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    use tether::aws::dynamo::{DynamoNodeStore, PARTITION_KEY};
    let fx = Fixture::new().await?;
    // A table whose `by-kind` index DynamoDB does not serve (yet): as while CloudFormation's
    // update has added it and its backfill runs.
    let table = format!("{}-building", fx.table_name);
    fx.dynamodb
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(AttributeDefinition::builder().attribute_name(PARTITION_KEY).attribute_type(ScalarAttributeType::S).build()?)
        .key_schema(KeySchemaElement::builder().attribute_name(PARTITION_KEY).key_type(KeyType::Hash).build()?)
        .send()
        .await?;
    let store = DynamoNodeStore::new(fx.dynamodb.clone(), table);
    let node = Node::new(fx.spec(&["m5.large"]), Persistence::default(), chrono::Utc::now());
    store.create(&node).await?;
    assert_eq!(store.maintain_listing(chrono::Utc::now()).await?, 0, "every record has its kind");
    let (listed, _) = store.list(0, None).await?;
    assert_eq!(listed.iter().map(|n| &n.id).collect::<Vec<_>>(), vec![&node.id], "listed by a scan");
    Ok(())
}
