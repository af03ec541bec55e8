//! Import: an existing instance read as a node (its ENIs, settings and volumes), and adopted
//! (its ENIs tagged and kept when it terminates).

use aws_sdk_ec2::types::{
    HttpTokensState, Instance, InstanceAttributeName, InstanceMetadataEndpointState, InstanceMetadataTagsState, NetworkInterfaceAttachmentChanges,
};
use aws_smithy_types::base64;

use super::instances::summary;
use super::{missing, tag, Ec2Cloud, TAG_DEVICE_INDEX, TAG_MANAGED, TAG_NODE_ID};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::model::{EniRecord, ExtraEniRecord, HttpTokens, Ipv6Request, MetadataOptions, NodeId, NodeSpec, RevertToSpot, SecondaryIps, Switch};
use crate::ports::{ImportableInstance, ImportedEni};
use crate::volumes::{BlockDevice, ImportedVolume, VolumeType};

const OP: &str = "DescribeInstances";

impl Ec2Cloud {
    /// The instance as a node would have it; `None` without a primary ENI.
    pub(super) async fn read_importable(&self, instance_id: &str, instance: &Instance) -> Result<Option<ImportableInstance>, AwsError> {
        let at = |index: i32| instance.network_interfaces().iter().find(move |n| n.attachment().and_then(|a| a.device_index()) == Some(index));
        let Some(primary) = at(0) else { return Ok(None) };
        let field = |value: Option<&str>, what| value.map(str::to_owned).ok_or_else(|| missing(OP, what));
        let eni = EniRecord {
            id: field(primary.network_interface_id(), "primary ENI id")?,
            private_ip: primary.private_ip_address().and_then(|ip| ip.parse().ok()).ok_or_else(|| missing(OP, "primary private IP"))?,
            mac_address: field(primary.mac_address(), "MAC address")?,
            availability_zone: field(instance.placement().and_then(|p| p.availability_zone()), "availability zone")?,
            secondary_private_ips: primary
                .private_ip_addresses()
                .iter()
                .filter(|a| a.primary() != Some(true))
                .filter_map(|a| a.private_ip_address()?.parse().ok())
                .collect(),
            ipv6_addresses: primary.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()?.parse().ok()).collect(),
        };
        let attachment_id = field(primary.attachment().and_then(|a| a.attachment_id()), "attachment id")?;
        let mut extra_enis = Vec::new();
        for n in instance.network_interfaces().iter().filter(|n| n.attachment().and_then(|a| a.device_index()).is_some_and(|i| i > 0)) {
            let device_index = n.attachment().and_then(|a| a.device_index()).and_then(|i| u8::try_from(i).ok()).ok_or_else(|| missing(OP, "device index"))?;
            let record = ExtraEniRecord {
                device_index,
                id: field(n.network_interface_id(), "ENI id")?,
                subnet_id: field(n.subnet_id(), "ENI subnet id")?,
                private_ip: n.private_ip_address().and_then(|ip| ip.parse().ok()).ok_or_else(|| missing(OP, "ENI private IP"))?,
                mac_address: field(n.mac_address(), "MAC address")?,
            };
            let security_group_ids = n.groups().iter().filter_map(|g| g.group_id()).map(str::to_owned).collect();
            extra_enis.push(ImportedEni { record, security_group_ids, attachment_id: field(n.attachment().and_then(|a| a.attachment_id()), "attachment id")? });
        }
        let user_tags = instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .filter(|(k, _)| !k.starts_with("aws:") && !k.starts_with("tether:"));
        let node_tag = instance.tags().iter().find(|t| t.key() == Some(TAG_NODE_ID)).and_then(|t| t.value()).map(str::to_owned);
        let volumes = self.volumes_of(instance).await?;
        let spec = NodeSpec {
            subnet_id: field(primary.subnet_id().or(instance.subnet_id()), "subnet id")?,
            image_id: field(instance.image_id(), "image id")?,
            instance_types: vec![field(instance.instance_type().map(|t| t.as_str()), "instance type")?],
            security_group_ids: primary.groups().iter().filter_map(|g| g.group_id()).map(str::to_owned).collect(),
            key_name: instance.key_name().map(str::to_owned),
            iam_instance_profile: instance.iam_instance_profile().and_then(|p| p.arn()).map(str::to_owned),
            user_data: self.user_data(instance_id).await?,
            tags: user_tags.collect(),
            fallback_to_on_demand: true,
            revert_to_spot: RevertToSpot::Never,
            metadata_options: instance.metadata_options().map(metadata_options_of),
            // Volumes of the same shape for each replacement: new and empty.
            block_devices: volumes.iter().filter_map(|(_, shape)| shape.clone()).collect(),
            // Already on the ENI, which the node keeps: recorded as the addresses they are.
            secondary_private_ips: Some(SecondaryIps { count: None, addresses: eni.secondary_private_ips.clone() }).filter(|s| !s.addresses.is_empty()),
            ipv6: Some(Ipv6Request { count: None, addresses: eni.ipv6_addresses.clone() }).filter(|s| !s.addresses.is_empty()),
            source_dest_check: primary.source_dest_check().unwrap_or(true),
            ..NodeSpec::default()
        };
        let volumes = volumes.into_iter().map(|(found, _)| found).collect();
        Ok(Some(ImportableInstance { summary: summary(instance_id, instance), spec, eni, attachment_id, node_tag, extra_enis, volumes }))
    }

    /// The instance's user data as text (`None`: none, or not UTF-8 text).
    async fn user_data(&self, instance_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .client
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeInstanceAttribute", e))?;
        let encoded = out.user_data().and_then(|u| u.value()).filter(|u| !u.is_empty());
        Ok(encoded.and_then(|u| base64::decode(u).ok()).and_then(|bytes| String::from_utf8(bytes).ok()))
    }

    /// The instance's EBS volumes (root first), each with the block device a replacement
    /// gets in its place (`None`: a type Tether does not launch).
    async fn volumes_of(&self, instance: &Instance) -> Result<Vec<(ImportedVolume, Option<BlockDevice>)>, AwsError> {
        let mappings: Vec<(String, String, bool)> = instance
            .block_device_mappings()
            .iter()
            .filter_map(|m| Some((m.device_name()?.to_owned(), m.ebs()?.volume_id()?.to_owned(), m.ebs()?.delete_on_termination().unwrap_or(true))))
            .collect();
        if mappings.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .describe_volumes()
            .set_volume_ids(Some(mappings.iter().map(|(_, id, _)| id.clone()).collect()))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeVolumes", e))?;
        let root = instance.root_device_name();
        let mut found = Vec::new();
        for (device_name, volume_id, delete_on_termination) in mappings {
            let Some(volume) = out.volumes().iter().find(|v| v.volume_id() == Some(volume_id.as_str())) else { continue };
            let size_gib = volume.size().and_then(|s| u32::try_from(s).ok()).unwrap_or(0);
            let volume_type = volume.volume_type().map(|t| t.as_str().to_owned()).unwrap_or_default();
            let kind: Option<VolumeType> = serde_json::from_value(serde_json::Value::String(volume_type.clone())).ok();
            let shape = kind.map(|kind| BlockDevice {
                device_name: device_name.clone(),
                volume_size_gib: size_gib,
                volume_type: kind,
                iops: volume.iops().and_then(|i| u32::try_from(i).ok()).filter(|_| matches!(kind, VolumeType::Gp3 | VolumeType::Io1 | VolumeType::Io2)),
                throughput_mibps: volume.throughput().and_then(|t| u32::try_from(t).ok()).filter(|_| kind == VolumeType::Gp3),
                encrypted: volume.encrypted().filter(|e| *e),
                kms_key_id: volume.kms_key_id().filter(|_| volume.encrypted() == Some(true)).map(str::to_owned),
                // A replacement's volumes are its own: deleted with it (kept ones would pile up).
                delete_on_termination: true,
            });
            let imported = ImportedVolume { volume_id, root: Some(device_name.as_str()) == root, device_name, size_gib, volume_type, survives_replacement: !delete_on_termination };
            found.push((imported, shape));
        }
        found.sort_by_key(|(v, _)| !v.root);
        Ok(found)
    }

    /// Tags the instance and its ENIs as the node's and keeps the ENIs when it terminates.
    pub(super) async fn adopt_imported(&self, node_id: &NodeId, instance: &ImportableInstance) -> Result<(), AwsError> {
        // Tagged first: the deploy's IAM policy lets Tether change only ENIs tagged
        // `tether:managed`, the attribute below included.
        let mut tagging = self.client.create_tags().resources(&instance.summary.id).resources(&instance.eni.id);
        for extra in &instance.extra_enis {
            tagging = tagging.resources(&extra.record.id);
        }
        tagging.tags(tag(TAG_NODE_ID, node_id.as_str())).tags(tag(TAG_MANAGED, "true")).send().await.map_err(|e| aws_error("EC2", "CreateTags", e))?;
        for extra in &instance.extra_enis {
            self.client
                .create_tags()
                .resources(&extra.record.id)
                .tags(tag(TAG_DEVICE_INDEX, &extra.record.device_index.to_string()))
                .send()
                .await
                .map_err(|e| aws_error("EC2", "CreateTags", e))?;
        }
        let attachments = std::iter::once((&instance.eni.id, &instance.attachment_id)).chain(instance.extra_enis.iter().map(|e| (&e.record.id, &e.attachment_id)));
        for (eni_id, attachment_id) in attachments {
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(eni_id)
                .attachment(NetworkInterfaceAttachmentChanges::builder().attachment_id(attachment_id).delete_on_termination(false).build())
                .send()
                .await
                .map_err(|e| aws_error("EC2", "ModifyNetworkInterfaceAttribute", e))?;
        }
        Ok(())
    }
}

