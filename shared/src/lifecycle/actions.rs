//! User actions on a node: resume, pause, recycle, deallocate, and changes to its spec.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{begin_launch, Action, Step};
use crate::launch_options::check_launch_options;
use crate::model::{MetadataOptions, Node, NodeSpec, NodeState, RevertToSpot, METADATA_HOP_LIMITS};
use crate::volumes::{check_block_devices, BlockDevice};

/// Resume: at the first resume the ENI is created; then an instance is launched on it.
pub fn on_resume(node: &Node, now: DateTime<Utc>, by: Option<&str>) -> Step {
    match node.state {
        NodeState::Paused => Step::Apply { next: begin_launch(node, now, "resume requested", by), actions: vec![Action::Launch] },
        // The launch under way goes on; the instance it replaces is terminated again in case
        // an earlier attempt failed to (terminating is idempotent).
        NodeState::Launching => Step::Continue(replaced(node).into_iter().chain([Action::Launch]).collect()),
        NodeState::Running | NodeState::Recovering | NodeState::Stopped => Step::Ignore("node already has an instance"),
        NodeState::Error => Step::Refuse(format!(
            "node {} is in ERROR ({}); recycle it once the cause is fixed, or deallocate it",
            node.id,
            node.last_error.as_deref().unwrap_or("no reason recorded")
        )),
        NodeState::Deallocating | NodeState::Deallocated => Step::Refuse(gone(node)),
    }
}

/// Pause: the instance is terminated; the ENI and the Elastic IP stay. A launch under way
/// is called off (what it launched, if anything, is terminated too).
pub fn on_pause(node: &Node, now: DateTime<Utc>, by: Option<&str>) -> Step {
    match node.state {
        NodeState::Running | NodeState::Recovering | NodeState::Stopped | NodeState::Error | NodeState::Launching => {
            let mut next = node.clone();
            next.state = NodeState::Paused;
            next.interruption = None;
            next.record_by(now, "pause requested; instance terminated, ENI and Elastic IP kept", by);
            Step::Apply { next, actions: stop_everything(node) }
        }
        // Paused again: terminate once more, in case the first pause's terminate failed.
        NodeState::Paused => match replaced(node) {
            Some(terminate) => Step::Continue(vec![terminate]),
            None => Step::Ignore("node already paused"),
        },
        NodeState::Deallocating | NodeState::Deallocated => Step::Refuse(gone(node)),
    }
}

/// Terminating the instance the node names (its current one, or the one a launch replaces).
fn replaced(node: &Node) -> Option<Action> {
    node.instance_id().map(|i| Action::Terminate(i.to_owned()))
}

/// The actions that leave the node without an instance: terminate the current one, and
/// while launching, what the launch started.
fn stop_everything(node: &Node) -> Vec<Action> {
    let current = match node.state {
        NodeState::Paused => None,
        _ => replaced(node),
    };
    let launched = (node.state == NodeState::Launching).then_some(Action::TerminateLaunched);
    current.into_iter().chain(launched).collect()
}

/// Recycle: pause then resume as one action: the instance is replaced by a new one on the
/// same ENI (the launch waits until the old instance has released it).
pub fn on_recycle(node: &Node, now: DateTime<Utc>, by: Option<&str>) -> Step {
    recycle(node, now, "recycle requested", by)
}

/// A recycle, recorded as `why`.
pub(super) fn recycle(node: &Node, now: DateTime<Utc>, why: &str, by: Option<&str>) -> Step {
    match node.state {
        NodeState::Running | NodeState::Recovering | NodeState::Stopped | NodeState::Error | NodeState::Paused => {
            let next = begin_launch(node, now, why, by);
            Step::Apply { next, actions: stop_everything(node).into_iter().chain([Action::Launch]).collect() }
        }
        // A recycle (or recovery) under way: carry it on, as a resume would.
        NodeState::Launching => on_resume(node, now, by),
        NodeState::Deallocating | NodeState::Deallocated => Step::Refuse(gone(node)),
    }
}

/// Deallocate: the instance is terminated (and a launch under way called off), then the ENI
/// deleted (unless `keep_eni`) and the Elastic IP released if Tether allocated it, else
/// disassociated.
pub fn on_deallocate(node: &Node, keep_eni: bool, now: DateTime<Utc>, by: Option<&str>) -> Step {
    match node.state {
        // Carried on: terminate again (in case that failed before), then release.
        NodeState::Deallocating => Step::Continue(replaced(node).into_iter().chain([Action::ReleaseNetwork]).collect()),
        NodeState::Deallocated => Step::Ignore("node already deallocated"),
        _ => {
            let mut next = node.clone();
            next.state = NodeState::Deallocating;
            next.keep_eni = node.spec.deallocation.keeps_enis(keep_eni, node.imported());
            let why = match (keep_eni, next.keep_eni) {
                (true, _) => "deallocate requested (keep ENI)",
                (false, true) if node.spec.deallocation.enis.is_some() => "deallocate requested (keep ENI: deallocation.enis)",
                (false, true) => "deallocate requested (keep ENI: it came with the imported instance; deallocation.enis: delete deletes it)",
                (false, false) => "deallocate requested",
            };
            next.record_by(now, why, by);
            Step::Apply { next, actions: stop_everything(node).into_iter().chain([Action::ReleaseNetwork]).collect() }
        }
    }
}

