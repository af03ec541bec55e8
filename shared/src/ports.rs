//! The narrow interfaces the domain needs from AWS. Adapters in `aws/` implement them.

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;

use crate::error::{AwsError, ErrorClass};
use crate::lifecycle::Metric;
use crate::group::GroupId;
use crate::model::{EniRecord, Market, Node, NodeId, NodeSpec};
use serde::{Deserialize, Serialize};

/// Where nodes live. Every write is conditional on the version the caller read.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Stores a new node; fails with `ErrorClass::Conflict` if the id exists.
    async fn create(&self, node: &Node) -> Result<(), AwsError>;
    /// A consistent read by id.
    async fn get(&self, id: &NodeId) -> Result<Option<Node>, AwsError>;
    /// The node whose current instance (or instance being replaced) is `instance_id`,
    /// from the instance-id index (eventually consistent: writes are conditional anyway).
    async fn find_by_instance(&self, instance_id: &str) -> Result<Option<Node>, AwsError>;
    /// Replaces the node if its stored version is still `node.version`; on success the
    /// stored (and returned) version is one higher. `ErrorClass::Conflict` otherwise.
    async fn save(&self, node: &Node) -> Result<Node, AwsError>;
    /// One page of nodes, oldest pages first; `start_after` is the last id of the previous page.
    async fn list(&self, limit: usize, start_after: Option<&NodeId>) -> Result<(Vec<Node>, Option<NodeId>), AwsError>;
    /// The upkeep listing needs, run by the reconciler before it lists (a store whose
    /// listing reads an index makes sure every node is in it); how many records it mended.
    async fn maintain_listing(&self, _now: DateTime<Utc>) -> Result<usize, AwsError> {
        Ok(0)
    }
}

/// What the node's ENI is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniRequest {
    pub node_id: NodeId,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    /// `None`: EC2 picks a free address.
    pub private_ip: Option<Ipv4Addr>,
    /// Secondary private IPs EC2 picks at creation (named ones are assigned after: the
    /// launch converges the ENI on the spec, which a retry repeats harmlessly).
    pub secondary_ip_count: u8,
    /// IPv6 addresses EC2 picks at creation.
    pub ipv6_count: u8,
    /// The user's tags (`spec.eni_tags`), beside Tether's.
    pub tags: std::collections::BTreeMap<String, String>,
    /// 0 for the node's primary ENI; 1 and up for an extra ENI (`spec.extra_enis`), which
    /// is tagged with it (`tether:device-index`) and has its own ClientToken.
    pub device_index: u8,
}

