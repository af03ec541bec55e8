//! The HTTP API's JSON shapes, shared by the `api` function and the `tether` CLI. The
//! OpenAPI document's schemas are generated from these types.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{HistoryEntry, Market, Node, NodeId, NodeSpec, NodeState, Persistence};

/// A node as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    pub id: NodeId,
    pub state: NodeState,
    /// Instances launched so far; the current instance is of this generation.
    pub generation: u64,
    /// Changes with every write; a client can tell two reads apart with it.
    pub version: u64,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub market: Option<Market>,
    pub launched_at: Option<DateTime<Utc>>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub eni_id: Option<String>,
    pub mac_address: Option<String>,
    pub availability_zone: Option<String>,
    pub elastic_ip_allocation_id: Option<String>,
    pub last_error: Option<String>,
    pub spec: NodeSpec,
    pub persistence: Persistence,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Node> for NodeView {
    fn from(node: &Node) -> Self {
        let instance = node.instance.as_ref().filter(|_| !matches!(node.state, NodeState::Paused | NodeState::Deallocated));
        NodeView {
            id: node.id.clone(),
            state: node.state,
            generation: node.generation,
            version: node.version,
            instance_id: instance.map(|i| i.id.clone()),
            instance_type: instance.map(|i| i.instance_type.clone()),
            market: instance.map(|i| i.market),
            launched_at: instance.map(|i| i.launched_at),
            private_ip: node.eni.as_ref().map(|e| e.private_ip.to_string()),
            public_ip: node.elastic_ip.as_ref().map(|e| e.public_ip.clone()),
            eni_id: node.eni.as_ref().map(|e| e.id.clone()),
            mac_address: node.eni.as_ref().map(|e| e.mac_address.clone()),
            availability_zone: node.eni.as_ref().map(|e| e.availability_zone.clone()),
            elastic_ip_allocation_id: node.elastic_ip.as_ref().map(|e| e.allocation_id.clone()),
            last_error: node.last_error.clone(),
            spec: node.spec.clone(),
            persistence: node.persistence.clone(),
            created_at: node.created_at,
            updated_at: node.updated_at,
        }
    }
}

/// One page of nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
    /// Pass as `next_token` for the next page; absent on the last page.
    pub next_token: Option<String>,
}

/// What happened to a node, oldest first (the newest 50 entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeHistory {
    pub node_id: NodeId,
    pub entries: Vec<HistoryEntry>,
}

/// `POST /nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    pub spec: NodeSpec,
    #[serde(default)]
    pub persistence: Persistence,
    /// Resume the node right away (create its ENI and launch its first instance).
    #[serde(default)]
    pub resume: bool,
}

/// `POST /nodes/{id}/deallocate`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deallocate {
    /// Keep the ENI (and the Elastic IP on it): its private IP stays reserved for later use.
    #[serde(default)]
    pub keep_eni: bool,
}

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and how to fix it.
    pub detail: String,
    /// The request field at fault, e.g. `spec.subnet_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// AWS's error code, when AWS refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_code: Option<String>,
}