/// `patch`'s launch settings applied to `spec`; the names of the fields it changes.
pub fn patch_spec(spec: &mut NodeSpec, patch: &NodePatch) -> Result<Vec<&'static str>, PatchError> {
    let mut changed = Vec::new();
    if let Some(types) = &patch.instance_types {
        if types.is_empty() || types.iter().any(|t| t.trim().is_empty()) {
            return Err(PatchError { field: "instance_types".into(), reason: "list at least one instance type, in order of preference".into() });
        }
        spec.instance_types = types.clone();
        changed.push("instance_types");
    }
    if let Some(image) = &patch.image_id {
        if !image.starts_with("ami-") {
            return Err(PatchError { field: "image_id".into(), reason: "must be an AMI id like ami-0123456789abcdef0".into() });
        }
        spec.image_id = image.clone();
        changed.push("image_id");
    }
    if let Some(user_data) = &patch.user_data {
        spec.user_data = Some(user_data.clone()).filter(|u| !u.is_empty());
        changed.push("user_data");
    }
    if let Some(tags) = &patch.tags {
        spec.tags = tags.clone();
        changed.push("tags");
    }
    if let Some(fallback) = patch.fallback_to_on_demand {
        spec.fallback_to_on_demand = fallback;
        changed.push("fallback_to_on_demand");
    }
    if let Some(policy) = patch.revert_to_spot {
        spec.revert_to_spot = policy;
        changed.push("revert_to_spot");
    }
    if let Some(key) = &patch.key_name {
        spec.key_name = Some(key.clone()).filter(|k| !k.is_empty());
        changed.push("key_name");
    }
    if let Some(profile) = &patch.iam_instance_profile {
        spec.iam_instance_profile = Some(profile.clone()).filter(|p| !p.is_empty());
        changed.push("iam_instance_profile");
    }
    check_launch_settings(patch.metadata_options.as_ref(), patch.block_devices.as_deref().unwrap_or_default())
        .map_err(|(field, reason)| PatchError { field: field.into(), reason })?;
    if let Some(options) = patch.metadata_options {
        spec.metadata_options = Some(options);
        changed.push("metadata_options");
    }
    if let Some(policy) = patch.deallocation {
        spec.deallocation = policy;
        changed.push("deallocation");
    }
    if let Some(healing) = patch.auto_healing {
        healing.check().map_err(|(field, reason)| PatchError { field: format!("auto_healing.{field}").into(), reason })?;
        spec.auto_healing = healing;
        changed.push("auto_healing");
    }
    if let Some(window) = patch.maintenance_window {
        spec.maintenance_window = window;
        changed.push("maintenance_window");
    }
    if let Some(schedules) = &patch.schedules {
        crate::schedules::check_schedules(schedules).map_err(|(field, reason)| PatchError { field: field.into(), reason })?;
        spec.schedules = schedules.clone();
        changed.push("schedules");
    }
    if let Some(devices) = &patch.block_devices {
        spec.block_devices = devices.clone();
        changed.push("block_devices");
    }
    check_launch_options(
        patch.spot_max_price.as_ref().and_then(Option::as_deref),
        patch.placement.as_ref().and_then(Option::as_ref),
        patch.capacity_reservation.as_ref().and_then(Option::as_ref),
    )
    .map_err(|(field, reason)| PatchError { field: field.into(), reason })?;
    if let Some(template) = &patch.launch_template {
        if let Some((field, reason)) = template.as_ref().and_then(|t| t.check().err()) {
            return Err(PatchError { field: format!("launch_template.{field}").into(), reason });
        }
        spec.launch_template = template.clone();
        changed.push("launch_template");
    }
    if spec.launch_template.is_none() && (spec.image_id.is_empty() || spec.instance_types.is_empty()) {
        let field = if spec.image_id.is_empty() { "image_id" } else { "instance_types" };
        return Err(PatchError { field: field.into(), reason: "without a launch template the spec must name an image and instance types".into() });
    }
    if let Some(v) = patch.ebs_optimized {
        spec.ebs_optimized = v;
        changed.push("ebs_optimized");
    }
    if let Some(v) = patch.detailed_monitoring {
        spec.detailed_monitoring = v;
        changed.push("detailed_monitoring");
    }
    if let Some(v) = patch.cpu_credits {
        spec.cpu_credits = v;
        changed.push("cpu_credits");
    }
    if let Some(v) = &patch.placement {
        spec.placement = v.clone();
        changed.push("placement");
    }
    if let Some(v) = &patch.spot_max_price {
        spec.spot_max_price = v.clone();
        changed.push("spot_max_price");
    }
    if let Some(v) = &patch.capacity_reservation {
        spec.capacity_reservation = v.clone();
        changed.push("capacity_reservation");
    }
    if let Some(tags) = &patch.volume_tags {
        spec.volume_tags = tags.clone();
        changed.push("volume_tags");
    }
    if let Some(ips) = &patch.secondary_private_ips {
        spec.secondary_private_ips = Some(ips.clone()).filter(|s| s.wanted() > 0);
        changed.push("secondary_private_ips");
    }
    if let Some(ipv6) = &patch.ipv6 {
        spec.ipv6 = Some(ipv6.clone()).filter(|s| s.wanted() > 0);
        changed.push("ipv6");
    }
    if let Some(check) = patch.source_dest_check {
        spec.source_dest_check = check;
        changed.push("source_dest_check");
    }
    if let Some(tags) = &patch.eni_tags {
        spec.eni_tags = tags.clone();
        changed.push("eni_tags");
    }
    if let Some(assignment) = patch.public_ip_assignment {
        spec.public_ip_assignment = assignment;
        changed.push("public_ip_assignment");
    }
    if let Some(handover) = patch.handover_after_warning_seconds {
        super::check_handover(handover).map_err(|(field, reason)| PatchError { field: field.into(), reason })?;
        spec.handover_after_warning_seconds = handover;
        changed.push("handover_after_warning_seconds");
    }
    Ok(changed)
}

