//! Launch settings of a node beyond image, types and volumes: the launch template it is
//! based on, and RunInstances' own options (EBS-optimized, monitoring, CPU credits,
//! placement, the spot price cap, the capacity reservation of the on-demand fallback).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A launch template version every launch is based on. Tether reads it at create, at PATCH
/// and at each launch, and sends what it sets on RunInstances itself (never the template
/// reference: EC2 refuses a template's instance-level security groups beside the node's
/// ENI); its security groups go on the node's ENI. The spec's own fields win where set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateRef {
    /// `lt-…`; give this or `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `$Default` (the default), `$Latest`, or a version number; `$Default` and `$Latest`
    /// are read again at each launch.
    #[serde(default = "default_version")]
    pub version: String,
}

fn default_version() -> String {
    "$Default".into()
}

impl LaunchTemplateRef {
    /// What EC2 would refuse in the reference itself: (field relative to it, reason).
    pub fn check(&self) -> Result<(), (String, String)> {
        match (&self.id, &self.name) {
            (Some(_), Some(_)) | (None, None) => return Err(("id".into(), "give the template's id (lt-…) or its name, one of them".into())),
            (Some(id), None) if !id.starts_with("lt-") || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                return Err(("id".into(), "must be a launch template id like lt-0123456789abcdef0".into()))
            }
            (None, Some(name)) if name.len() < 3 || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"()./_-".contains(&b)) => {
                return Err(("name".into(), "must be a launch template name: 3 to 128 letters, digits and ( ) . / _ -".into()))
            }
            _ => {}
        }
        let numbered = self.version.parse::<i64>().is_ok_and(|n| n >= 1);
        if !numbered && self.version != "$Default" && self.version != "$Latest" {
            return Err(("version".into(), "give $Default, $Latest or a version number".into()));
        }
        Ok(())
    }


    /// The template as people name it: its id, else its name, with the version.
    pub fn describe(&self) -> String {
        let template = self.id.as_deref().or(self.name.as_deref()).unwrap_or("?");
        format!("launch template {template} version {}", self.version)
    }
}

/// Where the on-demand fallback looks for capacity reserved ahead (spot launches never use
/// a reservation: EC2 does not allow it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CapacityReservation {
    /// Any open reservation that matches (EC2's default).
    Open,
    /// Never a reservation.
    None,
    /// This reservation (`cr-…`) only.
    ReservationId(String),
    /// A capacity reservation group (a resource group ARN).
    GroupArn(String),
}

/// Burstable instances' CPU credits (T2, T3, T4g): ignored by other types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CpuCredits {
    Standard,
    Unlimited,
}

impl CpuCredits {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuCredits::Standard => "standard",
            CpuCredits::Unlimited => "unlimited",
        }
    }
}

/// Where the instance runs inside the node's AZ (the AZ itself is the ENI's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// A placement group's name (cluster, partition or spread) in the node's AZ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    /// `default` (shared hardware) or `dedicated`.
    #[serde(default)]
    pub tenancy: Tenancy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tenancy {
    #[default]
    Default,
    Dedicated,
}

impl Tenancy {
    pub fn as_str(self) -> &'static str {
        match self {
            Tenancy::Default => "default",
            Tenancy::Dedicated => "dedicated",
        }
    }
}

