//! Launch template versions, read and turned into what Tether carries over
//! (`TemplateSettings`): Tether sends the settings on RunInstances itself, never the
//! template reference (EC2 refuses a template's instance-level security groups beside the
//! node's network interface).

use aws_sdk_ec2::types::{
    CapacityReservationPreference, HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataTagsState, LaunchTemplateBlockDeviceMapping,
    ResourceType, ResponseLaunchTemplateData,
};
use aws_smithy_types::base64;

use super::{absent_if_unknown, Ec2Cloud};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::launch_options::{CapacityReservation, CpuCredits, LaunchTemplateRef, Placement, TemplateSettings, Tenancy};
use crate::model::{HttpTokens, MetadataOptions, Switch};
use crate::volumes::{BlockDevice, VolumeType};

impl Ec2Cloud {
    /// The template version, or `None` when the template or the version does not exist.
    pub(super) async fn template_version(&self, template: &LaunchTemplateRef) -> Result<Option<TemplateSettings>, AwsError> {
        let described = self
            .client
            .describe_launch_template_versions()
            .set_launch_template_id(template.id.clone())
            .set_launch_template_name(template.name.clone())
            .versions(&template.version)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeLaunchTemplateVersions", e));
        let Some(out) = absent_if_unknown(described)? else { return Ok(None) };
        Ok(out.launch_template_versions().first().map(|v| {
            let mut settings = v.launch_template_data().map(settings_of).unwrap_or_default();
            settings.version = v.version_number().unwrap_or_default();
            settings
        }))
    }
}

fn settings_of(data: &ResponseLaunchTemplateData) -> TemplateSettings {
    let mut refused = Vec::new();
    let mut refuse = |what: &str, why: &str| refused.push((what.to_owned(), why.to_owned()));
    const NETWORK: &str = "the node's ENI owns the network: set it in the node's spec instead";
    if !data.network_interfaces().is_empty() {
        refuse("NetworkInterfaces", NETWORK);
    }
    if !data.security_groups().is_empty() {
        refuse("SecurityGroups", "security group names (default VPC only): use SecurityGroupIds");
    }
    if data.instance_market_options().is_some() {
        refuse("InstanceMarketOptions", "Tether chooses spot or on-demand (fallback_to_on_demand, spot_max_price)");
    }
    let placement = data.placement();
    if placement.is_some_and(|p| p.availability_zone().is_some() || p.availability_zone_id().is_some()) {
        refuse("Placement.AvailabilityZone", "the node's ENI fixes its Availability Zone");
    }
    if placement.is_some_and(|p| p.host_id().is_some() || p.affinity().is_some() || p.host_resource_group_arn().is_some() || p.partition_number().is_some()) {
        refuse("Placement (host, affinity or partition)", "not carried over by Tether yet");
    }
    let unsupported = [
        ("KernelId", data.kernel_id().is_some()),
        ("RamDiskId", data.ram_disk_id().is_some()),
        ("ElasticGpuSpecifications", !data.elastic_gpu_specifications().is_empty()),
        ("ElasticInferenceAccelerators", !data.elastic_inference_accelerators().is_empty()),
        ("LicenseSpecifications", !data.license_specifications().is_empty()),
        ("HibernationOptions", data.hibernation_options().and_then(|h| h.configured()) == Some(true)),
        ("EnclaveOptions", data.enclave_options().and_then(|e| e.enabled()) == Some(true)),
        ("InstanceRequirements", data.instance_requirements().is_some()),
        ("CpuOptions", data.cpu_options().is_some()),
        ("DisableApiTermination", data.disable_api_termination() == Some(true)),
        ("DisableApiStop", data.disable_api_stop() == Some(true)),
        ("InstanceInitiatedShutdownBehavior", data.instance_initiated_shutdown_behavior().is_some()),
        ("MaintenanceOptions", data.maintenance_options().is_some()),
        ("PrivateDnsNameOptions", data.private_dns_name_options().is_some()),
    ];
    for (what, _) in unsupported.iter().filter(|(_, set)| *set) {
        refuse(what, "not carried over by Tether yet: remove it from the template, or launch without one");
    }
    let mut block_devices = Vec::new();
    for mapping in data.block_device_mappings() {
        match block_device(mapping) {
            Ok(device) => block_devices.push(device),
            Err(why) => refuse(&format!("BlockDeviceMappings {}", mapping.device_name().unwrap_or("?")), why),
        }
    }
    let user_data = match data.user_data().map(base64::decode).transpose() {
        Ok(bytes) => match bytes.map(String::from_utf8).transpose() {
            Ok(text) => text,
            Err(_) => {
                refuse("UserData", "not UTF-8 text (compressed?): Tether's user data is text");
                None
            }
        },
        Err(_) => {
            refuse("UserData", "not base64");
            None
        }
    };
    let tags_of = |resource: ResourceType| {
        data.tag_specifications()
            .iter()
            .filter(|s| s.resource_type() == Some(&resource))
            .flat_map(|s| s.tags())
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect()
    };
    TemplateSettings {
        version: 0,
        image_id: data.image_id().map(str::to_owned),
        instance_type: data.instance_type().map(|t| t.as_str().to_owned()),
        key_name: data.key_name().map(str::to_owned),
        iam_instance_profile: data.iam_instance_profile().and_then(|p| p.arn().or(p.name())).map(str::to_owned),
        user_data,
        security_group_ids: data.security_group_ids().to_vec(),
        block_devices,
        metadata_options: data.metadata_options().map(|m| {
            let defaults = MetadataOptions::default();
            MetadataOptions {
                // A value the template leaves out reads as Tether's default (IMDSv2 required).
                http_tokens: if m.http_tokens().map(|t| t.as_str()) == Some(HttpTokensState::Optional.as_str()) { HttpTokens::Optional } else { HttpTokens::Required },
                http_put_response_hop_limit: m.http_put_response_hop_limit().and_then(|h| u8::try_from(h).ok()).unwrap_or(defaults.http_put_response_hop_limit),
                http_endpoint: if m.http_endpoint().map(|e| e.as_str()) == Some(InstanceMetadataEndpointState::Disabled.as_str()) { Switch::Disabled } else { Switch::Enabled },
                instance_metadata_tags: if m.instance_metadata_tags().map(|t| t.as_str()) == Some(InstanceMetadataTagsState::Enabled.as_str()) { Switch::Enabled } else { Switch::Disabled },
            }
        }),
        tags: tags_of(ResourceType::Instance),
        volume_tags: tags_of(ResourceType::Volume),
        ebs_optimized: data.ebs_optimized(),
        detailed_monitoring: data.monitoring().and_then(|m| m.enabled()),
        cpu_credits: data.credit_specification().and_then(|c| c.cpu_credits()).and_then(|c| match c {
            "standard" => Some(CpuCredits::Standard),
            "unlimited" => Some(CpuCredits::Unlimited),
            _ => None,
        }),
        placement: placement.filter(|p| p.group_name().is_some() || p.tenancy().is_some()).map(|p| Placement {
            group_name: p.group_name().map(str::to_owned),
            tenancy: if p.tenancy().map(|t| t.as_str()) == Some("dedicated") { Tenancy::Dedicated } else { Tenancy::Default },
        }),
        capacity_reservation: data.capacity_reservation_specification().and_then(|c| {
            let target = c.capacity_reservation_target();
            match (target.and_then(|t| t.capacity_reservation_id()), target.and_then(|t| t.capacity_reservation_resource_group_arn()), c.capacity_reservation_preference()) {
                (Some(id), _, _) => Some(CapacityReservation::ReservationId(id.to_owned())),
                (_, Some(arn), _) => Some(CapacityReservation::GroupArn(arn.to_owned())),
                (_, _, Some(CapacityReservationPreference::Open)) => Some(CapacityReservation::Open),
                (_, _, Some(CapacityReservationPreference::None)) => Some(CapacityReservation::None),
                _ => None,
            }
        }),
        refused,
    }
}

