//! The stateful node: what the user asked for (spec, persistence) and what Tether
//! knows about it now (state, generation, ENI, current instance, history).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use chrono::{DateTime, NaiveTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::launch_options::{CapacityReservation, CpuCredits, LaunchTemplateRef, Placement};
pub use crate::network_identity::{ExtraEni, ExtraEniRecord, Ipv6Request, PublicIpAssignment, SecondaryIps};

/// How many history entries a node keeps; older ones are dropped first.
pub const HISTORY_LIMIT: usize = 50;
/// How many applied EventBridge event ids a node remembers. An instance emits about eight
/// events in its life; a duplicate arrives within minutes, not after this many more.
pub const APPLIED_EVENTS_LIMIT: usize = 32;

/// A node's id: `tn-` followed by 32 hex digits. Short enough that a RunInstances
/// ClientToken derived from it stays well under EC2's 64-character limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn generate() -> Self {
        NodeId(format!("tn-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id of the node an imported instance becomes: the same instance always gives
    /// the same node id.
    pub fn for_instance(instance_id: &str) -> Self {
        NodeId::derived(instance_id)
    }

    /// An id derived from `seed` (the first 32 hex digits of its SHA-256): whoever derives
    /// it from the same seed gets the same node, so a retried or concurrent create of it
    /// meets the existing record instead of making a second.
    pub fn derived(seed: &str) -> Self {
        NodeId(format!("tn-{}", hex_digest(seed)))
    }

    /// Accepts an id read from outside (a table item, a request path).
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("tn-")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| NodeId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The RunInstances ClientToken of one generation: a retried or duplicated
    /// launch of the same generation returns the same instance instead of a second one.
    pub fn client_token(&self, generation: u64) -> String {
        format!("{}-g{}", self.0, generation)
    }
}

/// The first 32 hex digits of `seed`'s SHA-256.
pub(crate) fn hex_digest(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(seed.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every instance of the node is launched with. Subnet and security groups
/// go on the ENI (created once); the rest is read at each launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub subnet_id: String,
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
    /// After every spot candidate failed for capacity, try on-demand in the same AZ.
    #[serde(default = "default_true")]
    pub fallback_to_on_demand: bool,
    /// Whether a node that fell back to on-demand goes back to spot, and when.
    #[serde(default)]
    pub revert_to_spot: RevertToSpot,
    /// The instance metadata service of every instance. Absent at create: IMDSv2 required
    /// (see `MetadataOptions::default`). Absent on a node created before this field existed:
    /// the AMI's and the account's defaults, as then, until a PATCH sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<MetadataOptions>,
    /// The root volume's size and type, and extra volumes, of every instance (see
    /// `volumes::BlockDevice`). Empty: the AMI's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_devices: Vec<crate::volumes::BlockDevice>,
    /// EBS volumes that belong to the node, not to an instance: made at the first resume in
    /// the ENI's AZ, attached to every instance at the same device names, never deleted when
    /// an instance terminates (see `data_volumes::DataVolume`). Fixed once made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volumes: Vec<crate::data_volumes::DataVolume>,
    /// The launch template every launch is based on; the fields above win where set (an
    /// empty `image_id` or `instance_types` takes the template's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    /// Secondary private IPv4 addresses on the node's ENI, kept for its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_private_ips: Option<SecondaryIps>,
    /// IPv6 addresses on the node's ENI (its subnet needs an IPv6 CIDR), kept for its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Request>,
    /// ENIs beyond the primary, at device indexes 1 and up, kept for the node's life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_enis: Vec<ExtraEni>,
    /// Whether each instance gets a public IPv4 address (a new one each time: a public
    /// address that never changes is an Elastic IP).
    #[serde(default)]
    pub public_ip_assignment: PublicIpAssignment,
    /// `false` for a NAT instance or a router: the ENIs pass traffic not addressed to them.
    #[serde(default = "default_true")]
    pub source_dest_check: bool,
    /// After a spot interruption warning that the instance will be terminated, Tether
    /// terminates it itself this many seconds later (0 to 110), so that the ENI is free and
    /// the replacement starts up to two minutes sooner: a drain window for the workload.
    /// Absent: AWS terminates it, about two minutes after the warning.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::views::count::some_small")]
    #[schemars(range(min = 0, max = 110))]
    pub handover_after_warning_seconds: Option<u8>,
    /// Where the on-demand fallback takes reserved capacity from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation: Option<CapacityReservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,
    /// CloudWatch metrics every minute instead of every five (charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detailed_monitoring: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_credits: Option<CpuCredits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// The most to pay per hour for spot, in USD (`"0.05"`). Absent: the on-demand price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_max_price: Option<String>,
    /// Tags for every instance's volumes (beside Tether's node id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_tags: BTreeMap<String, String>,
    /// Tags for the node's ENIs, set when they are made and kept in step by a PATCH.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eni_tags: BTreeMap<String, String>,
    /// What the node's deallocation deletes (ENIs, data volumes, a Tether-allocated Elastic
    /// IP); the defaults keep data and what Tether did not make.
    #[serde(default)]
    pub deallocation: crate::deallocation::DeallocationPolicy,
    /// Recycling a node whose instance fails its EC2 status checks (on by default).
    #[serde(default)]
    pub auto_healing: crate::health::AutoHealing,
    /// A daily window (UTC) for the recycle ahead of an AWS scheduled event (instance
    /// retirement, scheduled reboot or stop): it runs at the start of the last window before
    /// the event. Absent: at once, when the event arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<crate::health::DailyWindow>,
    /// Pause, resume or recycle on cron schedules in an IANA time zone (see `schedules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedules::Schedule>,
}

impl Default for NodeSpec {
    /// Every setting at its default, with no subnet, image or instance type: for building
    /// specs field by field (`NodeSpec { subnet_id, ..NodeSpec::default() }`).
    fn default() -> Self {
        NodeSpec {
            subnet_id: String::new(),
            image_id: String::new(),
            instance_types: Vec::new(),
            security_group_ids: Vec::new(),
            key_name: None,
            iam_instance_profile: None,
            user_data: None,
            tags: BTreeMap::new(),
            fallback_to_on_demand: true,
            revert_to_spot: RevertToSpot::Never,
            metadata_options: None,
            block_devices: Vec::new(),
            data_volumes: Vec::new(),
            launch_template: None,
            secondary_private_ips: None,
            ipv6: None,
            extra_enis: Vec::new(),
            public_ip_assignment: PublicIpAssignment::None,
            source_dest_check: true,
            handover_after_warning_seconds: None,
            capacity_reservation: None,
            ebs_optimized: None,
            detailed_monitoring: None,
            cpu_credits: None,
            placement: None,
            spot_max_price: None,
            volume_tags: BTreeMap::new(),
            eni_tags: BTreeMap::new(),
            deallocation: crate::deallocation::DeallocationPolicy::default(),
            auto_healing: crate::health::AutoHealing::default(),
            maintenance_window: None,
            schedules: Vec::new(),
        }
    }
}

/// The instance metadata service (IMDS) settings EC2 launches an instance with
/// (`RunInstances`' `MetadataOptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    /// `required` (IMDSv2: session tokens only, what most organisations' policies demand) or
    /// `optional` (IMDSv1 answers too).
    #[serde(default)]
    pub http_tokens: HttpTokens,
    /// How many network hops a metadata answer may take, 1 to 64: 1 keeps it on the
    /// instance; containers behind a bridge need 2.
    #[serde(default = "default_hop_limit", deserialize_with = "crate::views::count::small")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: u8,
    /// Whether the metadata service answers at all.
    #[serde(default = "enabled")]
    pub http_endpoint: Switch,
    /// Whether the instance's tags are readable through the metadata service.
    #[serde(default = "disabled")]
    pub instance_metadata_tags: Switch,
}

impl Default for MetadataOptions {
    /// IMDSv2 required, 2 hops (what Amazon Linux 2023's AMIs ask for), tags not exposed.
    fn default() -> Self {
        MetadataOptions {
            http_tokens: HttpTokens::Required,
            http_put_response_hop_limit: default_hop_limit(),
            http_endpoint: Switch::Enabled,
            instance_metadata_tags: Switch::Disabled,
        }
    }
}

/// EC2's hop limits: 1 to 64.
pub const METADATA_HOP_LIMITS: std::ops::RangeInclusive<u8> = 1..=64;

/// `spec.handover_after_warning_seconds`: 0 to 110. AWS terminates a spot instance about
/// 120 s after its warning; a hand-over later than 110 s would save next to nothing.
pub const HANDOVER_AFTER_WARNING_SECONDS: std::ops::RangeInclusive<u8> = 0..=110;

fn default_hop_limit() -> u8 {
    2
}

fn enabled() -> Switch {
    Switch::Enabled
}

fn disabled() -> Switch {
    Switch::Disabled
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HttpTokens {
    #[default]
    Required,
    Optional,
}

impl HttpTokens {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpTokens::Required => "required",
            HttpTokens::Optional => "optional",
        }
    }
}

