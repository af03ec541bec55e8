//! The queued intake against the emulator's SQS: EventBridge-shaped events on the stack's
//! queues, delivered in batches to the real handlers as Lambda's event source mapping
//! delivers them (`tether_tests::queues`), with the shared RunInstances pace on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tether::ports::NodeStore;
use tether::NodeState;
use tether_tests::event_source::{node_instances, node_of};
use tether_tests::events::{interruption_warning, state_change};
use tether_tests::queues::{LocalQueue, LocalQueues, BATCH_SIZE};
use tether_tests::{Fixture, SetupError};

/// Each invocation's time (the stack gives state changes 90 s), and the queues' visibility
/// timeout: 6 × it, as in the stack (a retried event would come back after it).
const BUDGET: Duration = Duration::from_secs(30);
const VISIBILITY: Duration = Duration::from_secs(180);
/// The stack's `MaximumConcurrency` at the default share (state changes, warnings).
const STATE_CHANGE_POLLERS: usize = 7;
const WARNING_POLLERS: usize = 2;

/// What a node is before its reclaim: the identity that must come back.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    eni: String,
    private_ip: String,
    elastic_ip: String,
}

/// Pollers as the event source mappings run them, until both queues are empty (messages
/// put back with a delay included).
async fn deliver_until_empty(fx: &Fixture, tether: &tether::Tether, queues: &LocalQueues) -> Result<(), SetupError> {
    let poller = |queue: LocalQueue| async move {
        loop {
            let delivered = queues.deliver_batch(tether, &fx.requeue, &queue, BATCH_SIZE, BUDGET).await?;
            if delivered.is_none() {
                if queues.in_queues().await? == 0 {
                    return Ok::<_, SetupError>(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let pollers = (0..STATE_CHANGE_POLLERS).map(|_| poller(queues.state_changes.clone())).chain((0..WARNING_POLLERS).map(|_| poller(queues.interruptions.clone())));
    for result in futures_util::future::join_all(pollers).await {
        result?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run alone by `make test` (Makefile): beside the other emulator tests it and they take minutes longer"]
async fn two_hundred_nodes_reclaimed_at_once_come_back_through_the_queues_on_their_enis() -> Result<(), SetupError> {
    const NODES: usize = 200;
    let fx = Fixture::new().await?;
    let subnet_id = fx.subnet("10.0.16.0/22").await?;
    let spec = tether::NodeSpec { subnet_id, ..fx.spec(&["m5.large", "m6i.large"]) };
    let started = Instant::now();
    let nodes = fx.stage_running_nodes(&spec, NODES, true).await?;
    println!("set up {NODES} nodes in {:.0} s", started.elapsed().as_secs_f64());
    let mut before = BTreeMap::new();
    let mut reclaimed = Vec::new();
    for id in &nodes {
        let node = fx.store.get(id).await?.ok_or("a node without its record")?;
        let eni = node.eni.as_ref().ok_or("a node without its ENI")?;
        let elastic_ip = node.elastic_ip.as_ref().ok_or("a node without its Elastic IP")?;
        before.insert(id.clone(), Identity { eni: eni.id.clone(), private_ip: eni.private_ip.to_string(), elastic_ip: elastic_ip.allocation_id.clone() });
        reclaimed.push(node.instance_id().ok_or("a node without its instance")?.to_owned());
    }

    // The reclaim: every warning, every instance terminated, every `terminated` event.
    let queues = LocalQueues::create(&fx.sqs, &fx.table_name, VISIBILITY).await?;
    for instance_id in &reclaimed {
        queues.send(&interruption_warning(instance_id, "terminate")).await?;
    }
    for instance_id in &reclaimed {
        fx.interrupt(instance_id).await?;
    }
    for instance_id in &reclaimed {
        queues.send(&state_change(instance_id, "terminated")).await?;
    }
    fx.calls.take();
    let recovery = Instant::now();
    deliver_until_empty(&fx, &fx.tether, &queues).await?;
    let calls = fx.calls.take();
    let count = |name: &str| calls.iter().filter(|c| c.as_str() == name).count();
    println!(
        "{NODES} nodes back in {:.0} s: RunInstances {}, SendMessage (waits put back) {}, {} AWS calls in all",
        recovery.elapsed().as_secs_f64(),
        count("EC2.RunInstances"),
        count("SQS.SendMessage"),
        calls.len()
    );

    assert_eq!(queues.dead_lettered().await?, 0, "no event dead-lettered");
    // Every node on a new instance, on its own ENI with its IP and Elastic IP; each node
    // launched exactly once more (its old instance and one replacement).
    let instances = node_instances(&fx.ec2, &nodes).await?;
    let mut by_node: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for instance in &instances {
        by_node.entry(node_of(instance).ok_or("an instance without its node tag")?).or_default().push(instance);
    }
    for id in &nodes {
        let node = fx.store.get(id).await?.ok_or("a node without its record")?;
        assert_eq!(node.state, NodeState::Running, "{id}: {node:?}");
        let launched = by_node.get(id.as_str()).map_or(0, Vec::len);
        assert_eq!(launched, 2, "{id}: one replacement, none launched twice");
        let current = fx.instance(node.instance_id().ok_or("no instance")?).await?;
        assert!(!reclaimed.iter().any(|r| Some(r.as_str()) == current.instance_id()), "{id} runs a replacement");
        let primary = current.network_interfaces().iter().find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0)).ok_or("no primary ENI")?;
        let identity = &before[id];
        assert_eq!(primary.network_interface_id(), Some(identity.eni.as_str()), "{id}: its own ENI at device 0");
        assert_eq!(primary.private_ip_address(), Some(identity.private_ip.as_str()), "{id}: its private IP");
        let address = fx.cloud_eip(&identity.elastic_ip).await?;
        assert_eq!(address.network_interface_id(), Some(identity.eni.as_str()), "{id}: its Elastic IP on its ENI");
    }
    assert_eq!(count("EC2.RunInstances"), NODES, "one RunInstances per node: {}", json!(calls.len()));
    Ok(())
}