/// A template's block device as the spec's, or why it cannot be one.
fn block_device(mapping: &LaunchTemplateBlockDeviceMapping) -> Result<BlockDevice, &'static str> {
    let ebs = mapping.ebs().ok_or("an instance store or NoDevice mapping: not carried over by Tether yet")?;
    if ebs.snapshot_id().is_some() {
        return Err("a volume from a snapshot: not carried over by Tether yet");
    }
    let volume_type = match ebs.volume_type().map(|t| t.as_str()).unwrap_or("gp3") {
        "gp3" => VolumeType::Gp3,
        "gp2" => VolumeType::Gp2,
        "io1" => VolumeType::Io1,
        "io2" => VolumeType::Io2,
        "st1" => VolumeType::St1,
        "sc1" => VolumeType::Sc1,
        "standard" => VolumeType::Standard,
        _ => return Err("a volume type Tether does not know"),
    };
    Ok(BlockDevice {
        device_name: mapping.device_name().ok_or("no device name")?.to_owned(),
        volume_size_gib: ebs.volume_size().and_then(|s| u32::try_from(s).ok()).ok_or("no volume size (the snapshot's): give one in the template")?,
        volume_type,
        iops: ebs.iops().and_then(|i| u32::try_from(i).ok()),
        throughput_mibps: ebs.throughput().and_then(|t| u32::try_from(t).ok()),
        encrypted: ebs.encrypted(),
        kms_key_id: ebs.kms_key_id().map(str::to_owned),
        delete_on_termination: ebs.delete_on_termination().unwrap_or(true),
    })
}
