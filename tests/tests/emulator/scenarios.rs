//! The core loop through the real handlers: a node comes back on the same ENI, private
//! IP and Elastic IP after every interruption, whatever the order and number of events.

use std::time::Duration;

use aws_sdk_ec2::types::InstanceType;
use serde_json::Value;
use tether::events::{InstanceEvent, InstanceState};
use tether::lifecycle::{self, Step};
use tether::ports::{Instances, NodeStore};
use tether::{Node, NodeState, Persistence};
use tether_tests::event_source::invoke_target;
use tether_tests::events::{interruption_warning, invocation, rebalance_recommendation, state_change};
use tether_tests::{on_eni, Fixture, SetupError};

const BUDGET: Duration = Duration::from_secs(30);

/// The event to the function Tether's rules send it to (`interruption` or `state-change`).
async fn deliver(fx: &Fixture, payload: Value) -> Result<Value, tether::TetherError> {
    invoke_target(&fx.tether, &fx.requeue, payload, BUDGET).await
}

fn outcome(value: &Value) -> &str {
    value["outcome"].as_str().unwrap_or("none")
}

/// Creates a node (chosen IP, optional EIP) and resumes it; returns it running.
async fn running_node(fx: &Fixture, persistence: Persistence) -> Result<Node, SetupError> {
    let node = fx.tether.create_node(fx.spec(&["m5.large", "m6i.large"]), persistence, None).await?;
    let outcome = fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    assert!(matches!(outcome, tether::Outcome::Launched { generation: 1, .. }), "{outcome:?}");
    Ok(fx.tether.node(&node.id).await?)
}

fn instance_id(node: &Node) -> Result<String, SetupError> {
    Ok(node.instance_id().ok_or("node has no instance")?.to_owned())
}

/// Checks, from what EC2 reports, that the node's current instance runs on the
/// node's ENI at device 0 with its private IP, MAC, AZ and (if any) Elastic IP, and
/// that it is the node's only live instance.
async fn assert_identity_kept(fx: &Fixture, node: &Node, eip: Option<&str>) -> Result<(), SetupError> {
    let eni = node.eni.as_ref().ok_or("node has no ENI")?;
    let instance = fx.instance(&instance_id(node)?).await?;
    let primary = instance
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
        .ok_or("instance has no ENI at device 0")?;
    assert_eq!(primary.network_interface_id(), Some(eni.id.as_str()), "boots on the node's ENI");
    assert_eq!(primary.attachment().and_then(|a| a.delete_on_termination()), Some(false), "ENI outlives the instance");
    assert_eq!(instance.private_ip_address(), Some(eni.private_ip.to_string().as_str()), "same private IP");
    assert_eq!(primary.mac_address(), Some(eni.mac_address.as_str()), "same MAC");
    assert_eq!(instance.placement().and_then(|p| p.availability_zone()), Some(fx.availability_zone.as_str()), "same AZ");
    assert_eq!(instance.public_ip_address(), eip, "same Elastic IP");
    let live = fx.live_instances(&node.id).await?;
    assert_eq!(live.len(), 1, "exactly one live instance: {:?}", live.iter().map(|i| i.instance_id()).collect::<Vec<_>>());
    // Tether's own view through its EC2 adapter agrees.
    let summary = fx.cloud.describe_instance(&instance_id(node)?).await?.ok_or("adapter does not find the instance")?;
    assert_eq!(summary.state, "running");
    assert_eq!(summary.primary_eni_id.as_deref(), Some(eni.id.as_str()));
    assert_eq!(Some(summary.market), node.instance.as_ref().map(|i| i.market));
    assert_eq!(summary.public_ip.as_deref(), eip);
    Ok(())
}