impl EniRequest {
    /// The ClientToken that makes a retried create return the same ENI.
    pub fn client_token(&self) -> String {
        match self.device_index {
            0 => format!("{}-eni", self.node_id),
            index => format!("{}-eni{index}", self.node_id),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    pub cidr: Ipv4Net,
    /// The subnet's IPv6 CIDR blocks (none: no IPv6 addresses can be had in it).
    pub ipv6_cidrs: Vec<ipnet::Ipv6Net>,
    /// Its "auto-assign public IPv4 address" setting.
    pub map_public_ip_on_launch: bool,
    pub availability_zone: String,
    pub vpc_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElasticIpInfo {
    pub allocation_id: String,
    pub public_ip: String,
    /// The ENI it is associated with, if any.
    pub network_interface_id: Option<String>,
    /// Set when it is associated with anything (an ENI or an instance).
    pub association_id: Option<String>,
    /// The instance it (or its ENI) is associated with, if any.
    pub instance_id: Option<String>,
}

impl ElasticIpInfo {
    /// What holds it, as an operator would look for it: the instance, else the ENI.
    pub fn holder(&self) -> &str {
        self.instance_id.as_deref().or(self.network_interface_id.as_deref()).unwrap_or("another resource")
    }

    /// Whether AssociateAddress is needed to put this Elastic IP on `eni_id`: `Ok(false)`
    /// when it is there already, `Ok(true)` when it is free; an error naming the holder
    /// when anything else has it (Tether does not take an Elastic IP away).
    pub fn needs_association(&self, eni_id: &str) -> Result<bool, AwsError> {
        if self.network_interface_id.as_deref() == Some(eni_id) {
            return Ok(false);
        }
        let Some(_) = &self.association_id else { return Ok(true) };
        let holder = self.holder();
        Err(AwsError {
            service: "EC2",
            operation: "AssociateAddress",
            code: Some("Resource.AlreadyAssociated".into()),
            message: format!("Elastic IP {} is associated with {holder}; disassociate it or choose another", self.allocation_id),
            class: ErrorClass::Permanent,
        })
    }
}

/// The error for an Elastic IP allocation that does not exist.
pub fn eip_not_found(allocation_id: &str) -> AwsError {
    AwsError::from_code(
        "EC2",
        "DescribeAddresses",
        Some("InvalidAllocationID.NotFound"),
        Some(&format!("Elastic IP allocation {allocation_id} does not exist")),
        None,
    )
}

/// An unassign of an address no longer on the ENI (a retry after the first went through)
/// counts as done.
pub fn not_assigned_is_done(result: Result<(), AwsError>) -> Result<(), AwsError> {
    match result {
        Err(e) if e.code_is("InvalidParameterValue") && e.message.contains("not assigned") => Ok(()),
        other => other,
    }
}

/// An address Tether reserves for the node or group that claims it, so that no two records
/// ever claim one: a private IP (in its subnet) or an Elastic IP.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    PrivateIp { subnet_id: String, ip: Ipv4Addr },
    ElasticIp { allocation_id: String },
}

impl Address {
    /// The reservation's key in the table.
    pub fn key(&self) -> String {
        match self {
            Address::PrivateIp { subnet_id, ip } => format!("addr#ip#{subnet_id}#{ip}"),
            Address::ElasticIp { allocation_id } => format!("addr#eip#{allocation_id}"),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::PrivateIp { subnet_id, ip } => write!(f, "private IP {ip} ({subnet_id})"),
            Address::ElasticIp { allocation_id } => write!(f, "Elastic IP {allocation_id}"),
        }
    }
}

/// The EC2 subnet CIDR reservation (`explicit`, a /32) that keeps EC2 from handing a
/// reserved private IP to an ENI that did not ask for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetReservation {
    pub id: String,
    /// This deployment made it (and deletes it with the address's reservation); otherwise it
    /// is the user's own (or another Tether stack's), covering the address already, and
    /// never touched.
    pub tethers: bool,
}

/// An explicit subnet CIDR reservation, as EC2 lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetCidr {
    pub id: String,
    pub cidr: Ipv4Net,
    /// When this deployment made it (its description says), if it did and says.
    pub made_at: Option<DateTime<Utc>>,
    /// This deployment made it (`tether_description` is its description); otherwise it is
    /// the user's, or another Tether stack's.
    pub tethers: bool,
}

