//! The command line: what `tether` accepts (clap).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tether::data_volumes::DataVolume;
use tether::deallocation::{DeallocationPolicy, ElasticIpFate, EniFate, VolumeFate};
use tether::launch_options::{CapacityReservation, CpuCredits, LaunchTemplateRef};
use tether::model::{ExtraEni, PublicIpAssignment, RevertToSpot};
use tether::volumes::{BlockDevice, VolumeType};

mod groups;
mod healing;

pub use groups::{CommaList, GroupActionArgs, GroupCreateArgs, GroupUpdateArgs, GroupWaitArgs, GroupsCommand};
pub use healing::{HealingArgs, HealingChangeArgs, HealingChanges, MaxHeals, ScheduleArgs};

/// `tether`: manage Tether's stateful nodes and groups through the management API.
#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "Manage Tether's stateful nodes and groups through the management API (requests are SigV4-signed)",
    propagate_version = true
)]
pub struct Cli {
    /// The API's URL, e.g. https://abc123.execute-api.eu-west-1.amazonaws.com [env: TETHER_API_URL]
    #[arg(long, global = true, value_name = "URL", help_heading = "Global options")]
    pub endpoint: Option<String>,
    /// The Region the requests are signed for (default: the AWS configuration's, else us-east-1)
    #[arg(long, global = true, value_name = "REGION", help_heading = "Global options")]
    pub region: Option<String>,
    /// The named profile of the AWS configuration files to take credentials and Region from
    #[arg(long, global = true, value_name = "NAME", help_heading = "Global options")]
    pub profile: Option<String>,
    /// Print the API's JSON answers instead of tables
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stateful nodes: list, show, create, and their lifecycle actions
    #[command(subcommand, alias = "node")]
    Nodes(NodesCommand),
    /// Stateful groups: a target capacity of nodes from one template, with address pools
    #[command(subcommand, alias = "group")]
    Groups(GroupsCommand),
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes (one page unless --all)
    List {
        /// Nodes per page, 1 to 100 (the API's default: 25)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: Option<u32>,
        /// Follow `next_token` until the last page
        #[arg(long)]
        all: bool,
    },
    /// Show one node: state, instance, network identity, spec
    Show {
        #[arg(value_name = "NODE_ID")]
        id: String,
    },
    /// What happened to a node, and who asked
    History {
        #[arg(value_name = "NODE_ID")]
        id: String,
    },
    /// Create a node (paused unless --resume)
    Create(Box<CreateArgs>),
    /// Change a node's launch settings; they take effect at its next launch (a recycle applies them now)
    #[command(alias = "patch")]
    Update(Box<UpdateArgs>),
    /// Terminate the node's instance; keep its ENI and Elastic IP
    Pause {
        #[arg(value_name = "NODE_ID")]
        id: String,
        #[command(flatten)]
        post: PostArgs,
    },
    /// Launch an instance on the node's ENI (the ENI is created at the first resume)
    Resume {
        #[arg(value_name = "NODE_ID")]
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        post: PostArgs,
    },
    /// Replace the node's instance by a new one on the same ENI
    Recycle {
        #[arg(value_name = "NODE_ID")]
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        post: PostArgs,
    },
    /// Terminate the instance; delete the ENI, release (Tether's) or disassociate (yours) the
    /// Elastic IP and keep the data volumes, unless the node's deallocation policy says otherwise
    Deallocate {
        #[arg(value_name = "NODE_ID")]
        id: String,
        /// Keep the ENI and the Elastic IP on it: the private IP stays reserved (whatever the
        /// policy's --on-deallocate-enis says)
        #[arg(long)]
        keep_eni: bool,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        post: PostArgs,
    },
    /// Adopt a running instance as a node, keeping its private IP and Elastic IP
    Import {
        #[arg(value_name = "INSTANCE_ID")]
        instance_id: String,
        /// Replacement candidates, in order (repeat the flag; default: the instance's own type)
        #[arg(long = "instance-type", value_name = "TYPE")]
        instance_types: Vec<String>,
        /// Never fall back to on-demand when no spot capacity is left
        #[arg(long)]
        no_on_demand_fallback: bool,
        /// After a fallback to on-demand, go back to spot: never, always, or HH:MM-HH:MM (UTC)
        #[arg(long, value_name = "POLICY", value_parser = parse_revert_to_spot)]
        revert_to_spot: Option<RevertToSpot>,
        /// Keep the instance's own EBS volumes (all but its root) as the node's data volumes:
        /// every replacement gets them, with their data
        #[arg(long)]
        keep_volumes: bool,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        post: PostArgs,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The subnet of the node's ENI (fixes its Availability Zone for life)
    #[arg(long, value_name = "SUBNET_ID")]
    pub subnet: String,
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// The node's private IP for life (default: EC2 picks one at the first resume)
    #[arg(long, value_name = "IP")]
    pub private_ip: Option<Ipv4Addr>,
    /// Your Elastic IP allocation to keep on the node (disassociated, never released, at deallocation)
    #[arg(long, value_name = "ALLOCATION_ID", conflicts_with = "allocate_elastic_ip")]
    pub elastic_ip: Option<String>,
    /// Let Tether allocate an Elastic IP at the first resume (released at deallocation)
    #[arg(long)]
    pub allocate_elastic_ip: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub options: LaunchOptionArgs,
    #[command(flatten)]
    pub data: DataVolumeArgs,
    #[command(flatten)]
    pub deallocation: DeallocationArgs,
    #[command(flatten)]
    pub healing: HealingArgs,
    #[command(flatten)]
    pub schedules: ScheduleArgs,
    /// Resume the node right away: create its ENI and launch its first instance
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub post: PostArgs,
}

/// What every instance launches with (`nodes create`, `groups create`).
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The AMI every instance boots (with --launch-template: the template's if not given)
    #[arg(long, value_name = "AMI_ID", required_unless_present = "launch_template")]
    pub image: Option<String>,
    /// Instance types in order of preference, spot first (repeat the flag; with
    /// --launch-template: the template's if not given)
    #[arg(long = "instance-type", value_name = "TYPE", required_unless_present = "launch_template")]
    pub instance_types: Vec<String>,
    /// A launch template as the base of every launch, ID_OR_NAME[:VERSION] (lt-… is an id;
    /// VERSION a number, latest or default, the default); the flags given win over it
    #[arg(long, value_name = "ID_OR_NAME[:VERSION]", value_parser = parse_launch_template)]
    pub launch_template: Option<LaunchTemplateRef>,
    /// Security groups of the ENI (repeat the flag)
    #[arg(long = "security-group", value_name = "SG_ID")]
    pub security_groups: Vec<String>,
    /// The EC2 key pair of the instances
    #[arg(long, value_name = "NAME")]
    pub key_name: Option<String>,
    /// An instance profile name or ARN
    #[arg(long, value_name = "NAME_OR_ARN")]
    pub instance_profile: Option<String>,
    /// A file whose text is the instances' user data
    #[arg(long, value_name = "FILE")]
    pub user_data_file: Option<PathBuf>,
    /// A tag of the instances (repeat the flag)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Never fall back to on-demand when no spot capacity is left
    #[arg(long)]
    pub no_on_demand_fallback: bool,
    /// After a fallback to on-demand, go back to spot (a recycle): never (default), always,
    /// or in a daily window HH:MM-HH:MM (UTC)
    #[arg(long, value_name = "POLICY", value_parser = parse_revert_to_spot, default_value = "never")]
    pub revert_to_spot: RevertToSpot,
    /// Let the instance metadata service answer IMDSv1 requests too (default: IMDSv2 only)
    #[arg(long)]
    pub imds_v1: bool,
    /// Network hops a metadata answer may take, 1 to 64 (default 2; 1 keeps it on the instance)
    #[arg(long, value_name = "HOPS", value_parser = clap::value_parser!(u8).range(1..=64))]
    pub metadata_hop_limit: Option<u8>,
    /// A volume of every instance, DEVICE=SIZE_GIB[:TYPE] (the AMI's root device name sets the
    /// root volume, e.g. /dev/xvda=100:gp3; repeat the flag; TYPE gp3 by default; IOPS,
    /// throughput and encryption through the API)
    #[arg(long = "block-device", value_name = "DEVICE=SIZE[:TYPE]", value_parser = parse_block_device)]
    pub block_devices: Vec<BlockDevice>,
    /// After a spot interruption warning (terminate), terminate the instance this many
    /// seconds after it, 0 to 110, so that the replacement starts sooner: the workload's
    /// drain window (default: AWS terminates it, about 120 s after the warning)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u8).range(0..=110))]
    pub handover_after_warning: Option<u8>,
}

/// The launch settings `PATCH /nodes/{id}` accepts; only those given change.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").multiple(true).required(true))]
pub struct UpdateArgs {
    #[arg(value_name = "NODE_ID")]
    pub id: String,
    #[command(flatten)]
    pub launch: LaunchChangeArgs,
    #[command(flatten)]
    pub identity: IdentityChangeArgs,
    #[command(flatten)]
    pub deallocation: DeallocationChangeArgs,
    #[command(flatten)]
    pub healing: HealingChangeArgs,
}

/// The node's network identity on its ENI beyond the primary IP (`nodes create`).
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// A secondary private IP on the node's ENI, kept for life (repeat the flag)
    #[arg(long = "secondary-ip", value_name = "IP", conflicts_with = "secondary_ip_count")]
    pub secondary_ips: Vec<Ipv4Addr>,
    /// How many secondary private IPs EC2 picks for the ENI, kept for life
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u8).range(1..=49))]
    pub secondary_ip_count: Option<u8>,
    /// How many IPv6 addresses EC2 picks for the ENI (the subnet needs an IPv6 block)
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u8).range(1..=49))]
    pub ipv6_count: Option<u8>,
    /// Turn the ENI's source/destination check off (a NAT instance, a router)
    #[arg(long)]
    pub no_source_dest_check: bool,
    /// A public IPv4 address for each instance: assign, none (default) or subnet-default
    /// (a new one each time: a public IP that never changes is an Elastic IP)
    #[arg(long, value_name = "WHETHER", value_parser = parse_public_ip)]
    pub public_ip: Option<PublicIpAssignment>,
    /// A tag of the node's ENI (repeat the flag)
    #[arg(long = "eni-tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub eni_tags: Vec<(String, String)>,
}