#[tokio::test]
async fn an_interrupted_node_comes_back_on_the_same_eni_ip_and_eip() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let chosen = fx.subnet_ip(50);
    let node = running_node(&fx, Persistence { private_ip: Some(chosen), elastic_ip_allocation_id: Some(allocation_id), ..Persistence::default() }).await?;
    let eni = node.eni.clone().ok_or("no ENI")?;
    assert_eq!(eni.private_ip, chosen);
    assert_identity_kept(&fx, &node, Some(&public_ip)).await?;
    let first = instance_id(&node)?;

    let warned = deliver(&fx, interruption_warning(&first, "terminate")).await?;
    assert_eq!(outcome(&warned), "recorded");
    assert_eq!(fx.tether.node(&node.id).await?.state, NodeState::Recovering);

    fx.interrupt(&first).await?;
    fx.calls.take();
    let replaced = deliver(&fx, state_change(&first, "terminated")).await?;
    assert_eq!(outcome(&replaced), "launched", "{replaced}");
    assert_eq!(replaced["generation"], 2);
    // The hot path: find the node, claim the event, mark it launching, take a slot of the
    // RunInstances pace, launch, record (DESIGN.md's 5, and the one the pace may cost). The
    // EIP stays on the ENI.
    assert_eq!(
        fx.calls.take(),
        ["DynamoDB.Query", "DynamoDB.PutItem", "DynamoDB.PutItem", "DynamoDB.UpdateItem", "EC2.RunInstances", "DynamoDB.PutItem"],
        "AWS calls of one replacement"
    );

    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Running);
    assert_eq!(after.generation, 2);
    assert_ne!(instance_id(&after)?, first);
    assert_eq!(after.eni.as_ref(), Some(&eni), "the ENI record never changes");
    assert_identity_kept(&fx, &after, Some(&public_ip)).await?;
    Ok(())
}

#[tokio::test]
async fn three_interruptions_in_a_row_keep_the_identity() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let mut node = running_node(&fx, Persistence { private_ip: Some(fx.subnet_ip(77)), elastic_ip_allocation_id: Some(allocation_id), ..Persistence::default() }).await?;
    let mut seen = vec![instance_id(&node)?];
    for generation in 2..=4 {
        let current = instance_id(&node)?;
        deliver(&fx, interruption_warning(&current, "terminate")).await?;
        fx.interrupt(&current).await?;
        let replaced = deliver(&fx, state_change(&current, "terminated")).await?;
        assert_eq!(replaced["generation"], generation, "{replaced}");
        node = fx.tether.node(&node.id).await?;
        assert_identity_kept(&fx, &node, Some(&public_ip)).await?;
        let new_id = instance_id(&node)?;
        assert!(!seen.contains(&new_id), "each replacement is a new instance");
        seen.push(new_id);
    }
    assert_eq!(fx.node_instances(&node.id).await?.len(), 4, "one instance per generation, no more");
    Ok(())
}

#[tokio::test]
async fn the_same_events_delivered_twice_launch_nothing_extra() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    let warning = interruption_warning(&first, "terminate");
    assert_eq!(outcome(&deliver(&fx, warning.clone()).await?), "recorded");
    assert_eq!(outcome(&deliver(&fx, warning).await?), "ignored");

    fx.interrupt(&first).await?;
    let terminated = state_change(&first, "terminated");
    assert_eq!(outcome(&deliver(&fx, terminated.clone()).await?), "launched");
    let again = deliver(&fx, terminated).await?;
    assert_eq!(outcome(&again), "ignored", "{again}");

    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.generation, 2);
    assert_eq!(fx.node_instances(&node.id).await?.len(), 2, "the old instance and one replacement");
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_deliveries_of_one_termination_launch_once() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    fx.interrupt(&first).await?;
    let terminated = state_change(&first, "terminated");
    let (a, b) = tokio::join!(deliver(&fx, terminated.clone()), deliver(&fx, terminated.clone()));
    let mut launched = 0;
    for result in [a, b] {
        match result {
            Ok(answer) if outcome(&answer) == "launched" => launched += 1,
            Ok(answer) => assert_eq!(outcome(&answer), "ignored", "{answer}"),
            // The other delivery came while the first held the event: Lambda retries it, and
            // the retry finds nothing left to do.
            Err(e) => {
                assert!(matches!(e, tether::TetherError::EventInProgress { .. }), "{e}");
                let retried = deliver(&fx, terminated.clone()).await?;
                assert_eq!(outcome(&retried), "ignored", "{retried}");
            }
        }
    }
    assert_eq!(launched, 1, "exactly one delivery launched");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.generation, 2, "one new generation");
    assert_eq!(fx.node_instances(&node.id).await?.len(), 2);
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

