//! `RecordedMetrics`: the metrics port in memory, for tests that check what was counted.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::lifecycle::Metric;
use crate::model::{Node, NodeId};
use crate::ports::MetricsSink;

#[derive(Default)]
pub struct RecordedMetrics(Mutex<Vec<(Metric, Option<NodeId>)>>);

impl RecordedMetrics {
    /// Everything recorded so far, with the node each metric was about.
    pub fn recorded(&self) -> Vec<(Metric, Option<NodeId>)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl MetricsSink for RecordedMetrics {
    fn record(&self, metric: &Metric, node: Option<&Node>, _: DateTime<Utc>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((metric.clone(), node.map(|n| n.id.clone())));
    }
}