/// An EC2 setting that is `enabled` or `disabled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    Enabled,
    Disabled,
}

impl Switch {
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::Enabled => "enabled",
            Switch::Disabled => "disabled",
        }
    }
}

/// When a node running on-demand after a fallback is moved back to spot. Moving is a
/// recycle: the instance is replaced on the same ENI, so the node is down for a launch's
/// time. The reconciler tries at most once per `SPOT_REVERT_INTERVAL`; a launch that finds
/// no spot capacity falls back to on-demand again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RevertToSpot {
    /// Stay on-demand until a recycle (the default, as the commercial products do).
    #[default]
    Never,
    /// As soon as the reconciler sees the node on on-demand.
    Always,
    /// Only between `start` and `end` (UTC, `HH:MM:SS`) each day; `end` before `start`
    /// spans midnight.
    Window { start: NaiveTime, end: NaiveTime },
}

/// `never`, `always`, or a window `HH:MM-HH:MM` (UTC), as the CLI takes it.
impl std::str::FromStr for RevertToSpot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "never" => Ok(RevertToSpot::Never),
            "always" => Ok(RevertToSpot::Always),
            window => {
                let parse = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").ok();
                match window.split_once('-').map(|(a, b)| (parse(a), parse(b))) {
                    Some((Some(start), Some(end))) if start != end => Ok(RevertToSpot::Window { start, end }),
                    _ => Err(format!("`{s}`: give never, always, or a daily UTC window like 02:00-04:00")),
                }
            }
        }
    }
}

