//! Healing decisions: a running node whose status checks have failed for long enough is
//! recycled on its ENI (at most `max_heals` times a window, then a condition); a recycle
//! planned ahead of an AWS scheduled event runs when due; such an event plans one, or
//! recycles at once.

use chrono::{DateTime, TimeDelta, Utc};

use super::{actions::recycle, Step};
use crate::conditions::ConditionKind;
use crate::health::{Impaired, PlannedRecycle};
use crate::model::{push_newest, Node, NodeState};

/// The reconciler's healing step for a running node whose instance EC2 reports `impaired`
/// (`None`: its checks pass, or are not known yet), if there is one to take.
pub fn heal(node: &Node, impaired: Option<&Impaired>, now: DateTime<Utc>) -> Option<Step> {
    let policy = node.spec.auto_healing;
    let instance = node.instance.as_ref().filter(|_| node.state == NodeState::Running)?;
    let window = TimeDelta::hours(i64::from(policy.window_hours));
    let recent: Vec<DateTime<Utc>> = node.heals.iter().copied().filter(|at| now - *at < window).collect();
    let stopped = node.condition(ConditionKind::HealingStopped).is_some();
    if stopped && recent.len() < usize::from(policy.max_heals) {
        let mut next = node.clone();
        next.clear(ConditionKind::HealingStopped, &format!("fewer than {} heals in the last {} hours: healing is on again", policy.max_heals, policy.window_hours), now);
        return Some(Step::Apply { next, actions: Vec::new() });
    }
    let impaired = impaired.filter(|_| policy.enabled)?;
    let since = impaired.since?;
    // As EC2 Auto Scaling's health check grace period: an instance is not judged before it
    // has run that long.
    let in_grace = now - instance.launched_at < TimeDelta::seconds(i64::from(policy.grace_period_seconds));
    if in_grace || now - since < TimeDelta::seconds(i64::from(policy.unhealthy_duration_seconds)) {
        return None;
    }
    if recent.len() >= usize::from(policy.max_heals) {
        let mut next = node.clone();
        let message = format!(
            "{} of {} impaired since {since}, but auto-healing recycled the node {} times in the last {} hours (max_heals): it stops healing it until then; look at the instance (its AMI, its user data), then recycle it",
            impaired.checks, instance.id, recent.len(), policy.window_hours
        );
        return next.raise(ConditionKind::HealingStopped, message, now).then_some(Step::Apply { next, actions: Vec::new() });
    }
    let why = format!(
        "auto_healing: {} of {} impaired since {} (over {} s): recycled on its ENI",
        impaired.checks,
        instance.id,
        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        policy.unhealthy_duration_seconds
    );
    match recycle(node, now, &why, None) {
        Step::Apply { mut next, actions } => {
            next.heals = recent;
            push_newest(&mut next.heals, now, usize::from(policy.max_heals));
            Some(Step::Apply { next, actions })
        }
        _ => None,
    }
}

/// The reconciler's step for a planned recycle: run it once due, drop it if the node moved
/// on from the instance it was for.
pub fn planned(node: &Node, now: DateTime<Utc>) -> Option<Step> {
    let plan = node.planned_recycle.as_ref()?;
    if node.instance_id() != Some(plan.instance_id.as_str()) || !matches!(node.state, NodeState::Running | NodeState::Stopped) {
        let mut next = node.clone();
        next.planned_recycle = None;
        next.record(now, format!("planned recycle dropped: {} no longer runs the node", plan.instance_id));
        return Some(Step::Apply { next, actions: Vec::new() });
    }
    (now >= plan.at).then(|| match recycle(node, now, &format!("{}: recycled ahead of it", plan.why), None) {
        Step::Apply { mut next, actions } => {
            next.planned_recycle = None;
            Step::Apply { next, actions }
        }
        other => other,
    })
}

