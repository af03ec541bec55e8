//! EBS volumes and snapshots on the fake, with EC2's rules (tests/emulator/README.md's
//! volume patches): a volume is attached to one instance at most, only to a running or
//! stopped instance in its own AZ, at a device name free on that instance; an attached
//! volume cannot be deleted; termination detaches every volume (deleting those whose
//! DeleteOnTermination is on: never an attached one, EC2's default). A snapshot is `pending`
//! until the next `advance`.

use super::*;
use crate::aws::ec2::{TAG_DEVICE_NAME, TAG_VOLUME_ID};
use crate::data_volumes::VolumeInfo;
use crate::ports::{VolumeRequest, Volumes};

#[derive(Clone, Debug)]
pub(super) struct Volume {
    az: String,
    size_gib: u32,
    tags: BTreeMap<String, String>,
    /// (instance id, device name, DeleteOnTermination).
    attachment: Option<(String, String, bool)>,
}

#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    volume_id: String,
    tags: BTreeMap<String, String>,
    completed: bool,
}

/// A volume as the invariants see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    pub id: String,
    pub availability_zone: String,
    pub size_gib: u32,
    pub node_id: Option<String>,
    pub device_name_tag: Option<String>,
    /// (instance id, device name).
    pub attachment: Option<(String, String)>,
    /// Final snapshots taken of it.
    pub snapshots: Vec<String>,
}

fn not_found(operation: &'static str, volume_id: &str) -> AwsError {
    aws(EC2, operation, "InvalidVolume.NotFound", format!("The volume '{volume_id}' does not exist."))
}

impl State {
    fn volume_info(&self, id: &str, volume: &Volume) -> VolumeInfo {
        VolumeInfo {
            id: id.to_owned(),
            state: if volume.attachment.is_some() { "in-use" } else { "available" }.into(),
            availability_zone: volume.az.clone(),
            attachment: volume.attachment.as_ref().map(|(instance, device, _)| (instance.clone(), device.clone())),
        }
    }

    fn create_volume(&mut self, request: &VolumeRequest<'_>) -> Result<VolumeInfo, AwsError> {
        let token = request.client_token();
        if let Some(id) = self.volume_tokens.get(&token).filter(|id| self.volumes.contains_key(*id)).cloned() {
            return Ok(self.volume_info(&id, &self.volumes[&id]));
        }
        let id = self.next_id("vol");
        let mut tags: BTreeMap<String, String> = request.tags.clone();
        tags.insert(TAG_NODE_ID.into(), request.node_id.to_string());
        tags.insert(TAG_MANAGED.into(), "true".into());
        tags.insert(TAG_DEVICE_NAME.into(), request.volume.device_name.clone());
        let volume = Volume { az: request.availability_zone.to_owned(), size_gib: request.volume.volume_size_gib, tags, attachment: None };
        self.volumes.insert(id.clone(), volume);
        self.volume_tokens.insert(token, id.clone());
        Ok(self.volume_info(&id, &self.volumes[&id]))
    }

