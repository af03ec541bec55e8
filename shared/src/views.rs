//! The HTTP API's JSON shapes, shared by the `api` function and the `tether` CLI. The
//! OpenAPI document's schemas are generated from these types.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::group::{Group, GroupHistoryEntry, GroupId, GroupState, GroupStatus, GroupSubnet, MemberTemplate, Membership, Rollout};
use crate::lifecycle::NodePatch;
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
    /// The secondary private IPs on the ENI, kept for life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary_private_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_addresses: Vec<String>,
    pub availability_zone: Option<String>,
    pub elastic_ip_allocation_id: Option<String>,
    /// The extra ENIs (`spec.extra_enis`), once made: kept for life like the node's ENI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_enis: Vec<crate::model::ExtraEniRecord>,
    /// The node's data volumes (`spec.data_volumes`, once made), and whether each is
    /// attached to the running instance now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volumes: Vec<DataVolumeView>,
    /// An imported node's: the imported instance's own EBS volumes, and whether each
    /// outlives it. None follows the node: each replacement gets new, empty volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imported_volumes: Vec<crate::volumes::ImportedVolume>,
    pub last_error: Option<String>,
    /// What is wrong without stopping the node: it keeps running and being recovered, and
    /// Tether clears each condition once its cause goes (an Elastic IP freed is associated
    /// again). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::conditions::Condition>,
    pub spec: NodeSpec,
    pub persistence: Persistence,
    /// The group it is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Membership>,
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
            secondary_private_ips: node.eni.iter().flat_map(|e| &e.secondary_private_ips).map(ToString::to_string).collect(),
            ipv6_addresses: node.eni.iter().flat_map(|e| &e.ipv6_addresses).map(ToString::to_string).collect(),
            availability_zone: node.eni.as_ref().map(|e| e.availability_zone.clone()),
            elastic_ip_allocation_id: node.elastic_ip.as_ref().map(|e| e.allocation_id.clone()),
            extra_enis: node.extra_enis.clone(),
            data_volumes: node.data_volumes.iter().map(|v| DataVolumeView::of(node, v)).collect(),
            imported_volumes: node.imported_volumes.clone(),
            last_error: node.last_error.clone(),
            conditions: node.conditions.clone(),
            spec: node.spec.clone(),
            persistence: node.persistence.clone(),
            group: node.group.clone(),
            created_at: node.created_at,
            updated_at: node.updated_at,
        }
    }
}

/// One of a node's data volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataVolumeView {
    pub device_name: String,
    pub volume_id: String,
    /// Attached to the node's running instance at `device_name` (as last seen by Tether). A
    /// replacement gets it once it runs: until then, and while the node is not running, false.
    pub attached: bool,
    /// Tether made it; otherwise it came with the imported instance.
    pub created_by_tether: bool,
    /// The final snapshot its node's deallocation took of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_snapshot_id: Option<String>,
}

impl DataVolumeView {
    fn of(node: &Node, volume: &crate::data_volumes::DataVolumeRecord) -> Self {
        let running = matches!(node.state, NodeState::Running | NodeState::Recovering | NodeState::Stopped);
        DataVolumeView {
            device_name: volume.device_name.clone(),
            volume_id: volume.volume_id.clone(),
            attached: running && volume.attached_to.is_some() && volume.attached_to.as_deref() == node.instance_id(),
            created_by_tether: volume.created_by_tether,
            final_snapshot_id: volume.final_snapshot_id.clone(),
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

/// `POST /groups`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// 1 to 128 visible characters.
    pub name: String,
    /// One or more subnets of one VPC (possibly in several Availability Zones).
    pub subnet_ids: Vec<String>,
    /// What every member launches with.
    pub template: MemberTemplate,
    /// How many members the group keeps running (0 to 500).
    #[serde(deserialize_with = "count::whole")]
    pub target_capacity: u32,
    /// Private IPv4 addresses, each inside one of the subnets: one paused member per
    /// address, resumed first when the target needs it.
    #[serde(default)]
    pub private_ip_pool: Vec<Ipv4Addr>,
    /// Your Elastic IP allocations, handed to members at their first resume.
    #[serde(default)]
    pub elastic_ip_pool: Vec<String>,
    /// How many members a rolling recycle replaces at a time (default 1).
    #[serde(default = "one", deserialize_with = "count::whole")]
    pub max_unavailable: u32,
    /// While on (the default), the group cannot be deallocated.
    #[serde(default = "yes")]
    pub deletion_protection: bool,
    /// Pause, resume or recycle the whole group on cron schedules in an IANA time zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedules::Schedule>,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// `PATCH /groups/{id}`: only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The whole new list: subnets may be added; one is removed only while no member lives in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_ids: Option<Vec<String>>,
    /// Launch settings, as a node's PATCH takes them; every member's next launch uses them
    /// (`POST /groups/{id}/recycle` rolls them out now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<NodePatch>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count::some")]
    pub target_capacity: Option<u32>,
    /// The whole new pool: an added address gets a paused member; a removed one takes along
    /// the members made for it that never ran (one that ran keeps its address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip_pool: Option<Vec<Ipv4Addr>>,
    /// The whole new pool; an Elastic IP a member holds cannot be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_pool: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "count::some")]
    pub max_unavailable: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
    /// The whole new list of the group's schedules (`[]`: none); slots count from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<crate::schedules::Schedule>>,
}

/// `POST /groups/{id}/scale`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    #[serde(deserialize_with = "count::whole")]
    pub target_capacity: u32,
}

/// Counts in request bodies: any whole JSON number, `10.0` included (JSON Schema's
/// `integer` allows it); one too large for a u32 saturates, and the service then names the
/// field and its range.
/// Counts and sizes as JSON Schema's `integer` allows them: `3` and `3.0` alike.
pub(crate) mod count {
    use serde::{Deserialize, Deserializer};

