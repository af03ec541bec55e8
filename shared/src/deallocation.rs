//! What a node's deallocation deletes (`spec.deallocation`). The defaults are the safe ones:
//! what Tether made for the node's network goes with it, data stays, and what Tether did not
//! make (an imported instance's ENI and volumes, the user's own Elastic IP) is deleted only
//! when the policy says so explicitly.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeallocationPolicy {
    /// The node's ENIs (its own and the extra ones), with their addresses: `delete` or
    /// `keep`. Absent: deleted if Tether made them, kept if they came with an imported
    /// instance. A deallocate request's `keep_eni` keeps them whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enis: Option<EniFate>,
    /// The node's data volumes: `keep` (the default: data is deleted only when asked),
    /// `delete`, or `snapshot_and_delete` (a final snapshot of each, then the volume).
    #[serde(default)]
    pub data_volumes: VolumeFate,
    /// An Elastic IP Tether allocated for the node: `release` (the default) or `keep`
    /// (disassociated, still allocated and tagged, named on the deallocated node). The
    /// user's own Elastic IP is never released.
    #[serde(default)]
    pub elastic_ip: ElasticIpFate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EniFate {
    Delete,
    Keep,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeFate {
    #[default]
    Keep,
    Delete,
    SnapshotAndDelete,
}

impl VolumeFate {
    pub fn deletes(self) -> bool {
        self != VolumeFate::Keep
    }

    pub fn snapshots(self) -> bool {
        self == VolumeFate::SnapshotAndDelete
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ElasticIpFate {
    #[default]
    Release,
    Keep,
}

impl DeallocationPolicy {
    /// Whether a deallocation keeps the node's ENIs: asked by the request, said by the
    /// policy, or (by default) because they came with an imported instance.
    pub fn keeps_enis(&self, requested: bool, imported: bool) -> bool {
        requested || self.enis.map_or(imported, |fate| fate == EniFate::Keep)
    }
}

impl crate::model::Node {
    /// The Elastic IP a deallocation keeps allocated: a Tether-allocated one whose policy
    /// says `keep` (the user's own is never released anyway).
    pub fn kept_elastic_ip(&self) -> Option<&crate::model::ElasticIpRecord> {
        self.elastic_ip.as_ref().filter(|e| e.allocated_by_tether && self.spec.deallocation.elastic_ip == ElasticIpFate::Keep)
    }

    /// Whether the node came from an imported instance (its ENI is the user's). Records
    /// from before `imported_instance` existed tell by the volumes import recorded, or by
    /// their history.
    pub fn imported(&self) -> bool {
        self.imported_instance.is_some() || !self.imported_volumes.is_empty() || self.history.iter().any(|h| h.what.starts_with("imported instance "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enis_go_unless_kept_asked_or_imported_and_an_explicit_delete_deletes_even_imported_ones() {
        let default = DeallocationPolicy::default();
        assert!(!default.keeps_enis(false, false));
        assert!(default.keeps_enis(true, false));
        assert!(default.keeps_enis(false, true), "an imported node's ENI is the user's");
        let delete = DeallocationPolicy { enis: Some(EniFate::Delete), ..default };
        assert!(!delete.keeps_enis(false, true));
        assert!(delete.keeps_enis(true, true), "the request's keep_eni wins");
        let keep = DeallocationPolicy { enis: Some(EniFate::Keep), ..default };
        assert!(keep.keeps_enis(false, false));
        assert_eq!(serde_json::to_value(default).ok(), Some(serde_json::json!({"data_volumes": "keep", "elastic_ip": "release"})));
        assert!(!VolumeFate::Keep.deletes() && VolumeFate::Delete.deletes() && VolumeFate::SnapshotAndDelete.snapshots());
    }
}
