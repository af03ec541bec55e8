//! A node's extra ENIs (`spec.extra_enis`, device indexes 1 and up): checked at create,
//! made (with their Elastic IPs) at the first launch, attached by every launch, deleted at
//! deallocation unless the ENIs are kept. Like the node's subnet they are fixed for its life.

use chrono::{DateTime, Utc};
use tracing::info;

use super::manage::check_private_ip;
use super::{Outcome, Tether, TetherError};
use crate::error::ErrorClass;
use crate::model::{ExtraEniRecord, Node, NodeSpec, Persistence};
use crate::network_identity::MAX_EXTRA_ENIS;
use crate::ports::{Address, EniRequest, SubnetInfo};

impl Tether {
    /// Refuses, naming the field, extra ENIs EC2 would refuse or that could not be made:
    /// a subnet that does not exist or is in another Availability Zone than the node's
    /// (an instance and its ENIs are in one), an address outside its subnet, reserved or in
    /// use, an Elastic IP that does not exist or is held.
    pub(super) async fn check_extra_enis(&self, spec: &NodeSpec, primary: &SubnetInfo) -> Result<(), TetherError> {
        for (i, extra) in spec.extra_enis.iter().enumerate() {
            let field = |name: &str| format!("spec.extra_enis[{i}].{name}");
            let subnet = self.network.describe_subnet(&extra.subnet_id).await?.ok_or_else(|| {
                TetherError::invalid(field("subnet_id"), format!("subnet {} does not exist in this Region", extra.subnet_id))
            })?;
            if subnet.availability_zone != primary.availability_zone {
                return Err(TetherError::invalid(
                    field("subnet_id"),
                    format!(
                        "subnet {} is in {}, the node's subnet {} in {}: an instance and its ENIs are in one Availability Zone; choose a subnet in {}",
                        extra.subnet_id, subnet.availability_zone, spec.subnet_id, primary.availability_zone, primary.availability_zone
                    ),
                ));
            }
            if let Some(ip) = extra.private_ip {
                check_private_ip(subnet.cidr, ip).map_err(|reason| TetherError::invalid(field("private_ip"), reason))?;
                if self.network.private_ip_in_use(&extra.subnet_id, ip).await? {
                    return Err(TetherError::invalid(field("private_ip"), format!("{ip} is already in use in {}; choose a free address, or omit it", extra.subnet_id)));
                }
                self.unreserved(&Address::PrivateIp { subnet_id: extra.subnet_id.clone(), ip }, &field("private_ip"), "").await?;
            }
            if let Some(allocation_id) = &extra.elastic_ip_allocation_id {
                self.unreserved(&Address::ElasticIp { allocation_id: allocation_id.clone() }, &field("elastic_ip_allocation_id"), "").await?;
                let eip = self.network.describe_eip(allocation_id).await?.ok_or_else(|| {
                    TetherError::invalid(field("elastic_ip_allocation_id"), format!("Elastic IP allocation {allocation_id} does not exist in this Region"))
                })?;
                if eip.association_id.is_some() {
                    let reason = format!("Elastic IP {} ({allocation_id}) is associated with {}; disassociate it or choose another", eip.public_ip, eip.holder());
                    return Err(TetherError::invalid(field("elastic_ip_allocation_id"), reason));
                }
            }
        }
        Ok(())
    }

    /// The node's extra ENIs, found (an earlier attempt may have made them) or created, each
    /// recorded before anything runs on it, then their Elastic IPs associated.
    /// `Err(outcome)`: the node went to ERROR, naming the extra ENI.
    pub(super) async fn ensure_extra_enis(&self, mut node: Node, deadline: DateTime<Utc>) -> Result<Result<Node, Outcome>, TetherError> {
        for (i, extra) in node.spec.extra_enis.clone().iter().enumerate() {
            if node.extra_enis.iter().any(|e| e.device_index == extra.device_index) {
                continue;
            }
            let eni = match self.network.find_extra_eni(&node.id, extra.device_index).await? {
                Some(eni) => eni,
                None => {
                    let request = EniRequest {
                        node_id: node.id.clone(),
                        subnet_id: extra.subnet_id.clone(),
                        security_group_ids: extra.security_group_ids.clone(),
                        private_ip: extra.private_ip,
                        secondary_ip_count: 0,
                        ipv6_count: 0,
                        tags: node.spec.eni_tags.clone(),
                        device_index: extra.device_index,
                    };
                    match self.network.create_eni(&request).await {
                        Ok(eni) => eni,
                        Err(e) if e.is_retryable() => return Err(e.into()),
                        Err(e) => {
                            let reason = format!("spec.extra_enis[{i}]: creating the ENI at device index {} failed: {e}", extra.device_index);
                            return self.fail(&node, reason).await.map(Err);
                        }
                    }
                }
            };
            let record = ExtraEniRecord { device_index: extra.device_index, id: eni.id, subnet_id: extra.subnet_id.clone(), private_ip: eni.private_ip, mac_address: eni.mac_address };
            info!(eni_id = record.id, device_index = record.device_index, private_ip = %record.private_ip, "extra ENI ready");
            node.record(self.clock.now(), format!("extra ENI {} with private IP {} at device index {} ready", record.id, record.private_ip, record.device_index));
            node.extra_enis.push(record);
            node = self.store.save(&node).await?;
        }
        for (i, extra) in node.spec.extra_enis.iter().enumerate() {
            let (Some(allocation_id), Some(eni)) = (&extra.elastic_ip_allocation_id, node.extra_enis.iter().find(|e| e.device_index == extra.device_index)) else { continue };
            match self.with_retries(deadline, true, || self.network.associate_eip(allocation_id, &eni.id)).await {
                Ok(public_ip) => info!(allocation_id, public_ip, eni_id = eni.id, "Elastic IP on the extra ENI"),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => {
                    let reason = format!("spec.extra_enis[{i}]: associating Elastic IP {allocation_id} with ENI {} failed: {e}", eni.id);
                    return self.fail(&node, reason).await.map(Err);
                }
            }
        }
        Ok(Ok(node))
    }

