//! `tether-reconciler`: run every minute by an EventBridge schedule. It recovers nodes
//! whose events were lost, carries on stalled launches and deallocations, heals or reports
//! drift of the ENI and Elastic IP, and removes what no node owns. Each run is bounded in
//! nodes (`TETHER_RECONCILE_MAX_NODES`) and by the invocation's deadline.

use lambda_runtime::LambdaEvent;
use serde_json::{json, Value};
use tether::{Tether, TetherError};

/// Any payload starts a run (the schedule's `Scheduled Event`, or a manual invoke).
pub async fn handler(tether: &Tether, event: LambdaEvent<Value>) -> Result<Value, TetherError> {
    let deadline = tether::lambda::deadline(&event.context);
    let report = tether.reconcile(deadline).await?;
    Ok(json!(report))
}