impl fmt::Display for RevertToSpot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevertToSpot::Never => f.write_str("never"),
            RevertToSpot::Always => f.write_str("always"),
            RevertToSpot::Window { start, end } => write!(f, "{}-{} UTC", start.format("%H:%M"), end.format("%H:%M")),
        }
    }
}

/// How often the reconciler tries to move a node back to spot at most.
pub const SPOT_REVERT_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::hours(1);

impl RevertToSpot {
    /// Whether the policy lets a node go back to spot at `now`.
    pub fn allows(&self, now: DateTime<Utc>) -> bool {
        match *self {
            RevertToSpot::Never => false,
            RevertToSpot::Always => true,
            RevertToSpot::Window { start, end } => {
                let t = now.time();
                if start <= end {
                    start <= t && t < end
                } else {
                    t >= start || t < end
                }
            }
        }
    }
}

fn default_true() -> bool {
    true
}

/// The network identity the node keeps for life.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Persistence {
    /// `None`: EC2 picks one from the subnet at the first resume, and it is kept from then on.
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    /// The user's Elastic IP; disassociated, never released, when the node is deallocated.
    #[serde(default)]
    pub elastic_ip_allocation_id: Option<String>,
    /// Tether allocates an Elastic IP at the first resume and releases it at deallocation.
    #[serde(default)]
    pub allocate_elastic_ip: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// No instance, none wanted. The ENI (if created yet) and the EIP are kept.
    Paused,
    /// Generation `generation` is being launched; `instance` still names the one it replaces.
    Launching,
    /// `instance` runs the node.
    Running,
    /// `instance` was told it will be interrupted (or is shutting down); a replacement
    /// follows its termination.
    Recovering,
    /// `instance` was stopped (a stop/hibernate interruption or by hand); AWS restarts the
    /// same instance, so nothing is launched.
    Stopped,
    /// Tether cannot go on without an operator; `last_error` says why.
    Error,
    /// The instance is being terminated; then the ENI is deleted (unless kept) and the
    /// Elastic IP released (if Tether allocated it) or disassociated.
    Deallocating,
    /// Nothing of the node is left in EC2 (but a kept ENI); the record stays for its history.
    Deallocated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    OnDemand,
}

impl Market {
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    }
}

/// The node's persisted ENI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniRecord {
    pub id: String,
    pub private_ip: Ipv4Addr,
    pub mac_address: String,
    pub availability_zone: String,
    /// The secondary private IPs EC2 assigned (as asked in `spec.secondary_private_ips`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary_private_ips: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_addresses: Vec<std::net::Ipv6Addr>,
}

/// The Elastic IP on the node's ENI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElasticIpRecord {
    pub allocation_id: String,
    pub public_ip: String,
    /// Tether allocated it, so Tether releases it at deallocation.
    pub allocated_by_tether: bool,
}

/// An instance of the node: the current one, or the one being replaced while `Launching`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub generation: u64,
    pub instance_type: String,
    pub market: Market,
    pub launched_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterruptionAction {
    Terminate,
    Stop,
    Hibernate,
}

