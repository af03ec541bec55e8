//! The node's network identity beyond its primary IP, on its kept ENI: secondary private
//! IPs, IPv6 addresses, the source/destination check and the ENI's tags. Set when the ENI is
//! made (or first launched on) and changed in place by a PATCH: nothing is launched for it.

use tracing::info;

use super::Tether;
use crate::error::AwsError;
use crate::model::{EniRecord, NodeSpec, PublicIpAssignment};
use crate::network_identity::address_changes;

/// What the ENI's settings (source/destination check, public IP, tags) are known to be
/// before a convergence: what decides which calls it makes. Addresses are always read
/// from the ENI as EC2 has it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Baseline<'a> {
    /// Just made by CreateNetworkInterface: EC2's defaults, with the spec's tags.
    New,
    /// Last made to match this spec.
    Was(&'a NodeSpec),
    /// Not known (an earlier attempt may have changed it, or died before recording that it
    /// did): every setting is sent (each call is idempotent).
    Unknown,
}

/// Why the ENI could not be made to match the spec: the spec field and EC2's refusal.
pub(super) struct Refused {
    pub field: &'static str,
    pub error: AwsError,
}

impl Tether {
    /// Makes `eni` (as EC2 has it) carry the addresses and settings `spec` asks for, where
    /// they differ from `before`. What it did, in words, with the ENI as it is now. An
    /// unassign or assign already done counts as done, so a retry repeats nothing; addresses
    /// a count got twice (two convergences at once) are given back.
    pub(super) async fn converge_eni(&self, spec: &NodeSpec, before: Baseline<'_>, eni: &EniRecord) -> Result<Result<(EniRecord, Vec<String>), Refused>, AwsError> {
        let mut eni = eni.clone();
        let mut done = Vec::new();
        let refused = |field, e: AwsError| if e.is_retryable() { Err(e) } else { Ok(Err(Refused { field, error: e })) };
        let ips = address_changes(spec.secondary_private_ips.as_ref(), &eni.secondary_private_ips);
        if !ips.unassign.is_empty() {
            if let Err(e) = self.network.unassign_private_ips(&eni.id, &ips.unassign).await {
                return refused("secondary_private_ips", e);
            }
            eni.secondary_private_ips.retain(|ip| !ips.unassign.contains(ip));
            done.push(format!("secondary private IPs {} unassigned", list(&ips.unassign)));
        }
        if !ips.assign.is_empty() || ips.assign_count > 0 {
            let had = eni.secondary_private_ips.clone();
            eni = match self.network.assign_private_ips(&eni.id, &ips.assign, ips.assign_count).await {
                Ok(now) => now,
                Err(e) => return refused("secondary_private_ips", e),
            };
            let new: Vec<_> = eni.secondary_private_ips.iter().filter(|ip| !had.contains(ip)).copied().collect();
            done.push(format!("secondary private IPs {} assigned", list(&new)));
            let extra = address_changes(spec.secondary_private_ips.as_ref(), &eni.secondary_private_ips).unassign;
            if !extra.is_empty() {
                if let Err(e) = self.network.unassign_private_ips(&eni.id, &extra).await {
                    return refused("secondary_private_ips", e);
                }
                eni.secondary_private_ips.retain(|ip| !extra.contains(ip));
                done.push(format!("secondary private IPs {} given back (assigned twice)", list(&extra)));
            }
        }
        let v6 = address_changes(spec.ipv6.as_ref(), &eni.ipv6_addresses);
        if !v6.unassign.is_empty() {
            if let Err(e) = self.network.unassign_ipv6(&eni.id, &v6.unassign).await {
                return refused("ipv6", e);
            }
            eni.ipv6_addresses.retain(|ip| !v6.unassign.contains(ip));
            done.push(format!("IPv6 addresses {} unassigned", list(&v6.unassign)));
        }
        if !v6.assign.is_empty() || v6.assign_count > 0 {
            let had = eni.ipv6_addresses.clone();
            eni = match self.network.assign_ipv6(&eni.id, &v6.assign, v6.assign_count).await {
                Ok(now) => now,
                Err(e) => return refused("ipv6", e),
            };
            let new: Vec<_> = eni.ipv6_addresses.iter().filter(|ip| !had.contains(ip)).copied().collect();
            done.push(format!("IPv6 addresses {} assigned", list(&new)));
            let extra = address_changes(spec.ipv6.as_ref(), &eni.ipv6_addresses).unassign;
            if !extra.is_empty() {
                if let Err(e) = self.network.unassign_ipv6(&eni.id, &extra).await {
                    return refused("ipv6", e);
                }
                eni.ipv6_addresses.retain(|ip| !extra.contains(ip));
                done.push(format!("IPv6 addresses {} given back (assigned twice)", list(&extra)));
            }
        }
        // A new ENI has no public IP (EC2's default for one made by CreateNetworkInterface).
        let assigned_before = match before {
            Baseline::New => Some(PublicIpAssignment::None),
            Baseline::Was(b) => Some(b.public_ip_assignment),
            Baseline::Unknown => None,
        };
        if assigned_before != Some(spec.public_ip_assignment) {
            let assign = match spec.public_ip_assignment {
                PublicIpAssignment::Assign => true,
                PublicIpAssignment::None => false,
                PublicIpAssignment::SubnetDefault => self.network.describe_subnet(&spec.subnet_id).await?.is_some_and(|s| s.map_public_ip_on_launch),
            };
            if assign || !matches!(before, Baseline::New) {
                if let Err(e) = self.network.set_public_ip(&eni.id, assign).await {
                    return refused("public_ip_assignment", e);
                }
                done.push(format!("public IP {}", if assign { "assigned (a new one with each instance)" } else { "removed" }));
            }
        }
        // A new ENI has the check on (EC2's default).
        let check_before = match before {
            Baseline::New => Some(true),
            Baseline::Was(b) => Some(b.source_dest_check),
            Baseline::Unknown => None,
        };
        if check_before != Some(spec.source_dest_check) {
            if let Err(e) = self.network.set_source_dest_check(&eni.id, spec.source_dest_check).await {
                return refused("source_dest_check", e);
            }
            done.push(format!("source/destination check {}", if spec.source_dest_check { "on" } else { "off" }));
        }
        // A new ENI was tagged when it was made; of an unknown one, the spec's tags are set
        // (tags it no longer names are not known, so none are removed).
        let removed: Option<Vec<String>> = match before {
            Baseline::New => None,
            Baseline::Was(b) => (b.eni_tags != spec.eni_tags).then(|| b.eni_tags.keys().filter(|k| !spec.eni_tags.contains_key(*k)).cloned().collect()),
            Baseline::Unknown => (!spec.eni_tags.is_empty()).then(Vec::new),
        };
        if let Some(removed) = removed {
            if let Err(e) = self.network.retag_eni(&eni.id, &spec.eni_tags, &removed).await {
                return refused("eni_tags", e);
            }
            done.push("ENI tags set".into());
        }
        if !done.is_empty() {
            info!(eni_id = eni.id, changes = done.join("; "), "ENI changed in place");
        }
        Ok(Ok((eni, done)))
    }
}

impl Refused {
    /// Words for the node's history or an API error: the field, then EC2's reason, with the
    /// quota named as one when EC2 refuses for a limit.
    pub(super) fn reason(&self) -> String {
        let quota = self.error.code.as_deref().is_some_and(|c| c.contains("LimitExceeded") || c == "InsufficientFreeAddressesInSubnet");
        let hint = if quota { " (a quota: the instance type's addresses per ENI, or the subnet's free addresses)" } else { "" };
        format!("{}: EC2 refused it{hint}: {}", self.field, self.error)
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
