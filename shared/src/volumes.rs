//! The EBS volumes every instance of a node launches with (RunInstances' block device
//! mappings): the root volume's size and type (name the AMI's root device), and extra
//! volumes. They belong to the instance: by default deleted with it, made anew for each
//! replacement. (Data that must outlive an instance needs volumes of its own.)

use std::ops::RangeInclusive;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many block devices a spec may list.
pub const MAX_BLOCK_DEVICES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockDevice {
    /// The device as EC2 maps it: the AMI's root device name (`/dev/xvda` on Amazon Linux,
    /// `/dev/sda1` on many others) sets the root volume; another (`/dev/sdf` … `/dev/sdp`,
    /// `/dev/xvdb` …) adds a volume. Nitro instances show EBS volumes as NVMe devices.
    pub device_name: String,
    /// Size in GiB, within the volume type's range (for the root, at least the AMI's
    /// snapshot size).
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
    /// Encrypted with `kms_key_id`, or the account's default EBS key. Absent: the
    /// account's default (and the snapshot's) decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// A KMS key id, key ARN, alias (`alias/…`) or alias ARN; needs `encrypted: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Deleted when the instance terminates (default). Kept volumes pile up, one per
    /// generation: Tether does not attach them again.
    #[serde(default = "yes")]
    pub delete_on_termination: bool,
}

fn yes() -> bool {
    true
}

/// A root volume (a block device at the AMI's root device name) smaller than the AMI's root
/// snapshot: RunInstances would refuse every launch. The error names the field, relative
/// to `block_devices`.
pub fn check_root_size(devices: &[BlockDevice], image: &crate::ports::ImageInfo) -> Result<(), (String, String)> {
    let Some(snapshot) = image.root_snapshot_gib else { return Ok(()) };
    match devices.iter().position(|d| d.device_name == image.root_device_name) {
        Some(i) if devices[i].volume_size_gib < snapshot => Err((
            format!("block_devices[{i}].volume_size_gib"),
            format!("the AMI's root snapshot ({}) is {snapshot} GiB: give at least {snapshot}", image.root_device_name),
        )),
        _ => Ok(()),
    }
}

/// One EBS volume of an instance Tether imported, as it found it. It stays that instance's:
/// a replacement gets a new, empty volume of the same shape (the node's `block_devices`),
/// never this one or its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImportedVolume {
    pub volume_id: String,
    pub device_name: String,
    pub size_gib: u32,
    /// EC2's name for the type (`gp3`, `io2`, …).
    pub volume_type: String,
    /// The imported instance's root volume.
    pub root: bool,
    /// Whether the volume itself outlives the imported instance (DeleteOnTermination off):
    /// then it is left detached, with its data, when that instance goes; Tether never
    /// attaches it to a replacement.
    pub survives_replacement: bool,
}