/// RunInstances' further settings and the extra ENIs (`nodes create`).
#[derive(Debug, Args)]
pub struct LaunchOptionArgs {
    /// An extra ENI kept for life, INDEX:SUBNET[:IP[:EIPALLOC]] (device index 1 to 14, a
    /// subnet in the node's AZ, an address or EC2's pick, your Elastic IP; repeat the flag)
    #[arg(long = "extra-eni", value_name = "INDEX:SUBNET[:IP[:EIPALLOC]]", value_parser = parse_extra_eni)]
    pub extra_enis: Vec<ExtraEni>,
    /// Launch EBS-optimized
    #[arg(long)]
    pub ebs_optimized: bool,
    /// Detailed (1-minute) CloudWatch monitoring
    #[arg(long)]
    pub detailed_monitoring: bool,
    /// Burstable types' CPU credits: standard or unlimited
    #[arg(long, value_name = "standard|unlimited", value_parser = parse_cpu_credits)]
    pub cpu_credits: Option<CpuCredits>,
    /// A placement group in the node's AZ
    #[arg(long, value_name = "NAME")]
    pub placement_group: Option<String>,
    /// Run on dedicated hardware
    #[arg(long)]
    pub dedicated: bool,
    /// The most to pay per hour on spot, in USD (default: the on-demand price)
    #[arg(long, value_name = "USD")]
    pub spot_max_price: Option<String>,
    /// The capacity the on-demand fallback may use: open, none, a reservation (cr-…) or a
    /// reservation group's ARN
    #[arg(long, value_name = "open|none|cr-…|ARN", value_parser = parse_capacity_reservation)]
    pub capacity_reservation: Option<CapacityReservation>,
    /// A tag of every volume (repeat the flag)
    #[arg(long = "volume-tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub volume_tags: Vec<(String, String)>,
}

