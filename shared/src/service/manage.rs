//! Creating, importing and deallocating nodes, with the checks a user expects before
//! anything is created in EC2.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{addresses, Outcome, Tether, TetherError};
use crate::error::ErrorClass;
use crate::lifecycle;
use crate::lifecycle::{check_handover, check_launch_settings};
use crate::model::{ElasticIpRecord, ExtraEni, InstanceRecord, MetadataOptions, Node, NodeId, NodeSpec, NodeState, Persistence, RevertToSpot};
use crate::launch_options::check_launch_options;
use crate::network_identity::check_address_request;
use crate::ports::{Address, Expect, Reservation, SubnetInfo, Write};

/// What importing an existing instance takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub instance_id: String,
    /// Replacement candidates, in order; default: the instance's own type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_to_on_demand: Option<bool>,
    /// Default: `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_to_spot: Option<RevertToSpot>,
    /// Keep the instance's own EBS volumes (all but its root) as the node's data volumes:
    /// attached to every replacement at the same device names, never deleted when an
    /// instance terminates, and deleted at deallocation only if `deallocation.data_volumes`
    /// says so explicitly. Default: not kept (each replacement gets new, empty volumes of
    /// the same shape, and these stay the imported instance's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_volumes: bool,
}

impl Tether {
    /// Creates a paused node after checking its subnet, private IP, Elastic IP and
    /// instance types against EC2. Nothing exists in EC2 until `resume`.
    pub async fn create_node(&self, spec: NodeSpec, persistence: Persistence, by: Option<&str>) -> Result<Node, TetherError> {
        self.create_node_as(NodeId::generate(), spec, persistence, by).await
    }

    /// `create_node` with the id chosen by the caller: the chaos test and the benchmark
    /// derive it from their seed, so that a run replays exactly.
    pub async fn create_node_as(&self, id: NodeId, mut spec: NodeSpec, persistence: Persistence, by: Option<&str>) -> Result<Node, TetherError> {
        check_shapes(&spec, &persistence)?;
        let (launch, template) = self.checked_launch(&spec, "spec.").await?;
        // IMDSv2 required unless the request (or its template) says otherwise (nodes made
        // before keep theirs).
        if template.as_ref().is_none_or(|t| t.metadata_options.is_none()) {
            spec.metadata_options.get_or_insert_with(MetadataOptions::default);
        }
        let subnet = self.network.describe_subnet(&spec.subnet_id).await?.ok_or_else(|| {
            TetherError::invalid("spec.subnet_id", format!("subnet {} does not exist in this Region", spec.subnet_id))
        })?;
        check_eni_addresses("spec.", &spec, persistence.private_ip, &subnet)?;
        for ip in spec.secondary_private_ips.iter().flat_map(|s| &s.addresses) {
            if self.network.private_ip_in_use(&spec.subnet_id, *ip).await? {
                return Err(TetherError::invalid("spec.secondary_private_ips.addresses", format!("{ip} is already in use in {}; choose a free address, or give a count", spec.subnet_id)));
            }
            // Another node's chosen address, or a group's pool address, not taken by an ENI yet.
            self.unreserved(&Address::PrivateIp { subnet_id: spec.subnet_id.clone(), ip: *ip }, "spec.secondary_private_ips.addresses", "").await?;
        }
        if let Some(ip) = persistence.private_ip {
            check_private_ip(subnet.cidr, ip).map_err(|reason| TetherError::invalid("persistence.private_ip", reason))?;
            let address = Address::PrivateIp { subnet_id: spec.subnet_id.clone(), ip };
            self.unreserved(&address, "persistence.private_ip", "").await?;
        }
        if let Some(allocation_id) = &persistence.elastic_ip_allocation_id {
            let field = "persistence.elastic_ip_allocation_id";
            self.unreserved(&Address::ElasticIp { allocation_id: allocation_id.clone() }, field, "").await?;
            let eip = self.network.describe_eip(allocation_id).await?.ok_or_else(|| {
                TetherError::invalid(field, format!("Elastic IP allocation {allocation_id} does not exist in this Region"))
            })?;
            if eip.association_id.is_some() {
                let holder = eip.holder();
                return Err(TetherError::invalid(
                    field,
                    format!("Elastic IP {} ({allocation_id}) is associated with {holder}; disassociate it or choose another", eip.public_ip),
                ));
            }
        }
        self.check_extra_enis(&spec, &subnet).await?;
        self.check_instance_types(&launch.instance_types, "spec.instance_types", spec.extra_enis.len(), "spec.extra_enis").await?;
        let mut node = Node::new(spec, persistence, self.clock.now());
        node.id = id;
        if let Some(who) = by {
            node.history.clear();
            node.record_by(node.created_at, "created", Some(who));
        }
        // Everything else checked first: a refusal after this is undone in EC2 too.
        let mut ahead = Vec::new();
        for address in addresses::chosen_addresses(&node).into_iter().filter(|a| matches!(a, Address::PrivateIp { .. })) {
            let made = self.reserve_ahead(&address, node.id.as_str()).await;
            ahead.push(Reservation { subnet_reservation: made, ..Reservation::new(address, node.id.as_str()) });
        }
        let created = match self.ip_free(&node).await {
            Ok(()) => self.create_claiming(&node, None, &ahead).await,
            Err(e) => Err(e),
        };
        if created.is_err() {
            self.undo_ahead(&ahead).await;
        }
        created?;
        info!(node_id = %node.id, generation = node.generation, "node created");
        Ok(node)
    }