    fn attach_volume(&mut self, volume_id: &str, instance_id: &str, device_name: &str) -> Result<(), AwsError> {
        let op = "AttachVolume";
        let volume = self.volumes.get(volume_id).ok_or_else(|| not_found(op, volume_id))?;
        let instance = self.instances.get(instance_id).ok_or_else(|| {
            aws(EC2, op, "InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        if volume.attachment.is_some() {
            return Err(aws(EC2, op, "VolumeInUse", format!("{volume_id} is already attached to an instance")));
        }
        if !matches!(instance.life, Life::Running | Life::Stopped) {
            return Err(aws(EC2, op, "IncorrectState", format!("Instance '{instance_id}' is not 'running'.")));
        }
        if volume.az != instance.az {
            return Err(aws(EC2, op, "InvalidVolume.ZoneMismatch", format!("The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'")));
        }
        let taken = self.volumes.values().any(|v| v.attachment.as_ref().is_some_and(|(i, d, _)| i == instance_id && d == device_name));
        if taken {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Invalid value '{device_name}' for unixDevice. Attachment point {device_name} is already in use")));
        }
        if let Some(volume) = self.volumes.get_mut(volume_id) {
            volume.attachment = Some((instance_id.to_owned(), device_name.to_owned(), false));
        }
        Ok(())
    }

    fn delete_volume(&mut self, volume_id: &str) -> Result<(), AwsError> {
        let volume = self.volumes.get(volume_id).ok_or_else(|| not_found("DeleteVolume", volume_id))?;
        if volume.attachment.is_some() {
            return Err(aws(EC2, "DeleteVolume", "VolumeInUse", format!("Volume {volume_id} is currently attached to {}", volume.attachment.as_ref().map(|a| a.0.as_str()).unwrap_or_default())));
        }
        self.volumes.remove(volume_id);
        Ok(())
    }

    fn find_snapshot(&self, node_id: &NodeId, volume_id: &str) -> Option<(String, String)> {
        let ours = |s: &&Snapshot| s.tags.get(TAG_VOLUME_ID).map(String::as_str) == Some(volume_id) && s.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str());
        let (id, snapshot) = self.snapshots.iter().find(|(_, s)| ours(s))?;
        Some((id.clone(), if snapshot.completed { "completed" } else { "pending" }.to_owned()))
    }

    fn create_snapshot(&mut self, node_id: &NodeId, volume_id: &str) -> Result<(String, String), AwsError> {
        if !self.volumes.contains_key(volume_id) {
            return Err(not_found("CreateSnapshot", volume_id));
        }
        let id = self.next_id("snap");
        let tags = BTreeMap::from([(TAG_NODE_ID.to_owned(), node_id.to_string()), (TAG_MANAGED.to_owned(), "true".to_owned()), (TAG_VOLUME_ID.to_owned(), volume_id.to_owned())]);
        self.snapshots.insert(id.clone(), Snapshot { volume_id: volume_id.to_owned(), tags, completed: false });
        Ok((id, "pending".into()))
    }

    /// EC2's side of an instance's termination for its volumes: each detached, and deleted
    /// if its DeleteOnTermination is on.
    pub(super) fn detach_volumes_of(&mut self, instance_id: &str) {
        let attached: Vec<String> = self.volumes.iter().filter(|(_, v)| v.attachment.as_ref().is_some_and(|a| a.0 == instance_id)).map(|(id, _)| id.clone()).collect();
        for id in attached {
            let delete = self.volumes.get_mut(&id).and_then(|v| v.attachment.take()).is_some_and(|a| a.2);
            if delete {
                self.volumes.remove(&id);
            }
        }
    }

    /// Pending snapshots complete.
    pub(super) fn complete_snapshots(&mut self) -> usize {
        let pending: Vec<&mut Snapshot> = self.snapshots.values_mut().filter(|s| !s.completed).collect();
        let count = pending.len();
        for snapshot in pending {
            snapshot.completed = true;
        }
        count
    }
}

#[async_trait]
impl Volumes for FakeEc2 {
    async fn find_data_volume(&self, node_id: &NodeId, device_name: &str) -> Result<Option<VolumeInfo>, AwsError> {
        self.call("DescribeVolumes", |s| {
            let mine = |v: &&Volume| v.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str()) && v.tags.get(TAG_DEVICE_NAME).map(String::as_str) == Some(device_name);
            Ok(s.volumes.iter().find(|(_, v)| mine(v)).map(|(id, v)| s.volume_info(id, v)))
        })
        .await
    }

