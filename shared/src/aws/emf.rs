//! Metrics as CloudWatch embedded-metric-format (EMF) lines: one JSON object per line on
//! the function's stdout, which CloudWatch Logs turns into metrics in namespace `Tether`,
//! dimension `Deployment` (the table name, so that two stacks in one account stay apart).
//! The node's id, instance id and generation ride along as properties (searchable in
//! Logs Insights, not dimensions: one series per node would cost a metric per node).

use std::io::Write;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::lifecycle::Metric;
use crate::model::{Market, Node};
use crate::ports::MetricsSink;

pub const NAMESPACE: &str = "Tether";

pub struct EmfMetrics {
    deployment: String,
    out: Mutex<Box<dyn Write + Send>>,
}

impl EmfMetrics {
    /// EMF lines on stdout, where Lambda's log stream picks them up.
    pub fn stdout(deployment: impl Into<String>) -> Self {
        Self::new(deployment, Box::new(std::io::stdout()))
    }

    pub fn new(deployment: impl Into<String>, out: Box<dyn Write + Send>) -> Self {
        EmfMetrics { deployment: deployment.into(), out: Mutex::new(out) }
    }
}

impl MetricsSink for EmfMetrics {
    fn record(&self, metric: &Metric, node: Option<&Node>, at: DateTime<Utc>) {
        // One write per line: stdout is shared with the log lines, and a `writeln!` of a
        // formatted value may reach it in pieces that another thread's line splits.
        let line = format!("{}\n", emf_line(&self.deployment, metric, node, at));
        // A poisoned lock only means another thread panicked mid-write; the writer is fine.
        let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Metrics must never fail the work they measure; a lost line shows as a gap.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }
}

/// The CloudWatch name, unit and value of each figure a metric carries.
fn figures(metric: &Metric) -> Vec<(&'static str, &'static str, f64)> {
    match metric {
        Metric::Replacement => vec![("Replacements", "Count", 1.0)],
        Metric::RecoveryTime(took) => vec![("RecoveryTime", "Seconds", took.as_secs_f64())],
        Metric::Fallback { market: Market::OnDemand } => vec![("Fallbacks", "Count", 1.0), ("OnDemandFallbacks", "Count", 1.0)],
        Metric::Fallback { market: Market::Spot } => vec![("Fallbacks", "Count", 1.0)],
        Metric::DriftRepair => vec![("DriftRepairs", "Count", 1.0)],
        Metric::Error => vec![("Errors", "Count", 1.0)],
        Metric::Condition(_) => vec![("Conditions", "Count", 1.0)],
    }
}

/// One EMF document (see "Specification: Embedded metric format", CloudWatch User Guide).
pub fn emf_line(deployment: &str, metric: &Metric, node: Option<&Node>, at: DateTime<Utc>) -> Value {
    let figures = figures(metric);
    let definitions: Vec<Value> = figures.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect();
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Deployment"]], "Metrics": definitions}],
        }),
    );
    line.insert("Deployment".into(), json!(deployment));
    for (name, _, value) in figures {
        line.insert(name.into(), json!(value));
    }
    if let Some(node) = node {
        line.insert("node_id".into(), json!(node.id.to_string()));
        line.insert("generation".into(), json!(node.generation));
        if let Some(instance_id) = node.instance_id() {
            line.insert("instance_id".into(), json!(instance_id));
        }
    }
    Value::Object(line)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{test_spec, Persistence};

    #[test]
    fn every_metric_is_a_valid_emf_document_naming_its_node() {
        let node = Node::new(test_spec(&["m5.large"], true), Persistence::default(), Utc::now());
        let metrics = [
            Metric::Replacement,
            Metric::RecoveryTime(Duration::from_millis(4500)),
            Metric::Fallback { market: Market::OnDemand },
            Metric::Fallback { market: Market::Spot },
            Metric::DriftRepair,
            Metric::Error,
            Metric::Condition(crate::conditions::ConditionKind::ElasticIpElsewhere),
        ];
        for metric in &metrics {
            let line = emf_line("tether-nodes", metric, Some(&node), Utc::now());
            let directive = &line["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], "Tether");
            assert!(line["_aws"]["Timestamp"].is_i64());
            // Every dimension and every metric named in the directive is a member of the root.
            for key in directive["Dimensions"][0].as_array().into_iter().flatten() {
                assert!(line[key.as_str().unwrap_or_default()].is_string(), "{metric:?}: dimension {key} missing");
            }
            let defined = directive["Metrics"].as_array().map(Vec::len).unwrap_or_default();
            assert!(defined > 0, "{metric:?}: no metric defined");
            for definition in directive["Metrics"].as_array().into_iter().flatten() {
                let name = definition["Name"].as_str().unwrap_or_default();
                assert!(line[name].is_number(), "{metric:?}: value of {name} missing");
            }
            assert_eq!(line["node_id"], node.id.to_string());
        }
        let recovery = emf_line("d", &metrics[1], None, Utc::now());
        assert_eq!(recovery["RecoveryTime"], 4.5);
        assert!(recovery.get("node_id").is_none());
    }
}