    /// The spec a launch of `spec` would use (its launch template's version, read now and
    /// checked, under it), with its AMI checked: it exists, and a root volume the spec sets
    /// is no smaller than the AMI's root snapshot (RunInstances would refuse every launch).
    /// `prefix` as `template_of`'s.
    /// Also the template version read, if any.
    pub(super) async fn checked_launch(&self, spec: &NodeSpec, prefix: &str) -> Result<(NodeSpec, Option<crate::launch_options::TemplateSettings>), TetherError> {
        let template = self.template_of(spec, prefix).await?;
        let launch = match &template {
            Some(template) => crate::launch_options::with_template(spec, template),
            None => spec.clone(),
        };
        let image = self.instances.image(&launch.image_id).await?.ok_or_else(|| {
            TetherError::invalid(format!("{prefix}image_id"), format!("AMI {} does not exist in this Region (or this account may not launch it)", launch.image_id))
        })?;
        crate::volumes::check_root_size(&launch.block_devices, &image).map_err(|(field, reason)| TetherError::invalid(format!("{prefix}{field}"), reason))?;
        if let Some(i) = launch.data_volumes.iter().position(|v| v.device_name == image.root_device_name) {
            let reason = format!("{} is the AMI's root device: give the data volume another device name (/dev/sdf … /dev/sdp)", image.root_device_name);
            return Err(TetherError::invalid(format!("{prefix}data_volumes[{i}].device_name"), reason));
        }
        Ok((launch, template))
    }

    /// The launch template version `spec` is based on, read now and checked (`prefix` goes
    /// before the field named in a refusal: `spec.`, or nothing for a PATCH).
    pub(super) async fn template_of(&self, spec: &NodeSpec, prefix: &str) -> Result<Option<crate::launch_options::TemplateSettings>, TetherError> {
        let Some(template) = &spec.launch_template else { return Ok(None) };
        let settings = self.instances.launch_template(template).await?.ok_or_else(|| {
            TetherError::invalid(format!("{prefix}launch_template"), format!("{} does not exist in this Region", template.describe()))
        })?;
        crate::launch_options::check_template(spec, &settings).map_err(|(field, reason)| TetherError::invalid(format!("{prefix}{field}"), reason))?;
        Ok(Some(settings))
    }

