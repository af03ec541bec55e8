//! Conditions: what is wrong with a node without stopping it. A node with a condition keeps
//! running and keeps being recovered (unlike `error`, which waits for an operator); each
//! condition is raised once, recorded in the history, counted (`Metric::Condition`), and
//! cleared by Tether itself when its cause goes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Node;

/// One thing wrong with a node that does not stop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Condition {
    pub kind: ConditionKind,
    /// What is wrong, naming what holds or lacks what, and what would clear it.
    pub message: String,
    /// When Tether first saw it.
    pub since: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConditionKind {
    /// The node's Elastic IP is associated with something else (a person moved it): the node
    /// runs on its ENI and private IP without it; Tether puts it back once it is free.
    ElasticIpElsewhere,
    /// The node's Elastic IP was released: its public IP is gone for good.
    ElasticIpReleased,
    /// A data volume cannot be attached to the running instance: another instance holds it
    /// (someone attached it there), or EC2 refuses the attachment (the message says why).
    DataVolumeNotAttached,
    /// Auto-healing recycled the node `max_heals` times within `window_hours` and stops
    /// there (a bad AMI must not recycle forever); it resumes once the window has passed.
    HealingStopped,
}

impl ConditionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionKind::ElasticIpElsewhere => "elastic_ip_elsewhere",
            ConditionKind::ElasticIpReleased => "elastic_ip_released",
            ConditionKind::DataVolumeNotAttached => "data_volume_not_attached",
            ConditionKind::HealingStopped => "healing_stopped",
        }
    }
}

impl Node {
    /// The condition of `kind`, if the node has it.
    pub fn condition(&self, kind: ConditionKind) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Raises (or rewords) the condition `kind`, recording it in the history; whether
    /// anything changed (the same condition with the same words changes nothing).
    pub fn raise(&mut self, kind: ConditionKind, message: String, now: DateTime<Utc>) -> bool {
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(same) if same.message == message => return false,
            Some(older) => older.message = message.clone(),
            None => {
                self.conditions.push(Condition { kind, message: message.clone(), since: now });
                self.conditions.sort_by_key(|c| c.kind);
            }
        }
        self.record(now, format!("condition {}: {message}", kind.as_str()));
        true
    }

    /// Clears the condition `kind`, saying why in the history; whether the node had it.
    pub fn clear(&mut self, kind: ConditionKind, why: &str, now: DateTime<Utc>) -> bool {
        let before = self.conditions.len();
        self.conditions.retain(|c| c.kind != kind);
        if self.conditions.len() == before {
            return false;
        }
        self.record(now, format!("condition {} cleared: {why}", kind.as_str()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{test_spec, Persistence};

    #[test]
    fn a_condition_is_raised_once_reworded_when_its_cause_changes_and_cleared_once() {
        let t0 = Utc::now();
        let mut node = Node::new(test_spec(&["m5.large"], true), Persistence::default(), t0);
        let history = node.history.len();
        assert!(node.raise(ConditionKind::ElasticIpElsewhere, "on eni-a".into(), t0));
        assert!(!node.raise(ConditionKind::ElasticIpElsewhere, "on eni-a".into(), t0 + chrono::TimeDelta::minutes(1)));
        assert_eq!(node.history.len(), history + 1, "the same condition again records nothing");
        assert!(node.raise(ConditionKind::ElasticIpElsewhere, "on eni-b".into(), t0 + chrono::TimeDelta::minutes(2)));
        let condition = node.condition(ConditionKind::ElasticIpElsewhere).cloned();
        assert_eq!(condition.map(|c| (c.message, c.since)), Some(("on eni-b".to_owned(), t0)), "since the first sighting");
        assert!(node.clear(ConditionKind::ElasticIpElsewhere, "back on the ENI", t0));
        assert!(!node.clear(ConditionKind::ElasticIpElsewhere, "back on the ENI", t0));
        assert!(node.conditions.is_empty());
        assert_eq!(node.history.last().map(|h| h.what.as_str()), Some("condition elastic_ip_elsewhere cleared: back on the ENI"));
    }
}
