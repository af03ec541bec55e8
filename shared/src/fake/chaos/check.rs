//! The invariants a settled world must hold, read from the fakes' own state (what EC2 and
//! DynamoDB hold), never from what the service says it did.

use std::collections::{BTreeMap, BTreeSet};

use crate::fake::{EipView, EniView, InstanceView};
use crate::model::{Node, NodeId, NodeState};

/// Everything wrong with the world; empty when every invariant holds.
// Each argument is one of the world's own records, read from the fakes or the scenario.
#[allow(clippy::too_many_arguments)]
pub fn violations(
    created: &[NodeId],
    nodes: &[Node],
    instances: &[InstanceView],
    enis: &[EniView],
    eips: &[EipView],
    drifted: &BTreeSet<NodeId>,
    warnings_sent: &BTreeMap<String, usize>,
    terminate_warned: &BTreeMap<String, chrono::DateTime<chrono::Utc>>,
) -> Vec<String> {
    let mut found = Vec::new();
    let by_id: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    for id in created {
        if !by_id.contains_key(id.as_str()) {
            found.push(format!("node {id} record lost"));
        }
    }
    // Exactly once: one instance per (node, generation), ever.
    let mut per_generation: BTreeMap<(&str, u64), Vec<&str>> = BTreeMap::new();
    for i in instances {
        if let (Some(node), Some(generation)) = (&i.node_id, i.generation) {
            per_generation.entry((node.as_str(), generation)).or_default().push(&i.id);
        }
    }
    for ((node, generation), ids) in per_generation.iter().filter(|(_, ids)| ids.len() > 1) {
        found.push(format!("node {node} generation {generation} was launched {} times: {ids:?}", ids.len()));
    }
    // No orphans: every live instance is the current one of a node that should have one.
    for i in instances.iter().filter(|i| i.is_live()) {
        let owner = i.node_id.as_deref().and_then(|id| by_id.get(id));
        let owned = owner.is_some_and(|n| {
            matches!(n.state, NodeState::Running | NodeState::Recovering | NodeState::Stopped | NodeState::Error) && n.instance_id() == Some(i.id.as_str())
        });
        if !owned {
            let state = owner.map(|n| format!("{:?} at generation {} naming {:?}", n.state, n.generation, n.instance_id()));
            found.push(format!("orphan instance {} (node {:?}, generation {:?}; node is {state:?})", i.id, i.node_id, i.generation));
        }
    }
    for node in nodes {
        check_node(node, instances, enis, eips, drifted.contains(&node.id), &mut found);
        check_history(node, warnings_sent, &mut found);
        check_handovers(node, terminate_warned, &mut found);
    }
    // No leaks: every ENI and Elastic IP Tether made belongs to a node that keeps it.
    for eni in enis {
        let Some(node) = eni.node_id.as_deref().and_then(|id| by_id.get(id)) else { continue };
        let recorded = match eni.tags.get("tether:device-index").and_then(|i| i.parse::<u8>().ok()) {
            Some(index) => node.extra_enis.iter().find(|e| e.device_index == index).map(|e| e.id.as_str()),
            None => node.eni.as_ref().map(|e| e.id.as_str()),
        };
        let kept = match node.state {
            NodeState::Deallocated => recorded == Some(eni.id.as_str()),
            _ => recorded.is_none() || recorded == Some(eni.id.as_str()),
        };
        if !kept {
            found.push(format!("leaked ENI {} of node {} ({:?}, records {recorded:?})", eni.id, node.id, node.state));
        }
    }
    for eip in eips {
        let Some(node) = eip.node_id.as_deref().and_then(|id| by_id.get(id)) else { continue };
        let recorded = node.elastic_ip.as_ref().map(|e| e.allocation_id.as_str());
        let id = eip.info.allocation_id.as_str();
        // Someone else's ENI holds it (a drift): Tether does not take it back.
        let held_elsewhere = eip.info.network_interface_id.as_ref().is_some_and(|e| enis.iter().any(|v| v.id == *e && v.node_id.is_none()));
        let kept = match node.state {
            NodeState::Deallocated => recorded == Some(id) || held_elsewhere,
            _ => recorded.is_none() || recorded == Some(id),
        };
        if !kept {
            found.push(format!("leaked Elastic IP {id} of node {} ({:?}, records {recorded:?})", node.id, node.state));
        }
    }
    found
}