    /// Writes a new node with the reservations of its chosen addresses, in one transaction.
    /// A conflict names the request field that chose the address (`field`, when given, for
    /// all). `ahead`: the subnet CIDR reservations made already (`reserve_ahead`).
    async fn create_claiming(&self, node: &Node, field: Option<&str>, ahead: &[Reservation]) -> Result<(), TetherError> {
        let claimed = addresses::claimed_fields(node);
        if claimed.is_empty() {
            return Ok(self.store.create(node).await?);
        }
        let addresses: Vec<Address> = claimed.iter().map(|(a, _)| a.clone()).collect();
        let mut writes = vec![Write::CreateNode(node.clone())];
        for address in &addresses {
            let mut reservation = Reservation::new(address.clone(), node.id.as_str());
            reservation.subnet_reservation = ahead.iter().find(|r| r.address == *address).and_then(|r| r.subnet_reservation.clone());
            writes.push(Write::PutReservation { reservation, expect: Expect::Absent });
        }
        if let Err(e) = self.registry.write(writes).await {
            // Someone reserved an address since it was checked: name it.
            if e.class == ErrorClass::Conflict {
                let named: Vec<(Address, &str)> = claimed.iter().map(|(a, f)| (a.clone(), field.unwrap_or(f.as_str()))).collect();
                if let Some(taken) = self.reservation_conflict(&named, node.id.as_str()).await? {
                    return Err(taken);
                }
            }
            return Err(e.into());
        }
        for address in &addresses {
            if let Some(r) = self.registry.reservation(address).await?.filter(|r| r.owner == node.id.as_str()) {
                self.reserve_in_subnet(&r).await;
            }
        }
        Ok(())
    }

    /// A new node's chosen private IP is held by no ENI.
    async fn ip_free(&self, node: &Node) -> Result<(), TetherError> {
        let Some(ip) = node.persistence.private_ip else { return Ok(()) };
        let subnet_id = &node.spec.subnet_id;
        if self.network.private_ip_in_use(subnet_id, ip).await? {
            return Err(TetherError::invalid(
                "persistence.private_ip",
                format!("{ip} is already in use in {subnet_id}; choose a free address, or omit private_ip for a random one"),
            ));
        }
        Ok(())
    }