/// The latest interruption notice for the current instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionRecord {
    pub instance_id: String,
    pub action: InterruptionAction,
    /// When Tether applied the warning.
    pub noticed_at: DateTime<Utc>,
    /// When EC2 sent it (EventBridge's `time`), if the event said: what a handover's delay
    /// (`spec.handover_after_warning_seconds`) counts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When Tether terminated the instance itself to hand the ENI over early: set once, so
    /// that a duplicated warning never terminates twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub generation: u64,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub what: String,
    /// Who asked (the caller's IAM identity), for user actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub spec: NodeSpec,
    pub persistence: Persistence,
    pub state: NodeState,
    /// Bumped by every write; every write is conditional on the version it read.
    pub version: u64,
    /// Instances launched so far; the current instance is of this generation.
    pub generation: u64,
    #[serde(default)]
    pub eni: Option<EniRecord>,
    /// The ENIs at device indexes 1 and up (`spec.extra_enis`), once created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_enis: Vec<ExtraEniRecord>,
    /// A group member whose spec took its template's ENI settings, which its ENI does not
    /// carry yet: set with the spec, cleared once the ENI carries them (a group run that dies
    /// between the two leaves it set, and the next run finishes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eni_sync_pending: bool,
    /// The node's data volumes (`spec.data_volumes`, or an imported instance's kept), once made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volumes: Vec<crate::data_volumes::DataVolumeRecord>,
    /// An imported node's instance's own volumes, as import found them (not the node's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imported_volumes: Vec<crate::volumes::ImportedVolume>,
    #[serde(default)]
    pub elastic_ip: Option<ElasticIpRecord>,
    /// Set by a deallocation that keeps the ENI.
    #[serde(default)]
    pub keep_eni: bool,
    #[serde(default)]
    pub instance: Option<InstanceRecord>,
    #[serde(default)]
    pub interruption: Option<InterruptionRecord>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// What is wrong without stopping the node (`conditions`): it keeps running and being
    /// recovered, and Tether clears each once its cause goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::conditions::Condition>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The EventBridge events whose transition this record applied (newest last), written
    /// with the transition itself: a later delivery of one of them is not applied again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_events: Vec<String>,
    /// When auto-healing recycled the node lately (the newest `auto_healing.max_heals`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heals: Vec<DateTime<Utc>>,
    /// When each schedule's last slot ran, by `Schedule::key`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub schedule_runs: BTreeMap<String, DateTime<Utc>>,
    /// A recycle planned ahead of an AWS scheduled event on the current instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_recycle: Option<crate::health::PlannedRecycle>,
    /// When the reconciler last moved the node back to spot (`spec.revert_to_spot`).
    #[serde(default)]
    pub spot_revert_at: Option<DateTime<Utc>>,
    /// Set while the current generation is launched to replace an instance lost outside
    /// Tether (a spot interruption, a termination); cleared once the launch is recorded.
    /// What the `Replacements` metric counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replacing_lost_instance: bool,
    /// Its chosen addresses are reserved (`ports::Registry`): set for every node created
    /// since reservations exist; older records get theirs from the reconciler.
    #[serde(default)]
    pub addresses_reserved: bool,
    /// The group this node is a member of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::group::Membership>,
    /// The instance this node was imported from: its ENI (and volumes) are the user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_instance: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Node {
    /// A new node, paused: nothing exists in EC2 until its first resume.
    pub fn new(spec: NodeSpec, persistence: Persistence, now: DateTime<Utc>) -> Self {
        let mut node = Node {
            id: NodeId::generate(),
            spec,
            persistence,
            state: NodeState::Paused,
            version: 0,
            generation: 0,
            eni: None,
            extra_enis: Vec::new(),
            eni_sync_pending: false,
            data_volumes: Vec::new(),
            imported_volumes: Vec::new(),
            elastic_ip: None,
            keep_eni: false,
            instance: None,
            interruption: None,
            last_error: None,
            conditions: Vec::new(),
            history: Vec::new(),
            applied_events: Vec::new(),
            heals: Vec::new(),
            schedule_runs: BTreeMap::new(),
            planned_recycle: None,
            spot_revert_at: None,
            replacing_lost_instance: false,
            addresses_reserved: true,
            group: None,
            imported_instance: None,
            created_at: now,
            updated_at: now,
        };
        node.record(now, "created");
        node
    }

    /// Whether this record applied EventBridge event `event_id`.
    pub fn applied(&self, event_id: &str) -> bool {
        self.applied_events.iter().any(|e| e == event_id)
    }

    /// Notes that this record applies event `event_id`, keeping the newest `APPLIED_EVENTS_LIMIT`.
    pub fn note_applied(&mut self, event_id: &str) {
        push_newest(&mut self.applied_events, event_id.to_owned(), APPLIED_EVENTS_LIMIT);
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.instance.as_ref().map(|i| i.id.as_str())
    }

    /// Appends a history entry about the current generation and instance, keeping the
    /// newest `HISTORY_LIMIT`.
    pub fn record(&mut self, at: DateTime<Utc>, what: impl Into<String>) {
        self.record_by(at, what, None);
    }

    /// The same for a user's action, naming who asked.
    pub fn record_by(&mut self, at: DateTime<Utc>, what: impl Into<String>, by: Option<&str>) {
        let entry = HistoryEntry {
            at,
            generation: self.generation,
            instance_id: self.instance_id().map(str::to_owned),
            what: what.into(),
            by: by.map(str::to_owned),
        };
        push_newest(&mut self.history, entry, HISTORY_LIMIT);
        self.updated_at = at;
    }
}

