//! The verdict, from what the emulator reports (never from Tether's records): the
//! instances launched for each node, each one's addresses while it ran (the ledger's
//! sightings), and the Elastic IP on each node's ENI now.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::Filter;
use tether::aws::ec2::TAG_NODE_ID;
use tether::NodeId;

use super::observed::{Ledger, Snapshot};
use super::simulation::short;
use crate::event_source::generation_of;
use crate::{Fixture, SetupError};

/// What the demo asked for a node when it created it.
#[derive(Clone, Debug)]
pub struct Intent {
    pub id: NodeId,
    /// `--private-ip`; `None`: EC2 picks it at the first resume.
    pub private_ip: Option<String>,
    pub elastic_ip: ElasticIpIntent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElasticIpIntent {
    None,
    /// `--elastic-ip <allocation>`: the user's.
    Users(String),
    /// `--allocate-elastic-ip`: Tether allocates one.
    Tethers,
}

pub struct Summary {
    pub nodes: usize,
    /// Instances launched after their predecessor was reclaimed by the market (a resume
    /// after a group's scale-down is not one).
    pub replacements: usize,
    pub same_private_ip: bool,
    pub same_eip: bool,
    /// One line per node: its generations and addresses.
    pub lines: Vec<String>,
    /// Why identity was not kept, per node.
    pub problems: Vec<String>,
}

impl Summary {
    /// `summary: nodes=N interruptions=I replacements=R same_private_ip=yes same_eip=yes`.
    pub fn line(&self, interruptions: usize) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "summary: nodes={} interruptions={interruptions} replacements={} same_private_ip={} same_eip={}",
            self.nodes,
            self.replacements,
            yes(self.same_private_ip),
            yes(self.same_eip)
        )
    }
}

pub async fn summarize(fx: &Fixture, intents: &[Intent], ledger: &Ledger, reclaimed: &BTreeSet<String>) -> Result<Summary, SetupError> {
    let ids: Vec<NodeId> = intents.iter().map(|i| i.id.clone()).collect();
    let snapshot = Snapshot::poll(&fx.ec2, &ids).await?;
    let header = format!("{:<11}  {:<11}  {:<29}  {}", "node", "generations", "private IP", "Elastic IP");
    let mut summary = Summary { nodes: intents.len(), replacements: 0, same_private_ip: true, same_eip: true, lines: vec![header], problems: Vec::new() };
    for intent in intents {
        let name = short(&intent.id);
        let mut launched: Vec<(u64, String)> = snapshot
            .of_node(&intent.id)
            .filter_map(|i| Some((generation_of(i)?, i.instance_id()?.to_owned())))
            .collect();
        launched.sort();
        summary.replacements += launched.windows(2).filter(|pair| reclaimed.contains(&pair[0].1)).count();
        let sightings: Vec<_> = launched.iter().filter_map(|(_, id)| ledger.sightings.get(id)).collect();
        if sightings.len() != launched.len() {
            summary.problems.push(format!("{name}: {} of its {} instances were never seen running", launched.len() - sightings.len(), launched.len()));
            summary.same_private_ip = false;
        }
        let generations = match (launched.first(), launched.last()) {
            (Some((first, _)), Some((last, _))) => format!("{first}-{last}"),
            _ => "none".into(),
        };

        // Private IP: the first generation's, on every generation (the chosen one, if any).
        let first_ip = sightings.first().and_then(|s| s.private_ip.clone());
        let on_all = sightings.iter().filter(|s| s.private_ip.is_some() && s.private_ip == first_ip).count();
        let chosen_kept = intent.private_ip.is_none() || intent.private_ip == first_ip;
        if first_ip.is_none() || on_all != launched.len() || !chosen_kept {
            summary.same_private_ip = false;
            summary.problems.push(format!("{name}: private IPs seen {:?}, chosen {:?}", distinct(sightings.iter().map(|s| &s.private_ip)), intent.private_ip));
        }
        let origin = if intent.private_ip.is_some() { "chosen" } else { "EC2's pick" };
        let private = format!("{} on {on_all}/{}, {origin}", first_ip.as_deref().unwrap_or("-"), launched.len());

        // Elastic IP: the one on the node's ENI now, on every generation and on the running instance.
        let public = if intent.elastic_ip == ElasticIpIntent::None {
            "none asked".to_owned()
        } else {
            let address = elastic_ip_on_node_eni(fx, &intent.id).await?;
            let public_ip = address.as_ref().and_then(|a| a.public_ip()).map(str::to_owned);
            let on_all = sightings.iter().filter(|s| s.public_ip.is_some() && s.public_ip == public_ip).count();
            let running = snapshot.running(&intent.id).and_then(|i| i.instance_id());
            let on_running = running.is_some() && address.as_ref().and_then(|a| a.instance_id()) == running;
            let ours = match &intent.elastic_ip {
                ElasticIpIntent::Users(allocation) => address.as_ref().and_then(|a| a.allocation_id()) == Some(allocation.as_str()),
                _ => address.is_some(),
            };
            if public_ip.is_none() || on_all != launched.len() || !on_running || !ours {
                summary.same_eip = false;
                summary.problems.push(format!(
                    "{name}: Elastic IP now {public_ip:?} (on the running instance: {on_running}), public IPs seen {:?}",
                    distinct(sightings.iter().map(|s| &s.public_ip))
                ));
            }
            let whose = if matches!(intent.elastic_ip, ElasticIpIntent::Users(_)) { "the user's" } else { "Tether's" };
            let now = if on_running { "and now" } else { "but not now" };
            format!("{} on {on_all}/{} {now}, {whose}", public_ip.as_deref().unwrap_or("-"), launched.len())
        };
        summary.lines.push(format!("{name:<11}  {generations:<11}  {private:<29}  {public}"));
    }
    Ok(summary)
}

/// The Elastic IP associated with the node's ENI (the one tagged with the node's id).
async fn elastic_ip_on_node_eni(fx: &Fixture, node: &NodeId) -> Result<Option<aws_sdk_ec2::types::Address>, SetupError> {
    let tagged = Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node.as_str()).build();
    let enis = fx.ec2.describe_network_interfaces().filters(tagged).send().await?;
    let Some(eni_id) = enis.network_interfaces().first().and_then(|e| e.network_interface_id()) else { return Ok(None) };
    let on_eni = Filter::builder().name("network-interface-id").values(eni_id).build();
    let addresses = fx.ec2.describe_addresses().filters(on_eni).send().await?;
    Ok(addresses.addresses().first().cloned())
}

fn distinct<'a>(values: impl Iterator<Item = &'a Option<String>>) -> BTreeSet<String> {
    values.map(|v| v.clone().unwrap_or_else(|| "-".into())).collect()
}