    /// Adopts a running instance as a running node: its primary ENI becomes the node's
    /// (DeleteOnTermination turned off), its private IP and any Elastic IP are kept.
    pub async fn import_instance(&self, request: &ImportRequest, by: Option<&str>) -> Result<Node, TetherError> {
        let instance_id = request.instance_id.as_str();
        if !instance_id.starts_with("i-") || check_name("instance_id", instance_id).is_err() {
            return Err(TetherError::invalid("instance_id", "must be an instance id like i-0123456789abcdef0"));
        }
        let found = self.instances.importable(instance_id).await?.ok_or_else(|| {
            TetherError::invalid("instance_id", format!("instance {instance_id} does not exist in this Region or has no primary network interface"))
        })?;
        if !matches!(found.summary.state.as_str(), "running" | "pending") {
            return Err(TetherError::Conflict(format!(
                "instance {instance_id} is {}; only a running instance can be imported",
                found.summary.state
            )));
        }
        // One node per instance: its id is derived from the instance id, so a retried or
        // concurrent import meets the same (conditional) record instead of making a second.
        let node_id = NodeId::for_instance(instance_id);
        if let Some(existing) = self.store.get(&node_id).await? {
            return Err(TetherError::Conflict(format!("instance {instance_id} is already imported as node {}", existing.id)));
        }
        if let Some(other) = found.node_tag.as_deref().filter(|tag| *tag != node_id.as_str()) {
            return Err(TetherError::Conflict(format!("instance {instance_id} is already managed by node {other}")));
        }
        let mut spec = found.spec.clone();
        if let Some(types) = &request.instance_types {
            if types.is_empty() {
                return Err(TetherError::invalid("instance_types", "list at least one instance type, or omit it to keep the instance's own"));
            }
            for instance_type in types {
                check_name("instance_types", instance_type)?;
            }
            self.check_instance_types(types, "instance_types", found.extra_enis.len(), "instance_types").await?;
            spec.instance_types = types.clone();
        }
        if let Some(fallback) = request.fallback_to_on_demand {
            spec.fallback_to_on_demand = fallback;
        }
        if let Some(policy) = request.revert_to_spot {
            spec.revert_to_spot = policy;
        }
        // Its extra ENIs are kept as the node's, with the addresses and Elastic IPs they have.
        for extra in &found.extra_enis {
            spec.extra_enis.push(ExtraEni {
                device_index: extra.record.device_index,
                subnet_id: extra.record.subnet_id.clone(),
                security_group_ids: extra.security_group_ids.clone(),
                private_ip: Some(extra.record.private_ip),
                elastic_ip_allocation_id: self.network.eip_on_eni(&extra.record.id).await?.map(|e| e.allocation_id),
            });
        }
        // The instance's volumes' shapes, for the replacements' new volumes, where Tether can
        // launch them (a shape it would refuse is left out, and the history says so).
        let unusable_volumes = crate::volumes::check_block_devices(&spec.block_devices).err();
        if unusable_volumes.is_some() {
            spec.block_devices.clear();
        }
        let eip = self.network.eip_on_eni(&found.eni.id).await?;
        let persistence = Persistence {
            private_ip: Some(found.eni.private_ip),
            elastic_ip_allocation_id: eip.as_ref().map(|e| e.allocation_id.clone()),
            allocate_elastic_ip: false,
        };
        let now = self.clock.now();
        let mut node = Node::new(spec, persistence, now);
        node.id = node_id;
        node.history.clear();
        node.state = NodeState::Running;
        node.generation = 1;
        node.eni = Some(found.eni.clone());
        node.imported_instance = Some(instance_id.to_owned());
        node.elastic_ip = eip.map(|e| ElasticIpRecord { allocation_id: e.allocation_id, public_ip: e.public_ip, allocated_by_tether: false });
        node.instance = Some(InstanceRecord {
            id: instance_id.to_owned(),
            generation: 1,
            instance_type: found.summary.instance_type.clone(),
            market: found.summary.market,
            launched_at: now,
        });
        node.record_by(now, format!("imported instance {instance_id} with ENI {} ({})", found.eni.id, found.eni.private_ip), by);
        for extra in found.extra_enis.iter().map(|e| &e.record) {
            node.record(now, format!("extra ENI {} ({}) at device index {} kept", extra.id, extra.private_ip, extra.device_index));
            node.extra_enis.push(extra.clone());
        }
        if let Some((field, reason)) = unusable_volumes {
            node.record(now, format!("the instance's volumes are not copied to the replacements ({field}: {reason}): they launch with the AMI's"));
        }
        let kept: Vec<crate::volumes::ImportedVolume> = found.volumes.iter().filter(|v| !v.root && request.keep_volumes).cloned().collect();
        for volume in found.volumes.iter().filter(|v| !v.root && !request.keep_volumes) {
            node.record(now, volume.fate(instance_id));
        }
        for volume in &kept {
            // The replacements get this volume at its device, not a new one.
            node.spec.block_devices.retain(|d| d.device_name != volume.device_name);
            node.spec.data_volumes.push(crate::data_volumes::DataVolume {
                device_name: volume.device_name.clone(),
                volume_size_gib: volume.size_gib,
                volume_type: serde_json::from_value(serde_json::json!(volume.volume_type)).unwrap_or_default(),
                iops: None,
                throughput_mibps: None,
                encrypted: None,
                kms_key_id: None,
            });
            node.data_volumes.push(crate::data_volumes::DataVolumeRecord {
                device_name: volume.device_name.clone(),
                volume_id: volume.volume_id.clone(),
                created_by_tether: false,
                attached_to: Some(instance_id.to_owned()),
                final_snapshot_id: None,
            });
            node.record(now, format!("volume {} at {} ({} GiB {}) kept as the node's data volume: every replacement gets it", volume.volume_id, volume.device_name, volume.size_gib, volume.volume_type));
        }
        node.imported_volumes = found.volumes.clone();
        for address in addresses::chosen_addresses(&node) {
            if let Some(r) = self.registry.reservation(&address).await? {
                return Err(TetherError::Conflict(format!("instance {instance_id}'s {}", addresses::taken(&address, &r))));
            }
        }
        // The ENI must outlive the instance before Tether promises anything about it.
        self.instances.adopt(&node.id, &found).await?;
        self.instances.keep_volumes(&node.id, instance_id, &kept).await?;
        match self.create_claiming(&node, Some("instance_id"), &[]).await {
            Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => {
                return Err(TetherError::Conflict(format!("instance {instance_id} is already imported as node {}", node.id)))
            }
            other => other?,
        }
        info!(node_id = %node.id, instance_id, generation = node.generation, eni_id = found.eni.id, "instance imported");
        Ok(node)
    }

