//! What a recorded transition counts for the operator (CloudWatch metrics). Pure: the
//! service hands each metric to its `MetricsSink` port.

use std::time::Duration;

use crate::model::{Market, Node, NodeState};

/// One thing operators count or time.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// A lost instance (spot interruption, termination outside Tether) replaced: the next
    /// generation's launch is recorded.
    Replacement,
    /// From the spot interruption warning to the replacement's launch being recorded.
    RecoveryTime(Duration),
    /// A launch recorded on another candidate than the first (spot on the first instance
    /// type): there was no capacity for those before it. `market` is the one it got.
    Fallback { market: Market },
    /// A difference between the node's record and EC2 that the reconciler repaired
    /// (`lifecycle::repairs_drift`).
    DriftRepair,
    /// A node put in ERROR (an operator decides), or an event that can never be processed.
    Error,
    /// A condition raised on a node (`conditions`): it keeps running, degraded.
    Condition(crate::conditions::ConditionKind),
}

/// The metrics the transition from `before` to `after` (as written) counts.
pub fn metrics_of(before: &Node, after: &Node) -> Vec<Metric> {
    let mut metrics = Vec::new();
    let launch_recorded = before.state == NodeState::Launching
        && after.state == NodeState::Running
        && after.instance.as_ref().is_some_and(|i| i.generation == after.generation);
    if launch_recorded && before.replacing_lost_instance {
        metrics.push(Metric::Replacement);
        // The warning about the instance this generation replaces (the record names that
        // instance until the launch is recorded).
        let warning = before.interruption.as_ref().filter(|w| before.instance_id() == Some(w.instance_id.as_str()));
        if let (Some(warning), Some(launched)) = (warning, &after.instance) {
            metrics.push(Metric::RecoveryTime((launched.launched_at - warning.noticed_at).to_std().unwrap_or_default()));
        }
    }
    if let (true, Some(launched)) = (launch_recorded, &after.instance) {
        let first_candidate = before.spec.instance_types.first().map(String::as_str);
        if launched.market != Market::Spot || first_candidate != Some(launched.instance_type.as_str()) {
            metrics.push(Metric::Fallback { market: launched.market });
        }
    }
    if after.state == NodeState::Error && before.state != NodeState::Error {
        metrics.push(Metric::Error);
    }
    for raised in after.conditions.iter().filter(|c| before.condition(c.kind).is_none()) {
        metrics.push(Metric::Condition(raised.kind));
    }
    metrics
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::events::{InstanceEvent, InstanceState};
    use crate::lifecycle::{failed, launched, on_instance_event, on_recycle, Step};
    use crate::lifecycle::tests::{node_in, CURRENT};
    use crate::model::InterruptionAction;

    fn running() -> Node {
        node_in(NodeState::Running)
    }

    fn applied(step: Step) -> Node {
        match step {
            Step::Apply { next, .. } => next,
            other => panic!("expected a transition, got {other:?}"),
        }
    }

    #[test]
    fn a_replacement_after_a_warning_counts_with_its_recovery_time() {
        let t0 = Utc::now();
        let running = running();
        let warned = applied(on_instance_event(&running, &InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action: InterruptionAction::Terminate }, t0));
        let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
        let launching = applied(on_instance_event(&warned, &terminated, t0 + TimeDelta::seconds(120)));
        let replaced = launched(&launching, "i-new".into(), "m5.large".into(), Market::Spot, t0 + TimeDelta::seconds(125));

        assert_eq!(metrics_of(&launching, &replaced), vec![Metric::Replacement, Metric::RecoveryTime(Duration::from_secs(125))]);
        assert_eq!(metrics_of(&running, &warned), vec![], "a warning alone replaces nothing");
    }

    #[test]
    fn a_termination_without_warning_counts_a_replacement_without_recovery_time() {
        let now = Utc::now();
        let running = running();
        let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
        let launching = applied(on_instance_event(&running, &terminated, now));
        let replaced = launched(&launching, "i-new".into(), "m5.large".into(), Market::Spot, now);
        assert_eq!(metrics_of(&launching, &replaced), vec![Metric::Replacement]);
    }

    #[test]
    fn a_replacement_counts_however_long_its_launch_took() {
        let now = Utc::now();
        let running = running();
        let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
        let mut launching = applied(on_instance_event(&running, &terminated, now));
        // A long capacity drought: the history entry that began the generation rotates out.
        for attempt in 0..100 {
            launching.record(now, format!("no capacity: attempt {attempt}"));
        }
        let replaced = launched(&launching, "i-new".into(), "m5.large".into(), Market::Spot, now);
        assert_eq!(metrics_of(&launching, &replaced), vec![Metric::Replacement]);
        assert!(!replaced.replacing_lost_instance);
    }

    #[test]
    fn a_launch_on_a_later_candidate_counts_a_fallback_to_the_market_it_got() {
        let now = Utc::now();
        let recycling = applied(on_recycle(&running(), now, None));
        let on_second_type = launched(&recycling, "i-new".into(), "m6i.large".into(), Market::Spot, now);
        assert_eq!(metrics_of(&recycling, &on_second_type), vec![Metric::Fallback { market: Market::Spot }]);
        let on_demand = launched(&recycling, "i-new".into(), "m5.large".into(), Market::OnDemand, now);
        assert_eq!(metrics_of(&recycling, &on_demand), vec![Metric::Fallback { market: Market::OnDemand }]);
    }

    #[test]
    fn a_recycle_is_no_replacement_and_an_error_counts_once() {
        let now = Utc::now();
        let running = running();
        let recycling = applied(on_recycle(&running, now, Some("alice")));
        let recycled = launched(&recycling, "i-new".into(), "m5.large".into(), Market::Spot, now);
        assert_eq!(metrics_of(&recycling, &recycled), vec![]);

        let mut degraded = recycled.clone();
        degraded.raise(crate::conditions::ConditionKind::ElasticIpReleased, "released".into(), now);
        assert_eq!(metrics_of(&recycled, &degraded), vec![Metric::Condition(crate::conditions::ConditionKind::ElasticIpReleased)]);
        let mut reworded = degraded.clone();
        reworded.raise(crate::conditions::ConditionKind::ElasticIpReleased, "released, again".into(), now);
        assert_eq!(metrics_of(&degraded, &reworded), vec![], "counted when raised, not when reworded");

        let broken = failed(&recycling, "ENI deleted".into(), now);
        assert_eq!(metrics_of(&recycling, &broken), vec![Metric::Error]);
        assert_eq!(metrics_of(&broken, &failed(&broken, "again".into(), now)), vec![]);
    }
}