fn check_node(node: &Node, instances: &[InstanceView], enis: &[EniView], eips: &[EipView], drifted: bool, found: &mut Vec<String>) {
    let id = &node.id;
    let live: Vec<&InstanceView> = instances.iter().filter(|i| i.is_live() && i.node_id.as_deref() == Some(id.as_str())).collect();
    let eni = node.eni.as_ref().and_then(|recorded| enis.iter().find(|e| e.id == recorded.id));
    match node.state {
        NodeState::Launching | NodeState::Recovering | NodeState::Deallocating => {
            found.push(format!("node {id} stuck in {:?} (last: {:?})", node.state, node.history.last().map(|h| &h.what)));
        }
        NodeState::Error if !drifted => found.push(format!("node {id} in ERROR without a hand-made cause: {:?}", node.last_error)),
        NodeState::Error => {}
        NodeState::Stopped => {
            let state = instances.iter().find(|i| node.instance_id() == Some(i.id.as_str())).map(|i| i.state.as_str());
            if !matches!(state, Some("stopping" | "stopped")) {
                found.push(format!("node {id} is recorded stopped, but its instance {:?} is {state:?}", node.instance_id()));
            }
        }
        NodeState::Running => {
            let [instance] = live.as_slice() else {
                found.push(format!("running node {id} has {} live instances", live.len()));
                return;
            };
            if node.instance_id() != Some(instance.id.as_str()) {
                found.push(format!("running node {id} records {:?} but {} runs it", node.instance_id(), instance.id));
            }
            let Some(eni) = eni else {
                found.push(format!("running node {id} has no ENI in EC2 (records {:?})", node.eni.as_ref().map(|e| &e.id)));
                return;
            };
            if eni.instance_id.as_deref() != Some(instance.id.as_str()) || instance.primary_eni_id.as_deref() != Some(eni.id.as_str()) {
                found.push(format!("node {id}: {} is not on its ENI {} at device 0", instance.id, eni.id));
            }
            check_eni_identity(node, eni, found);
            check_extra_enis(node, instance, enis, found);
            if instance.private_ip != Some(eni.private_ip) || node.persistence.private_ip.is_some_and(|ip| ip != eni.private_ip) {
                found.push(format!("node {id}: private IP {:?}, wanted {} ({:?} chosen)", instance.private_ip, eni.private_ip, node.persistence.private_ip));
            }
            let wants_eip = node.persistence.elastic_ip_allocation_id.is_some() || node.persistence.allocate_elastic_ip;
            match &node.elastic_ip {
                None if wants_eip => found.push(format!("running node {id} has no Elastic IP on record")),
                None => {}
                Some(record) => {
                    let on_eni = eips.iter().any(|e| e.info.allocation_id == record.allocation_id && e.info.network_interface_id.as_deref() == Some(eni.id.as_str()));
                    if on_eni && instance.public_ip.as_deref() != Some(record.public_ip.as_str()) {
                        found.push(format!("running node {id}: its instance does not show Elastic IP {}", record.allocation_id));
                    }
                    check_elastic_ip(node, record, eni, eips, found);
                }
            }
        }
        NodeState::Paused => {
            if drifted {
                return;
            }
            if let (Some(recorded), None) = (&node.eni, eni) {
                found.push(format!("paused node {id} lost its ENI {}", recorded.id));
            }
            if let (Some(record), Some(eni)) = (&node.elastic_ip, eni) {
                check_elastic_ip(node, record, eni, eips, found);
            }
        }
        NodeState::Deallocated => {
            if node.keep_eni && node.eni.is_some() && eni.is_none() && !drifted {
                found.push(format!("deallocated node {id} was to keep its ENI, which is gone"));
            }
        }
    }
}

/// A node's Elastic IP is on its ENI with no Elastic IP condition; or it is held elsewhere
/// (a person moved it: Tether never takes it back) with a condition naming the holder, or
/// released with a condition saying so. A free one is associated again by the reconciler.
fn check_elastic_ip(node: &Node, record: &crate::model::ElasticIpRecord, eni: &EniView, eips: &[EipView], found: &mut Vec<String>) {
    use crate::conditions::ConditionKind;
    let id = &node.id;
    let seen = eips.iter().find(|e| e.info.allocation_id == record.allocation_id);
    let condition = |kind| node.condition(kind).map(|c| c.message.as_str());
    match seen.map(|e| (e.info.network_interface_id.as_deref(), e.info.holder())) {
        Some((Some(on), _)) if on == eni.id => {
            if !node.conditions.is_empty() {
                found.push(format!("node {id}: its Elastic IP is on its ENI, but it keeps the conditions {:?}", node.conditions));
            }
        }
        Some((None, _)) if seen.is_some_and(|e| e.info.association_id.is_none()) => {
            found.push(format!("{:?} node {id}: Elastic IP {} is free, not on its ENI {}", node.state, record.allocation_id, eni.id));
        }
        Some((_, holder)) => {
            if !condition(ConditionKind::ElasticIpElsewhere).is_some_and(|m| m.contains(holder)) {
                found.push(format!("node {id}: Elastic IP {} is on {holder}, and no condition names it: {:?}", record.allocation_id, node.conditions));
            }
        }
        None => {
            if condition(ConditionKind::ElasticIpReleased).is_none() {
                found.push(format!("node {id}: Elastic IP {} was released, and no condition says so: {:?}", record.allocation_id, node.conditions));
            }
        }
    }
}