/// The node's data volumes (`nodes create`, `groups create`): made at the first resume,
/// attached to every instance, fixed afterwards.
#[derive(Debug, Args)]
pub struct DataVolumeArgs {
    /// An EBS volume the node keeps for life, attached to every instance at DEVICE:
    /// DEVICE:SIZE_GIB[:TYPE[:IOPS[:THROUGHPUT]]], e.g. /dev/sdf:100:gp3:4000:250 (TYPE gp3 by
    /// default, or gp2, io1, io2, st1, sc1, standard; THROUGHPUT in MiB/s; repeat the flag;
    /// made at the first resume, fixed afterwards)
    #[arg(long = "data-volume", value_name = DATA_VOLUME_FORM, value_parser = parse_data_volume)]
    pub data_volumes: Vec<DataVolume>,
    /// Encrypt every data volume (default: as the account's EBS encryption default says)
    #[arg(long, requires = "data_volumes")]
    pub encrypt_data_volumes: bool,
    /// The KMS key (id, ARN, alias/… or alias ARN) of every data volume; implies
    /// --encrypt-data-volumes
    #[arg(long, value_name = "KEY", requires = "data_volumes")]
    pub data_volume_kms_key: Option<String>,
}

impl DataVolumeArgs {
    /// The volumes with the encryption flags applied to each.
    pub fn volumes(&self) -> Vec<DataVolume> {
        let encrypted = self.encrypt_data_volumes || self.data_volume_kms_key.is_some();
        self.data_volumes
            .iter()
            .map(|v| DataVolume { encrypted: encrypted.then_some(true).or(v.encrypted), kms_key_id: self.data_volume_kms_key.clone().or_else(|| v.kms_key_id.clone()), ..v.clone() })
            .collect()
    }
}

const DATA_VOLUME_FORM: &str = "DEVICE:SIZE_GIB[:TYPE[:IOPS[:THROUGHPUT]]]";

/// `DEVICE:SIZE_GIB[:TYPE[:IOPS[:THROUGHPUT]]]`, empty parts taking their defaults
/// (`/dev/sdf:100::3000`); the API checks the values.
pub(crate) fn parse_data_volume(raw: &str) -> Result<DataVolume, String> {
    let form = format!("give {DATA_VOLUME_FORM}, e.g. /dev/sdf:100:gp3:4000:250");
    let mut parts = raw.split(':');
    let device_name = parts.next().filter(|d| !d.trim().is_empty()).ok_or_else(|| format!("no device name: {form}"))?;
    if device_name.contains('=') {
        return Err(format!("`{device_name}`: a data volume's parts are separated by `:`, not `=`: {form}"));
    }
    let size = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| format!("no size in GiB: {form}"))?;
    let volume_size_gib = size.parse().map_err(|_| format!("`{size}` is no size in GiB: {form}"))?;
    let volume_type = match parts.next().filter(|t| !t.is_empty()) {
        None => VolumeType::default(),
        Some(kind) => volume_type(kind)?,
    };
    let mut number = |what: &str| -> Result<Option<u32>, String> {
        match parts.next().filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| format!("`{n}` is no {what}: {form}")),
        }
    };
    let iops = number("number of IOPS")?;
    let throughput_mibps = number("throughput in MiB/s")?;
    if let Some(extra) = parts.next() {
        return Err(format!("`{extra}`: nothing comes after the throughput: {form}"));
    }
    Ok(DataVolume { device_name: device_name.to_owned(), volume_size_gib, volume_type, iops, throughput_mibps, encrypted: None, kms_key_id: None })
}

fn volume_type(kind: &str) -> Result<VolumeType, String> {
    serde_json::from_value(serde_json::Value::String(kind.to_owned())).map_err(|_| format!("`{kind}` is no volume type: gp3, gp2, io1, io2, st1, sc1 or standard"))
}

/// What the node's deallocation deletes (`nodes create`, `groups create`); the flags not
/// given take the API's defaults.
#[derive(Debug, Args)]
pub struct DeallocationArgs {
    /// At deallocation, the node's ENIs (its own and the extra ones) with their private IPs:
    /// delete, keep, or default (Tether's deleted, an imported instance's kept)
    #[arg(long, value_name = ENI_FATES, value_parser = parse_eni_fate)]
    pub on_deallocate_enis: Option<EniPolicy>,
    /// At deallocation, the data volumes: keep (default), delete, or snapshot-and-delete (a
    /// final snapshot of each, then the volume)
    #[arg(long, value_name = VOLUME_FATES, value_parser = parse_volume_fate)]
    pub on_deallocate_data_volumes: Option<VolumeFate>,
    /// At deallocation, an Elastic IP Tether allocated: release (default) or keep (yours is
    /// never released)
    #[arg(long, value_name = ELASTIC_IP_FATES, value_parser = parse_elastic_ip_fate)]
    pub on_deallocate_elastic_ip: Option<ElasticIpFate>,
}

impl DeallocationArgs {
    pub fn policy(&self) -> DeallocationPolicy {
        DeallocationChanges { enis: self.on_deallocate_enis, data_volumes: self.on_deallocate_data_volumes, elastic_ip: self.on_deallocate_elastic_ip }.apply(DeallocationPolicy::default())
    }
}

/// Changes of the deallocation policy (`nodes update`): the CLI reads the node's policy and
/// sends it back with these changed.
#[derive(Debug, Args)]
pub struct DeallocationChangeArgs {
    /// At deallocation, the node's ENIs: delete, keep, or default (Tether's deleted, an
    /// imported instance's kept). Each --on-deallocate-… flag changes that field of the node's
    /// policy (read first) and keeps the others
    #[arg(long, value_name = ENI_FATES, value_parser = parse_eni_fate, group = "change")]
    pub on_deallocate_enis: Option<EniPolicy>,
    /// At deallocation, the data volumes: keep, delete or snapshot-and-delete
    #[arg(long, value_name = VOLUME_FATES, value_parser = parse_volume_fate, group = "change")]
    pub on_deallocate_data_volumes: Option<VolumeFate>,
    /// At deallocation, an Elastic IP Tether allocated: release or keep
    #[arg(long, value_name = ELASTIC_IP_FATES, value_parser = parse_elastic_ip_fate, group = "change")]
    pub on_deallocate_elastic_ip: Option<ElasticIpFate>,
}

impl DeallocationChangeArgs {
    /// The changes given, if any.
    pub fn changes(&self) -> Option<DeallocationChanges> {
        let changes = DeallocationChanges { enis: self.on_deallocate_enis, data_volumes: self.on_deallocate_data_volumes, elastic_ip: self.on_deallocate_elastic_ip };
        (changes != DeallocationChanges::default()).then_some(changes)
    }
}