#[tokio::test]
async fn termination_before_the_warning_still_recovers() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence { private_ip: Some(fx.subnet_ip(90)), ..Persistence::default() }).await?;
    let first = instance_id(&node)?;
    fx.interrupt(&first).await?;
    assert_eq!(outcome(&deliver(&fx, state_change(&first, "terminated")).await?), "launched");
    // The warning arrives late, about an instance that is no longer the node's.
    let late = deliver(&fx, interruption_warning(&first, "terminate")).await?;
    assert_eq!(outcome(&late), "ignored");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Running, "the late warning does not mark the new instance");
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

#[tokio::test]
async fn termination_reported_while_the_eni_is_still_attached_waits_for_it() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    // The event arrives while the old instance still holds the ENI; it lets go a moment later.
    let ec2 = fx.ec2.clone();
    let old = first.clone();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ec2.terminate_instances().instance_ids(old).send().await
    });
    let replaced = deliver(&fx, state_change(&first, "terminated")).await?;
    release.await??;
    assert_eq!(outcome(&replaced), "launched", "{replaced}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.generation, 2);
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

#[tokio::test]
async fn an_eni_not_released_before_the_deadline_is_retried_by_lambda_not_given_up() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    let terminated = state_change(&first, "terminated");
    let short = tether_state_change::handler(&fx.tether, &fx.requeue, invocation(terminated.clone(), Duration::from_secs(1))).await;
    let err = short.expect_err("still attached: the handler must fail so Lambda retries");
    assert!(err.to_string().contains("InvalidNetworkInterface.InUse"), "AWS code kept: {err}");
    let diagnostic = lambda_runtime::Diagnostic::from(err);
    assert_eq!(diagnostic.error_type, "InvalidNetworkInterface.InUse", "Lambda's errorType is AWS's code");
    let waiting = fx.tether.node(&node.id).await?;
    assert_eq!(waiting.state, NodeState::Launching, "not given up");
    assert_eq!(fx.node_instances(&node.id).await?.len(), 1, "nothing launched yet");

    // Lambda's retry, after the instance is gone.
    fx.interrupt(&first).await?;
    assert_eq!(outcome(&deliver(&fx, terminated).await?), "launched");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.generation, 2, "the retry continues the same generation");
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

#[tokio::test]
async fn events_tether_cannot_use_are_acknowledged() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    fx.calls.take();
    let unknown = deliver(&fx, state_change("i-0123456789abcdef0", "terminated")).await?;
    assert_eq!(outcome(&unknown), "ignored");
    // Most of an account's state changes are about instances no node runs: one read, no claim written.
    assert_eq!(fx.calls.take(), ["DynamoDB.Query"]);
    assert_eq!(fx.cloud.describe_instance("i-0123456789abcdef0").await?, None, "EC2 does not know it either");
    let mut malformed = state_change("i-0123456789abcdef0", "terminated");
    malformed["detail"] = Value::String("garbage".into());
    assert_eq!(outcome(&deliver(&fx, malformed).await?), "rejected");
    // A warning sent to the state-change function is not its business.
    // A rule sending the wrong detail-type to state-change (deliver would route it right).
    let misrouted = tether_state_change::handler(&fx.tether, &fx.requeue, invocation(interruption_warning("i-0123456789abcdef0", "terminate"), BUDGET)).await?;
    assert_eq!(outcome(&misrouted), "rejected");
    Ok(())
}