/// What Tether describes the subnet CIDR reservations it makes with: how it knows its own
/// again (one whose id a request did not live to record, or left after its address was
/// released). It names the deployment (its table: unique in the account and Region), so
/// that a second Tether stack sharing the subnet never takes another's for its own.
pub fn tether_description(deployment: &str, ip: Ipv4Addr, owner: &str, at: DateTime<Utc>) -> String {
    format!("{}{ip} for {owner} at {}", description_prefix(deployment), at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// How long a subnet CIDR reservation of this deployment's that no address reservation
/// names is left alone by the sweep: it may have been made ahead of a claim whose request is
/// still under way (longer than any request: Lambda's 15 minutes). Until it is written, EC2
/// must not hand the address out.
pub const SUBNET_RESERVATION_GRACE: Duration = Duration::from_secs(15 * 60);

/// When a reservation described by `tether_description` was made (`None` for one made
/// before descriptions said).
pub fn made_at(description: &str) -> Option<DateTime<Utc>> {
    let (_, at) = description.rsplit_once(" at ")?;
    DateTime::parse_from_rfc3339(at).ok().map(|t| t.with_timezone(&Utc))
}

/// Whether `description` is one `deployment` made (`tether_description`).
pub fn described_by(deployment: &str, description: &str) -> bool {
    description.starts_with(&description_prefix(deployment))
}

fn description_prefix(deployment: &str) -> String {
    format!("Tether ({deployment}): ")
}

/// An address's reservation, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub address: Address,
    /// The node or group id that claims it.
    pub owner: String,
    /// A pool Elastic IP handed to a member: that member.
    pub member: Option<NodeId>,
    /// Private IPs: the EC2 subnet CIDR reservation, once made.
    pub subnet_reservation: Option<SubnetReservation>,
}

impl Reservation {
    pub fn new(address: Address, owner: impl Into<String>) -> Self {
        Reservation { address, owner: owner.into(), member: None, subnet_reservation: None }
    }

    /// Who holds it, as an operator would look for it.
    pub fn holder(&self) -> String {
        match &self.member {
            Some(member) => format!("{} (handed to its member {member})", self.owner),
            None => self.owner.clone(),
        }
    }
}

/// What a reservation must be for a write to go ahead: absent, or held by this owner (and
/// handed to this member, or to none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Held { owner: String, member: Option<NodeId> },
}

impl Expect {
    /// The reservation as it was read.
    pub fn of(reservation: Option<&Reservation>) -> Self {
        match reservation {
            None => Expect::Absent,
            Some(r) => Expect::Held { owner: r.owner.clone(), member: r.member.clone() },
        }
    }
}

/// One write of an all-or-nothing transaction (DynamoDB TransactWriteItems: at most 100).
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A new node; fails if the id exists.
    CreateNode(Node),
    /// The node, if its stored version is still `node.version`; written one higher.
    SaveNode(Node),
    /// Fails unless the node's stored version is `version`.
    CheckNode { id: NodeId, version: u64 },
    /// Fails if the node exists.
    CheckNoNode { id: NodeId },
    CreateGroup(crate::group::Group),
    SaveGroup(crate::group::Group),
    /// Fails unless the group's stored version is `version`.
    CheckGroup { id: GroupId, version: u64 },
    PutReservation { reservation: Reservation, expect: Expect },
    DeleteReservation { address: Address, expect: Expect },
}

impl Write {
    /// The item written or checked: DynamoDB refuses a transaction with two operations on
    /// one item (`ValidationException`), and the fake refuses it as well.
    pub fn item(&self) -> String {
        match self {
            Write::CreateNode(n) | Write::SaveNode(n) => n.id.to_string(),
            Write::CheckNode { id, .. } | Write::CheckNoNode { id } => id.to_string(),
            Write::CreateGroup(g) | Write::SaveGroup(g) => g.id.to_string(),
            Write::CheckGroup { id, .. } => id.to_string(),
            Write::PutReservation { reservation, .. } => reservation.address.to_string(),
            Write::DeleteReservation { address, .. } => address.to_string(),
        }
    }
}

/// DynamoDB's limit on one transaction.
pub const MAX_WRITES: usize = 100;

/// Groups and address reservations, in the node table, and the transactions that keep them
/// and the nodes consistent.
#[async_trait]
pub trait Registry: Send + Sync {
    /// A consistent read.
    async fn group(&self, id: &GroupId) -> Result<Option<crate::group::Group>, AwsError>;
    /// One page of groups; pass the returned id to get the next page.
    async fn groups(&self, limit: usize, start_after: Option<&GroupId>) -> Result<(Vec<crate::group::Group>, Option<GroupId>), AwsError>;
    /// Every node whose membership names the group (the `by-group` index: eventually
    /// consistent; every action on a member is conditional on the version read).
    async fn members(&self, id: &GroupId) -> Result<Vec<Node>, AwsError>;
    /// A consistent read.
    async fn reservation(&self, address: &Address) -> Result<Option<Reservation>, AwsError>;
    /// Every reservation.
    async fn reservations(&self) -> Result<Vec<Reservation>, AwsError>;
    /// All of `writes` or none: `ErrorClass::Conflict` when any condition fails (the message
    /// names which write).
    async fn write(&self, writes: Vec<Write>) -> Result<(), AwsError>;
}