impl ImportedVolume {
    /// Words for the node's history: what becomes of the volume and its data.
    pub fn fate(&self, instance_id: &str) -> String {
        let after = if self.survives_replacement {
            "it outlives the instance (DeleteOnTermination off), detached, and Tether does not attach it again: keep or delete it by hand"
        } else {
            "EC2 deletes it, and its data, with the instance (DeleteOnTermination)"
        };
        format!(
            "volume {} at {} ({} GiB {}) is instance {instance_id}'s own: a replacement gets a new, empty volume at {} instead, not its data; {after}",
            self.volume_id, self.device_name, self.size_gib, self.volume_type, self.device_name
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeType {
    #[default]
    Gp3,
    Gp2,
    Io1,
    Io2,
    St1,
    Sc1,
    Standard,
}

/// What EC2 accepts for one volume type: the EBS User Guide's "Amazon EBS volume types"
/// (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-volume-types.html) and the EC2 API
/// model's `EbsBlockDevice` and `CreateVolume` (gp3 up to 64 TiB, 80,000 IOPS and 2,000 MiB/s
/// since 2025; every io2 volume is Block Express).
struct Limits {
    size_gib: RangeInclusive<u32>,
    /// IOPS that may be provisioned, the most per GiB, and whether they must be.
    iops: Option<(RangeInclusive<u32>, u32, bool)>,
    throughput_mibps: Option<RangeInclusive<u32>>,
}

impl VolumeType {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp3 => "gp3",
            VolumeType::Gp2 => "gp2",
            VolumeType::Io1 => "io1",
            VolumeType::Io2 => "io2",
            VolumeType::St1 => "st1",
            VolumeType::Sc1 => "sc1",
            VolumeType::Standard => "standard",
        }
    }

    fn limits(self) -> Limits {
        match self {
            VolumeType::Gp3 => Limits { size_gib: 1..=65_536, iops: Some((3_000..=80_000, 500, false)), throughput_mibps: Some(125..=2_000) },
            VolumeType::Gp2 => Limits { size_gib: 1..=16_384, iops: None, throughput_mibps: None },
            VolumeType::Io1 => Limits { size_gib: 4..=16_384, iops: Some((100..=64_000, 50, true)), throughput_mibps: None },
            VolumeType::Io2 => Limits { size_gib: 4..=65_536, iops: Some((100..=256_000, 1_000, true)), throughput_mibps: None },
            VolumeType::St1 | VolumeType::Sc1 => Limits { size_gib: 125..=16_384, iops: None, throughput_mibps: None },
            VolumeType::Standard => Limits { size_gib: 1..=1_024, iops: None, throughput_mibps: None },
        }
    }
}

/// Refuses what EC2 would refuse at launch, naming the field (`block_devices[i].…`,
/// relative to the spec) and the fix.
pub fn check_block_devices(devices: &[BlockDevice]) -> Result<(), (String, String)> {
    if devices.len() > MAX_BLOCK_DEVICES {
        return Err(("block_devices".into(), format!("at most {MAX_BLOCK_DEVICES} block devices")));
    }
    for (i, device) in devices.iter().enumerate() {
        let field = |name: &str| format!("block_devices[{i}].{name}");
        if !device_name_ok(&device.device_name) {
            return Err((field("device_name"), format!("`{}` is no device name EC2 maps: use /dev/sd[a-z] or /dev/xvd[a-z] (with an optional partition number, as the AMI's root /dev/sda1)", device.device_name.escape_debug())));
        }
        if devices[..i].iter().any(|d| d.device_name == device.device_name) {
            return Err((field("device_name"), format!("{} is listed twice", device.device_name)));
        }
        let kind = device.volume_type.as_str();
        let limits = device.volume_type.limits();
        if !limits.size_gib.contains(&device.volume_size_gib) {
            return Err((field("volume_size_gib"), format!("{kind} volumes have {} to {} GiB", limits.size_gib.start(), limits.size_gib.end())));
        }
        match (&limits.iops, device.iops) {
            (None, Some(_)) => return Err((field("iops"), format!("{kind} volumes take no provisioned IOPS: leave iops out, or choose gp3, io1 or io2"))),
            (Some((_, _, true)), None) => return Err((field("iops"), format!("{kind} volumes need their IOPS: give iops"))),
            (Some((range, per_gib, _)), Some(iops)) => {
                if !range.contains(&iops) {
                    return Err((field("iops"), format!("{kind} volumes take {} to {} IOPS", range.start(), range.end())));
                }
                if u64::from(iops) > u64::from(*per_gib) * u64::from(device.volume_size_gib) {
                    return Err((field("iops"), format!("{kind} volumes take at most {per_gib} IOPS per GiB: {iops} IOPS need {} GiB or more", iops.div_ceil(*per_gib))));
                }
            }
            (_, None) => {}
        }
        match (&limits.throughput_mibps, device.throughput_mibps) {
            (None, Some(_)) => return Err((field("throughput_mibps"), format!("only gp3 volumes take a throughput; {kind} does not"))),
            (Some(range), Some(throughput)) => {
                if !range.contains(&throughput) {
                    return Err((field("throughput_mibps"), format!("gp3 volumes take {} to {} MiB/s", range.start(), range.end())));
                }
                // EC2: at most 0.25 MiB/s per provisioned IOPS (3,000 IOPS by default).
                let iops = device.iops.unwrap_or(3_000);
                if u64::from(throughput) * 4 > u64::from(iops) {
                    return Err((field("throughput_mibps"), format!("gp3 takes at most 0.25 MiB/s per IOPS: {throughput} MiB/s need {} IOPS or more", throughput * 4)));
                }
            }
            (_, None) => {}
        }
        if let Some(key) = &device.kms_key_id {
            if device.encrypted != Some(true) {
                return Err((field("kms_key_id"), "a KMS key encrypts the volume: set encrypted: true with it".into()));
            }
            if !kms_key_ok(key) {
                return Err((field("kms_key_id"), format!("`{}` is no KMS key id, key ARN, alias/… or alias ARN", key.escape_debug())));
            }
        }
    }
    Ok(())
}

/// `/dev/sd[a-z]` or `/dev/xvd[a-z]`, with an optional partition number or second letter.
fn device_name_ok(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("/dev/xvd").or_else(|| name.strip_prefix("/dev/sd")) else { return false };
    let mut chars = rest.chars();
    let Some(first) = chars.next() else { return false };
    let tail: String = chars.collect();
    first.is_ascii_lowercase() && (tail.is_empty() || (tail.len() <= 2 && (tail.chars().all(|c| c.is_ascii_digit()) || tail.chars().all(|c| c.is_ascii_lowercase()))))
}

fn kms_key_ok(key: &str) -> bool {
    let uuid = |s: &str| s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    let clean = !key.is_empty() && key.len() <= 2048 && key.chars().all(|c| c.is_ascii_graphic());
    clean && (uuid(key) || key.starts_with("alias/") || (key.starts_with("arn:") && (key.contains(":key/") || key.contains(":alias/"))) || key.starts_with("mrk-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gp3(size: u32) -> BlockDevice {
        BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_size_gib: size,
            volume_type: VolumeType::Gp3,
            iops: None,
            throughput_mibps: None,
            encrypted: None,
            kms_key_id: None,
            delete_on_termination: true,
        }
    }

    fn refused(devices: &[BlockDevice]) -> String {
        match check_block_devices(devices) {
            Err((field, reason)) => format!("{field}: {reason}"),
            Ok(()) => "accepted".into(),
        }
    }

    #[test]
    fn what_ec2_accepts_passes() {
        let root = BlockDevice { iops: Some(6_000), throughput_mibps: Some(500), encrypted: Some(true), kms_key_id: Some("alias/data".into()), ..gp3(100) };
        let extra = BlockDevice { device_name: "/dev/sdf".into(), volume_type: VolumeType::Io2, iops: Some(10_000), ..gp3(20) };
        assert_eq!(refused(&[root, extra, BlockDevice { device_name: "/dev/sda1".into(), ..gp3(8) }]), "accepted");
    }

    #[test]
    fn what_ec2_refuses_is_refused_naming_the_field() {
        for (devices, says) in [
            (vec![gp3(0)], "block_devices[0].volume_size_gib: gp3 volumes have 1 to 65536 GiB"),
            (vec![BlockDevice { device_name: "sdf".into(), ..gp3(8) }], "block_devices[0].device_name"),
            (vec![gp3(8), gp3(9)], "block_devices[1].device_name: /dev/xvda is listed twice"),
            (vec![BlockDevice { volume_type: VolumeType::Gp2, iops: Some(3_000), ..gp3(100) }], "block_devices[0].iops: gp2 volumes take no provisioned IOPS"),
            (vec![BlockDevice { volume_type: VolumeType::Io1, ..gp3(100) }], "block_devices[0].iops: io1 volumes need their IOPS"),
            (vec![BlockDevice { volume_type: VolumeType::Io1, iops: Some(6_000), ..gp3(100) }], "block_devices[0].iops: io1 volumes take at most 50 IOPS per GiB: 6000 IOPS need 120 GiB"),
            (vec![BlockDevice { throughput_mibps: Some(1_000), ..gp3(100) }], "block_devices[0].throughput_mibps: gp3 takes at most 0.25 MiB/s per IOPS: 1000 MiB/s need 4000 IOPS"),
            (vec![BlockDevice { volume_type: VolumeType::St1, ..gp3(100) }], "block_devices[0].volume_size_gib: st1 volumes have 125 to 16384 GiB"),
            (vec![BlockDevice { kms_key_id: Some("alias/data".into()), ..gp3(8) }], "block_devices[0].kms_key_id: a KMS key encrypts the volume"),
            (vec![BlockDevice { encrypted: Some(true), kms_key_id: Some("my key".into()), ..gp3(8) }], "block_devices[0].kms_key_id: `my key` is no KMS key"),
        ] {
            let answer = refused(&devices);
            assert!(answer.starts_with(says), "{answer} (expected {says})");
        }
    }
}
