//! What the reconciler does about one node, given what it found in EC2: recover a node
//! whose instance is gone without an event, carry on work that stalled, and heal or
//! report drift (never fighting a person over an Elastic IP: a condition says who has it).

use chrono::{DateTime, Utc};

use super::{failed, on_instance_event, Action, Step};
use crate::conditions::ConditionKind;
use crate::schedules::ScheduledAction;
use crate::events::{InstanceEvent, InstanceState};
use crate::model::{ElasticIpRecord, EniRecord, Market, Node, NodeState, SPOT_REVERT_INTERVAL};

/// What the reconciler found in EC2 about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// EC2's state of the node's current instance; `None` when EC2 does not know it
    /// (any more) or the node names none.
    pub instance: Option<InstanceState>,
    /// Whether the ENI on record still exists.
    pub eni_exists: bool,
    /// The device index of an extra ENI on record that no longer exists.
    pub deleted_extra_eni: Option<u8>,
    /// A data volume on record that no longer exists.
    pub deleted_data_volume: Option<String>,
    /// A data volume on record is not attached to the node's running instance.
    pub data_volume_detached: bool,
    /// Where the Elastic IP on record is; `None` when the node has none on record.
    pub elastic_ip: Option<ElasticIpFound>,
    /// Nothing was recorded on the node for the reconciler's `stuck_after`.
    pub stuck: bool,
    /// What EC2's status checks say of the current instance, if it fails one.
    pub impaired: Option<crate::health::Impaired>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElasticIpFound {
    /// On the node's ENI, as it should be.
    OnEni,
    /// Associated with nothing.
    Free,
    /// Associated with something else (named).
    Elsewhere(String),
    /// Released.
    Missing,
}

/// The reconciler's step for one node: what EC2 shows calls for, else a scheduled action
/// that is due.
pub fn on_reconcile(node: &Node, seen: &Observed, now: DateTime<Utc>) -> Step {
    match observed_step(node, seen, now) {
        Step::Ignore(reason) => scheduled(node, now).unwrap_or(Step::Ignore(reason)),
        step => step,
    }
}

/// A scheduled action whose slot is due (`schedules::due_now`), recorded as run with it: once,
/// even when there is nothing to do (pausing a paused node). Not on a node in ERROR (an
/// operator decides) or with work under way.
fn scheduled(node: &Node, now: DateTime<Utc>) -> Option<Step> {
    if !matches!(node.state, NodeState::Running | NodeState::Paused | NodeState::Stopped) {
        return None;
    }
    let (schedule, slot) = crate::schedules::due_now(&node.spec.schedules, &node.schedule_runs, node.created_at, now)?;
    let by = format!("schedule `{}` ({})", schedule.cron.trim(), schedule.time_zone);
    let step = match schedule.action {
        ScheduledAction::Pause => super::on_pause(node, now, Some(&by)),
        ScheduledAction::Resume => super::on_resume(node, now, Some(&by)),
        ScheduledAction::Recycle => super::on_recycle(node, now, Some(&by)),
    };
    let mut step = match step {
        Step::Apply { next, actions } => Step::Apply { next, actions },
        Step::Ignore(why) => nothing_to_do(node, schedule.action, why, &by, now),
        Step::Refuse(why) => nothing_to_do(node, schedule.action, &why, &by, now),
        Step::Continue(_) => nothing_to_do(node, schedule.action, "already under way", &by, now),
    };
    if let Step::Apply { next, .. } = &mut step {
        next.schedule_runs.insert(schedule.key(), slot);
    }
    Some(step)
}

fn nothing_to_do(node: &Node, action: ScheduledAction, why: &str, by: &str, now: DateTime<Utc>) -> Step {
    let mut next = node.clone();
    next.record_by(now, format!("scheduled {}: nothing to do ({why})", action.as_str()), Some(by));
    Step::Apply { next, actions: Vec::new() }
}