    async fn create_data_volume(&self, request: &VolumeRequest<'_>) -> Result<VolumeInfo, AwsError> {
        self.call("CreateVolume", |s| s.create_volume(request)).await
    }

    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<VolumeInfo>, AwsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.call("DescribeVolumes", |s| Ok(ids.iter().filter_map(|id| s.volumes.get(id).map(|v| s.volume_info(id, v))).collect())).await
    }

    async fn attach_volume(&self, volume_id: &str, instance_id: &str, device_name: &str) -> Result<(), AwsError> {
        self.call("AttachVolume", |s| s.attach_volume(volume_id, instance_id, device_name)).await
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        match self.call("DeleteVolume", |s| s.delete_volume(volume_id)).await {
            Err(e) if e.class == ErrorClass::NotFound => Ok(()),
            other => other,
        }
    }

    async fn final_snapshot(&self, node_id: &NodeId, volume_id: &str) -> Result<(String, String), AwsError> {
        if let Some(earlier) = self.call("DescribeSnapshots", |s| Ok(s.find_snapshot(node_id, volume_id))).await? {
            return Ok(earlier);
        }
        self.call("CreateSnapshot", |s| s.create_snapshot(node_id, volume_id)).await
    }

    async fn node_volumes(&self) -> Result<Vec<Tagged<VolumeInfo>>, AwsError> {
        self.call("DescribeVolumes", |s| {
            Ok(s.volumes
                .iter()
                .filter(|(_, v)| v.tags.contains_key(TAG_DEVICE_NAME))
                .filter_map(|(id, v)| {
                    let node_id = v.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
                    Some(Tagged { node_id, generation: None, device_index: None, attached: v.attachment.is_some(), resource: s.volume_info(id, v) })
                })
                .collect())
        })
        .await
    }
}

impl FakeEc2 {
    /// `Instances::keep_volumes` on the fake: the volumes it holds are tagged and made to
    /// outlive their instance, as the adapter does (one CreateTags and one
    /// ModifyInstanceAttribute per volume).
    pub(super) async fn keep_imported_volumes(&self, node_id: &NodeId, volumes: &[crate::volumes::ImportedVolume]) -> Result<(), AwsError> {
        for kept in volumes {
            self.call("CreateTags", |s| {
                let volume = s.volumes.get_mut(&kept.volume_id).ok_or_else(|| not_found("CreateTags", &kept.volume_id))?;
                volume.tags.insert(TAG_NODE_ID.into(), node_id.to_string());
                volume.tags.insert(TAG_MANAGED.into(), "true".into());
                volume.tags.insert(TAG_DEVICE_NAME.into(), kept.device_name.clone());
                Ok(())
            })
            .await?;
            self.call("ModifyInstanceAttribute", |s| {
                if let Some((_, _, delete)) = s.volumes.get_mut(&kept.volume_id).and_then(|v| v.attachment.as_mut()) {
                    *delete = false;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Every volume, as the invariants read them.
    pub fn volumes(&self) -> Vec<VolumeView> {
        let state = self.lock();
        state
            .volumes
            .iter()
            .map(|(id, v)| VolumeView {
                id: id.clone(),
                availability_zone: v.az.clone(),
                size_gib: v.size_gib,
                node_id: v.tags.get(TAG_NODE_ID).cloned(),
                device_name_tag: v.tags.get(TAG_DEVICE_NAME).cloned(),
                attachment: v.attachment.as_ref().map(|(i, d, _)| (i.clone(), d.clone())),
                snapshots: state.snapshots.iter().filter(|(_, s)| s.volume_id == *id).map(|(sid, _)| sid.clone()).collect(),
            })
            .collect()
    }

    /// Someone deletes a volume (refused while it is attached, as EC2 does).
    pub fn hand_delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        self.lock().delete_volume(volume_id)
    }

    /// Someone attaches a volume to an instance (EC2's rules hold).
    pub fn hand_attach_volume(&self, volume_id: &str, instance_id: &str, device_name: &str) -> Result<(), AwsError> {
        self.lock().attach_volume(volume_id, instance_id, device_name)
    }

    /// Every snapshot's id.
    pub fn snapshots(&self) -> Vec<String> {
        self.lock().snapshots.keys().cloned().collect()
    }

    /// Someone detaches a volume from its instance.
    pub fn hand_detach_volume(&self, volume_id: &str) -> bool {
        self.lock().volumes.get_mut(volume_id).and_then(|v| v.attachment.take()).is_some()
    }
}