/// The ENI, Elastic IP and subnet calls Tether makes.
#[async_trait]
pub trait Network: Send + Sync {
    /// The ENI Tether created for this node earlier (found by its `tether:node-id` tag).
    async fn find_node_eni(&self, node_id: &NodeId) -> Result<Option<EniRecord>, AwsError>;
    /// The node's extra ENI at `device_index` (tagged with it), if it exists.
    async fn find_extra_eni(&self, node_id: &NodeId, device_index: u8) -> Result<Option<EniRecord>, AwsError>;
    /// Creates the node's ENI, tagged with the node id.
    async fn create_eni(&self, request: &EniRequest) -> Result<EniRecord, AwsError>;
    /// Deletes an ENI; one that no longer exists counts as deleted.
    async fn delete_eni(&self, eni_id: &str) -> Result<(), AwsError>;
    /// Associates the Elastic IP with the ENI's primary private IP; returns its public IP.
    /// An EIP already on this ENI is fine; one held by anything else is an error naming the holder.
    async fn associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<String, AwsError>;
    /// The Elastic IP Tether allocated for this node earlier, or a new one (tagged with the
    /// node id): (allocation id, public IP).
    async fn allocate_eip(&self, node_id: &NodeId) -> Result<(String, String), AwsError>;
    /// Disassociates the Elastic IP if it is associated with this ENI (and only then: a
    /// user's Elastic IP moved elsewhere since is left alone).
    async fn disassociate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError>;
    /// Releases an Elastic IP; one that no longer exists counts as released.
    async fn release_eip(&self, allocation_id: &str) -> Result<(), AwsError>;
    async fn describe_eip(&self, allocation_id: &str) -> Result<Option<ElasticIpInfo>, AwsError>;
    /// The Elastic IP associated with an ENI, if any.
    async fn eip_on_eni(&self, eni_id: &str) -> Result<Option<ElasticIpInfo>, AwsError>;
    async fn describe_subnet(&self, subnet_id: &str) -> Result<Option<SubnetInfo>, AwsError>;
    /// Assigns secondary private IPs to an ENI: `addresses`, or `count` EC2 picks. Returns
    /// the ENI as it is then.
    async fn assign_private_ips(&self, eni_id: &str, addresses: &[Ipv4Addr], count: u8) -> Result<EniRecord, AwsError>;
    /// Unassigns secondary private IPs (one no longer on the ENI counts as unassigned).
    async fn unassign_private_ips(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), AwsError>;
    /// Assigns IPv6 addresses: `addresses`, or `count` EC2 picks; the ENI as it is then.
    async fn assign_ipv6(&self, eni_id: &str, addresses: &[std::net::Ipv6Addr], count: u8) -> Result<EniRecord, AwsError>;
    async fn unassign_ipv6(&self, eni_id: &str, addresses: &[std::net::Ipv6Addr]) -> Result<(), AwsError>;
    /// Whether the ENI, as an instance's eth0, has a public IPv4 address from Amazon's pool
    /// (ModifyNetworkInterfaceAttribute AssociatePublicIpAddress: kept on the ENI, applied to
    /// each instance launched on it).
    async fn set_public_ip(&self, eni_id: &str, assign: bool) -> Result<(), AwsError>;
    /// Replaces the ENI's security groups.
    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), AwsError>;
    /// Turns the ENI's source/destination check on or off.
    async fn set_source_dest_check(&self, eni_id: &str, enabled: bool) -> Result<(), AwsError>;
    /// Sets `tags` on the ENI and removes the tag keys in `removed` (never Tether's own).
    async fn retag_eni(&self, eni_id: &str, tags: &std::collections::BTreeMap<String, String>, removed: &[String]) -> Result<(), AwsError>;
    /// Every ENI carrying a `tether:node-id` tag (the reconciler's observation in bulk, and
    /// its search for leftovers), in pages of 1,000.
    async fn node_enis(&self) -> Result<Vec<Tagged<EniRecord>>, AwsError>;
    /// Every Elastic IP carrying a `tether:node-id` tag (the ones Tether allocated).
    async fn node_eips(&self) -> Result<Vec<Tagged<ElasticIpInfo>>, AwsError>;
    /// Every Elastic IP of the Region, the user's too (the reconciler's observation in bulk).
    async fn elastic_ips(&self) -> Result<Vec<ElasticIpInfo>, AwsError>;
    /// Whether any ENI in the subnet holds this private IP.
    async fn private_ip_in_use(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<bool, AwsError>;
    /// Keeps EC2 from handing `ip` to an ENI that does not ask for it: an explicit /32 subnet
    /// CIDR reservation, described with the deployment and `owner` (`tether_description`). A
    /// reservation already covering the address is answered as it is: this deployment's if
    /// its description says so (one whose id an earlier attempt did not record), else someone
    /// else's, which is never deleted.
    async fn reserve_in_subnet(&self, subnet_id: &str, ip: Ipv4Addr, owner: &str, at: DateTime<Utc>) -> Result<SubnetReservation, AwsError>;
    /// Deletes a subnet CIDR reservation Tether made; one that no longer exists counts as deleted.
    async fn unreserve_in_subnet(&self, reservation_id: &str) -> Result<(), AwsError>;
    /// Every subnet CIDR reservation of the subnet (the sweep compares them with the table's).
    async fn subnet_reservations(&self, subnet_id: &str) -> Result<Vec<SubnetCidr>, AwsError>;
}

