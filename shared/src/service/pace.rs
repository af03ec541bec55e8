//! The RunInstances pace as a launch spends it: a slot before every RunInstances, and the
//! candidates ordered by interruption (pools refused lately, or just reclaimed, last).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{Tether, TetherError};
use crate::error::AwsError;
use crate::model::{Market, Node};
use crate::ports::{LaunchRequest, LaunchedInstance};

impl Tether {
    /// One RunInstances at its slot of the shared pace (the first slot taken already, or a new
    /// one: every call takes one, a retry too). A slot beyond the horizon sends nothing and
    /// notes when one frees in `pace.full`.
    pub(super) async fn paced_launch(&self, node: &Node, request: &LaunchRequest<'_>, deadline: DateTime<Utc>, pace: &std::sync::Mutex<PaceState>) -> Result<LaunchedInstance, AwsError> {
        if self.settings.pace {
            let first = pace.lock().unwrap_or_else(std::sync::PoisonError::into_inner).first.take();
            let slot = match first {
                Some(slot) => slot,
                None => self.pace.take(self.clock.now(), self.pace_horizon(deadline)).await?,
            };
            let Some(at) = slot.at else {
                pace.lock().unwrap_or_else(std::sync::PoisonError::into_inner).full = Some(slot.next_free);
                return Err(AwsError::from_code("Tether", "RunInstances", Some("Tether.PaceFull"), Some("every slot within the horizon is taken"), None));
            };
            if let Some(wait) = (at - self.clock.now()).to_std().ok().filter(|w| !w.is_zero()) {
                self.clock.sleep(wait + SLOT_MARGIN).await;
            }
        }
        self.launch_on_eni(node, request).await
    }

    /// How far ahead a launch may wait for its slot: the pace's horizon, within what the
    /// invocation has left after the launch itself and its record.
    pub(super) fn pace_horizon(&self, deadline: DateTime<Utc>) -> Duration {
        let left = (deadline - self.clock.now()).to_std().unwrap_or_default();
        left.saturating_sub(self.settings.deadline_margin + LAUNCH_ALLOWANCE).min(self.settings.pace_horizon)
    }

    pub(super) fn paced(&self, node: &Node, deadline: DateTime<Utc>, next_free: DateTime<Utc>) -> TetherError {
        let retry_after = (next_free - self.clock.now()).to_std().unwrap_or_default();
        info!(?retry_after, "every RunInstances slot within the horizon is taken; the launch waits outside");
        TetherError::Paced { node_id: node.id.clone(), horizon: self.pace_horizon(deadline), retry_after }
    }

    /// Tells the pace that EC2 refused `pool` for capacity; a failure only costs others a try.
    pub(super) async fn note_refused(&self, pool: &str) {
        if !self.settings.pace {
            return;
        }
        if let Err(e) = self.pace.refuse_pool(pool, self.clock.now() + REFUSED_FOR).await {
            warn!(pool, error = %e, "could not note the refused pool");
        }
    }

}

/// How long a pool EC2 refused for capacity (or just reclaimed an instance from) is tried
/// after the node's other candidates (Karpenter keeps such offerings aside for 3 minutes).
const REFUSED_FOR: Duration = Duration::from_secs(180);
/// A launch that waited for its slot is sent this much after it: the launches sent at once
/// reach EC2 a little after their slots (their slot's own DynamoDB call), and EC2's bucket
/// refills only from the first token taken, so a launch sent exactly on time can find the
/// bucket a few milliseconds short.
const SLOT_MARGIN: Duration = Duration::from_millis(50);
/// What a launch needs after its slot besides the deadline's margin (kept for the record):
/// RunInstances itself, up to about 2 s.
const LAUNCH_ALLOWANCE: Duration = Duration::from_secs(2);

/// The pace within one launch: the first slot (taken before the candidates are ordered) and,
/// when no slot was free within the horizon, when one frees.
#[derive(Default)]
pub(super) struct PaceState {
    pub(super) first: Option<crate::ports::PaceSlot>,
    pub(super) full: Option<DateTime<Utc>>,
}

/// A spot or on-demand pool: `<instance type>/<market>/<AZ>`.
pub(super) fn pool(instance_type: &str, market: Market, az: &str) -> String {
    format!("{instance_type}/{}/{az}", market.as_str())
}

/// The candidates, those in a pool refused lately (or the pool `reclaimed` just took the
/// node's instance from) after the others, each group in the node's order.
pub(super) fn interruption_aware<'a>(
    candidates: impl Iterator<Item = (&'a str, Market)>,
    az: &str,
    refused: &std::collections::BTreeMap<String, DateTime<Utc>>,
    reclaimed: Option<&str>,
) -> Vec<(&'a str, Market)> {
    let (fresh, aside): (Vec<_>, Vec<_>) = candidates.partition(|(t, m)| {
        let key = pool(t, *m, az);
        !refused.contains_key(&key) && reclaimed != Some(key.as_str())
    });
    fresh.into_iter().chain(aside).collect()
}

