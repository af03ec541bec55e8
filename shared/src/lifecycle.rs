//! The node lifecycle as a pure state machine: (node, trigger) → step.
//! No I/O here: the recovery service performs what a step asks for.

use chrono::{DateTime, Utc};

use crate::events::{InstanceEvent, InstanceState};
use crate::model::{InstanceRecord, InterruptionAction, InterruptionRecord, Market, Node, NodeState};

/// What to do about a trigger.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing changes; the reason is logged.
    Ignore(&'static str),
    /// Write this record (conditional on the version read); no EC2 action.
    Record(Node),
    /// Write this record (now `Launching` a new generation), then launch it.
    Launch(Node),
    /// The node is already `Launching` its current generation: launch again. The
    /// generation's ClientToken makes that return the instance of an earlier attempt.
    ContinueLaunch,
    /// The request does not fit the node's state.
    Refuse(String),
}

/// Reacts to an EC2 event about `event.instance_id()`.
pub fn on_instance_event(node: &Node, event: &InstanceEvent, now: DateTime<Utc>) -> Step {
    use InstanceEvent::{InterruptionWarning, RebalanceRecommendation, StateChange};
    use InstanceState as I;
    use NodeState as N;

    if node.instance_id() != Some(event.instance_id()) {
        return Step::Ignore("event is about an instance that is not the node's current one");
    }
    match (node.state, event) {
        (N::Paused, _) => Step::Ignore("node is paused"),
        (N::Error, _) => Step::Ignore("node is in ERROR; an operator decides"),
        (N::Launching, StateChange { state: I::Terminated, .. }) => Step::ContinueLaunch,
        (N::Launching, _) => Step::Ignore("a replacement is already being launched"),

        (N::Running | N::Recovering | N::Stopped, StateChange { state: I::Terminated, .. }) => {
            Step::Launch(begin_launch(node, now, "instance terminated; launching a replacement on the node's ENI"))
        }

        (_, InterruptionWarning { action, .. }) => on_warning(node, *action, now),
        (_, RebalanceRecommendation { instance_id }) => {
            let already = node.history.iter().any(|h| {
                h.instance_id.as_deref() == Some(instance_id.as_str()) && h.what == REBALANCE_RECORDED
            });
            if already {
                return Step::Ignore("rebalance recommendation already recorded");
            }
            let mut next = node.clone();
            next.record(now, REBALANCE_RECORDED);
            Step::Record(next)
        }

        (N::Running, StateChange { state: I::ShuttingDown, .. }) => {
            let mut next = node.clone();
            next.state = N::Recovering;
            next.record(now, "instance shutting down; replacement follows its termination");
            Step::Record(next)
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
            Step::Record(next)
        }
        (N::Stopped, StateChange { state: I::Pending | I::Running, .. }) => {
            let mut next = node.clone();
            next.state = N::Running;
            next.interruption = None;
            next.record(now, "stopped instance is running again");
            Step::Record(next)
        }
        (N::Running | N::Recovering | N::Stopped, StateChange { state, .. }) => match state {
            I::Stopping => Step::Ignore("instance stopping; waiting for `stopped`"),
            _ => Step::Ignore("state already known"),
        },
    }
}

/// The rebalance recommendation's history text; also how a duplicate is recognised.
const REBALANCE_RECORDED: &str = "rebalance recommendation: elevated interruption risk";

fn on_warning(node: &Node, action: InterruptionAction, now: DateTime<Utc>) -> Step {
    let instance_id = node.instance_id().unwrap_or_default().to_owned();
    if node.interruption.as_ref().is_some_and(|i| i.instance_id == instance_id && i.action == action) {
        return Step::Ignore("interruption warning already recorded");
    }
    let mut next = node.clone();
    next.interruption = Some(InterruptionRecord { instance_id, action, noticed_at: now });
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
    Step::Record(next)
}

/// Reacts to a user's resume.
pub fn on_resume(node: &Node, now: DateTime<Utc>) -> Step {
    match node.state {
        NodeState::Paused => Step::Launch(begin_launch(node, now, "resume requested")),
        NodeState::Launching => Step::ContinueLaunch,
        NodeState::Running | NodeState::Recovering | NodeState::Stopped => {
            Step::Ignore("node already has an instance")
        }
        NodeState::Error => Step::Refuse(format!(
            "node {} is in ERROR ({}); resolve the cause first",
            node.id,
            node.last_error.as_deref().unwrap_or("no reason recorded")
        )),
    }
}

fn begin_launch(node: &Node, now: DateTime<Utc>, why: &str) -> Node {
    let mut next = node.clone();
    next.state = NodeState::Launching;
    next.generation += 1;
    next.last_error = None;
    next.record(now, why);
    next
}

/// The launch of the current generation succeeded.
pub fn launched(node: &Node, instance_id: String, instance_type: String, market: Market, now: DateTime<Utc>) -> Node {
    let mut next = node.clone();
    next.state = NodeState::Running;
    next.instance = Some(InstanceRecord {
        id: instance_id,
        generation: node.generation,
        instance_type,
        market,
        launched_at: now,
    });
    next.interruption = None;
    next.last_error = None;
    let what = format!(
        "launched generation {} as {} ({})",
        node.generation,
        next.instance.as_ref().map(|i| i.instance_type.as_str()).unwrap_or_default(),
        match market {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    );
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

#[cfg(test)]
mod tests;