fn observed_step(node: &Node, seen: &Observed, now: DateTime<Utc>) -> Step {
    match node.state {
        NodeState::Deallocated | NodeState::Error => Step::Ignore("nothing to reconcile"),
        NodeState::Deallocating | NodeState::Launching if !seen.stuck => Step::Ignore("work under way"),
        // Stalled (its events lost, its invocations dead): carried on as a retried action would.
        NodeState::Deallocating => super::on_deallocate(node, node.keep_eni, now, None),
        NodeState::Launching => super::on_resume(node, now, None),
        NodeState::Paused => network_drift(node, seen, now),
        NodeState::Running | NodeState::Recovering | NodeState::Stopped => {
            let Some(instance_id) = node.instance_id() else { return network_drift(node, seen, now) };
            // A state change whose event was lost is handled as that event.
            let state = seen.instance.unwrap_or(InstanceState::Terminated);
            let lost_event = matches!(
                (node.state, state),
                (_, InstanceState::Terminated)
                    | (NodeState::Running, InstanceState::ShuttingDown | InstanceState::Stopped)
                    | (NodeState::Stopped, InstanceState::Pending | InstanceState::Running)
            );
            if lost_event {
                let event = InstanceEvent::StateChange { instance_id: instance_id.to_owned(), state };
                return on_instance_event(node, &event, now);
            }
            // A hand-over whose warning's delivery at the due time was lost.
            if let Some(step) = super::handover::on_reconcile(node, state == InstanceState::Running, now) {
                return step;
            }
            match network_drift(node, seen, now) {
                Step::Ignore(reason) => super::health::planned(node, now)
                    .or_else(|| super::health::heal(node, seen.impaired.as_ref(), now))
                    .unwrap_or_else(|| if spot_revert_due(node, now) { back_to_spot(node, now) } else { Step::Ignore(reason) }),
                step => step,
            }
        }
    }
}

/// Whether the reconciler's `step` for `node` repairs drift between the record and EC2: a
/// lost event's transition applied, the Elastic IP put back, stalled work carried on. An
/// ERROR it finds (counted as an error), a condition raised or cleared alone (counted as a
/// condition), a move back to spot, a heal, a planned recycle and a scheduled action
/// (policies) are not repairs.
pub fn repairs_drift(node: &Node, step: &Step) -> bool {
    match step {
        Step::Ignore(_) | Step::Refuse(_) => false,
        Step::Continue(_) => true,
        Step::Apply { next, actions } => {
            let condition_alone = actions.is_empty() && next.conditions != node.conditions;
            let policy = next.spot_revert_at != node.spot_revert_at
                || next.heals != node.heals
                || next.planned_recycle != node.planned_recycle
                || next.schedule_runs != node.schedule_runs;
            next.state != NodeState::Error && !policy && !condition_alone
        }
    }
}

/// A running node on on-demand whose `revert_to_spot` policy lets it go back to spot now,
/// and that was not moved back within `SPOT_REVERT_INTERVAL`.
pub fn spot_revert_due(node: &Node, now: DateTime<Utc>) -> bool {
    node.state == NodeState::Running
        && node.instance.as_ref().is_some_and(|i| i.market == Market::OnDemand)
        && node.spec.revert_to_spot.allows(now)
        && node.spot_revert_at.is_none_or(|at| now - at >= SPOT_REVERT_INTERVAL)
}

/// A recycle: the next launch tries the spot candidates first (and falls back again if
/// spot has no capacity).
fn back_to_spot(node: &Node, now: DateTime<Utc>) -> Step {
    match super::actions::recycle(node, now, "moving back to spot (revert_to_spot): the on-demand instance is replaced", None) {
        Step::Apply { mut next, actions } => {
            next.spot_revert_at = Some(now);
            Step::Apply { next, actions }
        }
        other => other,
    }
}