    pub fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        of(f64::deserialize(d)?)
    }

    /// A small whole number: one over 255 reads as 255, for the caller's range check to name.
    pub fn small<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        Ok(u8::try_from(whole(d)?).unwrap_or(u8::MAX))
    }

    /// An optional count: `null` (as the schema allows) is none.
    pub fn some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<f64>::deserialize(d)?.map(of).transpose()
    }

    /// An optional small count (see `small`).
    pub fn some_small<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        Ok(some(d)?.map(|n| u8::try_from(n).unwrap_or(u8::MAX)))
    }

    /// A PATCH's optional small count, given: `null` turns the setting off (`Some(None)`).
    /// Absent, the field is `None` (`#[serde(default)]`): left as it is.
    pub fn some_nullable_small<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u8>>, D::Error> {
        Ok(Some(some_small(d)?))
    }

    fn of<E: serde::de::Error>(n: f64) -> Result<u32, E> {
        if n.fract() != 0.0 || n < 0.0 || !n.is_finite() {
            return Err(E::custom(format!("expected a whole number from 0, not {n}")));
        }
        Ok(if n > f64::from(u32::MAX) { u32::MAX } else { n as u32 })
    }
}

/// `POST /groups/{id}/deallocate` (and `DELETE /groups/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeallocateGroup {
    /// Keep every member's ENI (and private IP); pool Elastic IPs are disassociated anyway.
    #[serde(default)]
    pub keep_enis: bool,
}

/// A group as the API shows it, with what its members make of it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupView {
    pub id: GroupId,
    pub name: String,
    pub state: GroupState,
    pub target_capacity: u32,
    pub status: GroupStatus,
    pub subnets: Vec<GroupSubnet>,
    pub template: MemberTemplate,
    pub private_ip_pool: Vec<Ipv4Addr>,
    pub elastic_ip_pool: Vec<String>,
    pub max_unavailable: u32,
    pub deletion_protection: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedules::Schedule>,
    /// A rolling recycle under way.
    pub rollout: Option<Rollout>,
    pub version: u64,
    /// The newest 50 entries, oldest first.
    pub history: Vec<GroupHistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl GroupView {
    pub fn of(group: &Group, status: GroupStatus) -> Self {
        GroupView {
            id: group.id.clone(),
            name: group.name.clone(),
            state: group.state,
            target_capacity: group.target_capacity,
            status,
            subnets: group.subnets.clone(),
            template: group.template.clone(),
            private_ip_pool: group.private_ip_pool.clone(),
            elastic_ip_pool: group.elastic_ip_pool.clone(),
            max_unavailable: group.max_unavailable,
            deletion_protection: group.deletion_protection,
            schedules: group.schedules.clone(),
            rollout: group.rollout.clone(),
            version: group.version,
            history: group.history.clone(),
            created_at: group.created_at,
            updated_at: group.updated_at,
        }
    }
}

/// One page of groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
    /// Pass as `next_token` for the next page; absent on the last page.
    pub next_token: Option<String>,
}

/// A member as the group sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupMember {
    #[serde(flatten)]
    pub node: NodeView,
    /// The pool address it was made for; absent: EC2 picked its address.
    pub pool_ip: Option<Ipv4Addr>,
    /// Paused through the node API: the group leaves it alone until it is resumed.
    pub held: bool,
    /// Why it has no Elastic IP, when the group has an Elastic-IP pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_note: Option<String>,
}

/// `GET /groups/{id}/members`: every member, deallocated ones included, pool members first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupMembers {
    pub group_id: GroupId,
    pub members: Vec<GroupMember>,
}