/// A resource with the node id and generation Tether tagged it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged<T> {
    pub node_id: NodeId,
    /// The `tether:generation` tag (instances only).
    pub generation: Option<u64>,
    /// The `tether:device-index` tag (extra ENIs only; a node's primary ENI has none).
    pub device_index: Option<u8>,
    /// An ENI attached to an instance, an Elastic IP associated with anything; always
    /// true for an instance.
    pub attached: bool,
    pub resource: T,
}

/// What a node's data volume is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRequest<'a> {
    pub node_id: &'a NodeId,
    pub volume: &'a crate::data_volumes::DataVolume,
    /// The node's ENI's: every instance of the node runs there.
    pub availability_zone: &'a str,
    /// The user's tags (`spec.volume_tags`), beside Tether's.
    pub tags: &'a std::collections::BTreeMap<String, String>,
}

impl VolumeRequest<'_> {
    /// The ClientToken that makes a retried create return the same volume.
    pub fn client_token(&self) -> String {
        format!("{}-vol-{}", self.node_id, self.volume.device_name.trim_start_matches("/dev/"))
    }
}

/// A node's data volumes in EC2. Volumes are tagged with the node id and their device
/// name (`tether:device-name`), so an earlier attempt's volume is found again.
#[async_trait]
pub trait Volumes: Send + Sync {
    /// The node's data volume for `device_name` made earlier, if any.
    async fn find_data_volume(&self, node_id: &NodeId, device_name: &str) -> Result<Option<crate::data_volumes::VolumeInfo>, AwsError>;
    /// Creates the volume, tagged, in the node's AZ.
    async fn create_data_volume(&self, request: &VolumeRequest<'_>) -> Result<crate::data_volumes::VolumeInfo, AwsError>;
    /// These volumes as EC2 has them now (one call); one EC2 does not know is left out.
    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<crate::data_volumes::VolumeInfo>, AwsError>;
    /// Attaches the volume to the instance at `device_name` (its DeleteOnTermination is off:
    /// EC2's default for an attached volume).
    async fn attach_volume(&self, volume_id: &str, instance_id: &str, device_name: &str) -> Result<(), AwsError>;
    /// Deletes the volume (gone already counts as done); `VolumeInUse` while attached.
    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError>;
    /// The final snapshot of a volume of the node (taken now, or found: one taken by an
    /// earlier attempt, tagged with the volume id), and its state (`pending`, `completed`,
    /// `error`).
    async fn final_snapshot(&self, node_id: &NodeId, volume_id: &str) -> Result<(String, String), AwsError>;
    /// Every volume tagged with a node id (tag-filtered, paged).
    async fn node_volumes(&self) -> Result<Vec<Tagged<crate::data_volumes::VolumeInfo>>, AwsError>;
}

/// One launch attempt: one instance on the node's ENI at device index 0, and its extra
/// ENIs at theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchRequest<'a> {
    pub node_id: &'a NodeId,
    pub generation: u64,
    pub spec: &'a NodeSpec,
    pub eni_id: &'a str,
    pub extra_enis: &'a [crate::model::ExtraEniRecord],
    pub instance_type: &'a str,
    pub market: Market,
    pub client_token: String,
}

