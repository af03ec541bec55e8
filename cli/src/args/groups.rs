//! `tether groups …`: what the group commands accept.

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{DataVolumeArgs, DeallocationArgs, HealingArgs, LaunchArgs, LaunchChangeArgs, PostArgs};

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List groups (one page unless --all)
    List {
        /// Groups per page, 1 to 100 (the API's default: 25)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: Option<u32>,
        /// Follow `next_token` until the last page
        #[arg(long)]
        all: bool,
    },
    /// Show one group: state, what its members make of the target, subnets, pools, template
    Show {
        #[arg(value_name = "GROUP_ID")]
        id: String,
    },
    /// The group's members, pool members first (deallocated ones included)
    Members {
        #[arg(value_name = "GROUP_ID")]
        id: String,
    },
    /// Create a group; its controller creates a paused member per pool address and runs the target
    Create(Box<GroupCreateArgs>),
    /// Change a group: name, target, pools, subnets, deletion protection, launch settings
    #[command(alias = "patch")]
    Update(Box<GroupUpdateArgs>),
    /// Set how many members run (pool members first, then members with addresses EC2 picks)
    Scale {
        #[command(flatten)]
        action: GroupActionArgs,
        /// The new target capacity (0 to 500)
        #[arg(value_name = "N")]
        target: u32,
    },
    /// Pause every member (instances terminated, ENIs and Elastic IPs kept); the target is kept
    Pause(GroupActionArgs),
    /// Resume a paused group (and clear every hold): its target runs again
    Resume(GroupActionArgs),
    /// Rolling recycle: every running member gets a new instance on its own ENI, --max-unavailable at a time
    Recycle(GroupActionArgs),
    /// Deallocate every member and the group (refused while deletion protection is on)
    Deallocate {
        /// Keep every member's ENI (and private IP); pool Elastic IPs are disassociated anyway
        #[arg(long)]
        keep_enis: bool,
        #[command(flatten)]
        action: GroupActionArgs,
    },
}

/// The group an action is for, and how it is sent.
#[derive(Debug, Args)]
pub struct GroupActionArgs {
    #[arg(value_name = "GROUP_ID")]
    pub id: String,
    #[command(flatten)]
    pub wait: GroupWaitArgs,
    #[command(flatten)]
    pub post: PostArgs,
}

#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    /// The group's name (1 to 128 characters)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// A subnet of the group's VPC (repeat the flag: members with addresses EC2 picks are spread across them)
    #[arg(long = "subnet", value_name = "SUBNET_ID", required = true)]
    pub subnets: Vec<String>,
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Each member's own data volumes (made at its first resume, in its subnet's AZ)
    #[command(flatten)]
    pub data: DataVolumeArgs,
    /// What a member's deallocation deletes (a pool Elastic IP always goes back to the pool)
    #[command(flatten)]
    pub deallocation: DeallocationArgs,
    /// Each member's auto-healing and maintenance window
    #[command(flatten)]
    pub healing: HealingArgs,
    /// How many members run (0 to 500)
    #[arg(long, value_name = "N")]
    pub target: u32,
    /// A pool address, inside one of the subnets (repeat the flag; pool members run first, in this order)
    #[arg(long = "private-ip", value_name = "IP")]
    pub private_ips: Vec<Ipv4Addr>,
    /// One of your Elastic IP allocations for the pool (repeat the flag; members take them at their first resume)
    #[arg(long = "elastic-ip", value_name = "ALLOCATION_ID")]
    pub elastic_ips: Vec<String>,
    /// How many members a rolling recycle replaces at a time
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_unavailable: u32,
    /// Allow `tether groups deallocate` without turning protection off first
    #[arg(long)]
    pub no_deletion_protection: bool,
    #[command(flatten)]
    pub wait: GroupWaitArgs,
    #[command(flatten)]
    pub post: PostArgs,
}

/// What `PATCH /groups/{id}` accepts; only what is given changes.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").multiple(true).required(true))]
pub struct GroupUpdateArgs {
    #[arg(value_name = "GROUP_ID")]
    pub id: String,
    /// A new name
    #[arg(long, value_name = "NAME", group = "change")]
    pub name: Option<String>,
    /// A new target capacity (as `tether groups scale`)
    #[arg(long, value_name = "N", group = "change")]
    pub target: Option<u32>,
    /// How many members a rolling recycle replaces at a time
    #[arg(long, value_name = "N", group = "change")]
    pub max_unavailable: Option<u32>,
    /// Refuse deallocation
    #[arg(long, group = "change", conflicts_with = "no_deletion_protection")]
    pub deletion_protection: bool,
    /// Allow deallocation
    #[arg(long, group = "change")]
    pub no_deletion_protection: bool,
    /// The whole new private-IP pool, comma-separated ('' empties it): an added address gets a
    /// paused member; a removed one takes along its members that never ran
    #[arg(long, value_name = "IP,IP,…", value_parser = parse_list::<Ipv4Addr>, group = "change")]
    pub private_ip_pool: Option<CommaList<Ipv4Addr>>,
    /// The whole new Elastic-IP pool, comma-separated ('' empties it); one a member holds cannot leave
    #[arg(long, value_name = "ALLOC,ALLOC,…", value_parser = parse_list::<String>, group = "change")]
    pub elastic_ip_pool: Option<CommaList<String>>,
    /// The whole new subnet list, comma-separated: subnets may be added; one is removed only
    /// once no member lives in it
    #[arg(long, value_name = "SUBNET,SUBNET,…", value_parser = parse_list::<String>, group = "change")]
    pub subnets: Option<CommaList<String>>,
    #[command(flatten)]
    pub launch: LaunchChangeArgs,
    #[command(flatten)]
    pub wait: GroupWaitArgs,
}

#[derive(Debug, Args)]
pub struct GroupWaitArgs {
    /// Wait until the group is settled (active: its target running, no rolling recycle left;
    /// paused: no member running; deallocated), showing progress
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "wait")]
    pub timeout: u64,
}

impl GroupWaitArgs {
    /// How long to wait, when waiting.
    pub fn timeout(&self) -> Option<Duration> {
        self.wait.then(|| Duration::from_secs(self.timeout))
    }
}

/// A comma-separated list given as one value (`''`: the empty list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommaList<T>(pub Vec<T>);

fn parse_list<T: FromStr>(raw: &str) -> Result<CommaList<T>, String>
where
    T::Err: Display,
{
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| item.parse::<T>().map_err(|e| format!("`{item}`: {e}")))
        .collect::<Result<Vec<T>, String>>()
        .map(CommaList)
}