#[tokio::test]
async fn a_stop_interruption_is_recorded_and_not_replaced() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    assert_eq!(outcome(&deliver(&fx, rebalance_recommendation(&first)).await?), "recorded");
    assert_eq!(outcome(&deliver(&fx, interruption_warning(&first, "stop")).await?), "recorded");
    fx.ec2.stop_instances().instance_ids(&first).send().await?;
    let stopped = deliver(&fx, state_change(&first, "stopped")).await?;
    assert_eq!(outcome(&stopped), "recorded");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Stopped);
    assert_eq!(after.generation, 1, "nothing launched");
    assert_eq!(fx.node_instances(&node.id).await?.len(), 1);
    assert!(after.history.iter().any(|h| h.what.contains("rebalance")), "rebalance recorded");
    Ok(())
}

/// `spec.handover_after_warning_seconds`, through the stack's queued intake on the
/// emulator's SQS: the warning's first delivery records it and puts its message back for the
/// rest of the delay (no invocation waits); nothing is terminated meanwhile; delivered again
/// once due, Tether terminates the instance itself, and its `terminated` event launches the
/// replacement on the same ENI, private IP and Elastic IP.
#[tokio::test]
async fn a_node_that_hands_over_early_is_terminated_by_tether_after_the_delay_and_replaced_on_its_eni() -> Result<(), SetupError> {
    use tether_tests::queues::{LocalQueues, BATCH_SIZE};
    const DELAY: u8 = 4;
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let spec = tether::NodeSpec { handover_after_warning_seconds: Some(DELAY), ..fx.spec(&["m5.large"]) };
    let persistence = Persistence { private_ip: Some(fx.subnet_ip(61)), elastic_ip_allocation_id: Some(allocation_id), ..Persistence::default() };
    let created = fx.tether.create_node(spec, persistence, None).await?;
    fx.tether.resume(&created.id, fx.tether.deadline_in(BUDGET), None).await?;
    let node = fx.tether.node(&created.id).await?;
    let eni = node.eni.clone().ok_or("no ENI")?;
    let first = instance_id(&node)?;
    let queues = LocalQueues::create(&fx.sqs, &format!("{}-handover", fx.table_name), Duration::from_secs(180)).await?;
    let ec2_state = |instance: aws_sdk_ec2::types::Instance| instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default();

    let warning = interruption_warning(&first, "terminate");
    let sent: chrono::DateTime<chrono::Utc> = warning["time"].as_str().ok_or("no time")?.parse()?;
    let due = sent + chrono::Duration::seconds(i64::from(DELAY));
    queues.send(&warning).await?;
    fx.calls.take();
    let first_delivery = queues.deliver_batch(&fx.tether, &fx.requeue, &queues.interruptions, BATCH_SIZE, BUDGET).await?.ok_or("the warning is not on its queue")?;
    assert_eq!((first_delivery.failed, first_delivery.error), (0, None), "acknowledged");
    assert!(fx.calls.take().contains(&"SQS.SendMessage".to_owned()), "put back on its queue for the delay");
    assert_eq!(fx.tether.node(&node.id).await?.state, NodeState::Recovering);

    // Until the message comes back: nothing terminated.
    let mut before_due = Vec::new();
    let handed_over_delivery = loop {
        if let Some(batch) = queues.deliver_batch(&fx.tether, &fx.requeue, &queues.interruptions, BATCH_SIZE, BUDGET).await? {
            break batch;
        }
        before_due.extend(fx.calls.take());
        assert_eq!(ec2_state(fx.instance(&first).await?), "running", "nothing before the delay");
        assert!(chrono::Utc::now() < due + chrono::Duration::seconds(20), "the warning never came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let handed_at = chrono::Utc::now();
    assert_eq!(handed_over_delivery.failed, 0);
    assert!(!before_due.iter().any(|c| c == "EC2.TerminateInstances"), "{before_due:?}");
    let calls = fx.calls.take();
    assert_eq!(calls.iter().filter(|c| *c == "EC2.TerminateInstances").count(), 1, "{calls:?}");
    assert!(handed_at >= due, "handed over at {handed_at}, due at {due}");
    assert_eq!(ec2_state(fx.instance(&first).await?), "terminated", "terminated by Tether, not by the test");
    let handed = fx.tether.node(&node.id).await?;
    assert_eq!(handed.interruption.as_ref().and_then(|i| i.handed_over_at).map(|at| at >= due), Some(true), "{:?}", handed.interruption);
    let last = handed.history.last().ok_or("no history")?;
    assert!(last.what.starts_with("terminated ") && last.what.ends_with(" s after the spot interruption warning to hand over early"), "{}", last.what);
    assert_eq!(last.instance_id.as_deref(), Some(first.as_str()));

    // EventBridge reports the termination: the replacement boots on the same ENI.
    let replaced = deliver(&fx, state_change(&first, "terminated")).await?;
    assert_eq!((outcome(&replaced), &replaced["generation"]), ("launched", &serde_json::json!(2)), "{replaced}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.eni.as_ref(), Some(&eni));
    assert_identity_kept(&fx, &after, Some(&public_ip)).await?;
    assert_eq!((queues.in_queues().await?, queues.dead_lettered().await?), (0, 0), "nothing left waiting");
    println!("handed over {:.1} s after the warning's time (delay {DELAY} s); replacement {}", (handed_at - sent).num_milliseconds() as f64 / 1000.0, instance_id(&after)?);
    Ok(())
}

/// A stop interruption runs its course; then EventBridge delivers the warning once more:
/// it is acknowledged, not recorded as a second interruption.
#[tokio::test]
async fn a_late_duplicate_of_a_stop_warning_is_not_recorded_again() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    let warning = interruption_warning(&first, "stop");
    assert_eq!(outcome(&deliver(&fx, warning.clone()).await?), "recorded");
    fx.ec2.stop_instances().instance_ids(&first).send().await?;
    assert_eq!(outcome(&deliver(&fx, state_change(&first, "stopped")).await?), "recorded");
    fx.ec2.start_instances().instance_ids(&first).send().await?;
    assert_eq!(outcome(&deliver(&fx, state_change(&first, "running")).await?), "recorded");

    let again = deliver(&fx, warning).await?;
    assert_eq!(outcome(&again), "ignored", "{again}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!((after.state, after.generation), (NodeState::Running, 1));
    assert_eq!(after.interruption, None, "no interruption pending");
    let warnings = after.history.iter().filter(|h| h.what.starts_with("spot interruption warning")).count();
    assert_eq!(warnings, 1, "one interruption, recorded once");
    Ok(())
}

/// While one invocation holds an event (until its deadline), another delivery of it that
/// would change something is handed back to Lambda for a retry; once the holder's deadline
/// has passed, the claim is taken over.
#[tokio::test]
async fn a_delivery_while_another_invocation_holds_the_event_is_retried() -> Result<(), SetupError> {
    use tether::ports::EventClaims;
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    fx.interrupt(&first).await?;
    let terminated = state_change(&first, "terminated");
    let event_id = terminated["id"].as_str().ok_or("no id")?.to_owned();
    let claims = tether::aws::event_claims::DynamoEventClaims::new(fx.dynamodb.clone(), fx.table_name.clone());
    let now = chrono::Utc::now();
    let held = claims.claim(&event_id, "a-live-invocation", now, now + chrono::Duration::seconds(600)).await?;
    assert_eq!(held, tether::ports::EventClaim::Claimed);

    let err = deliver(&fx, terminated.clone()).await.expect_err("another invocation holds it");
    assert!(err.is_retryable() && matches!(err, tether::TetherError::EventInProgress { .. }), "{err}");
    assert_eq!(lambda_runtime::Diagnostic::from(err).error_type, "Tether.EventInProgress");
    assert_eq!(fx.tether.node(&node.id).await?.generation, 1, "nothing done meanwhile");

    // The holder died; its deadline passed: the next delivery takes the claim over.
    let later = chrono::Utc::now() + chrono::Duration::seconds(601);
    assert_eq!(claims.claim(&event_id, "lambda-retry", later, later + chrono::Duration::seconds(60)).await?, tether::ports::EventClaim::Claimed);
    claims.release(&event_id, "lambda-retry").await?;
    claims.release(&event_id, "someone-else").await?;
    let retried = deliver(&fx, terminated).await?;
    assert_eq!(outcome(&retried), "launched", "{retried}");
    Ok(())
}

#[tokio::test]
async fn a_random_private_ip_is_kept_across_interruptions() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let ip = node.eni.as_ref().ok_or("no ENI")?.private_ip;
    let first = instance_id(&node)?;
    fx.interrupt(&first).await?;
    deliver(&fx, state_change(&first, "terminated")).await?;
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.eni.as_ref().map(|e| e.private_ip), Some(ip));
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

#[tokio::test]
async fn a_launch_that_died_before_being_recorded_is_adopted_not_repeated() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    let earlier_id = stage_unrecorded_launch(&fx, &node).await?;

    // Lambda retries the event: the first candidate's RunInstances meets the used token.
    let retried = deliver(&fx, state_change(&first, "terminated")).await?;
    assert_eq!(outcome(&retried), "launched", "{retried}");
    assert_eq!(retried["instance_id"], earlier_id.as_str(), "the earlier instance is adopted");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.generation, 2);
    assert_eq!(after.instance.as_ref().map(|i| i.instance_type.as_str()), Some("m6i.large"));
    assert_eq!(fx.instances_in_vpc().await?, vec![earlier_id.clone()], "nothing launched besides the adopted instance");
    assert_identity_kept_on(&fx, &after, &earlier_id).await?;
    Ok(())
}