    /// After the instance is gone: the Elastic IP is disassociated (and released if Tether
    /// allocated it, unless the policy keeps it), the ENI and the extra ENIs deleted, unless
    /// the ENIs are kept (with their Elastic IPs); the data volumes as the policy says.
    pub(super) async fn release_network(&self, node: Node, deadline: DateTime<Utc>) -> Result<Outcome, TetherError> {
        let node_id = node.id.clone();
        let mut note = None;
        if !node.keep_eni {
            if let (Some(eip), Some(eni)) = (&node.elastic_ip, &node.eni) {
                self.network.disassociate_eip(&eip.allocation_id, &eni.id).await?;
            }
            if let Some(eni) = &node.eni {
                // The ENI is released only once the old instance has terminated.
                let started = self.clock.now();
                let deleted = self.with_retries(deadline, false, || self.network.delete_eni(&eni.id)).await;
                match deleted {
                    Err(e) if e.class == ErrorClass::EniInUse => return Err(TetherError::eni_still_attached(&node, &eni.id, self.waited_since(started), e)),
                    other => other?,
                }
            }
            self.release_extra_enis(&node, deadline).await?;
            if let Some(eip) = node.kept_elastic_ip() {
                note = Some(format!("Elastic IP {} ({}) kept, allocated (deallocation.elastic_ip: keep)", eip.allocation_id, eip.public_ip));
            } else if let Some(eip) = node.elastic_ip.as_ref().filter(|e| e.allocated_by_tether) {
                // Someone associated it with something else meanwhile: theirs now, not released.
                match self.network.describe_eip(&eip.allocation_id).await? {
                    Some(info) if info.association_id.is_some() => {
                        let holder = info.holder();
                        warn!(allocation_id = eip.allocation_id, holder, "Elastic IP held elsewhere; not released");
                        note = Some(format!("Elastic IP {} not released: associated with {holder} outside Tether", eip.allocation_id));
                    }
                    _ => self.network.release_eip(&eip.allocation_id).await?,
                }
            }
        }
        let Some(mut node) = Box::pin(self.release_data_volumes(node, deadline)).await? else {
            return Ok(Outcome::Recorded { node_id: node_id.clone(), state: NodeState::Deallocating });
        };
        if let Some(note) = note {
            node.record(self.clock.now(), note);
        }
        // A group member's Elastic IP is its group's pool's: it goes back to the pool (below),
        // so it leaves a kept ENI too, or the member it goes to next could not have it.
        let pool_eip = node.group.is_some() && node.persistence.elastic_ip_allocation_id.is_some();
        if let (true, true, Some(eip), Some(eni)) = (node.keep_eni, pool_eip, node.elastic_ip.clone(), &node.eni) {
            self.network.disassociate_eip(&eip.allocation_id, &eni.id).await?;
            node.elastic_ip = None;
            node.record(self.clock.now(), format!("Elastic IP {} disassociated from the kept ENI: back to the group's pool", eip.allocation_id));
        }
        let done = lifecycle::deallocated(&node, self.clock.now());
        let (releases, released) = self.releases(&node).await?;
        if releases.is_empty() {
            self.store.save(&done).await?;
        } else {
            let mut writes = vec![Write::SaveNode(done.clone())];
            writes.extend(releases);
            self.registry.write(writes).await?;
            self.unreserve_released(&released).await;
        }
        info!(keep_eni = node.keep_eni, "deallocated");
        Ok(Outcome::Recorded { node_id: done.id, state: done.state })
    }
}

