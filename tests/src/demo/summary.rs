//! The verdict, from what the emulator reports (never from Tether's records): the
//! instances launched for each node, each one's addresses while it ran (the ledger's
//! sightings), the volumes its block device mappings showed while it ran, the Elastic IP on
//! each node's ENI now, and the node's data volume now (DescribeVolumes).

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Filter, VolumeState};
use tether::aws::ec2::{TAG_DEVICE_NAME, TAG_NODE_ID};
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
    /// The device name of the data volume asked for (`spec.data_volumes`), if any.
    pub data_volume: Option<String>,
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
    /// Every generation of every node that asked for a data volume had the same volume at
    /// the same device, and its running instance has it now.
    pub same_volumes: bool,
    /// One line per node: its generations, addresses and data volume.
    pub lines: Vec<String>,
    /// Why identity was not kept, per node.
    pub problems: Vec<String>,
}

impl Summary {
    /// `summary: nodes=N interruptions=I replacements=R same_private_ip=yes same_eip=yes same_volumes=yes`.
    pub fn line(&self, interruptions: usize) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "summary: nodes={} interruptions={interruptions} replacements={} same_private_ip={} same_eip={} same_volumes={}",
            self.nodes,
            self.replacements,
            yes(self.same_private_ip),
            yes(self.same_eip),
            yes(self.same_volumes)
        )
    }

    /// Every node kept its private IP, Elastic IP and data volume.
    pub fn ok(&self) -> bool {
        self.same_private_ip && self.same_eip && self.same_volumes && self.problems.is_empty()
    }
}

pub async fn summarize(fx: &Fixture, intents: &[Intent], ledger: &Ledger, reclaimed: &BTreeSet<String>) -> Result<Summary, SetupError> {
    let ids: Vec<NodeId> = intents.iter().map(|i| i.id.clone()).collect();
    let snapshot = Snapshot::poll(&fx.ec2, &ids).await?;
    let mut rows = vec![["node", "generations", "private IP", "Elastic IP", "data volume"].map(str::to_owned)];
    let mut summary = Summary { nodes: intents.len(), replacements: 0, same_private_ip: true, same_eip: true, same_volumes: true, lines: Vec::new(), problems: Vec::new() };
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

        let volume = match &intent.data_volume {
            None => "none asked".to_owned(),
            Some(device) => {
                let seen = data_volume_on_generations(fx, &intent.id, device, &launched, ledger, &snapshot).await?;
                if !seen.kept(launched.len()) {
                    summary.same_volumes = false;
                    summary.problems.push(format!("{name}: {}", seen.trouble.join("; ")));
                }
                let now = if seen.on_running { "and now" } else { "but not now" };
                format!("{} at {device} on {}/{} {now}", seen.volume_id.as_deref().unwrap_or("-"), seen.on_generations, launched.len())
            }
        };
        rows.push([name, generations, private, public, volume]);
    }
    let mut widths = [0; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    summary.lines = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect();
    Ok(summary)
}

/// One node's data volume at `device`, as the emulator showed it.
#[derive(Debug, Default)]
struct VolumeSeen {
    /// The volume at `device` on the earliest generation that had one there.
    volume_id: Option<String>,
    /// Generations whose instance had that volume, and only it, at `device`, and had it
    /// nowhere else, while it ran.
    on_generations: usize,
    /// The running instance has it at `device` now (DescribeVolumes: `in-use`, attached there).
    on_running: bool,
    trouble: Vec<String>,
}

impl VolumeSeen {
    fn kept(&self, generations: usize) -> bool {
        self.volume_id.is_some() && self.on_generations == generations && self.on_running && self.trouble.is_empty()
    }
}

/// Reads the ledger's attachments of each launched generation (`launched`: generation,
/// instance) and, now, the volumes tagged with the node (one made, and where it is).
async fn data_volume_on_generations(fx: &Fixture, node: &NodeId, device: &str, launched: &[(u64, String)], ledger: &Ledger, snapshot: &Snapshot) -> Result<VolumeSeen, SetupError> {
    let attached = |instance: &str| ledger.attachments.get(instance).cloned().unwrap_or_default();
    let mut seen = VolumeSeen {
        volume_id: launched.iter().find_map(|(_, instance)| attached(instance).into_iter().find(|(d, _)| d == device).map(|(_, v)| v)),
        ..VolumeSeen::default()
    };
    let Some(volume_id) = seen.volume_id.clone() else {
        seen.trouble.push(format!("no volume at {device} on any of its {} generations", launched.len()));
        return Ok(seen);
    };
    let mut missed = Vec::new();
    for (generation, instance) in launched {
        // At `device` or of this volume: exactly (device, volume), nothing else.
        let relevant: BTreeSet<(String, String)> = attached(instance).into_iter().filter(|(d, v)| d == device || *v == volume_id).collect();
        if relevant.len() == 1 && relevant.contains(&(device.to_owned(), volume_id.clone())) {
            seen.on_generations += 1;
        } else {
            let what = if relevant.is_empty() { "nothing".to_owned() } else { relevant.iter().map(|(d, v)| format!("{v} at {d}")).collect::<Vec<_>>().join(", ") };
            missed.push(format!("generation {generation} ({instance}) had {what}"));
        }
    }
    if !missed.is_empty() {
        seen.trouble.push(format!("{volume_id} not at {device} on every generation: {}", missed.join("; ")));
    }

    // The node's data volumes (tagged with the node and a device; instances' own volumes
    // may carry the node's tag too).
    let tagged = Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node.as_str()).build();
    let data = Filter::builder().name("tag-key").values(TAG_DEVICE_NAME).build();
    let volumes = fx.ec2.describe_volumes().filters(tagged).filters(data).send().await?;
    let made: Vec<&str> = volumes.volumes().iter().filter_map(|v| v.volume_id()).collect();
    if made != [volume_id.as_str()] {
        seen.trouble.push(format!("EC2 has {} data volume(s) tagged with the node ({}), one asked", made.len(), made.join(", ")));
    }
    let running = snapshot.running(node).and_then(|i| i.instance_id());
    let volume = volumes.volumes().iter().find(|v| v.volume_id() == Some(volume_id.as_str()));
    let in_use = volume.and_then(|v| v.state()) == Some(&VolumeState::InUse);
    let attachment = volume.and_then(|v| v.attachments().first());
    let on = attachment.and_then(|a| a.instance_id());
    let at = attachment.and_then(|a| a.device());
    seen.on_running = in_use && running.is_some() && on == running && at == Some(device);
    if !seen.on_running {
        let state = volume.and_then(|v| v.state()).map_or("gone", |s| s.as_str());
        seen.trouble.push(format!("{volume_id} now {state}, on {on:?} at {at:?}; the running instance is {running:?}"));
    }
    Ok(seen)
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
