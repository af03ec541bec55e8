//! What the emulator reports: one poll of the nodes' instances (`Snapshot`), and what
//! the demo learns from the polls over the run (`Ledger`): each instance's addresses
//! while it ran (the emulator shows none once it is terminated), the volumes seen attached
//! to it while it ran, and how long each node took from the delivery of its instance's
//! `terminated` event to a replacement running.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use tether::{Market, NodeId};

use crate::event_source::{generation_of, market_of, node_instances, node_of};
use crate::SetupError;

/// The nodes' instances, terminated ones included, as one DescribeInstances answered.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub instances: Vec<Instance>,
}

impl Snapshot {
    pub async fn poll(ec2: &aws_sdk_ec2::Client, nodes: &[NodeId]) -> Result<Snapshot, SetupError> {
        Ok(Snapshot { instances: node_instances(ec2, nodes).await? })
    }

    pub fn of_node(&self, node: &NodeId) -> impl Iterator<Item = &Instance> + '_ {
        let node = node.as_str().to_owned();
        self.instances.iter().filter(move |i| node_of(i) == Some(node.as_str()))
    }

    /// The node's running instance of the highest generation.
    pub fn running(&self, node: &NodeId) -> Option<&Instance> {
        self.of_node(node).filter(|i| state_of(i) == "running").max_by_key(|i| generation_of(i))
    }

    /// The node's instances that are not (being) terminated.
    pub fn live(&self, node: &NodeId) -> usize {
        self.of_node(node).filter(|i| !matches!(state_of(i), "shutting-down" | "terminated")).count()
    }

    pub fn find(&self, instance_id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.instance_id() == Some(instance_id))
    }
}

/// EC2's state name, `-` when the emulator gave none.
pub fn state_of(instance: &Instance) -> &str {
    instance.state().and_then(|s| s.name()).map(InstanceStateName::as_str).unwrap_or("-")
}

/// One instance as the emulator reported it the first time it was seen running.
#[derive(Clone, Debug)]
pub struct Sighting {
    pub node: NodeId,
    pub generation: u64,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub instance_type: String,
    pub spot: bool,
}

/// A node back on a new instance.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub node: NodeId,
    pub instance_id: String,
    pub generation: u64,
    pub took: Duration,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// By instance id.
    pub sightings: BTreeMap<String, Sighting>,
    /// Per node: when its instance's `terminated` event was delivered, and that
    /// instance's generation, until a later generation is seen running.
    awaiting: BTreeMap<NodeId, (Instant, u64)>,
    pub recoveries: Vec<Recovery>,
    /// By instance id: every (device name, volume id) its block device mappings showed in
    /// any poll while it ran (a data volume is attached once the instance runs, so after
    /// its first sighting).
    pub attachments: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Ledger {
    /// Learns from one poll taken at `now`; returns the recoveries it completed.
    pub fn observe(&mut self, snapshot: &Snapshot, now: Instant) -> Vec<Recovery> {
        let mut completed = Vec::new();
        for instance in &snapshot.instances {
            let (Some(id), Some(node), Some(generation)) = (instance.instance_id(), node_of(instance), generation_of(instance)) else { continue };
            if state_of(instance) != "running" {
                continue;
            }
            let attached = self.attachments.entry(id.to_owned()).or_default();
            for mapping in instance.block_device_mappings() {
                if let (Some(device), Some(volume)) = (mapping.device_name(), mapping.ebs().and_then(|e| e.volume_id())) {
                    attached.insert((device.to_owned(), volume.to_owned()));
                }
            }
            if self.sightings.contains_key(id) {
                continue;
            }
            let Some(node) = NodeId::parse(node) else { continue };
            self.sightings.insert(
                id.to_owned(),
                Sighting {
                    node: node.clone(),
                    generation,
                    private_ip: instance.private_ip_address().map(str::to_owned),
                    public_ip: instance.public_ip_address().map(str::to_owned),
                    instance_type: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                    spot: market_of(instance) == Market::Spot,
                },
            );
            if let Some((since, replaced)) = self.awaiting.get(&node).copied() {
                if generation > replaced {
                    self.awaiting.remove(&node);
                    let recovery = Recovery { node, instance_id: id.to_owned(), generation, took: now.duration_since(since) };
                    self.recoveries.push(recovery.clone());
                    completed.push(recovery);
                }
            }
        }
        completed
    }

    /// The `terminated` event of `instance_id` is being delivered at `at`: its node's
    /// recovery clock starts (once: a duplicate delivery does not restart it, and the
    /// event of an instance already replaced starts none).
    pub fn terminated_delivered(&mut self, instance_id: &str, at: Instant) {
        let Some(seen) = self.sightings.get(instance_id) else { return };
        let replaced = self.sightings.values().any(|s| s.node == seen.node && s.generation > seen.generation);
        if !replaced {
            self.awaiting.entry(seen.node.clone()).or_insert((at, seen.generation));
        }
    }

    /// The median and longest recovery.
    pub fn recovery_figures(&self) -> Option<(Duration, Duration)> {
        let mut took: Vec<Duration> = self.recoveries.iter().map(|r| r.took).collect();
        took.sort();
        Some((median(&took)?, *took.last()?))
    }
}

/// The middle value of sorted `values` (the lower one of the two middles).
pub fn median<T: Copy>(sorted: &[T]) -> Option<T> {
    sorted.get(sorted.len().checked_sub(1)? / 2).copied()
}
