//! `tether-state-change`: EC2 instance state-change notifications. The termination
//! of a node's current instance launches its replacement on the node's ENI; a stop
//! is recorded; instances Tether does not manage are ignored.

use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tether::events::STATE_CHANGE_NOTIFICATION;
use tether::ports::EventQueue;
use tether::{Tether, TetherError};

pub const DETAIL_TYPES: &[&str] = &[STATE_CHANGE_NOTIFICATION];

/// A batch from the function's queue, or an EventBridge event invoked directly.
pub async fn handler(tether: &Tether, queue: &dyn EventQueue, event: LambdaEvent<Value>) -> Result<Value, TetherError> {
    tether::lambda::handle_intake(tether, queue, event, DETAIL_TYPES).await
}