/// Interrupts the node's (generation 1) instance and stages what an invocation that died
/// mid-recovery leaves behind: the node marked as launching generation 2, and generation 2
/// launched on the fallback type with the generation's ClientToken, but not recorded.
/// Returns that instance's id.
async fn stage_unrecorded_launch(fx: &Fixture, node: &Node) -> Result<String, SetupError> {
    let eni_id = node.eni.as_ref().ok_or("no ENI")?.id.clone();
    stage_launching(fx, node).await?;
    let earlier = fx
        .run_one()
        .instance_type(InstanceType::M6iLarge)
        .client_token(node.id.client_token(2))
        .network_interfaces(on_eni(&eni_id))
        .send()
        .await?;
    Ok(earlier.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned())
}

/// Interrupts the node's (generation 1) instance and records the node as launching
/// generation 2, as the termination's delivery does before it launches; returns that node.
async fn stage_launching(fx: &Fixture, node: &Node) -> Result<Node, SetupError> {
    let first = instance_id(node)?;
    fx.interrupt(&first).await?;
    let terminated = InstanceEvent::StateChange { instance_id: first, state: InstanceState::Terminated };
    let Step::Apply { next: launching, .. } = lifecycle::on_instance_event(node, &terminated, chrono::Utc::now()) else {
        return Err("termination did not start a launch".into());
    };
    Ok(fx.store.save(&launching).await?)
}