/// A running node has every extra ENI its spec asks for, recorded, and attached to its
/// instance at the device index asked.
fn check_extra_enis(node: &Node, instance: &InstanceView, enis: &[EniView], found: &mut Vec<String>) {
    for wanted in &node.spec.extra_enis {
        let Some(record) = node.extra_enis.iter().find(|e| e.device_index == wanted.device_index) else {
            found.push(format!("running node {}: no extra ENI recorded at device index {}", node.id, wanted.device_index));
            continue;
        };
        let on_instance = enis.iter().any(|e| e.id == record.id && e.instance_id.as_deref() == Some(instance.id.as_str()) && e.device_index == Some(wanted.device_index));
        if !on_instance {
            found.push(format!("running node {}: extra ENI {} is not on {} at device index {}", node.id, record.id, instance.id, wanted.device_index));
        }
    }
}

/// A running node's ENI carries every address and setting its spec asks for, and the node
/// records the addresses EC2 gave it: kept across every replacement.
fn check_eni_identity(node: &Node, eni: &EniView, found: &mut Vec<String>) {
    let id = &node.id;
    let wanted = node.spec.secondary_private_ips.as_ref().map_or(0, |s| s.wanted());
    if eni.secondary_private_ips.len() != wanted {
        found.push(format!("node {id}: ENI {} has {} secondary IPs, the spec asks {wanted}", eni.id, eni.secondary_private_ips.len()));
    }
    if node.eni.as_ref().is_some_and(|e| e.secondary_private_ips != eni.secondary_private_ips) {
        found.push(format!("node {id}: records secondary IPs {:?}, its ENI has {:?}", node.eni.as_ref().map(|e| &e.secondary_private_ips), eni.secondary_private_ips));
    }
    if eni.source_dest_check != node.spec.source_dest_check {
        found.push(format!("node {id}: ENI {} source/dest check {}, the spec asks {}", eni.id, eni.source_dest_check, node.spec.source_dest_check));
    }
}

/// The history tells what happened, once: no more interruption warnings recorded for an
/// instance than EC2 sent (a duplicate delivery applied twice would add one).
fn check_history(node: &Node, warnings_sent: &BTreeMap<String, usize>, found: &mut Vec<String>) {
    let mut recorded: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in node.history.iter().filter(|h| h.what.starts_with("spot interruption warning")) {
        *recorded.entry(entry.instance_id.as_deref().unwrap_or_default()).or_default() += 1;
    }
    for (instance_id, count) in recorded {
        let sent = warnings_sent.get(instance_id).copied().unwrap_or(0);
        if count > sent {
            found.push(format!("node {}: {count} interruption warnings recorded for {instance_id}, EC2 sent {sent}", node.id));
        }
    }
}

/// A hand-over terminates only an instance EC2 warned would be terminated, never before the
/// node's delay has passed since that warning, and once at most per instance.
fn check_handovers(node: &Node, terminate_warned: &BTreeMap<String, chrono::DateTime<chrono::Utc>>, found: &mut Vec<String>) {
    let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in node.history.iter().filter(|h| h.what.contains("to hand over early")) {
        let instance_id = entry.instance_id.as_deref().unwrap_or_default();
        *per_instance.entry(instance_id).or_default() += 1;
        // EventBridge's `time` is in whole seconds: the delay counts from it.
        let Some(warned) = terminate_warned.get(instance_id).map(|w| chrono::SubsecRound::trunc_subsecs(*w, 0)) else {
            found.push(format!("node {}: {instance_id} handed over without a terminate warning ({})", node.id, entry.what));
            continue;
        };
        let delay = node.spec.handover_after_warning_seconds.map(|s| chrono::TimeDelta::seconds(i64::from(s)));
        match delay {
            Some(delay) if entry.at >= warned + delay => {}
            _ => found.push(format!("node {}: {instance_id} handed over at {} ({}), warned at {warned}, delay {:?}", node.id, entry.at, entry.what, node.spec.handover_after_warning_seconds)),
        }
    }
    for (instance_id, count) in per_instance.into_iter().filter(|(_, n)| *n > 1) {
        found.push(format!("node {}: {instance_id} handed over {count} times", node.id));
    }
}