    /// Deletes the node's extra ENIs (once its instance has let go of them), each Elastic
    /// IP of the user's taken off first (it is theirs: never released).
    pub(super) async fn release_extra_enis(&self, node: &Node, deadline: DateTime<Utc>) -> Result<(), TetherError> {
        for eni in &node.extra_enis {
            let allocation_id = node.spec.extra_enis.iter().find(|e| e.device_index == eni.device_index).and_then(|e| e.elastic_ip_allocation_id.as_ref());
            if let Some(allocation_id) = allocation_id {
                self.network.disassociate_eip(allocation_id, &eni.id).await?;
            }
            let started = self.clock.now();
            match self.with_retries(deadline, false, || self.network.delete_eni(&eni.id)).await {
                Err(e) if e.class == ErrorClass::EniInUse => return Err(TetherError::eni_still_attached(node, &eni.id, self.waited_since(started), e)),
                other => other?,
            }
        }
        Ok(())
    }

    /// Refuses instance types this Region does not offer, or that take fewer network
    /// interfaces than the node has (its ENI and `extra_enis`): `field` names the types,
    /// `extra_field` the extra ENIs.
    pub(super) async fn check_instance_types(&self, instance_types: &[String], field: &str, extra_enis: usize, extra_field: &str) -> Result<(), TetherError> {
        let limits = self.instances.interface_limits(instance_types).await?;
        let unknown: Vec<&str> = limits.iter().filter(|(_, most)| most.is_none()).map(|(t, _)| t.as_str()).collect();
        if !unknown.is_empty() {
            return Err(TetherError::invalid(field, format!("not offered in this Region: {}", unknown.join(", "))));
        }
        let needed = extra_enis + 1;
        let short: Vec<String> = limits.iter().filter_map(|(t, most)| most.filter(|m| usize::from(*m) < needed).map(|m| format!("{t} takes {m}"))).collect();
        if !short.is_empty() {
            return Err(TetherError::invalid(
                extra_field,
                format!(
                    "the node has {needed} network interfaces (its ENI and {extra_enis} extra), more than an instance type's quota allows: {}; choose larger instance types or fewer extra ENIs",
                    short.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// What EC2 would refuse in the extra ENIs' shapes, before anything is read: too many, a
/// device index out of range or repeated, ids not shaped as EC2's, an address or Elastic
/// IP asked twice (or also the node's own).
pub(crate) fn check_extra_eni_shapes(spec: &NodeSpec, persistence: &Persistence) -> Result<(), TetherError> {
    if spec.extra_enis.len() > MAX_EXTRA_ENIS {
        return Err(TetherError::invalid("spec.extra_enis", format!("at most {MAX_EXTRA_ENIS} (15 network interfaces in all is the most any instance type takes)")));
    }
    for (i, extra) in spec.extra_enis.iter().enumerate() {
        let field = |name: &str| format!("spec.extra_enis[{i}].{name}");
        let earlier = &spec.extra_enis[..i];
        if extra.device_index == 0 || usize::from(extra.device_index) > MAX_EXTRA_ENIS {
            return Err(TetherError::invalid(field("device_index"), format!("must be 1 to {MAX_EXTRA_ENIS}: device index 0 is the node's own ENI")));
        }
        if earlier.iter().any(|e| e.device_index == extra.device_index) {
            return Err(TetherError::invalid(field("device_index"), format!("device index {} is given twice; each ENI needs its own", extra.device_index)));
        }
        if !extra.subnet_id.starts_with("subnet-") || super::manage::check_name("", &extra.subnet_id).is_err() {
            return Err(TetherError::invalid(field("subnet_id"), "must be a subnet id like subnet-0123456789abcdef0"));
        }
        if let Some(sg) = extra.security_group_ids.iter().find(|g| !g.starts_with("sg-") || super::manage::check_name("", g).is_err()) {
            return Err(TetherError::invalid(field("security_group_ids"), format!("`{}` is not a security group id like sg-0123", sg.escape_debug())));
        }
        if let Some(ip) = extra.private_ip {
            let node_s = extra.subnet_id == spec.subnet_id && persistence.private_ip == Some(ip);
            let twice = earlier.iter().any(|e| e.subnet_id == extra.subnet_id && e.private_ip == Some(ip));
            if node_s || twice {
                return Err(TetherError::invalid(field("private_ip"), format!("{ip} is asked for twice in {}; each ENI needs its own address", extra.subnet_id)));
            }
        }
        if let Some(allocation_id) = &extra.elastic_ip_allocation_id {
            if !allocation_id.starts_with("eipalloc-") || super::manage::check_name("", allocation_id).is_err() {
                return Err(TetherError::invalid(field("elastic_ip_allocation_id"), "must be an allocation id like eipalloc-0123456789abcdef0"));
            }
            let twice = earlier.iter().any(|e| e.elastic_ip_allocation_id.as_ref() == Some(allocation_id));
            if twice || persistence.elastic_ip_allocation_id.as_ref() == Some(allocation_id) {
                return Err(TetherError::invalid(field("elastic_ip_allocation_id"), format!("{allocation_id} is asked for twice; an Elastic IP is on one ENI at a time")));
            }
        }
    }
    Ok(())
}
