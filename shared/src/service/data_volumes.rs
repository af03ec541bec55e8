//! The node's data volumes in EC2: made at the first resume (before anything runs),
//! checked before every launch (a node never launches without its data), attached to each
//! instance once it runs, and released at deallocation as the policy says.

use chrono::DateTime;
use chrono::Utc;
use tracing::{info, warn};

use super::{Outcome, Tether, TetherError};
use crate::conditions::ConditionKind;
use crate::data_volumes::{data_volume_deleted, DataVolumeRecord};
use crate::error::{AwsError, ErrorClass};
use crate::model::{EniRecord, Node, NodeState};
use crate::ports::VolumeRequest;

/// AttachVolume's answers that mean "not yet": the instance is not running yet (AWS answers
/// `IncorrectState` for a pending instance), or the volume is still held by the instance
/// that is going away.
fn not_yet(e: &AwsError) -> bool {
    instance_not_ready(e) || e.code_is("VolumeInUse")
}

/// AttachVolume's answer for an instance that is not running (yet).
fn instance_not_ready(e: &AwsError) -> bool {
    (e.code_is("IncorrectState") && e.message.contains("Instance")) || e.code_is("IncorrectInstanceState")
}

impl Tether {
    /// Makes the node's data volumes that it does not record yet, in its ENI's AZ, and
    /// records each before anything runs (a volume an earlier attempt made is found by its
    /// tags; a retried create returns the same one by its ClientToken).
    pub(super) async fn ensure_data_volumes(&self, mut node: Node, eni: &EniRecord) -> Result<Node, TetherError> {
        let missing: Vec<_> = node.spec.data_volumes.iter().filter(|v| !node.data_volumes.iter().any(|r| r.device_name == v.device_name)).cloned().collect();
        for volume in missing {
            let found = match self.volumes.find_data_volume(&node.id, &volume.device_name).await? {
                Some(earlier) => earlier,
                None => {
                    let request = VolumeRequest { node_id: &node.id, volume: &volume, availability_zone: &eni.availability_zone, tags: &node.spec.volume_tags };
                    self.volumes.create_data_volume(&request).await?
                }
            };
            info!(volume_id = found.id, device_name = volume.device_name, az = found.availability_zone, "data volume ready");
            node.record(self.clock.now(), format!("data volume {} ({} GiB {}) for {}", found.id, volume.volume_size_gib, volume.volume_type.as_str(), volume.device_name));
            node.data_volumes.push(DataVolumeRecord { device_name: volume.device_name.clone(), volume_id: found.id, created_by_tether: true, attached_to: None, final_snapshot_id: None });
            node = self.store.save(&node).await?;
        }
        Ok(node)
    }

    /// Why the node must not launch: a data volume it recorded before this launch (`had`)
    /// is gone (deleted by hand).
    pub(super) async fn lost_data_volume(&self, node: &Node, had: &[String]) -> Result<Option<String>, TetherError> {
        if had.is_empty() {
            return Ok(None);
        }
        let seen = self.volumes.describe_volumes(had).await?;
        let lost = node.data_volumes.iter().filter(|r| had.contains(&r.volume_id)).find(|r| !seen.iter().any(|v| v.id == r.volume_id && v.exists()));
        Ok(lost.map(data_volume_deleted))
    }