impl LaunchRequest<'_> {
    /// The spot price cap, on a spot launch.
    pub fn spot_max_price(&self) -> Option<&str> {
        self.spec.spot_max_price.as_deref().filter(|_| self.market == Market::Spot)
    }

    /// The capacity reservation, on an on-demand launch (EC2 has no reserved spot capacity).
    pub fn capacity_reservation(&self) -> Option<&crate::model::CapacityReservation> {
        self.spec.capacity_reservation.as_ref().filter(|_| self.market == Market::OnDemand)
    }
}

/// The instance a launch (or an earlier launch with the same ClientToken) started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchedInstance {
    pub id: String,
    pub instance_type: String,
    pub market: Market,
    /// Already shutting down or terminated: a repeated ClientToken returns the generation's
    /// instance whatever became of it since.
    pub gone: bool,
}

/// An instance as EC2 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSummary {
    pub id: String,
    /// EC2's state name: `pending`, `running`, `shutting-down`, `terminated`, ...
    pub state: String,
    pub instance_type: String,
    pub market: Market,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    /// The ENI at device index 0.
    pub primary_eni_id: Option<String>,
}

/// What importing a running instance needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportableInstance {
    pub summary: InstanceSummary,
    pub spec: NodeSpec,
    pub eni: EniRecord,
    /// The primary ENI's attachment, whose DeleteOnTermination Tether turns off.
    pub attachment_id: String,
    /// Tags already on the instance (a `tether:node-id` tag means it is managed already).
    pub node_tag: Option<String>,
    /// Its ENIs at device indexes 1 and up, kept as the node's extra ENIs.
    pub extra_enis: Vec<ImportedEni>,
    /// Its EBS volumes (root first); `spec.block_devices` has their shapes.
    pub volumes: Vec<crate::volumes::ImportedVolume>,
}

/// What a launch needs to know of an AMI: a root volume smaller than its snapshot is refused
/// by RunInstances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub root_device_name: String,
    /// The root snapshot's size in GiB (none for an instance-store AMI).
    pub root_snapshot_gib: Option<u32>,
}

/// An imported instance's ENI beyond its primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedEni {
    pub record: crate::model::ExtraEniRecord,
    pub security_group_ids: Vec<String>,
    /// Its attachment, whose DeleteOnTermination Tether turns off.
    pub attachment_id: String,
}

