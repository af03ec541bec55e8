//! AMIs: the root device and snapshot size a launch's root volume must fit.

use super::{absent_if_unknown, Ec2Cloud};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::ports::ImageInfo;

impl Ec2Cloud {
    /// The AMI as a launch needs it, or `None` when EC2 does not know it.
    pub(super) async fn describe_image(&self, image_id: &str) -> Result<Option<ImageInfo>, AwsError> {
        let described = self.client.describe_images().image_ids(image_id).send().await.map_err(|e| aws_error("EC2", "DescribeImages", e));
        let Some(out) = absent_if_unknown(described)? else { return Ok(None) };
        let Some(image) = out.images().first() else { return Ok(None) };
        let root_device_name = image.root_device_name().unwrap_or_default().to_owned();
        let root_snapshot_gib = image
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(root_device_name.as_str()))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size())
            .and_then(|size| u32::try_from(size).ok());
        Ok(Some(ImageInfo { root_device_name, root_snapshot_gib }))
    }
}
