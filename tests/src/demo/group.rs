//! The demo's stateful group: a pool of 3 chosen private IPs and 2 Elastic IPs at target 3,
//! each member with a data volume, created with the CLI; while the market interrupts its
//! members, it is scaled to 2 and back to 3 (the member the scale-down paused comes back on
//! its own ENI), then to 4 (one member beyond the pool, on an address EC2 picks). Its
//! verdict is read from the emulator.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use serde_json::Value;
use tether::aws::ec2::TAG_NODE_ID;
use tether::group::GroupId;
use tether::ports::Registry;
use tether::NodeId;
use tether_cli::Environment;

use super::nodes::{DATA_DEVICE, DATA_VOLUME, INSTANCE_TYPES};
use super::observed::Snapshot;
use super::summary::{ElasticIpIntent, Intent};
use crate::{Fixture, SetupError};

/// The pool's hosts in the fixture's /24: clear of the single nodes' (50 and up).
const POOL_HOSTS: [u8; 3] = [100, 101, 102];
const POOL_EIPS: usize = 2;
const TARGET: u32 = 3;

pub struct DemoGroup {
    pub id: GroupId,
    pub pool_ips: Vec<String>,
    pub pool_eips: Vec<String>,
    /// The scale steps still to take: (when, target), by time.
    steps: Vec<(Duration, u32)>,
    /// The member the scale-down paused, with the ENI it had.
    pub paused_by_scale_down: Option<(NodeId, String)>,
    pub final_target: u32,
}

/// One CLI command line, in process; its JSON answer.
pub async fn cli(env: &Environment, args: &[String]) -> Result<Value, SetupError> {
    let command = ["tether", "--json"].into_iter().map(str::to_owned).chain(args.iter().cloned());
    let result = tether_cli::run_captured(command, env).await;
    if result.code != 0 {
        return Err(format!("`tether {}` exited with {}: {}", args.join(" "), result.code, result.stderr).into());
    }
    Ok(serde_json::from_str(&result.stdout)?)
}

impl DemoGroup {
    /// Creates the group with the CLI, each member with the demo's data volume, and waits
    /// until its target runs.
    pub async fn create(fx: &Fixture, env: &Environment, market_time: Duration) -> Result<DemoGroup, SetupError> {
        let pool_ips: Vec<String> = POOL_HOSTS.iter().map(|h| fx.subnet_ip(*h).to_string()).collect();
        let mut pool_eips = Vec::new();
        for _ in 0..POOL_EIPS {
            pool_eips.push(fx.allocate_eip().await?.0);
        }
        let mut args: Vec<String> = ["groups", "create", "--name", "demo-ring", "--subnet", &fx.subnet_id, "--image", &fx.image_id].map(str::to_owned).to_vec();
        for instance_type in INSTANCE_TYPES {
            args.extend(["--instance-type".to_owned(), instance_type.to_owned()]);
        }
        args.extend(["--security-group".to_owned(), fx.security_group_id.clone(), "--target".to_owned(), TARGET.to_string()]);
        for ip in &pool_ips {
            args.extend(["--private-ip".to_owned(), ip.clone()]);
        }
        for eip in &pool_eips {
            args.extend(["--elastic-ip".to_owned(), eip.clone()]);
        }
        args.extend(["--data-volume".to_owned(), DATA_VOLUME.to_owned(), "--wait".to_owned()]);
        println!("$ tether {}", args.join(" "));
        let created = cli(env, &args).await?;
        let id = created["id"].as_str().and_then(GroupId::parse).ok_or("the API answered no valid group id")?;
        println!(
            "  {}: {}, {} of {} running, pool {} / {}",
            short_group(&id),
            created["state"].as_str().unwrap_or("?"),
            created["status"]["running"].as_u64().unwrap_or(0),
            created["target_capacity"].as_u64().unwrap_or(0),
            pool_ips.join(", "),
            pool_eips.join(", ")
        );
        let at = |share: f64| Duration::from_secs_f64(market_time.as_secs_f64() * share);
        let steps = vec![(at(0.3), 2), (at(0.55), 3), (at(0.8), 4)];
        Ok(DemoGroup { id, pool_ips, pool_eips, steps, paused_by_scale_down: None, final_target: 4 })
    }

