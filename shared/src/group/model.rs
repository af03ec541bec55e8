//! A stateful group: a target capacity of member nodes built from one template across one
//! or more subnets of a VPC, with an optional private-IP pool and Elastic-IP pool.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::launch_options::{CapacityReservation, CpuCredits, LaunchTemplateRef, Placement};
use crate::model::{hex_digest, push_newest, Ipv6Request, MetadataOptions, Node, NodeId, NodeSpec, NodeState, PublicIpAssignment, RevertToSpot, SecondaryIps, HISTORY_LIMIT};

/// A group's id: `tg-` followed by 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct GroupId(String);

impl GroupId {
    pub fn generate() -> Self {
        GroupId(format!("tg-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Accepts an id read from outside (a table item, a request path).
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("tg-")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| GroupId(raw.to_owned()))
    }

    /// A group whose id is derived from `seed` (an Idempotency-Key, a test's name).
    pub fn derived(seed: &str) -> Self {
        GroupId(format!("tg-{}", hex_digest(seed)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The member made for pool address `ip`, the `ordinal`-th for it (1 for the first; a
    /// deallocated one is replaced by the next). Derived, so that two controllers that decide
    /// to make the same member meet one conditional write instead of making two.
    pub fn pool_member(&self, ip: Ipv4Addr, ordinal: u32) -> NodeId {
        NodeId::derived(&format!("{}/pool/{ip}/{ordinal}", self.0))
    }

    /// The `ordinal`-th member with an address EC2 picks.
    pub fn random_member(&self, ordinal: u32) -> NodeId {
        NodeId::derived(&format!("{}/random/{ordinal}", self.0))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every member is launched with: a node's spec without its subnet, which the group
/// chooses per member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberTemplate {
    pub image_id: String,
    /// Tried in order, spot first; never empty.
    pub instance_types: Vec<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub key_name: Option<String>,
    /// An instance profile name or ARN.
    #[serde(default)]
    pub iam_instance_profile: Option<String>,
    /// Plain text; base64-encoded by the EC2 adapter.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub fallback_to_on_demand: bool,
    #[serde(default)]
    pub revert_to_spot: RevertToSpot,
    /// As a node's (absent at create: IMDSv2 required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<MetadataOptions>,
    /// As a node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_devices: Vec<crate::volumes::BlockDevice>,
    /// As a node's: each member gets its own data volumes at its first resume, in its
    /// subnet's AZ, and keeps them for life (a pool address's member keeps them across
    /// pauses and scale-downs). Fixed once a member has made them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volumes: Vec<crate::data_volumes::DataVolume>,
    /// As a node's: each member hands its ENI over this many seconds after a spot
    /// interruption warning (0 to 110); absent, AWS terminates the instance.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::views::count::some_small")]
    #[schemars(range(min = 0, max = 110))]
    pub handover_after_warning_seconds: Option<u8>,
    /// As a node's: the launch template every member's launch is based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    /// As a node's, a count only (each member's ENI gets its own addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_private_ips: Option<SecondaryIps>,
    /// As a node's, a count only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Request>,
    /// As a node's (refused beside an Elastic-IP pool: a pool address is the members' public IP).
    #[serde(default)]
    pub public_ip_assignment: PublicIpAssignment,
    #[serde(default = "yes")]
    pub source_dest_check: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eni_tags: BTreeMap<String, String>,
    /// The launch options, as a node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation: Option<CapacityReservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detailed_monitoring: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_credits: Option<CpuCredits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_max_price: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_tags: BTreeMap<String, String>,
    /// As a node's: what a member's deallocation deletes (its pool Elastic IP always goes
    /// back to the pool).
    #[serde(default)]
    pub deallocation: crate::deallocation::DeallocationPolicy,
    /// As a node's.
    #[serde(default)]
    pub auto_healing: crate::health::AutoHealing,
    /// As a node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<crate::health::DailyWindow>,
}

fn yes() -> bool {
    true
}

impl MemberTemplate {
    /// A member's spec in `subnet_id`.
    pub fn spec_in(&self, subnet_id: &str) -> NodeSpec {
        NodeSpec {
            subnet_id: subnet_id.to_owned(),
            image_id: self.image_id.clone(),
            instance_types: self.instance_types.clone(),
            security_group_ids: self.security_group_ids.clone(),
            key_name: self.key_name.clone(),
            iam_instance_profile: self.iam_instance_profile.clone(),
            user_data: self.user_data.clone(),
            tags: self.tags.clone(),
            fallback_to_on_demand: self.fallback_to_on_demand,
            revert_to_spot: self.revert_to_spot,
            metadata_options: self.metadata_options,
            block_devices: self.block_devices.clone(),
            data_volumes: self.data_volumes.clone(),
            handover_after_warning_seconds: self.handover_after_warning_seconds,
            launch_template: self.launch_template.clone(),
            secondary_private_ips: self.secondary_private_ips.clone(),
            ipv6: self.ipv6.clone(),
            public_ip_assignment: self.public_ip_assignment,
            source_dest_check: self.source_dest_check,
            eni_tags: self.eni_tags.clone(),
            capacity_reservation: self.capacity_reservation.clone(),
            ebs_optimized: self.ebs_optimized,
            detailed_monitoring: self.detailed_monitoring,
            cpu_credits: self.cpu_credits,
            placement: self.placement.clone(),
            spot_max_price: self.spot_max_price.clone(),
            volume_tags: self.volume_tags.clone(),
            deallocation: self.deallocation,
            auto_healing: self.auto_healing,
            maintenance_window: self.maintenance_window,
            // A group's members are paused and resumed by their group.
            schedules: Vec::new(),
            // Extra ENIs are a single node's: a group's subnets span AZs.
            extra_enis: Vec::new(),
        }
    }

    /// The launch fields of `spec` (its subnet and extra ENIs left out).
    pub fn of_spec(spec: NodeSpec) -> Self {
        MemberTemplate {
            image_id: spec.image_id,
            instance_types: spec.instance_types,
            security_group_ids: spec.security_group_ids,
            key_name: spec.key_name,
            iam_instance_profile: spec.iam_instance_profile,
            user_data: spec.user_data,
            tags: spec.tags,
            fallback_to_on_demand: spec.fallback_to_on_demand,
            revert_to_spot: spec.revert_to_spot,
            metadata_options: spec.metadata_options,
            block_devices: spec.block_devices,
            data_volumes: spec.data_volumes,
            handover_after_warning_seconds: spec.handover_after_warning_seconds,
            launch_template: spec.launch_template,
            secondary_private_ips: spec.secondary_private_ips,
            ipv6: spec.ipv6,
            public_ip_assignment: spec.public_ip_assignment,
            source_dest_check: spec.source_dest_check,
            eni_tags: spec.eni_tags,
            capacity_reservation: spec.capacity_reservation,
            ebs_optimized: spec.ebs_optimized,
            detailed_monitoring: spec.detailed_monitoring,
            cpu_credits: spec.cpu_credits,
            placement: spec.placement,
            spot_max_price: spec.spot_max_price,
            volume_tags: spec.volume_tags,
            deallocation: spec.deallocation,
            auto_healing: spec.auto_healing,
            maintenance_window: spec.maintenance_window,
        }
    }
}

/// One of the group's subnets, as EC2 described it when it was added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupSubnet {
    pub id: String,
    #[schemars(with = "String")]
    pub cidr: Ipv4Net,
    pub availability_zone: String,
    pub vpc_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    /// Kept at its target capacity.
    Active,
    /// Every member paused (target kept for the resume).
    Paused,
    /// Every member being deallocated.
    Deallocating,
    /// Every member deallocated; the record stays for its history.
    Deallocated,
}

/// A rolling recycle under way: every member running on an instance launched before
/// `started_at` is recycled, `max_unavailable` at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rollout {
    pub started_at: DateTime<Utc>,
}

/// What happened to the group, and who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupHistoryEntry {
    pub at: DateTime<Utc>,
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    /// In the user's order: random-IP members are spread evenly across them.
    pub subnets: Vec<GroupSubnet>,
    pub template: MemberTemplate,
    pub target_capacity: u32,
    /// Each address gets one member (paused until the target needs it), in this order.
    pub private_ip_pool: Vec<Ipv4Addr>,
    /// The user's Elastic IPs, handed to members at their first resume.
    pub elastic_ip_pool: Vec<String>,
    /// How many members a rolling recycle replaces at a time.
    pub max_unavailable: u32,
    /// While on, the group cannot be deallocated.
    pub deletion_protection: bool,
    pub state: GroupState,
    /// Set by a deallocation that keeps the members' ENIs.
    #[serde(default)]
    pub keep_enis: bool,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Holds placed before this moment no longer count (the group was resumed since).
    #[serde(default)]
    pub holds_cleared_at: Option<DateTime<Utc>>,
    /// Pause, resume or recycle the group on cron schedules (see `schedules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedules::Schedule>,
    /// When each schedule's last slot ran, by `Schedule::key`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub schedule_runs: std::collections::BTreeMap<String, DateTime<Utc>>,
    pub version: u64,
    #[serde(default)]
    pub history: Vec<GroupHistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Group {
    /// The subnet whose range holds `ip`.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<&GroupSubnet> {
        self.subnets.iter().find(|s| s.cidr.contains(&ip))
    }

    /// Whether `member` is held: paused through the node API since the group was last resumed.
    pub fn holds(&self, member: &Node) -> bool {
        let Some(since) = member.group.as_ref().and_then(|m| m.held_since) else { return false };
        member.state == NodeState::Paused && self.holds_cleared_at.is_none_or(|cleared| since > cleared)
    }

    pub fn record_by(&mut self, at: DateTime<Utc>, what: impl Into<String>, by: Option<&str>) {
        push_newest(&mut self.history, GroupHistoryEntry { at, what: what.into(), by: by.map(str::to_owned) }, HISTORY_LIMIT);
        self.updated_at = at;
    }
}

/// A member's tie to its group, on its node record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Membership {
    pub group_id: GroupId,
    /// The pool address the member was made for; `None`: EC2 picked its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ip: Option<Ipv4Addr>,
    /// Pool members: the how-manieth member for their address; others: their number.
    pub ordinal: u32,
    /// Paused through the node API: the group leaves it alone (until the group is resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<DateTime<Utc>>,
}