/// Fields of a deallocation policy to change; `None`: left as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeallocationChanges {
    pub enis: Option<EniPolicy>,
    pub data_volumes: Option<VolumeFate>,
    pub elastic_ip: Option<ElasticIpFate>,
}

impl DeallocationChanges {
    /// `policy` with the fields given changed.
    pub fn apply(self, policy: DeallocationPolicy) -> DeallocationPolicy {
        DeallocationPolicy {
            enis: self.enis.map_or(policy.enis, |e| e.0),
            data_volumes: self.data_volumes.unwrap_or(policy.data_volumes),
            elastic_ip: self.elastic_ip.unwrap_or(policy.elastic_ip),
        }
    }
}

/// `--on-deallocate-enis`: `delete`, `keep`, or `default` (absent from the policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EniPolicy(pub Option<EniFate>);

const ENI_FATES: &str = "delete|keep|default";
const VOLUME_FATES: &str = "keep|delete|snapshot-and-delete";
const ELASTIC_IP_FATES: &str = "release|keep";

pub(crate) fn parse_eni_fate(raw: &str) -> Result<EniPolicy, String> {
    match raw {
        "delete" => Ok(EniPolicy(Some(EniFate::Delete))),
        "keep" => Ok(EniPolicy(Some(EniFate::Keep))),
        "default" => Ok(EniPolicy(None)),
        _ => Err(format!("`{raw}`: give delete, keep or default")),
    }
}

/// The API's `snapshot_and_delete` is taken too.
pub(crate) fn parse_volume_fate(raw: &str) -> Result<VolumeFate, String> {
    match raw {
        "keep" => Ok(VolumeFate::Keep),
        "delete" => Ok(VolumeFate::Delete),
        "snapshot-and-delete" | "snapshot_and_delete" => Ok(VolumeFate::SnapshotAndDelete),
        _ => Err(format!("`{raw}`: give keep, delete or snapshot-and-delete")),
    }
}

pub(crate) fn parse_elastic_ip_fate(raw: &str) -> Result<ElasticIpFate, String> {
    match raw {
        "release" => Ok(ElasticIpFate::Release),
        "keep" => Ok(ElasticIpFate::Keep),
        _ => Err(format!("`{raw}`: give release or keep")),
    }
}

/// `ID_OR_NAME[:VERSION]`: `lt-…` is an id; VERSION a number, `latest` or `default`
/// (`$Latest`, `$Default` too).
pub(crate) fn parse_launch_template(raw: &str) -> Result<LaunchTemplateRef, String> {
    let (template, version) = raw.split_once(':').map_or((raw, None), |(t, v)| (t, Some(v)));
    if template.is_empty() {
        return Err("give a launch template id (lt-…) or name".into());
    }
    let version = match version {
        None | Some("default" | "$Default") => "$Default".to_owned(),
        Some("latest" | "$Latest") => "$Latest".to_owned(),
        Some(n) if n.parse::<u64>().is_ok_and(|n| n > 0) => n.to_owned(),
        Some(other) => return Err(format!("`{other}` is no version: give a number, latest or default")),
    };
    let is_id = template.starts_with("lt-");
    Ok(LaunchTemplateRef { id: is_id.then(|| template.to_owned()), name: (!is_id).then(|| template.to_owned()), version })
}

/// `INDEX:SUBNET[:IP[:EIPALLOC]]`; the API checks the values.
pub(crate) fn parse_extra_eni(raw: &str) -> Result<ExtraEni, String> {
    let mut parts = raw.split(':');
    let index = parts.next().unwrap_or_default();
    let device_index = index.parse().map_err(|_| format!("`{index}` is no device index (1 to 14): give INDEX:SUBNET[:IP[:EIPALLOC]]"))?;
    let subnet_id = parts.next().filter(|s| !s.is_empty()).ok_or("give INDEX:SUBNET[:IP[:EIPALLOC]], e.g. 1:subnet-0123")?.to_owned();
    let private_ip = match parts.next().filter(|ip| !ip.is_empty()) {
        Some(ip) => Some(ip.parse().map_err(|_| format!("`{ip}` is no IPv4 address"))?),
        None => None,
    };
    let elastic_ip_allocation_id = parts.next().filter(|a| !a.is_empty()).map(str::to_owned);
    if let Some(extra) = parts.next() {
        return Err(format!("`{extra}`: nothing comes after the Elastic IP allocation"));
    }
    Ok(ExtraEni { device_index, subnet_id, security_group_ids: Vec::new(), private_ip, elastic_ip_allocation_id })
}

pub(crate) fn parse_cpu_credits(raw: &str) -> Result<CpuCredits, String> {
    match raw {
        "standard" => Ok(CpuCredits::Standard),
        "unlimited" => Ok(CpuCredits::Unlimited),
        _ => Err(format!("`{raw}`: give standard or unlimited")),
    }
}

pub(crate) fn parse_capacity_reservation(raw: &str) -> Result<CapacityReservation, String> {
    match raw {
        "open" => Ok(CapacityReservation::Open),
        "none" => Ok(CapacityReservation::None),
        id if id.starts_with("cr-") => Ok(CapacityReservation::ReservationId(id.to_owned())),
        arn if arn.starts_with("arn:") => Ok(CapacityReservation::GroupArn(arn.to_owned())),
        _ => Err(format!("`{raw}`: give open, none, a reservation id (cr-…) or a reservation group's ARN")),
    }
}

/// Changes of the node's ENI, made at once (`nodes update`).
#[derive(Debug, Args)]
pub struct IdentityChangeArgs {
    /// A secondary private IP (repeat the flag; replaces them all: unassigns the others)
    #[arg(long = "secondary-ip", value_name = "IP", group = "change", conflicts_with_all = ["secondary_ip_count", "no_secondary_ips"])]
    pub secondary_ips: Vec<Ipv4Addr>,
    /// How many secondary private IPs (keeps those the ENI has, adds or removes the newest)
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u8).range(1..=49), group = "change", conflicts_with = "no_secondary_ips")]
    pub secondary_ip_count: Option<u8>,
    /// Unassign every secondary private IP
    #[arg(long, group = "change")]
    pub no_secondary_ips: bool,
    /// How many IPv6 addresses
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u8).range(1..=49), group = "change", conflicts_with = "no_ipv6")]
    pub ipv6_count: Option<u8>,
    /// Unassign every IPv6 address
    #[arg(long, group = "change")]
    pub no_ipv6: bool,
    /// The ENI's source/destination check: on or off
    #[arg(long, value_name = "on|off", value_parser = parse_on_off, group = "change")]
    pub source_dest_check: Option<bool>,
    /// A public IPv4 address for the instance: assign, none or subnet-default (at once)
    #[arg(long, value_name = "WHETHER", value_parser = parse_public_ip, group = "change")]
    pub public_ip: Option<PublicIpAssignment>,
    /// A tag of the ENI (repeat the flag; replaces every tag but Tether's)
    #[arg(long = "eni-tag", value_name = "KEY=VALUE", value_parser = parse_tag, group = "change", conflicts_with = "no_eni_tags")]
    pub eni_tags: Vec<(String, String)>,
    /// Remove every tag of the ENI but Tether's
    #[arg(long, group = "change")]
    pub no_eni_tags: bool,
}