fn gone(node: &Node) -> String {
    format!("node {} is {}", node.id, if node.state == NodeState::Deallocated { "deallocated" } else { "being deallocated" })
}

/// The spec fields a user may change; they take effect at the next launch.
/// Fields left out keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_to_on_demand: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_to_spot: Option<RevertToSpot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<String>,
    /// Replaces the instance metadata settings (every field of it, with its defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<MetadataOptions>,
    /// Replaces the list of block devices (`[]`: the AMI's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_devices: Option<Vec<crate::volumes::BlockDevice>>,
    /// Another launch template (read and checked now); `null` removes it (the spec must then
    /// name an image and instance types).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub launch_template: Option<Option<crate::model::LaunchTemplateRef>>,
    /// `true` or `false`; `null` leaves it to the instance type.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub ebs_optimized: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub detailed_monitoring: Option<Option<bool>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub cpu_credits: Option<Option<crate::model::CpuCredits>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub placement: Option<Option<crate::model::Placement>>,
    /// `null` removes the cap (the on-demand price).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub spot_max_price: Option<Option<String>>,
    /// `null` removes it (EC2's default: any open reservation).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub capacity_reservation: Option<Option<crate::model::CapacityReservation>>,
    /// Replaces the volumes' tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_tags: Option<BTreeMap<String, String>>,
    /// Replaces what the node's deallocation deletes (every field of it, with its defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deallocation: Option<crate::deallocation::DeallocationPolicy>,
    /// Replaces the auto-healing settings (every field of it, with its defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_healing: Option<crate::health::AutoHealing>,
    /// A daily window for recycles ahead of AWS scheduled events; `null` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub maintenance_window: Option<Option<crate::health::DailyWindow>>,
    /// Replaces the schedules (`[]`: none). A slot that came before the change does not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<crate::schedules::Schedule>>,
    /// Replaces the secondary private IPs, on the ENI at once (`{}`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secondary_private_ips: Option<crate::model::SecondaryIps>,
    /// Replaces the IPv6 addresses, on the ENI at once (`{}`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<crate::model::Ipv6Request>,
    /// On the ENI at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_dest_check: Option<bool>,
    /// On the ENI at once; the running instance gets (or loses) a public IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip_assignment: Option<crate::model::PublicIpAssignment>,
    /// Replaces the ENI's tags (Tether's own are kept), on the ENI at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eni_tags: Option<BTreeMap<String, String>>,
    /// Seconds after a spot interruption warning (terminate) at which Tether terminates the
    /// instance itself to hand the ENI over early (0 to 110); `null` turns it off (AWS
    /// terminates the instance, about two minutes after the warning). Takes effect at once,
    /// for a warning already received too.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::views::count::some_nullable_small")]
    #[schemars(range(min = 0, max = 110))]
    pub handover_after_warning_seconds: Option<Option<u8>>,
    /// Refused: the ENI is bound to its subnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// Refused: the ENI keeps its private IP for life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
}