/// The ENI or the Elastic IP changed outside Tether.
fn network_drift(node: &Node, seen: &Observed, now: DateTime<Utc>) -> Step {
    if let (Some(eni), false) = (&node.eni, seen.eni_exists) {
        return Step::Apply { next: failed(node, eni_deleted(eni), now), actions: Vec::new() };
    }
    if let Some(extra) = seen.deleted_extra_eni.and_then(|i| node.extra_enis.iter().find(|e| e.device_index == i)) {
        return Step::Apply { next: failed(node, extra_eni_deleted(extra), now), actions: Vec::new() };
    }
    // Data safety first: a node never runs without its data (its instance, if it still
    // runs, runs without that volume since it was detached: it is stopped from going on).
    if let Some(volume) = seen.deleted_data_volume.as_ref().and_then(|id| node.data_volumes.iter().find(|v| v.volume_id == *id)) {
        let live = matches!(node.state, NodeState::Running | NodeState::Recovering | NodeState::Stopped);
        let actions = node.instance_id().filter(|_| live).map(|i| Action::Terminate(i.to_owned())).into_iter().collect();
        return Step::Apply { next: failed(node, crate::data_volumes::data_volume_deleted(volume), now), actions };
    }
    if seen.data_volume_detached && node.state == NodeState::Running {
        return Step::Continue(vec![Action::AttachDataVolumes]);
    }
    let (Some(eip), Some(found)) = (&node.elastic_ip, &seen.elastic_ip) else { return Step::Ignore("network as recorded") };
    let mut next = node.clone();
    let changed = match found {
        ElasticIpFound::OnEni => next.clear(ConditionKind::ElasticIpElsewhere, &format!("Elastic IP {} is on the ENI again", eip.allocation_id), now),
        ElasticIpFound::Free => {
            next.clear(ConditionKind::ElasticIpElsewhere, &format!("Elastic IP {} is free again", eip.allocation_id), now);
            next.record(now, format!("drift: Elastic IP {} ({}) found disassociated; associated again", eip.allocation_id, eip.public_ip));
            return Step::Apply { next, actions: vec![Action::AssociateElasticIp] };
        }
        // Tether never takes an Elastic IP from whoever holds it: the node goes on without it.
        ElasticIpFound::Elsewhere(holder) => next.raise(ConditionKind::ElasticIpElsewhere, elastic_ip_elsewhere(eip, holder), now),
        ElasticIpFound::Missing => {
            let message = format!(
                "Elastic IP {} ({}) was released outside Tether: the node runs on its ENI and private IP without its public IP; deallocate it and create a new node to have another",
                eip.allocation_id, eip.public_ip
            );
            next.clear(ConditionKind::ElasticIpElsewhere, "the Elastic IP was released", now);
            next.raise(ConditionKind::ElasticIpReleased, message, now)
        }
    };
    if changed {
        Step::record(next)
    } else {
        Step::Ignore("network as recorded")
    }
}

/// The condition's words for a node whose Elastic IP `holder` has.
pub fn elastic_ip_elsewhere(eip: &ElasticIpRecord, holder: &str) -> String {
    format!(
        "Elastic IP {} ({}) is associated with {holder}, not with the node's ENI: the node runs on its ENI and private IP without it, and gets it back once it is disassociated from {holder}",
        eip.allocation_id, eip.public_ip
    )
}

/// The ERROR reason for a node whose extra ENI is gone.
pub fn extra_eni_deleted(eni: &crate::model::ExtraEniRecord) -> String {
    format!(
        "extra ENI {} ({}, device index {}) was deleted outside Tether: the node cannot launch with its network as it was; deallocate this node and create a new one",
        eni.id, eni.private_ip, eni.device_index
    )
}

/// The ERROR reason for a node whose ENI is gone.
pub fn eni_deleted(eni: &EniRecord) -> String {
    format!(
        "ENI {} ({}) was deleted outside Tether: the node's private IP and MAC cannot be kept; deallocate this node and create a new one",
        eni.id, eni.private_ip
    )
}
