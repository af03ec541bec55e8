//! The node lifecycle as a pure state machine: (node, trigger) → step, where a step is
//! the record to write and the EC2 actions to perform after it. No I/O here: the
//! service performs what a step asks for.

mod actions;
mod handover;
mod health;
mod metrics;
mod reconcile;

use chrono::{DateTime, Utc};

pub use handover::{check_handover, handover, handover_recorded, Handover};
pub use actions::{check_launch_settings, eni_settings_differ, on_deallocate, on_pause, on_recycle, on_resume, patch_spec, patched, NodePatch, PatchError};
pub use health::{heal, on_maintenance, planned};
pub use metrics::{metrics_of, Metric};
pub use reconcile::{elastic_ip_elsewhere, eni_deleted, extra_eni_deleted, on_reconcile, repairs_drift, ElasticIpFound, Observed};

use crate::events::{InstanceEvent, InstanceState};
use crate::model::{InstanceRecord, InterruptionAction, InterruptionRecord, Market, Node, NodeState};

/// What EC2 must do once the step's record is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Terminate this instance (idempotent: a terminated one stays terminated).
    Terminate(String),
    /// Terminate what the current generation's launch started, if it started anything
    /// (found by the generation's ClientToken): a launch under way is being called off.
    TerminateLaunched,
    /// Launch the node's current generation on its ENI (creating the ENI and
    /// associating the Elastic IP first at the first launch).
    Launch,
    /// Put the Elastic IP on record back on the node's ENI (found disassociated).
    AssociateElasticIp,
    /// Attach the node's data volumes to its current instance where they are not yet (a
    /// replacement that now runs, a volume detached by hand).
    AttachDataVolumes,
    /// Once the instance is gone: delete the ENI unless kept, release or disassociate
    /// the Elastic IP, and mark the node deallocated.
    ReleaseNetwork,
    /// Deliver this event again at this time and decide then, on the node as it is then
    /// (a hand-over not yet due: see `handover`). The queued intake puts the event's
    /// message back on its queue with the delay; nothing waits meanwhile.
    DecideAgainAt(DateTime<Utc>),
}

/// What to do about a trigger.
// `Apply` carries a whole node; a step lives for one decision, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing changes; the reason is logged.
    Ignore(&'static str),
    /// The request does not fit the node's state; the reason says why.
    Refuse(String),
    /// Write `next` (conditional on the version read), then perform `actions` in order.
    Apply { next: Node, actions: Vec<Action> },
    /// Nothing to write: an earlier step's actions are still under way (a retried event or
    /// request); perform them again. Each is idempotent (ClientToken, terminate, delete).
    Continue(Vec<Action>),
}

impl Step {
    fn record(next: Node) -> Step {
        Step::Apply { next, actions: Vec::new() }
    }
}