/// An AWS name (instance type, key pair, instance profile, instance id): 1 to 255 visible
/// ASCII characters. Anything else is refused here rather than sent to AWS.
pub(crate) fn check_name(field: &str, value: &str) -> Result<(), TetherError> {
    if value.is_empty() || value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TetherError::invalid(field, format!("`{}` is not a valid name: use 1 to 255 visible ASCII characters", value.escape_debug())));
    }
    Ok(())
}

/// EC2 tags: keys of 1 to 128 and values of up to 256 characters, no control characters;
/// `aws:` is AWS's prefix and `tether:` Tether's own.
pub(crate) fn check_tags(field: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<(), TetherError> {
    for (key, value) in tags {
        let clean = |s: &str| !s.chars().any(char::is_control);
        if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 || !clean(key) || !clean(value) {
            return Err(TetherError::invalid(
                format!("{field}.{}", key.escape_debug()),
                "tag keys have 1 to 128 characters and values up to 256, without control characters",
            ));
        }
        if key.to_ascii_lowercase().starts_with("aws:") || key.starts_with("tether:") {
            return Err(TetherError::invalid(format!("{field}.{key}"), "the prefixes `aws:` and `tether:` are reserved; choose another key"));
        }
    }
    Ok(())
}

/// Checks that need no AWS call: the shapes of ids and names, and the choices that exclude each other.
fn check_shapes(spec: &NodeSpec, persistence: &Persistence) -> Result<(), TetherError> {
    if !spec.subnet_id.starts_with("subnet-") {
        return Err(TetherError::invalid("spec.subnet_id", "must be a subnet id like subnet-0123456789abcdef0"));
    }
    // With a launch template, an empty image or type list takes the template's.
    let templated = spec.launch_template.is_some();
    if !(spec.image_id.starts_with("ami-") || templated && spec.image_id.is_empty()) {
        return Err(TetherError::invalid("spec.image_id", "must be an AMI id like ami-0123456789abcdef0"));
    }
    if let Some(template) = &spec.launch_template {
        template.check().map_err(|(field, reason)| TetherError::invalid(format!("spec.launch_template.{field}"), reason))?;
    }
    if (spec.instance_types.is_empty() && !templated) || spec.instance_types.iter().any(|t| t.trim().is_empty()) {
        return Err(TetherError::invalid("spec.instance_types", "list at least one instance type, in order of preference"));
    }
    for instance_type in &spec.instance_types {
        check_name("spec.instance_types", instance_type)?;
    }
    if let Some(sg) = spec.security_group_ids.iter().find(|g| !g.starts_with("sg-") || check_name("", g).is_err()) {
        return Err(TetherError::invalid("spec.security_group_ids", format!("`{}` is not a security group id like sg-0123", sg.escape_debug())));
    }
    check_name("spec.subnet_id", &spec.subnet_id)?;
    if !spec.image_id.is_empty() {
        check_name("spec.image_id", &spec.image_id)?;
    }
    if let Some(key) = &spec.key_name {
        check_name("spec.key_name", key)?;
    }
    if let Some(profile) = &spec.iam_instance_profile {
        check_name("spec.iam_instance_profile", profile)?;
    }
    check_tags("spec.tags", &spec.tags)?;
    check_tags("spec.eni_tags", &spec.eni_tags)?;
    check_tags("spec.volume_tags", &spec.volume_tags)?;
    check_launch_options(spec.spot_max_price.as_deref(), spec.placement.as_ref(), spec.capacity_reservation.as_ref())
        .map_err(|(field, reason)| TetherError::invalid(format!("spec.{field}"), reason))?;
    super::extra_enis::check_extra_eni_shapes(spec, persistence)?;
    check_launch_settings(spec.metadata_options.as_ref(), &spec.block_devices).map_err(|(field, reason)| TetherError::invalid(format!("spec.{field}"), reason))?;
    crate::data_volumes::check_data_volumes(&spec.data_volumes, &spec.block_devices).map_err(|(field, reason)| TetherError::invalid(format!("spec.{field}"), reason))?;
    spec.auto_healing.check().map_err(|(field, reason)| TetherError::invalid(format!("spec.auto_healing.{field}"), reason))?;
    crate::schedules::check_schedules(&spec.schedules).map_err(|(field, reason)| TetherError::invalid(format!("spec.{field}"), reason))?;
    check_handover(spec.handover_after_warning_seconds).map_err(|(field, reason)| TetherError::invalid(format!("spec.{field}"), reason))?;
    if persistence.elastic_ip_allocation_id.as_deref().is_some_and(|a| !a.starts_with("eipalloc-") || check_name("", a).is_err()) {
        return Err(TetherError::invalid("persistence.elastic_ip_allocation_id", "must be an allocation id like eipalloc-0123"));
    }
    check_public_ip(spec, persistence).map_err(|reason| TetherError::invalid("spec.public_ip_assignment", reason))?;
    if persistence.elastic_ip_allocation_id.is_some() && persistence.allocate_elastic_ip {
        return Err(TetherError::invalid(
            "persistence.allocate_elastic_ip",
            "give either elastic_ip_allocation_id (your Elastic IP) or allocate_elastic_ip (Tether's), not both",
        ));
    }
    Ok(())
}

/// A public IP from Amazon's pool beside an Elastic IP (which takes eth0's public address, so
/// the pool's would never be seen), or beside extra ENIs (EC2 then gives none).
pub(crate) fn check_public_ip(spec: &NodeSpec, persistence: &Persistence) -> Result<(), String> {
    if spec.public_ip_assignment == crate::model::PublicIpAssignment::None {
        return Ok(());
    }
    if persistence.elastic_ip_allocation_id.is_some() || persistence.allocate_elastic_ip {
        return Err("the node has an Elastic IP, which is its public address: leave public_ip_assignment none".into());
    }
    // EC2 gives a public IPv4 address only to an instance launched with one network interface.
    if !spec.extra_enis.is_empty() {
        return Err("EC2 gives a public IP only to an instance launched with one network interface, and this node has extra ENIs: give it an Elastic IP (persistence, or an extra ENI's elastic_ip_allocation_id) and leave public_ip_assignment none".into());
    }
    Ok(())
}

/// What EC2 would refuse in the addresses a spec asks for on its ENI beyond the primary,
/// given its subnet: inside it, not reserved, not the primary IP, IPv6 only where the subnet
/// has an IPv6 CIDR block. `prefix` goes before the field (`spec.`, or nothing for a PATCH).
pub(crate) fn check_eni_addresses(prefix: &str, spec: &NodeSpec, primary: Option<std::net::Ipv4Addr>, subnet: &SubnetInfo) -> Result<(), TetherError> {
    if let Some(ips) = &spec.secondary_private_ips {
        check_address_request(ips, |ip| {
            if Some(ip) == primary {
                return Err(format!("{ip} is the node's primary private IP"));
            }
            check_private_ip(subnet.cidr, ip)
        })
        .map_err(|(field, reason)| TetherError::invalid(format!("{prefix}secondary_private_ips.{field}"), reason))?;
    }
    if let Some(ipv6) = spec.ipv6.as_ref().filter(|r| r.wanted() > 0) {
        if subnet.ipv6_cidrs.is_empty() {
            return Err(TetherError::invalid(
                format!("{prefix}ipv6"),
                format!("subnet {} has no IPv6 CIDR block: associate one with it (and its VPC), or leave ipv6 out", spec.subnet_id),
            ));
        }
        check_address_request(ipv6, |ip| match subnet.ipv6_cidrs.iter().any(|c| c.contains(&ip)) {
            true => Ok(()),
            false => Err(format!("{ip} is outside the subnet's IPv6 range {}", subnet.ipv6_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))),
        })
        .map_err(|(field, reason)| TetherError::invalid(format!("{prefix}ipv6.{field}"), reason))?;
    }
    Ok(())
}

