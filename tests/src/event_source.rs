//! A local stand-in for EventBridge: EC2 state-change notifications made from what the
//! emulator reports, and their delivery to the function a Tether rule targets.
//!
//! The emulator emits no events, so the source polls it: every instance Tether launched
//! for the given nodes (tagged `tether:node-id`), and a state-change event for each one
//! whose state differs from the last poll. Used by the emulator chaos test and `make demo`.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Instance, Tag};
use serde_json::Value;
use tether::aws::ec2::{TAG_GENERATION, TAG_NODE_ID};
use tether::ports::EventQueue;
use tether::{Market, NodeId, Tether, TetherError};

use crate::events::state_change;
use crate::SetupError;

/// Lambda retries a failed asynchronous invocation (EventBridge's way) twice.
pub const LAMBDA_RETRIES: u8 = 2;

/// An EventBridge event on its way to its function, with Lambda's attempts so far.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub payload: Value,
    pub attempt: u8,
}

impl Delivery {
    pub fn new(payload: Value) -> Delivery {
        Delivery { payload, attempt: 0 }
    }

    /// The same event once more after a failed attempt, while Lambda still retries.
    pub fn retry(self) -> Option<Delivery> {
        (self.attempt < LAMBDA_RETRIES).then(|| Delivery { attempt: self.attempt + 1, ..self })
    }

    pub fn is_state_change(&self) -> bool {
        self.payload["detail-type"] == tether::events::STATE_CHANGE_NOTIFICATION
    }
}

/// Invokes the function Tether's EventBridge rules send `payload` to: state changes to
/// `state-change`, spot warnings and rebalance recommendations to `interruption`.
/// Invoked directly (the stack before the queues; see `queues` for the queued intake).
pub async fn invoke_target(tether: &Tether, queue: &dyn EventQueue, payload: Value, budget: Duration) -> Result<Value, TetherError> {
    let to_state_change = payload["detail-type"] == tether::events::STATE_CHANGE_NOTIFICATION;
    let event = crate::events::invocation(payload, budget);
    if to_state_change {
        tether_state_change::handler(tether, queue, event).await
    } else {
        tether_interruption::handler(tether, queue, event).await
    }
}

/// Polls the emulator and turns instance state changes into EventBridge events.
#[derive(Debug, Default)]
pub struct EventSource {
    /// Each instance's state at the last poll.
    last_seen: BTreeMap<String, String>,
    /// Also emit the states EC2 passes through between two polls (see `changes`).
    implied_states: bool,
}

impl EventSource {
    /// Emits only the states it sees.
    pub fn new() -> EventSource {
        EventSource::default()
    }

    /// Also emits the states AWS would have announced between two polls: `pending` before
    /// an instance first seen running, `shutting-down` before one seen terminated. The
    /// emulator skips both (its instances are running at launch, terminated at once), and
    /// EventBridge sends them on AWS, so a local run shows the functions the same stream.
    pub fn with_implied_states() -> EventSource {
        EventSource { implied_states: true, ..EventSource::default() }
    }

    /// One poll: the events for what changed among `nodes`' instances since the last one.
    pub async fn poll(&mut self, ec2: &aws_sdk_ec2::Client, nodes: &[NodeId]) -> Result<Vec<Value>, SetupError> {
        let instances = node_instances(ec2, nodes).await?;
        Ok(self.changes(&instances))
    }

    /// The events for what changed in `instances` (one poll's answer) since the last one,
    /// in the order EC2 would send them.
    pub fn changes(&mut self, instances: &[Instance]) -> Vec<Value> {
        let mut events = Vec::new();
        for instance in instances {
            let (Some(id), Some(state)) = (instance.instance_id(), instance.state().and_then(|s| s.name())) else { continue };
            let state = state.as_str();
            let before = self.last_seen.get(id).map(String::as_str);
            if before == Some(state) {
                continue;
            }
            if self.implied_states {
                let implied = match (before, state) {
                    (None, "running") => Some("pending"),
                    (Some("pending" | "running" | "stopping" | "stopped"), "terminated") => Some("shutting-down"),
                    _ => None,
                };
                events.extend(implied.map(|s| state_change(id, s)));
            }
            events.push(state_change(id, state));
            self.last_seen.insert(id.to_owned(), state.to_owned());
        }
        events
    }

    /// Each instance's state at the last poll, by instance id.
    pub fn last_seen(&self) -> &BTreeMap<String, String> {
        &self.last_seen
    }
}

/// Every instance Tether launched for `nodes`, terminated ones included, in the order of
/// `nodes` (then EC2's): one DescribeInstances on the `tether:node-id` tag, all pages.
pub async fn node_instances(ec2: &aws_sdk_ec2::Client, nodes: &[NodeId]) -> Result<Vec<Instance>, SetupError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let filter = Filter::builder().name(format!("tag:{TAG_NODE_ID}")).set_values(Some(nodes.iter().map(|n| n.as_str().to_owned()).collect())).build();
    let reservations: Vec<_> = ec2.describe_instances().filters(filter).into_paginator().items().send().collect::<Result<_, _>>().await?;
    let mut instances: Vec<Instance> = reservations.iter().flat_map(|r| r.instances()).cloned().collect();
    let position = |i: &Instance| node_of(i).and_then(|id| nodes.iter().position(|n| n.as_str() == id)).unwrap_or(usize::MAX);
    // Stable: within one node, EC2's order (launch order) is kept.
    instances.sort_by_key(position);
    Ok(instances)
}

/// The node an instance was launched for (its `tether:node-id` tag).
pub fn node_of(instance: &Instance) -> Option<&str> {
    tag_value(instance.tags(), TAG_NODE_ID)
}

/// The generation an instance was launched as (its `tether:generation` tag).
pub fn generation_of(instance: &Instance) -> Option<u64> {
    tag_value(instance.tags(), TAG_GENERATION).and_then(|g| g.parse().ok())
}

/// The value of tag `key` (instances, ENIs and addresses carry the same tags).
pub fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// The market an instance runs on: EC2 names a lifecycle (`spot`) only for spot instances.
pub fn market_of(instance: &Instance) -> Market {
    if instance.instance_lifecycle().is_some() {
        Market::Spot
    } else {
        Market::OnDemand
    }
}
