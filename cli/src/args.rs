//! The command line: what `tether` accepts (clap).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tether::launch_options::{CapacityReservation, CpuCredits, LaunchTemplateRef};
use tether::model::{ExtraEni, PublicIpAssignment, RevertToSpot};
use tether::volumes::{BlockDevice, VolumeType};

mod groups;

pub use groups::{CommaList, GroupActionArgs, GroupCreateArgs, GroupUpdateArgs, GroupWaitArgs, GroupsCommand};

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
    /// Terminate the instance, delete the ENI, release (Tether's) or disassociate (yours) the Elastic IP
    Deallocate {
        #[arg(value_name = "NODE_ID")]
        id: String,
        /// Keep the ENI and the Elastic IP on it: the private IP stays reserved
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
        Some(kind) => serde_json::from_value(serde_json::Value::String(kind.to_owned())).map_err(|_| format!("`{kind}` is no volume type: gp3, gp2, io1, io2, st1, sc1 or standard"))?,
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