/// An invocation that launched generation 2 and died before recording it, whose instance is
/// found holding the ENI under another ClientToken (so the retry's RunInstances meets
/// `InvalidNetworkInterface.InUse`, not the token's idempotent answer): the holder is
/// looked at, found to be this generation's by its tags, and adopted.
#[tokio::test]
async fn this_generations_instance_found_holding_the_eni_is_adopted() -> Result<(), SetupError> {
    use tether::aws::ec2::{TAG_GENERATION, TAG_MANAGED, TAG_NODE_ID};
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    let eni_id = node.eni.as_ref().ok_or("no ENI")?.id.clone();
    let launching = stage_launching(&fx, &node).await?;
    assert_eq!((launching.state, launching.generation), (NodeState::Launching, 2));
    let token = node.id.client_token(2);
    let other_token = format!("elsewhere-{}", node.id);
    assert_ne!(other_token, token);
    let tags = [(TAG_NODE_ID, node.id.as_str()), (TAG_GENERATION, "2"), (TAG_MANAGED, "true")]
        .into_iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    let staged = fx
        .run_one()
        .instance_type(InstanceType::M6iLarge)
        .client_token(&other_token)
        .network_interfaces(on_eni(&eni_id))
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .set_tags(Some(tags.collect()))
                .build(),
        )
        .send()
        .await?;
    let staged_id = staged.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();

    fx.calls.take();
    let retried = deliver(&fx, state_change(&first, "terminated")).await?;
    assert_eq!(outcome(&retried), "launched", "{retried}");
    assert_eq!(retried["instance_id"], staged_id.as_str(), "the holder is adopted: {retried}");
    // One RunInstances (refused: the ENI is in use), then the ENI's holder looked up.
    let ec2_calls = fx.calls.take().into_iter().filter(|c| c.starts_with("EC2.")).collect::<Vec<_>>();
    assert_eq!(ec2_calls, ["EC2.RunInstances", "EC2.DescribeNetworkInterfaces", "EC2.DescribeInstances"], "EC2 calls of the adoption");
    assert_eq!(retried["generation"], 2, "{retried}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!((after.state, after.generation), (NodeState::Running, 2));
    let recorded = after.instance.as_ref().ok_or("no instance recorded")?;
    assert_eq!((recorded.id.as_str(), recorded.generation), (staged_id.as_str(), 2));
    assert_eq!((recorded.instance_type.as_str(), recorded.market), ("m6i.large", tether::Market::OnDemand), "as EC2 reports the holder");
    // The real token's RunInstances launched nothing: only the adopted instance runs.
    let by_token = fx
        .ec2
        .describe_instances()
        .filters(aws_sdk_ec2::types::Filter::builder().name("client-token").values(&token).build())
        .send()
        .await?;
    assert_eq!(by_token.reservations().iter().flat_map(|r| r.instances()).count(), 0, "nothing launched with the generation's token");
    assert_eq!(fx.instances_in_vpc().await?, vec![staged_id.clone()], "nothing launched besides the adopted instance");
    assert_eq!(fx.node_instances(&node.id).await?.len(), 2, "generation 1's and the adopted one");
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}