/// A requested private IP must lie in the subnet and not be one of the 5 addresses AWS
/// reserves in every subnet: the network address, the next three, and the last.
pub(crate) fn check_private_ip(cidr: Ipv4Net, ip: Ipv4Addr) -> Result<(), String> {
    if !cidr.contains(&ip) {
        return Err(format!("{ip} is outside the subnet's range {cidr}; choose an address inside it, or omit private_ip for a random one"));
    }
    let network = u32::from(cidr.network());
    let offset = u32::from(ip) - network;
    if offset <= 3 || ip == cidr.broadcast() {
        return Err(format!(
            "{ip} is one of the 5 addresses AWS reserves in {cidr} (the first four and the last); choose another"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_spec;

    #[test]
    fn private_ip_must_be_inside_and_not_reserved() {
        let cidr: Ipv4Net = "10.0.1.0/24".parse().expect("cidr");
        for host in [0u8, 1, 2, 3, 255] {
            let err = check_private_ip(cidr, Ipv4Addr::new(10, 0, 1, host)).expect_err("reserved");
            assert!(err.contains("reserves"), "{err}");
        }
        assert!(check_private_ip(cidr, Ipv4Addr::new(10, 0, 2, 9)).expect_err("outside").contains("outside"));
        assert!(check_private_ip(cidr, Ipv4Addr::new(10, 0, 1, 4)).is_ok());
        assert!(check_private_ip(cidr, Ipv4Addr::new(10, 0, 1, 254)).is_ok());
    }

    #[test]
    fn shapes_are_checked_and_the_field_named() {
        let err = check_shapes(&test_spec(&[], true), &Persistence::default()).expect_err("no types");
        assert!(err.to_string().starts_with("spec.instance_types"), "{err}");
        let bad_eip = Persistence { elastic_ip_allocation_id: Some("1.2.3.4".into()), ..Persistence::default() };
        let err = check_shapes(&test_spec(&["m5.large"], true), &bad_eip).expect_err("bad eip");
        assert!(err.to_string().starts_with("persistence.elastic_ip_allocation_id"), "{err}");
        let both = Persistence { elastic_ip_allocation_id: Some("eipalloc-1".into()), allocate_elastic_ip: true, ..Persistence::default() };
        assert!(check_shapes(&test_spec(&["m5.large"], true), &both).is_err());
        assert!(check_shapes(&test_spec(&["m5.large"], true), &Persistence::default()).is_ok());
        let handing_over = |seconds| NodeSpec { handover_after_warning_seconds: Some(seconds), ..test_spec(&["m5.large"], true) };
        assert!(check_shapes(&handing_over(110), &Persistence::default()).is_ok(), "hand-over is built");
        let err = check_shapes(&handing_over(111), &Persistence::default()).expect_err("too late");
        assert!(err.to_string().starts_with("spec.handover_after_warning_seconds: must be 0 to 110"), "{err}");
    }
}