pub(crate) fn parse_public_ip(raw: &str) -> Result<PublicIpAssignment, String> {
    match raw {
        "assign" => Ok(PublicIpAssignment::Assign),
        "none" => Ok(PublicIpAssignment::None),
        "subnet-default" => Ok(PublicIpAssignment::SubnetDefault),
        _ => Err(format!("`{raw}`: give assign, none or subnet-default")),
    }
}

pub(crate) fn parse_on_off(raw: &str) -> Result<bool, String> {
    match raw {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{raw}`: give on or off")),
    }
}

/// Changes of the launch settings (`nodes update`, `groups update`): each is in the
/// command's `change` group, of which at least one is required.
#[derive(Debug, Args)]
pub struct LaunchChangeArgs {
    /// The AMI the next instances boot
    #[arg(long, value_name = "AMI_ID", group = "change")]
    pub image: Option<String>,
    /// Instance types in order of preference, spot first (repeat the flag; replaces the whole list)
    #[arg(long = "instance-type", value_name = "TYPE", group = "change")]
    pub instance_types: Vec<String>,
    /// The EC2 key pair of the next instances ('' removes it)
    #[arg(long, value_name = "NAME", group = "change")]
    pub key_name: Option<String>,
    /// An instance profile name or ARN ('' removes it)
    #[arg(long, value_name = "NAME_OR_ARN", group = "change")]
    pub instance_profile: Option<String>,
    /// A file whose text is the next instances' user data (an empty file removes it)
    #[arg(long, value_name = "FILE", group = "change")]
    pub user_data_file: Option<PathBuf>,
    /// A tag of the instances (repeat the flag; replaces every tag)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag, group = "change", conflicts_with = "no_tags")]
    pub tags: Vec<(String, String)>,
    /// Remove every tag
    #[arg(long, group = "change")]
    pub no_tags: bool,
    /// Fall back to on-demand when no spot capacity is left
    #[arg(long, group = "change", conflicts_with = "no_on_demand_fallback")]
    pub on_demand_fallback: bool,
    /// Never fall back to on-demand
    #[arg(long, group = "change")]
    pub no_on_demand_fallback: bool,
    /// After a fallback to on-demand, go back to spot: never, always, or HH:MM-HH:MM (UTC)
    #[arg(long, value_name = "POLICY", value_parser = parse_revert_to_spot, group = "change")]
    pub revert_to_spot: Option<RevertToSpot>,
    /// Let the metadata service answer IMDSv1 requests too (replaces the metadata settings:
    /// those not given take their defaults)
    #[arg(long, group = "change", conflicts_with = "imds_v2_only")]
    pub imds_v1: bool,
    /// IMDSv2 only (replaces the metadata settings, as --imds-v1)
    #[arg(long, group = "change")]
    pub imds_v2_only: bool,
    /// Network hops a metadata answer may take, 1 to 64 (replaces the metadata settings, as --imds-v1)
    #[arg(long, value_name = "HOPS", value_parser = clap::value_parser!(u8).range(1..=64), group = "change")]
    pub metadata_hop_limit: Option<u8>,
    /// A volume of every instance, DEVICE=SIZE_GIB[:TYPE] (repeat the flag; replaces every block device)
    #[arg(long = "block-device", value_name = "DEVICE=SIZE[:TYPE]", value_parser = parse_block_device, group = "change", conflicts_with = "no_block_devices")]
    pub block_devices: Vec<BlockDevice>,
    /// Launch with the AMI's volumes again
    #[arg(long, group = "change")]
    pub no_block_devices: bool,
    /// Seconds after a spot interruption warning (terminate) at which Tether terminates the
    /// instance to hand its ENI over early, 0 to 110; `off`: AWS terminates it (takes effect at once)
    #[arg(long, value_name = "SECONDS|off", value_parser = parse_handover, group = "change")]
    pub handover_after_warning: Option<HandoverChange>,
    /// Base the next launches on a launch template, ID_OR_NAME[:VERSION]
    #[arg(long, value_name = "ID_OR_NAME[:VERSION]", value_parser = parse_launch_template, group = "change", conflicts_with = "no_launch_template")]
    pub launch_template: Option<LaunchTemplateRef>,
    /// Stop using a launch template (the spec must then name an image and instance types)
    #[arg(long, group = "change")]
    pub no_launch_template: bool,
    /// The most to pay per hour on spot, in USD; `off`: the on-demand price
    #[arg(long, value_name = "USD|off", group = "change")]
    pub spot_max_price: Option<String>,
    /// The capacity the on-demand fallback may use: open, none, cr-…, a group's ARN, or
    /// `off` to send none
    #[arg(long, value_name = "open|none|cr-…|ARN|off", group = "change")]
    pub capacity_reservation: Option<String>,
}

/// `--handover-after-warning` of an update: a number of seconds, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoverChange(pub Option<u8>);

pub(crate) fn parse_handover(raw: &str) -> Result<HandoverChange, String> {
    if raw == "off" {
        return Ok(HandoverChange(None));
    }
    match raw.parse::<u8>() {
        Ok(seconds) if tether::model::HANDOVER_AFTER_WARNING_SECONDS.contains(&seconds) => Ok(HandoverChange(Some(seconds))),
        _ => Err(format!("`{raw}` is neither 0 to 110 seconds nor `off`")),
    }
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until the node is settled (running, paused, deallocated or error), showing progress
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "wait")]
    pub timeout: u64,
}

impl WaitArgs {
    /// How long to wait, when waiting.
    pub fn timeout(&self) -> Option<Duration> {
        self.wait.then(|| Duration::from_secs(self.timeout))
    }
}

#[derive(Debug, Args)]
pub struct PostArgs {
    /// The request's Idempotency-Key (default: a new UUID); reuse it to repeat a request safely
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

pub(crate) fn parse_tag(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

/// `DEVICE=SIZE_GIB[:TYPE]`, e.g. `/dev/xvda=100:gp3`; the API checks the values.
pub(crate) fn parse_block_device(raw: &str) -> Result<BlockDevice, String> {
    let (device_name, volume) = raw.split_once('=').ok_or("expected DEVICE=SIZE_GIB[:TYPE], e.g. /dev/xvda=100:gp3")?;
    let (size, kind) = volume.split_once(':').map_or((volume, None), |(s, t)| (s, Some(t)));
    let volume_size_gib = size.parse().map_err(|_| format!("`{size}` is no size in GiB"))?;
    let volume_type = match kind {
        None => VolumeType::default(),
        Some(kind) => volume_type(kind)?,
    };
    Ok(BlockDevice {
        device_name: device_name.to_owned(),
        volume_size_gib,
        volume_type,
        iops: None,
        throughput_mibps: None,
        encrypted: None,
        kms_key_id: None,
        delete_on_termination: true,
    })
}

pub(crate) fn parse_revert_to_spot(s: &str) -> Result<RevertToSpot, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether::health::{AutoHealing, DailyWindow};
    use tether::schedules::{Schedule, ScheduledAction};

    fn volume(device: &str, size: u32, volume_type: VolumeType, iops: Option<u32>, throughput_mibps: Option<u32>) -> DataVolume {
        DataVolume { device_name: device.into(), volume_size_gib: size, volume_type, iops, throughput_mibps, encrypted: None, kms_key_id: None }
    }

    #[test]
    fn a_data_volume_is_device_size_and_optionally_type_iops_and_throughput() {
        assert_eq!(parse_data_volume("/dev/sdf:100"), Ok(volume("/dev/sdf", 100, VolumeType::Gp3, None, None)));
        assert_eq!(parse_data_volume("/dev/sdf:100:gp3:4000:250"), Ok(volume("/dev/sdf", 100, VolumeType::Gp3, Some(4000), Some(250))));
        assert_eq!(parse_data_volume("/dev/sdg:500:io2:16000"), Ok(volume("/dev/sdg", 500, VolumeType::Io2, Some(16000), None)));
        assert_eq!(parse_data_volume("/dev/sdh:100::3000"), Ok(volume("/dev/sdh", 100, VolumeType::Gp3, Some(3000), None)), "an empty part takes its default");
        assert_eq!(parse_data_volume("/dev/sdh:100:gp3::500"), Ok(volume("/dev/sdh", 100, VolumeType::Gp3, None, Some(500))));
        for (raw, says) in [
            ("", "no device name"),
            ("/dev/sdf", "no size in GiB"),
            ("/dev/sdf:", "no size in GiB"),
            ("/dev/sdf:big", "`big` is no size in GiB"),
            ("/dev/sdf=100", "separated by `:`"),
            ("/dev/sdf:100:gp9", "`gp9` is no volume type: gp3, gp2, io1, io2, st1, sc1 or standard"),
            ("/dev/sdf:100:gp3:many", "`many` is no number of IOPS"),
            ("/dev/sdf:100:gp3:3000:fast", "`fast` is no throughput in MiB/s"),
            ("/dev/sdf:100:gp3:3000:125:x", "nothing comes after the throughput"),
        ] {
            let why = parse_data_volume(raw).map(|v| format!("accepted: {v:?}")).unwrap_or_else(|e| e);
            assert!(why.contains(says), "{raw}: {why}");
            assert!(why.contains("accepted") || why.contains(DATA_VOLUME_FORM) || why.contains("no volume type"), "{raw}: names the form: {why}");
        }
    }

    #[test]
    fn encryption_flags_apply_to_every_data_volume_and_a_key_implies_encryption() {
        let two = vec![volume("/dev/sdf", 10, VolumeType::Gp3, None, None), volume("/dev/sdg", 20, VolumeType::Gp2, None, None)];
        let args = |encrypt, key: Option<&str>| DataVolumeArgs { data_volumes: two.clone(), encrypt_data_volumes: encrypt, data_volume_kms_key: key.map(str::to_owned) };
        assert!(args(false, None).volumes().iter().all(|v| v.encrypted.is_none() && v.kms_key_id.is_none()), "the account's default decides");
        assert!(args(true, None).volumes().iter().all(|v| v.encrypted == Some(true) && v.kms_key_id.is_none()));
        assert!(args(false, Some("alias/data")).volumes().iter().all(|v| v.encrypted == Some(true) && v.kms_key_id.as_deref() == Some("alias/data")));
    }

    #[test]
    fn deallocation_flags_take_the_api_s_words_and_change_only_the_fields_given() {
        assert_eq!(parse_eni_fate("keep"), Ok(EniPolicy(Some(EniFate::Keep))));
        assert_eq!(parse_eni_fate("default"), Ok(EniPolicy(None)));
        assert_eq!(parse_volume_fate("snapshot-and-delete"), Ok(VolumeFate::SnapshotAndDelete));
        assert_eq!(parse_volume_fate("snapshot_and_delete"), Ok(VolumeFate::SnapshotAndDelete), "the API's spelling too");
        assert_eq!(parse_elastic_ip_fate("keep"), Ok(ElasticIpFate::Keep));
        assert_eq!(parse_eni_fate("drop"), Err("`drop`: give delete, keep or default".into()));
        assert_eq!(parse_volume_fate("snapshot"), Err("`snapshot`: give keep, delete or snapshot-and-delete".into()));
        assert_eq!(parse_elastic_ip_fate("delete"), Err("`delete`: give release or keep".into()));

        let current = DeallocationPolicy { enis: Some(EniFate::Keep), data_volumes: VolumeFate::Delete, elastic_ip: ElasticIpFate::Keep };
        let only_volumes = DeallocationChanges { data_volumes: Some(VolumeFate::SnapshotAndDelete), ..DeallocationChanges::default() };
        assert_eq!(only_volumes.apply(current), DeallocationPolicy { data_volumes: VolumeFate::SnapshotAndDelete, ..current });
        let eni_default = DeallocationChanges { enis: Some(EniPolicy(None)), ..DeallocationChanges::default() };
        assert_eq!(eni_default.apply(current), DeallocationPolicy { enis: None, ..current });
        assert_eq!(DeallocationChanges::default().apply(current), current);
    }

    #[test]
    fn the_flags_parse_on_the_commands_that_take_them() {
        use clap::Parser;
        let create = ["tether", "nodes", "create", "--subnet", "subnet-1", "--image", "ami-1", "--instance-type", "m5.large"];
        let parse = |base: &[&str], more: &[&str]| Cli::try_parse_from(base.iter().chain(more).copied());
        let cli = parse(&create, &["--data-volume", "/dev/sdf:100", "--data-volume", "/dev/sdg:20:io1:1000", "--encrypt-data-volumes", "--on-deallocate-data-volumes", "delete", "--on-deallocate-enis", "keep"]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Create(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.data.volumes().len(), 2);
        assert_eq!(args.deallocation.policy(), DeallocationPolicy { enis: Some(EniFate::Keep), data_volumes: VolumeFate::Delete, elastic_ip: ElasticIpFate::Release });

        // Usage errors name the flag and the accepted forms.
        let bad = parse(&create, &["--data-volume", "/dev/sdf"]).map(|_| ()).unwrap_err().to_string();
        assert!(bad.contains("--data-volume <DEVICE:SIZE_GIB[:TYPE[:IOPS[:THROUGHPUT]]]>") && bad.contains("no size in GiB"), "{bad}");
        let bad = parse(&create, &["--on-deallocate-data-volumes", "later"]).map(|_| ()).unwrap_err().to_string();
        assert!(bad.contains("--on-deallocate-data-volumes <keep|delete|snapshot-and-delete>"), "{bad}");
        let lonely = parse(&create, &["--data-volume-kms-key", "alias/data"]).map(|_| ()).unwrap_err();
        assert_eq!(lonely.kind(), clap::error::ErrorKind::MissingRequiredArgument, "a key needs a data volume: {lonely}");

        let update = parse(&["tether", "nodes", "update", "tn-1"], &["--on-deallocate-elastic-ip", "keep"]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Update(args)), .. }) = update else { panic!("{update:?}") };
        assert_eq!(args.deallocation.changes(), Some(DeallocationChanges { elastic_ip: Some(ElasticIpFate::Keep), ..DeallocationChanges::default() }));

        let group = ["tether", "groups", "create", "--name", "g", "--subnet", "subnet-1", "--image", "ami-1", "--instance-type", "m5.large", "--target", "0"];
        let cli = parse(&group, &["--data-volume", "/dev/sdf:50", "--on-deallocate-data-volumes", "snapshot-and-delete"]);
        let Ok(Cli { command: Command::Groups(GroupsCommand::Create(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!((args.data.volumes().len(), args.deallocation.policy().data_volumes), (1, VolumeFate::SnapshotAndDelete));
    }

    fn schedule(action: ScheduledAction, cron: &str, time_zone: &str) -> Schedule {
        Schedule { action, cron: cron.into(), time_zone: time_zone.into() }
    }

    #[test]
    fn a_schedule_is_an_action_five_cron_fields_and_an_optional_zone_in_one_argument() {
        use healing::parse_schedule;
        assert_eq!(parse_schedule("pause 0 20 * * 1-5 Europe/Paris"), Ok(schedule(ScheduledAction::Pause, "0 20 * * 1-5", "Europe/Paris")));
        assert_eq!(parse_schedule("resume 30 7 * * MON-FRI"), Ok(schedule(ScheduledAction::Resume, "30 7 * * MON-FRI", "UTC")), "UTC by default");
        assert_eq!(parse_schedule("  recycle   0  3 1 *  *  "), Ok(schedule(ScheduledAction::Recycle, "0 3 1 * *", "UTC")), "spaces collapse");
        assert_eq!(parse_schedule("recycle @weekly America/New_York"), Ok(schedule(ScheduledAction::Recycle, "@weekly", "America/New_York")));
        assert_eq!(parse_schedule("pause @daily"), Ok(schedule(ScheduledAction::Pause, "@daily", "UTC")));
        // The fields' values are the API's to check (its 422 names spec.schedules[i].cron).
        assert_eq!(parse_schedule("pause 61 20 * * *"), Ok(schedule(ScheduledAction::Pause, "61 20 * * *", "UTC")));
        for (raw, says) in [
            ("", "nothing given"),
            ("pause", "`pause` has no cron pattern"),
            ("stop 0 20 * * *", "`stop` is no action: pause, resume or recycle"),
            ("pause 0 20 * *", "`0 20 * *` has 4 cron fields: give five"),
            ("pause 0 20 * * Europe/Paris", "`0 20 * *` has 4 cron fields before the time zone Europe/Paris"),
            ("pause 0 20 * * 1-5 Mars/Olympus", "`Mars/Olympus` is no IANA time zone"),
            ("pause 0 0 20 * * 1-5 UTC", "has 7 words after the action"),
            ("pause @daily UTC extra", "nothing but a time zone comes after @daily"),
        ] {
            let why = parse_schedule(raw).map(|s| format!("accepted: {s:?}")).unwrap_or_else(|e| e);
            assert!(why.contains(says), "{raw:?}: {why}");
            assert!(why.contains("'ACTION CRON [TIME_ZONE]' as one quoted argument"), "{raw:?}: names the form: {why}");
        }
    }

    #[test]
    fn max_heals_and_the_maintenance_window_parse_with_their_ranges() {
        use healing::{parse_daily_window, parse_max_heals};
        assert_eq!(parse_max_heals("3"), Ok(MaxHeals { count: 3, window_hours: None }));
        assert_eq!(parse_max_heals("5/48"), Ok(MaxHeals { count: 5, window_hours: Some(48) }));
        for (raw, says) in [("0", "`0` is not 1 to 20 heals"), ("21/24", "`21` is not 1 to 20 heals"), ("3/0", "`0` is not 1 to 168 hours"), ("3/169", "`169` is not 1 to 168 hours"), ("3/day", "`day` is not 1 to 168 hours"), ("", "is not 1 to 20 heals")] {
            let why = parse_max_heals(raw).map(|m| format!("accepted: {m:?}")).unwrap_or_else(|e| e);
            assert!(why.contains(says) && why.contains("N[/HOURS]"), "{raw:?}: {why}");
        }
        let at = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default();
        assert_eq!(parse_daily_window("02:00-04:30"), Ok(DailyWindow { start: at(2, 0), end: at(4, 30) }));
        assert_eq!(parse_daily_window("23:00-01:00"), Ok(DailyWindow { start: at(23, 0), end: at(1, 0) }), "spans midnight");
        assert_eq!(parse_daily_window("02:00:00-04:00:00"), Ok(DailyWindow { start: at(2, 0), end: at(4, 0) }), "the API's HH:MM:SS too");
        for (raw, says) in [("02:00", "`02:00`: give HH:MM-HH:MM"), ("2am-4am", "`2am` is no time of day"), ("02:00-25:00", "`25:00` is no time of day"), ("02:00-02:00", "an empty window")] {
            let why = parse_daily_window(raw).map(|w| format!("accepted: {w:?}")).unwrap_or_else(|e| e);
            assert!(why.contains(says) && why.contains("HH:MM-HH:MM (UTC)"), "{raw:?}: {why}");
        }
    }

    #[test]
    fn healing_flags_change_only_the_settings_given() {
        let current = AutoHealing { enabled: true, unhealthy_duration_seconds: 600, grace_period_seconds: 120, max_heals: 5, window_hours: 48 };
        let off = HealingChanges { enabled: Some(false), ..HealingChanges::default() };
        assert_eq!(off.apply(current), AutoHealing { enabled: false, ..current });
        let count_only = HealingChanges { max_heals: Some(MaxHeals { count: 2, window_hours: None }), ..HealingChanges::default() };
        assert_eq!(count_only.apply(current), AutoHealing { max_heals: 2, ..current }, "the node's window is kept");
        let both = HealingChanges { max_heals: Some(MaxHeals { count: 2, window_hours: Some(12) }), unhealthy_duration_seconds: Some(60), ..HealingChanges::default() };
        assert_eq!(both.apply(current), AutoHealing { max_heals: 2, window_hours: 12, unhealthy_duration_seconds: 60, ..current });
        assert_eq!(HealingChanges::default().apply(current), current);
    }

    #[test]
    fn healing_and_schedule_flags_parse_on_the_commands_that_take_them() {
        use clap::Parser;
        let parse = |base: &[&str], more: &[&str]| Cli::try_parse_from(base.iter().chain(more).copied());
        let create = ["tether", "nodes", "create", "--subnet", "subnet-1", "--image", "ami-1", "--instance-type", "m5.large"];
        let cli = parse(&create, &["--unhealthy-after", "120", "--max-heals", "5/12", "--maintenance-window", "02:00-04:00", "--schedule", "pause 0 20 * * 1-5 Europe/Paris", "--schedule", "resume 0 7 * * 1-5 Europe/Paris"]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Create(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.healing.policy(), AutoHealing { unhealthy_duration_seconds: 120, max_heals: 5, window_hours: 12, ..AutoHealing::default() });
        assert_eq!(args.healing.maintenance_window.map(|w| w.start.to_string()), Some("02:00:00".to_owned()));
        assert_eq!(args.schedules.schedules.iter().map(|s| s.action).collect::<Vec<_>>(), [ScheduledAction::Pause, ScheduledAction::Resume]);
        let cli = parse(&create, &["--no-auto-healing"]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Create(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.healing.policy(), AutoHealing { enabled: false, ..AutoHealing::default() });
        let cli = parse(&create, &[]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Create(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!((args.healing.policy(), args.healing.maintenance_window, args.schedules.schedules.len()), (AutoHealing::default(), None, 0), "the API's defaults");

        // Usage errors name the flag and the accepted form.
        for (more, says) in [
            (["--unhealthy-after", "30"], "--unhealthy-after <SECONDS>"),
            (["--healing-grace", "soon"], "--healing-grace <SECONDS>"),
            (["--max-heals", "3/0"], "--max-heals <N[/HOURS]>"),
            (["--maintenance-window", "02:00"], "--maintenance-window <HH:MM-HH:MM>"),
            (["--schedule", "pause"], "--schedule <ACTION CRON [TIME_ZONE]>"),
        ] {
            let bad = parse(&create, &more).map(|_| ()).unwrap_err();
            assert_eq!(bad.kind(), clap::error::ErrorKind::ValueValidation, "{more:?}: {bad}");
            assert!(bad.to_string().contains(says), "{more:?}: {bad}");
        }
        let both = parse(&create, &["--auto-healing", "--no-auto-healing"]).map(|_| ()).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);

        let update = ["tether", "nodes", "update", "tn-1"];
        let cli = parse(&update, &["--no-auto-healing", "--no-schedules", "--no-maintenance-window"]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Update(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.healing.changes(), Some(HealingChanges { enabled: Some(false), ..HealingChanges::default() }));
        assert_eq!((args.healing.schedules(), args.healing.maintenance_window()), (Some(Vec::new()), Some(None)), "[] and null remove them");
        let cli = parse(&update, &["--schedule", "recycle @weekly"]);
        let Ok(Cli { command: Command::Nodes(NodesCommand::Update(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!((args.healing.changes(), args.healing.schedules().map(|s| s.len()), args.healing.maintenance_window()), (None, Some(1), None), "nothing else changes");
        for conflict in [&["--schedule", "pause @daily", "--no-schedules"][..], &["--maintenance-window", "01:00-02:00", "--no-maintenance-window"], &["--auto-healing", "--no-auto-healing"]] {
            let bad = parse(&update, conflict).map(|_| ()).unwrap_err();
            assert_eq!(bad.kind(), clap::error::ErrorKind::ArgumentConflict, "{conflict:?}");
        }

        let group = ["tether", "groups", "create", "--name", "g", "--subnet", "subnet-1", "--image", "ami-1", "--instance-type", "m5.large", "--target", "0"];
        let cli = parse(&group, &["--healing-grace", "0", "--maintenance-window", "23:00-01:00"]);
        let Ok(Cli { command: Command::Groups(GroupsCommand::Create(args)), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!((args.healing.policy().grace_period_seconds, args.healing.maintenance_window.is_some()), (0, true));
        assert!(parse(&group, &["--schedule", "pause @daily"]).is_err(), "a group's members are paused and resumed by their group");
    }
}
