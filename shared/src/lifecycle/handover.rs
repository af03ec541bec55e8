//! Handing the ENI over early (`spec.handover_after_warning_seconds`): after a spot
//! interruption warning that the instance will be terminated, Tether terminates it itself
//! that many seconds after EC2 sent the warning, so that the ENI is free, and the
//! replacement (which follows the instance's `terminated` event as always) starts, up to two
//! minutes before AWS would have terminated it. The delay is the workload's drain window.
//!
//! Pure, like the rest of the lifecycle. Every delivery of a terminate warning asks
//! `after_warning` what to do on top of the warning's own transition:
//!
//! - not due yet: the step ends with `Action::DecideAgainAt(due)`; the queued intake puts
//!   the warning's message back on its queue with that delay (SQS holds it: no invocation
//!   waits), and that delivery decides again, on the node as it is then;
//! - due: the hand-over is recorded on the node (`InterruptionRecord::handed_over_at`,
//!   with a history entry) and the instance terminated. The record is written first, so a
//!   duplicated warning, however late, never terminates twice;
//! - never for a stop or hibernate warning, for an instance that is no longer the node's
//!   current one, or for a node no longer `recovering` from that warning (paused, recycled,
//!   deallocated, replaced, in error meanwhile): those are left alone.

use chrono::{DateTime, TimeDelta, Utc};

use super::{Action, Step};
use crate::model::{InterruptionAction, Node, NodeState, HANDOVER_AFTER_WARNING_SECONDS};

/// What the hand-over of `node`'s warned instance is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handover {
    /// None for this node now; the reason says why.
    NotNow(&'static str),
    /// Due at this time, later than now.
    DueAt(DateTime<Utc>),
    /// Due (since the warning was sent this long ago): terminate the instance now.
    Due { since_warning: TimeDelta },
}

/// The hand-over of `instance_id`, the instance a terminate warning named, for `node` as
/// it is (its warning recorded) at `now`.
pub fn handover(node: &Node, instance_id: &str, now: DateTime<Utc>) -> Handover {
    let Some(seconds) = node.spec.handover_after_warning_seconds else {
        return Handover::NotNow("the node hands nothing over (no handover_after_warning_seconds)");
    };
    if node.instance_id() != Some(instance_id) {
        return Handover::NotNow("the warned instance is no longer the node's current one");
    }
    if node.state != NodeState::Recovering {
        return Handover::NotNow("the node is no longer recovering from the warning");
    }
    let Some(warning) = node.interruption.as_ref().filter(|w| w.instance_id == instance_id) else {
        return Handover::NotNow("no interruption warning is recorded for the instance");
    };
    if warning.action != InterruptionAction::Terminate {
        return Handover::NotNow("the instance is to be stopped, not terminated: AWS restarts it");
    }
    if warning.handed_over_at.is_some() {
        return Handover::NotNow("the instance was handed over already");
    }
    let sent = warning.sent_at.unwrap_or(warning.noticed_at);
    let due = sent + TimeDelta::seconds(i64::from(seconds));
    if now < due {
        Handover::DueAt(due)
    } else {
        Handover::Due { since_warning: now - sent }
    }
}

/// A delivery of a terminate warning about `instance_id`: `step` (the warning's own
/// transition, or nothing) and then what the hand-over asks for.
pub(super) fn after_warning(node: &Node, instance_id: &str, step: Step, now: DateTime<Utc>) -> Step {
    let after = match &step {
        Step::Apply { next, .. } => next,
        Step::Ignore(_) => node,
        Step::Refuse(_) | Step::Continue(_) => return step,
    };
    match handover(after, instance_id, now) {
        Handover::NotNow(_) => step,
        Handover::DueAt(due) => match step {
            Step::Apply { next, mut actions } => {
                actions.push(Action::DecideAgainAt(due));
                Step::Apply { next, actions }
            }
            _ => Step::Continue(vec![Action::DecideAgainAt(due)]),
        },
        Handover::Due { since_warning } => {
            let next = handed_over(after, since_warning, now);
            let mut actions = match step {
                Step::Apply { actions, .. } => actions,
                _ => Vec::new(),
            };
            actions.push(Action::Terminate(instance_id.to_owned()));
            Step::Apply { next, actions }
        }
    }
}

/// `node` with its hand-over recorded (the terminate follows the write).
fn handed_over(node: &Node, since_warning: TimeDelta, now: DateTime<Utc>) -> Node {
    let mut next = node.clone();
    if let Some(warning) = next.interruption.as_mut() {
        warning.handed_over_at = Some(now);
    }
    next.record(now, handover_recorded(since_warning));
    next
}

/// The history text of a hand-over.
pub fn handover_recorded(since_warning: TimeDelta) -> String {
    format!("terminated {} s after the spot interruption warning to hand over early", since_warning.num_seconds().max(0))
}

/// The reconciler's hand-over: one whose warning's delivery at the due time was lost (its
/// message could not be put back, or the function was invoked without a queue), for a
/// node whose instance EC2 still reports running.
pub(super) fn on_reconcile(node: &Node, instance_running: bool, now: DateTime<Utc>) -> Option<Step> {
    let instance_id = node.instance_id()?;
    match handover(node, instance_id, now) {
        Handover::Due { since_warning } if instance_running => {
            Some(Step::Apply { next: handed_over(node, since_warning, now), actions: vec![Action::Terminate(instance_id.to_owned())] })
        }
        _ => None,
    }
}

/// `handover_after_warning_seconds` within 0 to 110 (the field, the reason).
pub fn check_handover(seconds: Option<u8>) -> Result<(), (String, String)> {
    match seconds {
        Some(s) if !HANDOVER_AFTER_WARNING_SECONDS.contains(&s) => Err((
            "handover_after_warning_seconds".into(),
            format!(
                "must be 0 to {} seconds: AWS terminates a spot instance about 120 s after its warning, and the hand-over must come before; leave it out to let AWS terminate it",
                HANDOVER_AFTER_WARNING_SECONDS.end()
            ),
        )),
        _ => Ok(()),
    }
}
