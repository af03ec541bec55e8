//! `tether-interruption`: the spot interruption warning and the rebalance
//! recommendation. Records them on the node and marks it as being recovered; for a node
//! with `handover_after_warning_seconds`, puts the warning back on its queue until the
//! hand-over is due, then terminates the instance (see `tether::lifecycle::handover`).
//! Also AWS Health's scheduled changes to EC2 instances (retirement, scheduled reboot or
//! stop): each node named is recycled ahead of it (see `tether::lifecycle::on_maintenance`).

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tether::events::{HEALTH_EVENT, REBALANCE_RECOMMENDATION, SPOT_INTERRUPTION_WARNING};
use tether::ports::EventQueue;
use tether::{Tether, TetherError};

pub const DETAIL_TYPES: &[&str] = &[SPOT_INTERRUPTION_WARNING, REBALANCE_RECOMMENDATION, HEALTH_EVENT];

/// A batch from the function's queue, or an EventBridge event invoked directly.
pub async fn handler(tether: &Tether, queue: &dyn EventQueue, event: LambdaEvent<Value>) -> Result<Value, TetherError> {
    tether::lambda::handle_intake(tether, queue, event, DETAIL_TYPES).await
}
