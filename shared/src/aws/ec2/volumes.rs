//! A node's data volumes: created once (ClientToken, tagged with the node and the device),
//! attached to each instance, described in bulk by the reconciler, and at deallocation
//! snapshotted and deleted as the policy says.

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, ResourceType, Volume};

use super::{gone_is_done, missing, tag, tag_value, tags_for, Ec2Cloud, TAG_MANAGED, TAG_NODE_ID};
use crate::aws::aws_error;
use crate::data_volumes::VolumeInfo;
use crate::error::AwsError;
use crate::model::NodeId;
use crate::ports::{Tagged, VolumeRequest, Volumes};

/// On a node's data volume: the device name it is attached at.
pub const TAG_DEVICE_NAME: &str = "tether:device-name";
/// On a final snapshot: the volume it was taken of.
pub const TAG_VOLUME_ID: &str = "tether:volume-id";
/// The largest page DescribeVolumes gives.
const VOLUME_PAGE: i32 = 500;

#[async_trait]
impl Volumes for Ec2Cloud {
    async fn find_data_volume(&self, node_id: &NodeId, device_name: &str) -> Result<Option<VolumeInfo>, AwsError> {
        let out = self
            .client
            .describe_volumes()
            .filters(Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node_id.as_str()).build())
            .filters(Filter::builder().name(format!("tag:{TAG_DEVICE_NAME}")).values(device_name).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeVolumes", e))?;
        // One that is being deleted (a deallocation's) is no volume to use.
        let usable = out.volumes().iter().filter(|v| !matches!(v.state().map(|s| s.as_str()), Some("deleting" | "deleted")));
        usable.map(|v| volume_info("DescribeVolumes", v)).next().transpose()
    }

    async fn create_data_volume(&self, request: &VolumeRequest<'_>) -> Result<VolumeInfo, AwsError> {
        let volume = request.volume;
        let out = self
            .client
            .create_volume()
            .availability_zone(request.availability_zone)
            .size(i32::try_from(volume.volume_size_gib).unwrap_or(i32::MAX))
            .volume_type(volume.volume_type.as_str().into())
            .set_iops(volume.iops.and_then(|i| i32::try_from(i).ok()))
            .set_throughput(volume.throughput_mibps.and_then(|t| i32::try_from(t).ok()))
            .set_encrypted(volume.encrypted)
            .set_kms_key_id(volume.kms_key_id.clone())
            // A retried create (timeout, concurrent resume) returns the same volume.
            .client_token(request.client_token())
            .tag_specifications(tags_for(
                ResourceType::Volume,
                request.tags.iter().map(|(k, v)| tag(k, v)).chain([
                    tag(TAG_NODE_ID, request.node_id.as_str()),
                    tag(TAG_MANAGED, "true"),
                    tag(TAG_DEVICE_NAME, &volume.device_name),
                ]),
            ))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "CreateVolume", e))?;
        Ok(VolumeInfo {
            id: out.volume_id().ok_or_else(|| missing("CreateVolume", "volume id"))?.to_owned(),
            state: out.state().map(|s| s.as_str().to_owned()).unwrap_or_else(|| "creating".into()),
            availability_zone: out.availability_zone().unwrap_or(request.availability_zone).to_owned(),
            attachment: None,
        })
    }

    async fn describe_volumes(&self, ids: &[String]) -> Result<Vec<VolumeInfo>, AwsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A filter, not VolumeIds: one unknown id would fail the whole call.
        let out = self
            .client
            .describe_volumes()
            .filters(Filter::builder().name("volume-id").set_values(Some(ids.to_vec())).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeVolumes", e))?;
        out.volumes().iter().map(|v| volume_info("DescribeVolumes", v)).collect()
    }

    async fn attach_volume(&self, volume_id: &str, instance_id: &str, device_name: &str) -> Result<(), AwsError> {
        self.client
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device_name)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "AttachVolume", e))?;
        Ok(())
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        gone_is_done(self.client.delete_volume().volume_id(volume_id).send().await.map(drop).map_err(|e| aws_error("EC2", "DeleteVolume", e)))
    }

    async fn final_snapshot(&self, node_id: &NodeId, volume_id: &str) -> Result<(String, String), AwsError> {
        let earlier = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .filters(Filter::builder().name(format!("tag:{TAG_VOLUME_ID}")).values(volume_id).build())
            .filters(Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node_id.as_str()).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeSnapshots", e))?;
        if let Some(snapshot) = earlier.snapshots().first() {
            let id = snapshot.snapshot_id().ok_or_else(|| missing("DescribeSnapshots", "snapshot id"))?;
            return Ok((id.to_owned(), snapshot.state().map(|s| s.as_str().to_owned()).unwrap_or_default()));
        }
        // CreateSnapshot takes no ClientToken: a create that dies before its tags are
        // readable may leave a second snapshot (kept: snapshots are the user's data).
        let out = self
            .client
            .create_snapshot()
            .volume_id(volume_id)
            .description(format!("Tether node {node_id}: final snapshot of {volume_id} at deallocation"))
            .tag_specifications(tags_for(
                ResourceType::Snapshot,
                [tag(TAG_NODE_ID, node_id.as_str()), tag(TAG_MANAGED, "true"), tag(TAG_VOLUME_ID, volume_id)],
            ))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "CreateSnapshot", e))?;
        let id = out.snapshot_id().ok_or_else(|| missing("CreateSnapshot", "snapshot id"))?;
        Ok((id.to_owned(), out.state().map(|s| s.as_str().to_owned()).unwrap_or_else(|| "pending".into())))
    }

    async fn node_volumes(&self) -> Result<Vec<Tagged<VolumeInfo>>, AwsError> {
        let mut pages = self
            .client
            .describe_volumes()
            .filters(Filter::builder().name("tag-key").values(TAG_DEVICE_NAME).build())
            .max_results(VOLUME_PAGE)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("EC2", "DescribeVolumes", e))?;
            for volume in page.volumes() {
                let Some(node_id) = tag_value(volume.tags(), TAG_NODE_ID).and_then(NodeId::parse) else { continue };
                let info = volume_info("DescribeVolumes", volume)?;
                found.push(Tagged { node_id, generation: None, device_index: None, attached: info.attachment.is_some(), resource: info });
            }
        }
        Ok(found)
    }
}

/// One volume as Tether reads it.
fn volume_info(operation: &'static str, volume: &Volume) -> Result<VolumeInfo, AwsError> {
    // An attachment being undone (`detaching`, `detached`) no longer holds the volume.
    let attachment = volume
        .attachments()
        .iter()
        .find(|a| matches!(a.state().map(|s| s.as_str()), Some("attaching" | "attached" | "busy")))
        .and_then(|a| Some((a.instance_id()?.to_owned(), a.device().unwrap_or_default().to_owned())));
    Ok(VolumeInfo {
        id: volume.volume_id().ok_or_else(|| missing(operation, "volume id"))?.to_owned(),
        state: volume.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        availability_zone: volume.availability_zone().unwrap_or_default().to_owned(),
        attachment,
    })
}