    /// Attaches each data volume not yet on the running instance at its device name, and
    /// records where each is. Safe to repeat: a volume already on the instance is only
    /// recorded, and one still held by the instance going away is left for the next try
    /// (the instance's `running` event, the reconciler). A volume held by another live
    /// instance, or refused by EC2, gives the node a condition saying so. A volume gone
    /// stops the instance and puts the node in ERROR: it must not run without its data.
    pub(super) async fn attach_data_volumes(&self, node: Node) -> Result<Outcome, TetherError> {
        let ignored = |why: &str| Ok(Outcome::Ignored { reason: why.to_owned() });
        let Some(instance_id) = node.instance_id().filter(|_| node.state == NodeState::Running).map(str::to_owned) else {
            return ignored("no running instance to attach data volumes to");
        };
        if node.data_volumes.is_empty() {
            return ignored("no data volumes");
        }
        let ids: Vec<String> = node.data_volumes.iter().map(|v| v.volume_id.clone()).collect();
        let seen = self.volumes.describe_volumes(&ids).await?;
        let now = self.clock.now();
        let mut next = node.clone();
        let mut trouble = Vec::new();
        for (i, record) in node.data_volumes.iter().enumerate() {
            let Some(volume) = seen.iter().find(|v| v.id == record.volume_id && v.exists()) else {
                warn!(volume_id = record.volume_id, "data volume gone; the instance is stopped from running without it");
                self.instances.terminate(&instance_id).await?;
                return self.fail(&node, data_volume_deleted(record)).await;
            };
            let attached = match &volume.attachment {
                Some((holder, _)) if *holder == instance_id => true,
                Some((holder, _)) => {
                    // The instance it was on is going away (EC2 detaches it then): wait. Any
                    // other holder is someone's doing, named in a condition.
                    let leaving = self.instances.describe_instance(holder).await?.is_none_or(|h| matches!(h.state.as_str(), "shutting-down" | "terminated"));
                    if !leaving {
                        trouble.push(format!("data volume {} ({}) is attached to {holder}, not to the node's instance {instance_id}: detach it there, and Tether attaches it", record.volume_id, record.device_name));
                    }
                    false
                }
                None => match self.volumes.attach_volume(&record.volume_id, &instance_id, &record.device_name).await {
                    Ok(()) => true,
                    // The instance is not running yet: no volume can be attached to it now.
                    Err(e) if instance_not_ready(&e) => {
                        info!(code = e.code.as_deref(), "instance not running yet; its running event attaches the data volumes");
                        break;
                    }
                    Err(e) if not_yet(&e) => {
                        info!(volume_id = record.volume_id, code = e.code.as_deref(), "data volume not attachable yet");
                        false
                    }
                    Err(e) if e.is_retryable() => return Err(e.into()),
                    Err(e) => {
                        trouble.push(format!("EC2 refuses to attach data volume {} at {} to {instance_id}: {e}", record.volume_id, record.device_name));
                        false
                    }
                },
            };
            if attached && record.attached_to.as_deref() != Some(instance_id.as_str()) {
                info!(volume_id = record.volume_id, device_name = record.device_name, "data volume attached");
                next.data_volumes[i].attached_to = Some(instance_id.clone());
                next.record(now, format!("data volume {} attached at {}", record.volume_id, record.device_name));
            }
        }
        if trouble.is_empty() {
            if !next.data_volumes_to_attach() {
                next.clear(ConditionKind::DataVolumeNotAttached, "every data volume is attached", now);
            }
        } else {
            next.raise(ConditionKind::DataVolumeNotAttached, trouble.join("; "), now);
        }
        if next == node {
            return ignored("no data volume attachable yet");
        }
        let saved = self.store.save(&next).await?;
        self.count_transition(&node, &saved);
        Ok(Outcome::Recorded { node_id: saved.id, state: saved.state })
    }

    /// After the instance is gone: each data volume's fate under the deallocation policy
    /// (kept; or deleted, after a final snapshot if asked). A final snapshot still pending is
    /// recorded and waited for (`None`: the node stays `deallocating`, its `last_error` says
    /// why, and the reconciler carries the deallocation on after `stuck_after`).
    pub(super) async fn release_data_volumes(&self, mut node: Node, deadline: DateTime<Utc>) -> Result<Option<Node>, TetherError> {
        let policy = node.spec.deallocation.data_volumes;
        let mut kept = Vec::new();
        for record in node.data_volumes.clone() {
            if !policy.deletes() {
                kept.push(record);
                continue;
            }
            let mut snapshot = None;
            if policy.snapshots() {
                match self.volumes.final_snapshot(&node.id, &record.volume_id).await {
                    Ok((snapshot_id, state)) => {
                        if state != "completed" {
                            let waiting = format!("final snapshot {snapshot_id} of data volume {} is {state}: the volume is deleted once it completes", record.volume_id);
                            if let Some(r) = node.data_volumes.iter_mut().find(|r| r.volume_id == record.volume_id && r.final_snapshot_id.is_none()) {
                                r.final_snapshot_id = Some(snapshot_id.clone());
                                node.record(self.clock.now(), format!("final snapshot {snapshot_id} of data volume {} ({}) taken", record.volume_id, record.device_name));
                            }
                            info!(snapshot_id, volume_id = record.volume_id, state, "final snapshot not complete; the deallocation waits for it");
                            node.last_error = Some(waiting);
                            self.store.save(&node).await?;
                            return Ok(None);
                        }
                        snapshot = Some(snapshot_id);
                    }
                    // Gone already: nothing to snapshot, nothing to delete.
                    Err(e) if e.class == ErrorClass::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // Detached only once the old instance has terminated: waited for, as the ENI is.
            let delete = || async {
                match self.volumes.delete_volume(&record.volume_id).await {
                    Err(e) if e.code_is("VolumeInUse") => Err(AwsError { class: ErrorClass::Transient, ..e }),
                    other => other,
                }
            };
            self.with_retries(deadline, false, delete).await?;
            let snapshot = snapshot.map(|s| format!(" after its final snapshot {s}")).unwrap_or_default();
            node.record(self.clock.now(), format!("data volume {} ({}) deleted{snapshot}", record.volume_id, record.device_name));
        }
        for record in &kept {
            node.record(self.clock.now(), format!("data volume {} ({}) kept, with its data (deallocation.data_volumes: keep)", record.volume_id, record.device_name));
        }
        node.data_volumes = kept;
        node.last_error = None;
        Ok(Some(node))
    }
}