    /// The members' node ids, pool members first.
    pub async fn members(&self, fx: &Fixture) -> Result<Vec<NodeId>, SetupError> {
        let mut members = fx.store.members(&self.id).await?;
        members.sort_by_key(|m| (m.group.as_ref().and_then(|g| g.pool_ip).is_none(), m.group.as_ref().and_then(|g| g.pool_ip), m.created_at));
        Ok(members.into_iter().map(|m| m.id).collect())
    }

    /// The scale step due at `now`, if any, taken with the CLI; its words for the view.
    pub async fn step_due(&mut self, now: Duration, fx: &Fixture, env: &Environment) -> Result<Option<String>, SetupError> {
        let Some(&(at, target)) = self.steps.first() else { return Ok(None) };
        if now < at {
            return Ok(None);
        }
        self.steps.remove(0);
        let before = running_members(fx, &self.members(fx).await?).await?;
        let answer = cli(env, &["groups".into(), "scale".into(), self.id.to_string(), target.to_string()]).await?;
        let after = running_members(fx, &self.members(fx).await?).await?;
        if let Some((paused, eni)) = before.iter().find(|(id, _)| !after.contains_key(*id)) {
            if self.paused_by_scale_down.is_none() {
                self.paused_by_scale_down = Some(((*paused).clone(), eni.clone()));
            }
        }
        let status = match answer["status"]["below_target"].as_str() {
            Some(why) => why.to_owned(),
            None => format!("{} of {} running", answer["status"]["running"].as_u64().unwrap_or(0), answer["target_capacity"].as_u64().unwrap_or(0)),
        };
        Ok(Some(format!("$ tether groups scale {} {target}: {status}", short_group(&self.id))))
    }

    /// What the demo asked for each member, for the identity summary: its pool address, the
    /// pool Elastic IP the group handed it (or none), and the template's data volume.
    pub async fn intents(&self, fx: &Fixture) -> Result<Vec<Intent>, SetupError> {
        let mut intents = Vec::new();
        for member in fx.store.members(&self.id).await? {
            let elastic_ip = match &member.persistence.elastic_ip_allocation_id {
                Some(allocation) => ElasticIpIntent::Users(allocation.clone()),
                None => ElasticIpIntent::None,
            };
            intents.push(Intent {
                id: member.id,
                private_ip: member.persistence.private_ip.map(|ip| ip.to_string()),
                elastic_ip,
                data_volume: Some(DATA_DEVICE.to_owned()),
            });
        }
        Ok(intents)
    }
}

/// The running members and the ENI each runs on, as the emulator reports them.
async fn running_members(fx: &Fixture, members: &[NodeId]) -> Result<BTreeMap<NodeId, String>, SetupError> {
    let snapshot = Snapshot::poll(&fx.ec2, members).await?;
    Ok(members
        .iter()
        .filter_map(|m| {
            let instance = snapshot.running(m)?;
            let eni = instance.network_interfaces().first()?.network_interface_id()?;
            Some((m.clone(), eni.to_owned()))
        })
        .collect())
}

/// The group's verdict, from the emulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSummary {
    pub target: u32,
    pub members_running: usize,
    /// Every pool address is on the running instance of the member made for it.
    pub pool_ips_kept: bool,
    /// Pool Elastic IPs on a running member's instance.
    pub eips_on_members: usize,
    pub pool_eips: usize,
    /// The member the scale-down paused runs again, on the ENI it had.
    pub scaled_up_same_eni: bool,
    pub problems: Vec<String>,
}