/// Reacts to one delivery of EventBridge event `event_id`, sent at `sent_at` (EventBridge's
/// `time`, if the event said). EventBridge delivers at least once: a transition this event
/// already applied (its id is on the record) is not applied again, however late the
/// duplicate comes; work it started and that is still under way (a launch, a release) is
/// carried on, as Lambda's retry after a crash needs. A terminate warning may also hand
/// the instance over early (`handover`), on its first delivery or a later one.
pub fn on_delivered_event(node: &Node, event_id: &str, event: &InstanceEvent, sent_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Step {
    let step = match on_event(node, event, sent_at, now) {
        Step::Apply { .. } if node.applied(event_id) => Step::Ignore("this event was applied already (a duplicate delivery)"),
        Step::Apply { mut next, actions } => {
            next.note_applied(event_id);
            Step::Apply { next, actions }
        }
        other => other,
    };
    match event {
        InstanceEvent::InterruptionWarning { instance_id, action: InterruptionAction::Terminate } => handover::after_warning(node, instance_id, step, now),
        _ => step,
    }
}

/// Reacts to an EC2 event about `event.instance_id()`.
pub fn on_instance_event(node: &Node, event: &InstanceEvent, now: DateTime<Utc>) -> Step {
    on_event(node, event, None, now)
}

/// The same, for an event sent at `sent_at`, if known.
fn on_event(node: &Node, event: &InstanceEvent, sent_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Step {
    use InstanceEvent::{InterruptionWarning, MaintenanceScheduled, RebalanceRecommendation, StateChange};
    use InstanceState as I;
    use NodeState as N;

    if node.instance_id() != Some(event.instance_id()) {
        return Step::Ignore("event is about an instance that is not the node's current one");
    }
    match (node.state, event) {
        (N::Paused, _) => Step::Ignore("node is paused"),
        (N::Error, _) => Step::Ignore("node is in ERROR; an operator decides"),
        (N::Deallocated, _) => Step::Ignore("node is deallocated"),
        (N::Deallocating, StateChange { state: I::Terminated, .. }) => Step::Continue(vec![Action::ReleaseNetwork]),
        (N::Deallocating, _) => Step::Ignore("node is being deallocated"),
        (N::Launching, StateChange { state: I::Terminated, .. }) => Step::Continue(vec![Action::Launch]),
        (N::Launching, _) => Step::Ignore("a replacement is already being launched"),

        (N::Running | N::Recovering | N::Stopped, StateChange { state: I::Terminated, .. }) => {
            let mut next = begin_launch(node, now, "instance terminated; launching a replacement on the node's ENI", None);
            next.replacing_lost_instance = true;
            Step::Apply { next, actions: vec![Action::Launch] }
        }

        (_, InterruptionWarning { action, .. }) => on_warning(node, *action, sent_at, now),
        (N::Running | N::Stopped, MaintenanceScheduled { type_code, event_arn, starts_at, .. }) => health::on_maintenance(node, type_code, event_arn, *starts_at, now),
        (N::Recovering, MaintenanceScheduled { .. }) => Step::Ignore("the instance is being replaced already"),
        (_, RebalanceRecommendation { instance_id }) => {
            let already = node.history.iter().any(|h| {
                h.instance_id.as_deref() == Some(instance_id.as_str()) && h.what == REBALANCE_RECORDED
            });
            if already {
                return Step::Ignore("rebalance recommendation already recorded");
            }
            let mut next = node.clone();
            next.record(now, REBALANCE_RECORDED);
            Step::record(next)
        }

        (N::Running, StateChange { state: I::ShuttingDown, .. }) => {
            let mut next = node.clone();
            next.state = N::Recovering;
            next.record(now, "instance shutting down; replacement follows its termination");
            Step::record(next)
        }
        (N::Running | N::Recovering, StateChange { state: I::Stopped, .. }) => {
            let mut next = node.clone();
            next.state = N::Stopped;
            let why = match &node.interruption {
                Some(i) if i.action != InterruptionAction::Terminate => {
                    "instance stopped by a spot interruption; AWS restarts it, nothing launched"
                }
                _ => "instance stopped outside Tether; nothing launched",
            };
            next.record(now, why);
            Step::record(next)
        }
        (N::Stopped, StateChange { state: I::Pending | I::Running, .. }) => {
            let mut next = node.clone();
            next.state = N::Running;
            next.interruption = None;
            next.record(now, "stopped instance is running again");
            Step::record(next)
        }
        // The replacement runs: its data volumes can be attached now (AttachVolume needs a
        // running instance; the launch tried once, the reconciler is the backstop).
        (N::Running, StateChange { state: I::Running, .. }) if node.data_volumes_to_attach() => Step::Continue(vec![Action::AttachDataVolumes]),
        (N::Running | N::Recovering | N::Stopped, StateChange { state, .. }) => match state {
            I::Stopping => Step::Ignore("instance stopping; waiting for `stopped`"),
            _ => Step::Ignore("state already known"),
        },
    }
}

/// The rebalance recommendation's history text; also how a duplicate is recognised.
const REBALANCE_RECORDED: &str = "rebalance recommendation: elevated interruption risk";

fn on_warning(node: &Node, action: InterruptionAction, sent_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Step {
    let instance_id = node.instance_id().unwrap_or_default().to_owned();
    if node.interruption.as_ref().is_some_and(|i| i.instance_id == instance_id && i.action == action) {
        return Step::Ignore("interruption warning already recorded");
    }
    let mut next = node.clone();
    // An instance Tether terminated to hand over is never handed over again, whatever
    // warning about it comes next.
    let handed_over_at = node.interruption.as_ref().filter(|i| i.instance_id == instance_id).and_then(|i| i.handed_over_at);
    next.interruption = Some(InterruptionRecord { instance_id, action, noticed_at: now, sent_at, handed_over_at });
    match action {
        InterruptionAction::Terminate => {
            // A warning after `stopped` or during recovery keeps that state.
            if next.state == NodeState::Running {
                next.state = NodeState::Recovering;
            }
            next.record(now, "spot interruption warning (terminate); recovering");
        }
        InterruptionAction::Stop | InterruptionAction::Hibernate => {
            next.record(now, "spot interruption warning (stop/hibernate); AWS will restart the instance");
        }
    }
    Step::record(next)
}

/// The next generation, marked as launching. The record keeps naming the instance it
/// replaces until the launch is recorded, so a retried event about that instance finds it.
fn begin_launch(node: &Node, now: DateTime<Utc>, why: &str, by: Option<&str>) -> Node {
    let mut next = node.clone();
    next.state = NodeState::Launching;
    next.generation += 1;
    next.replacing_lost_instance = false;
    next.last_error = None;
    next.record_by(now, why, by);
    next
}

/// The launch of the current generation succeeded.
pub fn launched(node: &Node, instance_id: String, instance_type: String, market: Market, now: DateTime<Utc>) -> Node {
    let mut next = node.clone();
    next.state = NodeState::Running;
    let what = format!("launched generation {} as {instance_type} ({})", node.generation, market.as_str());
    next.instance = Some(InstanceRecord { id: instance_id, generation: node.generation, instance_type, market, launched_at: now });
    next.interruption = None;
    next.replacing_lost_instance = false;
    next.last_error = None;
    next.record(now, what);
    next
}

/// The launch cannot succeed without an operator.
pub fn failed(node: &Node, reason: String, now: DateTime<Utc>) -> Node {
    let mut next = node.clone();
    next.state = NodeState::Error;
    next.record(now, format!("error: {reason}"));
    next.last_error = Some(reason);
    next
}

/// The node's network is released: nothing of it is left in EC2 (but what the deallocation
/// policy keeps: ENIs, data volumes, a Tether-allocated Elastic IP).
pub fn deallocated(node: &Node, now: DateTime<Utc>) -> Node {
    let mut next = node.clone();
    next.state = NodeState::Deallocated;
    if !node.keep_eni {
        // A kept ENI keeps its Elastic IP (and its record, so an operator can find it); so
        // does a Tether-allocated Elastic IP the policy keeps.
        next.eni = None;
        next.extra_enis.clear();
        next.elastic_ip = node.kept_elastic_ip().cloned();
    }
    next.record(now, if node.keep_eni { "deallocated; ENI kept" } else { "deallocated" });
    next
}

#[cfg(test)]
mod tests;