/// An AWS scheduled event (`type_code`, `event_arn`) on the node's instance, starting at
/// `starts_at`: the node is recycled onto new hardware ahead of it, at the start of the last
/// maintenance window before it if the node has one (and it is still to come), else now.
pub fn on_maintenance(node: &Node, type_code: &str, event_arn: &str, starts_at: DateTime<Utc>, now: DateTime<Utc>) -> Step {
    let instance_id = node.instance_id().unwrap_or_default().to_owned();
    let why = format!("AWS Health {type_code} ({event_arn}) for {instance_id} from {}", starts_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let at = node.spec.maintenance_window.map(|w| w.last_start_before(starts_at)).filter(|at| *at > now);
    let Some(at) = at else {
        return recycle(node, now, &format!("{why}: recycled ahead of it"), None);
    };
    let mut next = node.clone();
    next.record(now, format!("{why}: recycle planned at {} (maintenance window)", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    next.planned_recycle = Some(PlannedRecycle { at, instance_id, why });
    Step::Apply { next, actions: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::tests::node_in;
    use crate::lifecycle::Action;

    fn impaired(minutes_ago: i64, now: DateTime<Utc>) -> Impaired {
        Impaired { checks: "instance status".into(), since: Some(now - TimeDelta::minutes(minutes_ago)) }
    }

    fn running_for(minutes: i64, now: DateTime<Utc>) -> Node {
        let mut node = node_in(NodeState::Running);
        if let Some(i) = node.instance.as_mut() {
            i.launched_at = now - TimeDelta::minutes(minutes);
        }
        node
    }

    #[test]
    fn an_instance_impaired_past_the_duration_and_the_grace_is_recycled_and_no_other() {
        let now = Utc::now();
        let node = running_for(60, now);
        let Some(Step::Apply { next, actions }) = heal(&node, Some(&impaired(6, now)), now) else { panic!("not healed") };
        assert_eq!(next.state, NodeState::Launching);
        assert_eq!(actions.last(), Some(&Action::Launch));
        assert!(next.history.last().is_some_and(|h| h.what.starts_with("auto_healing: instance status of")), "{:?}", next.history.last());
        assert_eq!(next.heals, vec![now]);
        assert_eq!(heal(&node, Some(&impaired(4, now)), now), None, "shorter than the duration");
        assert_eq!(heal(&running_for(4, now), Some(&impaired(6, now)), now), None, "inside the grace period");
        assert_eq!(heal(&node, None, now), None, "healthy");
        assert_eq!(heal(&node, Some(&Impaired { checks: "system status".into(), since: None }), now), None, "for how long: unknown");
        let mut off = node.clone();
        off.spec.auto_healing.enabled = false;
        assert_eq!(heal(&off, Some(&impaired(60, now)), now), None, "auto_healing off");
    }

    #[test]
    fn healing_stops_after_max_heals_in_the_window_with_a_condition_and_resumes_after_it() {
        let now = Utc::now();
        let mut node = running_for(60, now);
        node.heals = (1..=3).map(|h| now - TimeDelta::hours(h)).collect();
        let Some(Step::Apply { next, actions }) = heal(&node, Some(&impaired(10, now)), now) else { panic!("no condition") };
        assert!(actions.is_empty() && next.state == NodeState::Running);
        assert!(next.condition(ConditionKind::HealingStopped).is_some_and(|c| c.message.contains("3 times")), "{:?}", next.conditions);
        assert_eq!(heal(&next, Some(&impaired(10, now)), now), None, "raised once");
        let later = now + TimeDelta::hours(23);
        let Some(Step::Apply { next: resumed, .. }) = heal(&next, Some(&impaired(10, later)), later) else { panic!("not resumed") };
        assert!(resumed.conditions.is_empty());
    }

    #[test]
    fn a_scheduled_event_recycles_at_once_or_plans_the_recycle_in_the_window() {
        let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap_or_default();
        let starts = now + TimeDelta::days(3);
        let node = running_for(60, now);
        let Step::Apply { next, actions } = on_maintenance(&node, "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", "arn:e", starts, now) else { panic!() };
        assert_eq!((next.state, actions.last()), (NodeState::Launching, Some(&Action::Launch)), "no window: at once");
        let mut windowed = node.clone();
        windowed.spec.maintenance_window = Some(crate::health::DailyWindow { start: "02:00:00".parse().unwrap_or_default(), end: "04:00:00".parse().unwrap_or_default() });
        let Step::Apply { next: planning, actions } = on_maintenance(&windowed, "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", "arn:e", starts, now) else { panic!() };
        assert!(actions.is_empty());
        let plan = planning.planned_recycle.clone().expect("planned");
        assert_eq!(plan.at, "2026-12-04T02:00:00Z".parse::<DateTime<Utc>>().unwrap_or_default());
        assert_eq!(planned(&planning, now + TimeDelta::days(1)), None, "not due");
        let Some(Step::Apply { next: done, .. }) = planned(&planning, plan.at) else { panic!("not run") };
        assert_eq!((done.state, done.planned_recycle.clone()), (NodeState::Launching, None));
        // The node moved on to another instance meanwhile: nothing to do but drop it.
        let mut moved = planning.clone();
        if let Some(i) = moved.instance.as_mut() {
            i.id = "i-other".into();
        }
        let Some(Step::Apply { next: dropped, actions }) = planned(&moved, now) else { panic!() };
        assert!(dropped.planned_recycle.is_none() && actions.is_empty() && dropped.state == NodeState::Running);
    }
}