impl GroupSummary {
    /// `groups=1 members_running=4/4 pool_ips_kept=yes eips_on_members=2/2 scaled_up_same_eni=yes`.
    pub fn fields(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "groups=1 members_running={}/{} pool_ips_kept={} eips_on_members={}/{} scaled_up_same_eni={}",
            self.members_running,
            self.target,
            yes(self.pool_ips_kept),
            self.eips_on_members,
            self.pool_eips,
            yes(self.scaled_up_same_eni)
        )
    }

    pub fn ok(&self) -> bool {
        self.members_running == self.target as usize && self.pool_ips_kept && self.eips_on_members == self.pool_eips && self.scaled_up_same_eni
    }
}

/// Reads the group's members from the table (which member was made for which address) and
/// everything else from the emulator: their running instances, addresses and ENIs.
pub async fn summarize_group(fx: &Fixture, group: &DemoGroup) -> Result<GroupSummary, SetupError> {
    let members = fx.store.members(&group.id).await?;
    let ids: Vec<NodeId> = members.iter().map(|m| m.id.clone()).collect();
    let snapshot = Snapshot::poll(&fx.ec2, &ids).await?;
    let mut summary = GroupSummary { target: group.final_target, pool_eips: group.pool_eips.len(), pool_ips_kept: true, ..GroupSummary::default() };
    for member in &members {
        let Some(instance) = snapshot.running(&member.id) else { continue };
        summary.members_running += 1;
        let private_ip = instance.private_ip_address().unwrap_or("-");
        if let Some(pool_ip) = member.group.as_ref().and_then(|g| g.pool_ip) {
            if private_ip != pool_ip.to_string() {
                summary.pool_ips_kept = false;
                summary.problems.push(format!("{}: made for pool address {pool_ip}, runs on {private_ip}", member.id));
            }
        }
    }
    for ip in &group.pool_ips {
        let running_on = snapshot.instances.iter().any(|i| i.private_ip_address() == Some(ip.as_str()) && super::observed::state_of(i) == "running");
        if !running_on {
            summary.pool_ips_kept = false;
            summary.problems.push(format!("pool address {ip}: no running member on it"));
        }
    }
    for allocation in &group.pool_eips {
        let address = fx.ec2.describe_addresses().allocation_ids(allocation).send().await?;
        let on = address.addresses().first().and_then(|a| a.instance_id()).filter(|i| !i.is_empty());
        let on_member = on.is_some_and(|i| snapshot.instances.iter().any(|m| m.instance_id() == Some(i) && super::observed::state_of(m) == "running"));
        if on_member {
            summary.eips_on_members += 1;
        } else {
            summary.problems.push(format!("pool Elastic IP {allocation}: not on a running member ({on:?})"));
        }
    }
    summary.scaled_up_same_eni = match &group.paused_by_scale_down {
        None => {
            summary.problems.push("the scale-down paused no member".into());
            false
        }
        Some((member, eni)) => {
            let now = eni_of(fx, member).await?;
            let running = snapshot.running(member).and_then(|i| i.network_interfaces().first()).and_then(|n| n.network_interface_id()).map(str::to_owned);
            let same = now.as_deref() == Some(eni.as_str()) && running.as_deref() == Some(eni.as_str());
            if !same {
                summary.problems.push(format!("{member}: paused on {eni}, now runs on {running:?} (its ENI: {now:?})"));
            }
            same
        }
    };
    Ok(summary)
}

/// The ENI tagged with the member's id.
async fn eni_of(fx: &Fixture, member: &NodeId) -> Result<Option<String>, SetupError> {
    let tagged = Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(member.as_str()).build();
    let enis = fx.ec2.describe_network_interfaces().filters(tagged).send().await?;
    Ok(enis.network_interfaces().first().and_then(|e| e.network_interface_id()).map(str::to_owned))
}

/// `tg-` and the first 8 hex digits.
pub fn short_group(id: &GroupId) -> String {
    id.as_str().chars().take(11).collect()
}