impl Ec2Cloud {
    /// The imported instance's `volumes` become the node's data volumes: tagged as Tether's
    /// own are (node id, device name: the reconciler finds them in bulk), then made to
    /// outlive the instance (the instance is tagged already: the deploy's IAM policy lets
    /// Tether change only instances tagged `tether:managed`).
    pub(super) async fn keep_imported_volumes(&self, node_id: &NodeId, instance_id: &str, volumes: &[crate::volumes::ImportedVolume]) -> Result<(), AwsError> {
        for volume in volumes {
            self.client
                .create_tags()
                .resources(&volume.volume_id)
                .tags(tag(TAG_NODE_ID, node_id.as_str()))
                .tags(tag(TAG_MANAGED, "true"))
                .tags(tag(super::TAG_DEVICE_NAME, &volume.device_name))
                .send()
                .await
                .map_err(|e| aws_error("EC2", "CreateTags", e))?;
            // EC2 takes one device per call; the value always given (absent, it means true).
            let mapping = aws_sdk_ec2::types::InstanceBlockDeviceMappingSpecification::builder()
                .device_name(&volume.device_name)
                .ebs(aws_sdk_ec2::types::EbsInstanceBlockDeviceSpecification::builder().delete_on_termination(false).build())
                .build();
            self.client
                .modify_instance_attribute()
                .instance_id(instance_id)
                .block_device_mappings(mapping)
                .send()
                .await
                .map_err(|e| aws_error("EC2", "ModifyInstanceAttribute", e))?;
        }
        Ok(())
    }
}

/// An instance's metadata settings as EC2 reports them (a value EC2 adds later reads as the
/// safe choice: tokens required, the endpoint on, tags off).
fn metadata_options_of(options: &aws_sdk_ec2::types::InstanceMetadataOptionsResponse) -> MetadataOptions {
    let defaults = MetadataOptions::default();
    MetadataOptions {
        http_tokens: match options.http_tokens() {
            Some(HttpTokensState::Optional) => HttpTokens::Optional,
            _ => HttpTokens::Required,
        },
        http_put_response_hop_limit: options
            .http_put_response_hop_limit()
            .and_then(|h| u8::try_from(h).ok())
            .unwrap_or(defaults.http_put_response_hop_limit),
        http_endpoint: match options.http_endpoint() {
            Some(InstanceMetadataEndpointState::Disabled) => Switch::Disabled,
            _ => Switch::Enabled,
        },
        instance_metadata_tags: match options.instance_metadata_tags() {
            Some(InstanceMetadataTagsState::Enabled) => Switch::Enabled,
            _ => Switch::Disabled,
        },
    }
}