impl NodePatch {
    /// The first of the fields that live on the ENI (`ON_THE_ENI`) the patch sets.
    pub fn eni_field(&self) -> Option<&'static str> {
        let set = [
            self.secondary_private_ips.is_some(),
            self.ipv6.is_some(),
            self.source_dest_check.is_some(),
            self.eni_tags.is_some(),
            self.public_ip_assignment.is_some(),
        ];
        ON_THE_ENI.into_iter().zip(set).find(|(_, set)| *set).map(|(field, _)| field)
    }
}

/// Whether the two specs differ in what lives on the node's ENI (`ON_THE_ENI`).
pub fn eni_settings_differ(a: &NodeSpec, b: &NodeSpec) -> bool {
    a.secondary_private_ips != b.secondary_private_ips
        || a.ipv6 != b.ipv6
        || a.source_dest_check != b.source_dest_check
        || a.eni_tags != b.eni_tags
        || a.public_ip_assignment != b.public_ip_assignment
}

/// A field given in a patch, `null` included (`Some(None)`: remove the setting); absent
/// fields are `None` through `#[serde(default)]`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Why a patch is refused: the field and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PatchError {
    pub field: std::borrow::Cow<'static, str>,
    pub reason: String,
}

/// The spec fields that live on the kept ENI: a PATCH changes the ENI at once.
pub const ON_THE_ENI: [&str; 5] = ["secondary_private_ips", "ipv6", "source_dest_check", "eni_tags", "public_ip_assignment"];

/// The node with `patch` applied to its spec.
/// The spec's fields that are policies, read when they apply (a deallocation, a heal, a
/// scheduled event), not at the next launch.
const POLICIES: [&str; 4] = ["deallocation", "auto_healing", "maintenance_window", "schedules"];

pub fn patched(node: &Node, patch: &NodePatch, now: DateTime<Utc>, by: Option<&str>) -> Result<Node, PatchError> {
    if matches!(node.state, NodeState::Deallocating | NodeState::Deallocated) {
        return Err(PatchError { field: "state".into(), reason: gone(node) });
    }
    if patch.subnet_id.as_ref().is_some_and(|s| *s != node.spec.subnet_id) {
        return Err(PatchError {
            field: "subnet_id".into(),
            reason: format!(
                "cannot change: the node's ENI is bound to {} and its Availability Zone; create a new node in the other subnet",
                node.spec.subnet_id
            ),
        });
    }
    let current_ip = node.eni.as_ref().map(|e| e.private_ip).or(node.persistence.private_ip);
    if let Some(ip) = &patch.private_ip {
        if current_ip.map(|c| c.to_string()).as_deref() != Some(ip.as_str()) {
            return Err(PatchError {
                field: "private_ip".into(),
                reason: "cannot change: the node keeps its private IP for life; create a new node for another address".into(),
            });
        }
    }
    let mut next = node.clone();
    let changed = patch_spec(&mut next.spec, patch)?;
    if patch.schedules.is_some() {
        crate::schedules::runs_from(&mut next.schedule_runs, &next.spec.schedules, now);
    }
    let (on_eni, at_launch): (Vec<_>, Vec<_>) = changed.into_iter().partition(|f| ON_THE_ENI.contains(f));
    // Policies read when they apply, not at a launch.
    let (policies, at_launch): (Vec<_>, Vec<_>) = at_launch.into_iter().partition(|f| POLICIES.contains(f));
    if !policies.is_empty() {
        next.record_by(now, format!("spec changed ({}); applies from now on", policies.join(", ")), by);
    }
    if !at_launch.is_empty() {
        next.record_by(now, format!("spec changed ({}); takes effect at the next launch", at_launch.join(", ")), by);
    }
    if !on_eni.is_empty() {
        let when = if node.eni.is_some() { "the ENI is changed in place" } else { "the ENI is made with it at the first resume" };
        next.record_by(now, format!("spec changed ({}); {when}", on_eni.join(", ")), by);
    }
    Ok(next)
}

/// What EC2 refuses in launch settings that their types allow: a metadata hop limit outside
/// 1 to 64, volumes (`volumes::check_block_devices`). The field is relative to the spec (or
/// the template, or the patch).
pub fn check_launch_settings(metadata: Option<&MetadataOptions>, block_devices: &[BlockDevice]) -> Result<(), (String, String)> {
    if let Some(hops) = metadata.map(|m| m.http_put_response_hop_limit).filter(|h| !METADATA_HOP_LIMITS.contains(h)) {
        return Err((
            "metadata_options.http_put_response_hop_limit".into(),
            format!("{hops} is outside EC2's 1 to 64 hops (1 keeps metadata on the instance; 2 lets containers reach it)"),
        ));
    }
    check_block_devices(block_devices)
}
