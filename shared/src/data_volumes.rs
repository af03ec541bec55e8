//! Data volumes: EBS volumes that belong to the node, not to an instance. Created once, at
//! the node's first resume, in its ENI's Availability Zone (an ENI and a volume are each
//! bound to one AZ, so every replacement runs where both are); never deleted when an
//! instance terminates; attached to every replacement at the same device names once it
//! runs (RunInstances cannot attach an existing volume). A node never launches without
//! them: one deleted by hand puts it in `error`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::volumes::{BlockDevice, VolumeType};

/// How many data volumes a node may have (each is one more AttachVolume per replacement).
pub const MAX_DATA_VOLUMES: usize = 8;

/// One data volume a node keeps for life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataVolume {
    /// Where every instance sees it (`/dev/sdf` … `/dev/sdp` recommended): not the AMI's
    /// root device, nor one of `block_devices`. Nitro instances show it as an NVMe device
    /// (`/dev/nvme1n1`, …): mount it by UUID or label, not by this name.
    pub device_name: String,
    #[serde(deserialize_with = "crate::views::count::whole")]
    pub volume_size_gib: u32,
    #[serde(default)]
    pub volume_type: VolumeType,
    /// Provisioned IOPS: gp3 (default 3,000), io1 and io2 (required there).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::views::count::some")]
    pub iops: Option<u32>,
    /// Throughput in MiB/s: gp3 only (default 125).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::views::count::some")]
    pub throughput_mibps: Option<u32>,
    /// Encrypted with `kms_key_id`, or the account's default EBS key. Absent: the account's
    /// default decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// A KMS key id, key ARN, alias (`alias/…`) or alias ARN; needs `encrypted: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

impl DataVolume {
    /// The same shape as a block device (what the shape checks read).
    fn as_block_device(&self) -> BlockDevice {
        BlockDevice {
            device_name: self.device_name.clone(),
            volume_size_gib: self.volume_size_gib,
            volume_type: self.volume_type,
            iops: self.iops,
            throughput_mibps: self.throughput_mibps,
            encrypted: self.encrypted,
            kms_key_id: self.kms_key_id.clone(),
            delete_on_termination: false,
        }
    }
}

/// A data volume the node has: made by Tether at the first resume, or (imported) the
/// instance's own, kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DataVolumeRecord {
    pub device_name: String,
    pub volume_id: String,
    /// Tether made it; otherwise it was the imported instance's, and stays the user's
    /// (deleted at deallocation only if the policy says so explicitly).
    pub created_by_tether: bool,
    /// The instance Tether last saw it attached to at `device_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
    /// The final snapshot a deallocation took of it (`deallocation.data_volumes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_snapshot_id: Option<String>,
}

/// What EC2 says of one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: String,
    /// `creating`, `available`, `in-use`, `deleting`, `deleted` or `error`.
    pub state: String,
    pub availability_zone: String,
    /// The instance it is attached to (or being attached to or detached from), and where.
    pub attachment: Option<(String, String)>,
}

impl crate::model::Node {
    /// Whether a data volume is not attached to the current instance yet (as last seen).
    pub fn data_volumes_to_attach(&self) -> bool {
        self.instance_id().is_some_and(|current| self.data_volumes.iter().any(|v| v.attached_to.as_deref() != Some(current)))
    }
}

impl VolumeInfo {
    /// Whether the volume is one the node still has (not being deleted).
    pub fn exists(&self) -> bool {
        !matches!(self.state.as_str(), "deleting" | "deleted")
    }
}

/// Refuses what EC2 would refuse, and what would collide with the instance's own volumes,
/// naming the field (`data_volumes[i].…`, relative to the spec).
pub fn check_data_volumes(volumes: &[DataVolume], block_devices: &[BlockDevice]) -> Result<(), (String, String)> {
    if volumes.len() > MAX_DATA_VOLUMES {
        return Err(("data_volumes".into(), format!("at most {MAX_DATA_VOLUMES} data volumes (each is one more call per replacement)")));
    }
    let shapes: Vec<BlockDevice> = volumes.iter().map(DataVolume::as_block_device).collect();
    if let Err((field, reason)) = crate::volumes::check_block_devices(&shapes) {
        return Err((field.replacen("block_devices", "data_volumes", 1), reason));
    }
    for (i, volume) in volumes.iter().enumerate() {
        if let Some(j) = block_devices.iter().position(|d| d.device_name == volume.device_name) {
            return Err((format!("data_volumes[{i}].device_name"), format!("{} is block_devices[{j}]'s: give the data volume another device name", volume.device_name)));
        }
        if volume.device_name.chars().last().is_some_and(|c| c.is_ascii_digit()) {
            return Err((format!("data_volumes[{i}].device_name"), format!("{} names a partition (a root device's name): use /dev/sdf … /dev/sdp", volume.device_name)));
        }
    }
    Ok(())
}

/// The history's (and an error's) words for a data volume gone from EC2.
pub fn data_volume_deleted(volume: &DataVolumeRecord) -> String {
    format!(
        "data volume {} ({}) was deleted outside Tether: the node does not run without its data; deallocate this node, and create a new one (restore the data from a snapshot into its new volume)",
        volume.volume_id, volume.device_name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(device: &str, size: u32) -> DataVolume {
        DataVolume { device_name: device.into(), volume_size_gib: size, volume_type: VolumeType::Gp3, iops: None, throughput_mibps: None, encrypted: None, kms_key_id: None }
    }

    #[test]
    fn data_volumes_are_checked_as_volumes_and_against_the_instance_s_own_devices() {
        assert_eq!(check_data_volumes(&[data("/dev/sdf", 100), data("/dev/sdg", 10)], &[]), Ok(()));
        let refused = |volumes: &[DataVolume], devices: &[BlockDevice]| check_data_volumes(volumes, devices).map_err(|(f, r)| format!("{f}: {r}")).unwrap_err();
        assert!(refused(&[data("/dev/sdf", 0)], &[]).starts_with("data_volumes[0].volume_size_gib: gp3 volumes have 1 to 65536 GiB"));
        assert!(refused(&[data("/dev/sdf", 1), data("/dev/sdf", 1)], &[]).starts_with("data_volumes[1].device_name: /dev/sdf is listed twice"));
        let root = data("/dev/xvda", 8).as_block_device();
        assert!(refused(&[data("/dev/xvda", 8)], &[root]).starts_with("data_volumes[0].device_name: /dev/xvda is block_devices[0]'s"));
        assert!(refused(&[data("/dev/sda1", 8)], &[]).contains("names a partition"));
        let many: Vec<_> = (0..=MAX_DATA_VOLUMES).map(|i| data(&format!("/dev/sd{}", (b'f' + i as u8) as char), 1)).collect();
        assert!(refused(&many, &[]).starts_with("data_volumes: at most 8"));
    }
}
