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
