//! The invariants about data volumes, healing and AWS Health events, read from the fakes'
//! own state: every data volume of a running node attached to its current instance and
//! nowhere else, none lost, none leaked after deallocation; no node left on an instance
//! failing its checks past its policy; no Health event acted on twice for one instance.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};

use crate::conditions::ConditionKind;
use crate::fake::{InstanceView, VolumeView};
use crate::model::{Node, NodeId, NodeState};

/// Everything wrong with the world's volumes and healing; empty when every invariant holds.
pub fn violations(
    nodes: &[Node],
    instances: &[InstanceView],
    volumes: &[VolumeView],
    impairments: &[(String, String, Option<DateTime<Utc>>)],
    health_events: &[(String, String)],
    drifted: &BTreeSet<NodeId>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut found = Vec::new();
    for node in nodes {
        let id = &node.id;
        let in_ec2 = |volume_id: &str| volumes.iter().find(|v| v.id == volume_id);
        // None lost: what the node records exists (but for a volume deleted by hand).
        for record in &node.data_volumes {
            if in_ec2(&record.volume_id).is_none() && !drifted.contains(id) {
                found.push(format!("node {id} ({:?}) lost data volume {} ({})", node.state, record.volume_id, record.device_name));
            }
        }
        match node.state {
            NodeState::Running => {
                for wanted in &node.spec.data_volumes {
                    if !node.data_volumes.iter().any(|r| r.device_name == wanted.device_name) {
                        found.push(format!("running node {id} has no data volume for {}", wanted.device_name));
                    }
                }
                let held_elsewhere = node.condition(ConditionKind::DataVolumeNotAttached).is_some();
                for record in &node.data_volumes {
                    let attachment = in_ec2(&record.volume_id).and_then(|v| v.attachment.clone());
                    let on_current = attachment.as_ref().is_some_and(|(i, d)| Some(i.as_str()) == node.instance_id() && *d == record.device_name);
                    if !on_current && !held_elsewhere {
                        found.push(format!("running node {id}: data volume {} is on {attachment:?}, not on {:?} at {}", record.volume_id, node.instance_id(), record.device_name));
                    }
                }
            }
            NodeState::Paused | NodeState::Deallocated => {
                for record in &node.data_volumes {
                    if let Some((instance, _)) = in_ec2(&record.volume_id).and_then(|v| v.attachment.clone()) {
                        found.push(format!("{:?} node {id}: data volume {} still attached to {instance}", node.state, record.volume_id));
                    }
                }
            }
            _ => {}
        }
        // Healing: no running node stays on an instance failing its checks past its policy.
        let policy = node.spec.auto_healing;
        let healing = policy.enabled && node.condition(ConditionKind::HealingStopped).is_none() && node.state == NodeState::Running;
        if let (true, Some(instance)) = (healing, node.instance.as_ref()) {
            let slack = TimeDelta::minutes(3);
            let overdue = impairments.iter().any(|(i, _, since)| {
                *i == instance.id
                    && since.is_some_and(|s| now - s > TimeDelta::seconds(i64::from(policy.unhealthy_duration_seconds)) + slack)
                    && now - instance.launched_at > TimeDelta::seconds(i64::from(policy.grace_period_seconds)) + slack
            });
            if overdue {
                found.push(format!("running node {id} stays on {} whose status checks failed past its auto_healing policy", instance.id));
            }
        }
        // Each AWS Health event acted on once per instance.
        for (arn, instance) in health_events {
            let acted = node.history.iter().filter(|h| h.what.contains(arn.as_str()) && h.what.contains(instance.as_str()) && (h.what.ends_with("recycled ahead of it") || h.what.contains("recycle planned"))).count();
            if acted > 1 {
                found.push(format!("node {id} acted {acted} times on {arn} for {instance}"));
            }
        }
    }
    // Attached only to its node's current instance; no volume Tether made is left behind.
    for volume in volumes {
        let Some(node) = volume.node_id.as_deref().and_then(|n| nodes.iter().find(|x| x.id.as_str() == n)) else { continue };
        if let Some((instance, _)) = &volume.attachment {
            let live = instances.iter().any(|i| i.id == *instance && i.is_live());
            if live && node.instance_id() != Some(instance.as_str()) {
                found.push(format!("data volume {} of node {} is attached to {instance}, which is not the node's current instance ({:?})", volume.id, node.id, node.instance_id()));
            }
        }
        let recorded = node.data_volumes.iter().any(|r| r.volume_id == volume.id);
        let all_made = node.spec.data_volumes.iter().all(|d| node.data_volumes.iter().any(|r| r.device_name == d.device_name));
        let leaked = !recorded && match node.state {
            NodeState::Deallocated => true,
            NodeState::Deallocating | NodeState::Error => false,
            _ => all_made,
        };
        if leaked {
            found.push(format!("leaked data volume {} of node {} ({:?}, records {:?})", volume.id, node.id, node.state, node.data_volumes.iter().map(|r| &r.volume_id).collect::<Vec<_>>()));
        }
    }
    found
}