/// The node's ENI deleted by hand while the node is paused: the next resume cannot keep the
/// private IP and MAC, so the node goes to ERROR saying so, and nothing is launched.
#[tokio::test]
async fn an_eni_deleted_outside_tether_puts_the_node_in_error_at_the_next_resume() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let eni = node.eni.clone().ok_or("no ENI")?;
    fx.tether.pause(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    assert_eq!(fx.tether.node(&node.id).await?.state, NodeState::Paused);
    fx.ec2.delete_network_interface().network_interface_id(&eni.id).send().await?;

    let resumed = fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await?;
    let expected = lifecycle::eni_deleted(&eni);
    assert!(expected.contains(&eni.id) && expected.contains("deallocate this node and create a new one"), "{expected}");
    match &resumed {
        tether::Outcome::Failed { reason, .. } => assert_eq!(reason, &expected),
        other => panic!("expected the node to fail: {other:?}"),
    }
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Error);
    assert_eq!(after.last_error.as_deref(), Some(expected.as_str()));
    assert!(after.history.last().is_some_and(|h| h.what.contains(&expected)), "{:?}", after.history.last());
    assert_eq!(fx.node_instances(&node.id).await?.len(), 1, "only generation 1's instance, nothing launched");
    assert!(fx.live_instances(&node.id).await?.is_empty(), "nothing runs");
    Ok(())
}