/// Appends `item`, keeping the newest `limit` items.
pub(crate) fn push_newest<T>(list: &mut Vec<T>, item: T, limit: usize) {
    list.push(item);
    if list.len() > limit {
        let excess = list.len() - limit;
        list.drain(..excess);
    }
}

/// A valid spec for unit tests.
#[cfg(test)]
pub(crate) fn test_spec(instance_types: &[&str], fallback_to_on_demand: bool) -> NodeSpec {
    NodeSpec {
        subnet_id: "subnet-1".into(),
        image_id: "ami-1".into(),
        instance_types: instance_types.iter().map(|t| t.to_string()).collect(),
        security_group_ids: vec!["sg-1".into()],
        fallback_to_on_demand,
        ..NodeSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_token_fits_ec2_limit_and_differs_per_generation() {
        let id = NodeId::generate();
        let token = id.client_token(u64::MAX);
        assert!(token.len() <= 64, "{token} is {} chars", token.len());
        assert_ne!(id.client_token(1), id.client_token(2));
    }

    #[test]
    fn an_imported_instance_always_maps_to_the_same_valid_node_id() {
        let id = NodeId::for_instance("i-0123456789abcdef0");
        assert_eq!(id, NodeId::for_instance("i-0123456789abcdef0"));
        assert_ne!(id, NodeId::for_instance("i-0123456789abcdef1"));
        assert_eq!(NodeId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn node_id_parse_accepts_only_generated_shape() {
        let id = NodeId::generate();
        assert_eq!(NodeId::parse(id.as_str()), Some(id));
        assert_eq!(NodeId::parse("tn-xyz"), None);
        assert_eq!(NodeId::parse("i-0123456789abcdef0"), None);
    }

    #[test]
    fn history_is_bounded_and_keeps_newest() {
        let now = Utc::now();
        let mut node = Node::new(test_spec(&["m5.large"], true), Persistence::default(), now);
        for i in 0..(HISTORY_LIMIT + 10) {
            node.record(now, format!("entry {i}"));
        }
        assert_eq!(node.history.len(), HISTORY_LIMIT);
        assert_eq!(node.history.last().map(|h| h.what.as_str()), Some("entry 59"));
    }

    #[test]
    fn revert_to_spot_reads_never_always_and_a_window() {
        let at = |h: i64, m: i64| DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default() + chrono::TimeDelta::minutes(h * 60 + m);
        let window: RevertToSpot = serde_json::from_value(serde_json::json!({"window": {"start": "22:30:00", "end": "02:00:00"}})).unwrap();
        assert_eq!(window, "22:30-02:00".parse().unwrap());
        assert!(window.allows(at(23, 0)) && window.allows(at(1, 59)));
        assert!(!window.allows(at(2, 0)) && !window.allows(at(12, 0)));
        let day: RevertToSpot = "02:00-04:00".parse().unwrap();
        assert!(day.allows(at(3, 0)) && !day.allows(at(4, 0)) && !day.allows(at(1, 0)));
        assert_eq!(serde_json::from_value::<RevertToSpot>(serde_json::json!("always")).unwrap(), RevertToSpot::Always);
        assert!(!RevertToSpot::default().allows(at(3, 0)));
        assert!(RevertToSpot::Always.allows(at(3, 0)));
        for bad in ["sometimes", "02:00", "02:00-02:00", "25:00-01:00"] {
            assert!(bad.parse::<RevertToSpot>().unwrap_err().contains("never, always"), "{bad}");
        }
        assert_eq!(day.to_string(), "02:00-04:00 UTC");
    }
}