/// What EC2 would refuse in these settings, before anything is sent: a spot price that is
/// not a positive amount of USD, a placement group or capacity reservation that cannot be
/// one. The error is (field relative to the spec, reason).
pub fn check_launch_options(
    spot_max_price: Option<&str>,
    placement: Option<&Placement>,
    capacity_reservation: Option<&CapacityReservation>,
) -> Result<(), (String, String)> {
    if let Some(price) = spot_max_price {
        let valid = price.parse::<f64>().is_ok_and(|p| p.is_finite() && p > 0.0) && price.chars().all(|c| c.is_ascii_digit() || c == '.');
        if !valid {
            return Err(("spot_max_price".into(), format!("`{}` is not a price in USD per hour like \"0.05\"; leave it out to pay at most the on-demand price", price.escape_debug())));
        }
    }
    if let Some(group) = placement.and_then(|p| p.group_name.as_deref()) {
        if group.is_empty() || group.len() > 255 || !group.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(("placement.group_name".into(), "must be a placement group's name (1 to 255 ASCII characters)".into()));
        }
    }
    match capacity_reservation {
        Some(CapacityReservation::ReservationId(id)) if !id.starts_with("cr-") || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Err(("capacity_reservation.reservation_id".into(), "must be a capacity reservation id like cr-0123456789abcdef0".into()))
        }
        Some(CapacityReservation::GroupArn(arn)) if !arn.starts_with("arn:") || !arn.contains(":resource-groups:") => Err((
            "capacity_reservation.group_arn".into(),
            "must be a capacity reservation group's ARN (arn:aws:resource-groups:REGION:ACCOUNT:group/NAME)".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_ec2_would_refuse_are_named() {
        let field = |r: Result<(), (String, String)>| r.err().map(|e| e.0);
        assert_eq!(field(check_launch_options(Some("0.05"), None, None)), None);
        for bad in ["-1", "0", "abc", "1e3", ""] {
            assert_eq!(field(check_launch_options(Some(bad), None, None)).as_deref(), Some("spot_max_price"), "{bad}");
        }
        let group = Placement { group_name: Some(String::new()), ..Placement::default() };
        assert_eq!(field(check_launch_options(None, Some(&group), None)).as_deref(), Some("placement.group_name"));
        let id = CapacityReservation::ReservationId("r-1".into());
        assert_eq!(field(check_launch_options(None, None, Some(&id))).as_deref(), Some("capacity_reservation.reservation_id"));
        let arn = CapacityReservation::GroupArn("arn:aws:resource-groups:us-east-1:123456789012:group/db".into());
        assert_eq!(field(check_launch_options(None, None, Some(&arn))), None);
    }
}

/// What a launch template version sets that Tether carries over, as read at create, PATCH
/// and each launch (`Instances::launch_template`). Every field is the template's; `None` or
/// empty where it sets nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateSettings {
    /// The version read (a number, whatever `$Default` or `$Latest` named).
    pub version: i64,
    pub image_id: Option<String>,
    pub instance_type: Option<String>,
    pub key_name: Option<String>,
    pub iam_instance_profile: Option<String>,
    /// Decoded from the template's base64.
    pub user_data: Option<String>,
    /// Instance-level security groups: they go on the node's ENI.
    pub security_group_ids: Vec<String>,
    pub block_devices: Vec<crate::volumes::BlockDevice>,
    pub metadata_options: Option<crate::model::MetadataOptions>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub volume_tags: std::collections::BTreeMap<String, String>,
    pub ebs_optimized: Option<bool>,
    pub detailed_monitoring: Option<bool>,
    pub cpu_credits: Option<CpuCredits>,
    pub placement: Option<Placement>,
    pub capacity_reservation: Option<CapacityReservation>,
    /// What the template sets that Tether refuses (its name in the template, and why): the
    /// node's ENI owns the network, Tether owns the market, and what Tether cannot carry
    /// over is not silently dropped.
    pub refused: Vec<(String, String)>,
}

/// The spec a launch uses: `spec` where it sets a field, the template's where it does not.
/// Tags are the template's with the spec's over them.
pub fn with_template(spec: &crate::model::NodeSpec, template: &TemplateSettings) -> crate::model::NodeSpec {
    let mut tags = template.tags.clone();
    tags.extend(spec.tags.clone());
    let mut volume_tags = template.volume_tags.clone();
    volume_tags.extend(spec.volume_tags.clone());
    let or = |mine: &Option<String>, theirs: &Option<String>| mine.clone().or_else(|| theirs.clone());
    crate::model::NodeSpec {
        image_id: Some(spec.image_id.clone()).filter(|i| !i.is_empty()).or_else(|| template.image_id.clone()).unwrap_or_default(),
        instance_types: if spec.instance_types.is_empty() { template.instance_type.iter().cloned().collect() } else { spec.instance_types.clone() },
        security_group_ids: if spec.security_group_ids.is_empty() { template.security_group_ids.clone() } else { spec.security_group_ids.clone() },
        key_name: or(&spec.key_name, &template.key_name),
        iam_instance_profile: or(&spec.iam_instance_profile, &template.iam_instance_profile),
        user_data: or(&spec.user_data, &template.user_data),
        tags,
        volume_tags,
        metadata_options: spec.metadata_options.or(template.metadata_options),
        block_devices: if spec.block_devices.is_empty() { template.block_devices.clone() } else { spec.block_devices.clone() },
        ebs_optimized: spec.ebs_optimized.or(template.ebs_optimized),
        detailed_monitoring: spec.detailed_monitoring.or(template.detailed_monitoring),
        cpu_credits: spec.cpu_credits.or(template.cpu_credits),
        placement: spec.placement.clone().or_else(|| template.placement.clone()),
        capacity_reservation: spec.capacity_reservation.clone().or_else(|| template.capacity_reservation.clone()),
        ..spec.clone()
    }
}

/// Why a template cannot be a node's base, if it cannot: it sets what Tether refuses, or
/// the spec and the template together still lack an image or an instance type. The error is
/// (field of the spec, reason).
pub fn check_template(spec: &crate::model::NodeSpec, template: &TemplateSettings) -> Result<(), (String, String)> {
    let name = spec.launch_template.as_ref().map(LaunchTemplateRef::describe).unwrap_or_default();
    if let Some((what, why)) = template.refused.first() {
        return Err(("launch_template".into(), format!("{name} sets {what}, which Tether refuses: {why}")));
    }
    let merged = with_template(spec, template);
    if merged.image_id.is_empty() {
        return Err(("image_id".into(), format!("give an AMI id: {name} sets no ImageId")));
    }
    if merged.instance_types.is_empty() {
        return Err(("instance_types".into(), format!("list at least one instance type: {name} sets no InstanceType")));
    }
    Ok(())
}