/// The instance calls Tether makes.
#[async_trait]
pub trait Instances: Send + Sync {
    /// Launches one instance (or returns the one this ClientToken launched before).
    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<LaunchedInstance, AwsError>;
    /// The instance an earlier, successful RunInstances launched with this ClientToken.
    async fn find_launched(&self, client_token: &str) -> Result<Option<LaunchedInstance>, AwsError>;
    /// Terminates an instance; one that no longer exists counts as terminated.
    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError>;
    /// What EC2 reports about an instance now; `None` if EC2 does not know it.
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<InstanceSummary>, AwsError>;
    /// The instance (not yet terminated) the ENI is attached to, with its Tether tags.
    async fn instance_on_eni(&self, eni_id: &str) -> Result<Option<Tagged<InstanceSummary>>, AwsError>;
    /// Every instance not terminated or shutting down that carries a `tether:node-id` tag.
    async fn node_instances(&self) -> Result<Vec<Tagged<InstanceSummary>>, AwsError>;
    /// Every running instance whose instance or system status check EC2 reports `impaired`,
    /// by id (DescribeInstanceStatus filtered on each check, paged: two calls and their
    /// pages, whatever the number of instances).
    async fn impaired_instances(&self) -> Result<std::collections::HashMap<String, crate::health::Impaired>, AwsError>;
    /// The launch template version, as Tether carries it over; `None` when the template or
    /// the version does not exist.
    async fn launch_template(&self, template: &crate::launch_options::LaunchTemplateRef) -> Result<Option<crate::launch_options::TemplateSettings>, AwsError>;
    /// The AMI's root device and its snapshot's size; `None` when this Region has no such AMI
    /// (or this account may not launch it).
    async fn image(&self, image_id: &str) -> Result<Option<ImageInfo>, AwsError>;
    /// Each of these instance types with the most network interfaces it takes (EC2's
    /// `NetworkInfo.MaximumNetworkInterfaces`); `None` for a type this Region does not offer.
    async fn interface_limits(&self, instance_types: &[String]) -> Result<Vec<(String, Option<u8>)>, AwsError>;
    /// A running instance with its primary ENI, as import needs it; `None` if unknown.
    async fn importable(&self, instance_id: &str) -> Result<Option<ImportableInstance>, AwsError>;
    /// Adopts an imported instance: its ENIs outlive it (DeleteOnTermination=false), and it
    /// and the ENIs are tagged with the node id (the extra ENIs with their device index).
    async fn adopt(&self, node_id: &NodeId, instance: &ImportableInstance) -> Result<(), AwsError>;
    /// Keeps an adopted instance's volumes as the node's data volumes: each tagged with the
    /// node id and its device name, and its DeleteOnTermination turned off.
    async fn keep_volumes(&self, node_id: &NodeId, instance_id: &str, volumes: &[crate::volumes::ImportedVolume]) -> Result<(), AwsError>;
}

/// Where the last reconciler run stopped, so that the next one goes on from there: with more
/// nodes than one run checks, every node still gets its turn.
#[async_trait]
pub trait ReconcilerBookmark: Send + Sync {
    /// The last node the previous run checked, if it stopped before the end.
    async fn load(&self) -> Result<Option<NodeId>, AwsError>;
    /// `None`: the run reached the end; the next one starts at the beginning.
    async fn store(&self, after: Option<&NodeId>) -> Result<(), AwsError>;
}

/// Whether an invocation may handle an EventBridge event now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventClaim {
    /// This invocation handles it (nobody else, or an earlier claim whose invocation's
    /// deadline has passed: that invocation is dead).
    Claimed,
    /// Another invocation, still alive, is handling it.
    HeldElsewhere,
}

/// The RunInstances pace every invocation shares: EC2's bucket (5 at once, then 2 a second,
/// per account and Region) spent at its rate instead of in a retry storm. A launch takes a
/// slot first and is sent at the slot's time. The pace also keeps the (instance type,
/// market, AZ) pools EC2 refused for capacity lately, handed out with each slot (no call of
/// their own), so that a mass reclaim does not spend the bucket on a dry pool.
#[async_trait]
pub trait LaunchPace: Send + Sync {
    /// The next slot, if it is within `horizon` of `now`; otherwise the launch waits outside
    /// (its event is delivered again later) and takes no slot.
    async fn take(&self, now: DateTime<Utc>, horizon: Duration) -> Result<PaceSlot, AwsError>;
    /// EC2 refused `pool` (`<instance type>/<market>/<AZ>`) for capacity: other candidates
    /// are tried first until `until`.
    async fn refuse_pool(&self, pool: &str, until: DateTime<Utc>) -> Result<(), AwsError>;
}