/// The adopted instance was launched outside Tether's adapter (no node tag), so check it directly.
async fn assert_identity_kept_on(fx: &Fixture, node: &Node, instance_id: &str) -> Result<(), SetupError> {
    let eni = node.eni.as_ref().ok_or("node has no ENI")?;
    let instance = fx.instance(instance_id).await?;
    assert_eq!(instance.private_ip_address(), Some(eni.private_ip.to_string().as_str()));
    let on_eni = instance.network_interfaces().iter().any(|n| n.network_interface_id() == Some(eni.id.as_str()));
    assert!(on_eni, "runs on the node's ENI");
    Ok(())
}

#[tokio::test]
async fn a_launch_without_capacity_falls_back_to_the_next_type_then_on_demand() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // The emulator has no spot capacity for p5.48xlarge (tests/emulator/README.md).
    let next_type = fx.tether.create_node(fx.spec(&["p5.48xlarge", "m5.large"]), Persistence::default(), None).await?;
    let outcome = fx.tether.resume(&next_type.id, fx.tether.deadline_in(BUDGET), None).await?;
    assert!(matches!(outcome, tether::Outcome::Launched { .. }), "{outcome:?}");
    let node = fx.tether.node(&next_type.id).await?;
    let instance = node.instance.as_ref().ok_or("no instance")?;
    assert_eq!((instance.instance_type.as_str(), instance.market), ("m5.large", tether::Market::Spot));
    assert_identity_kept(&fx, &node, None).await?;

    let on_demand = fx.tether.create_node(fx.spec(&["p5.48xlarge"]), Persistence::default(), None).await?;
    fx.tether.resume(&on_demand.id, fx.tether.deadline_in(BUDGET), None).await?;
    let node = fx.tether.node(&on_demand.id).await?;
    let instance = node.instance.as_ref().ok_or("no instance")?;
    assert_eq!((instance.instance_type.as_str(), instance.market), ("p5.48xlarge", tether::Market::OnDemand));
    let described = fx.instance(&instance.id).await?;
    assert_eq!(described.instance_lifecycle(), None, "EC2 reports an on-demand instance");
    assert_identity_kept(&fx, &node, None).await?;
    Ok(())
}

#[tokio::test]
async fn no_capacity_anywhere_keeps_the_node_launching_for_a_retry() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // No capacity at all for u-6tb1.112xlarge in the emulator; no on-demand fallback either.
    let mut spec = fx.spec(&["u-6tb1.112xlarge", "p5.48xlarge"]);
    spec.fallback_to_on_demand = false;
    let node = fx.tether.create_node(spec, Persistence::default(), None).await?;
    let err = fx.tether.resume(&node.id, fx.tether.deadline_in(BUDGET), None).await.expect_err("no capacity");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.aws_code(), Some("InsufficientInstanceCapacity"));
    assert!(err.to_string().contains("u-6tb1.112xlarge/spot, p5.48xlarge/spot"), "{err}");
    let after = fx.tether.node(&node.id).await?;
    assert_eq!(after.state, NodeState::Launching, "kept for the retry, not failed");
    assert!(after.last_error.as_deref().is_some_and(|e| e.contains("InsufficientInstanceCapacity")));
    assert!(fx.node_instances(&node.id).await?.is_empty(), "nothing launched");
    Ok(())
}

#[tokio::test]
async fn an_adopted_instance_that_is_already_gone_leads_to_the_next_generation() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let node = running_node(&fx, Persistence::default()).await?;
    let first = instance_id(&node)?;
    let earlier_id = stage_unrecorded_launch(&fx, &node).await?;
    // That instance was reclaimed too before anything recorded it; no event will name it.
    fx.interrupt(&earlier_id).await?;

    let retried = deliver(&fx, state_change(&first, "terminated")).await?;
    assert_eq!(outcome(&retried), "launched", "{retried}");
    assert_eq!(retried["generation"], 3, "generation 2's instance is gone: generation 3 runs");
    let after = fx.tether.node(&node.id).await?;
    assert!(after.history.iter().any(|h| h.instance_id.as_deref() == Some(earlier_id.as_str())), "generation 2 is on record");
    assert_identity_kept(&fx, &after, None).await?;
    Ok(())
}
