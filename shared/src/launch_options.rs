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