/// What taking a slot gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaceSlot {
    /// When the launch may be sent; `None`: every slot within the horizon is taken, the
    /// next one free at about `next_free`.
    pub at: Option<DateTime<Utc>>,
    pub next_free: DateTime<Utc>,
    /// Pools refused for capacity, and until when.
    pub refused: std::collections::BTreeMap<String, DateTime<Utc>>,
}

/// EC2's RunInstances request bucket, as the pace spends it: one slot every `INTERVAL`, and
/// `BURST` at once after a quiet while (generic cell rate algorithm, the bucket's exact twin).
pub const PACE_INTERVAL: Duration = Duration::from_millis(500);
pub const PACE_BURST: u32 = 5;

/// The pace's rule, shared by the DynamoDB adapter and the fake: given the stored
/// theoretical arrival time `tat` (`None`: never used), the slot for a launch asking at
/// `now` and the new `tat`; `None` when the slot is beyond `horizon`.
pub fn pace_step(tat: Option<DateTime<Utc>>, now: DateTime<Utc>, horizon: Duration) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let tolerance = PACE_INTERVAL * (PACE_BURST - 1);
    let tat = tat.filter(|t| *t >= now).unwrap_or(now);
    let at = (tat - tolerance).max(now);
    ((at - now).to_std().unwrap_or_default() <= horizon).then(|| (at, tat + PACE_INTERVAL))
}

/// The queue between EventBridge and a function (SQS), for the events that must wait.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Puts `body` on the queue `queue_arn` again, delivered after `delay` (SQS allows at
    /// most 15 minutes): the waiting event's message is then acknowledged, so that waiting
    /// (for the pace, for an ENI) never uses up its receives and never dead-letters it.
    async fn requeue(&self, queue_arn: &str, body: &str, delay: Duration) -> Result<(), AwsError>;
}

/// One invocation at a time per EventBridge event: a claim record per event id, held until
/// the claiming invocation's deadline (Lambda has stopped it by then). The record expires
/// by time, checked in the claim's own condition; TTL only cleans up.
#[async_trait]
pub trait EventClaims: Send + Sync {
    /// Claims `event_id` for invocation `invocation_id` until `until`.
    async fn claim(&self, event_id: &str, invocation_id: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<EventClaim, AwsError>;
    /// Gives the claim up, if it is still `invocation_id`'s (the invocation failed and
    /// Lambda will retry the event).
    async fn release(&self, event_id: &str, invocation_id: &str) -> Result<(), AwsError>;
}

/// The outcome of claiming an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First use (or an earlier claim went stale): go ahead, then `complete` or `release`.
    New,
    /// The same request completed before: answer with what it answered.
    Replay { status: u16, body: String },
    /// The same request is being processed right now.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// Remembers requests by idempotency key, so that a retried request is answered once.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    async fn claim(&self, key: &str, fingerprint: &str) -> Result<Claim, AwsError>;
    /// Stores the answer to replay for later uses of the key (with the request's fingerprint,
    /// whole: a record released meanwhile is written again as it should be).
    async fn complete(&self, key: &str, fingerprint: &str, status: u16, body: &str) -> Result<(), AwsError>;
    /// Forgets the key (the request failed in a way worth retrying).
    async fn release(&self, key: &str) -> Result<(), AwsError>;
}

/// Time as the service sees it: the wall clock and sleeping between retries. Lambda runs
/// on the system's; the chaos test on a virtual one it moves itself.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The system clock and tokio's timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Where the operator's numbers go: CloudWatch embedded-metric-format lines in Lambda
/// (`aws::emf`). Recording never fails the work it measures.
pub trait MetricsSink: Send + Sync {
    /// `metric`, about `node` as written (if it is about one), at `at`.
    fn record(&self, metric: &Metric, node: Option<&Node>, at: DateTime<Utc>);
}

/// Metrics go nowhere (local runs and tests that do not look at them).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn record(&self, _: &Metric, _: Option<&Node>, _: DateTime<Utc>) {}
}
