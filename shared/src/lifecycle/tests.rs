//! Every (state, event) pair, for the node's current instance and for another one.

use super::*;
use crate::model::{test_spec, Persistence};

pub(super) const CURRENT: &str = "i-00000000000000001";
const OTHER: &str = "i-00000000000000002";

const STATES: [NodeState; 8] = [
    NodeState::Paused,
    NodeState::Launching,
    NodeState::Running,
    NodeState::Recovering,
    NodeState::Stopped,
    NodeState::Error,
    NodeState::Deallocating,
    NodeState::Deallocated,
];

/// A node in `state` on generation 3, its instance `CURRENT` (m5.large spot).
pub(super) fn node_in(state: NodeState) -> Node {
    let mut node = Node::new(test_spec(&["m5.large"], true), Persistence::default(), Utc::now());
    node.state = state;
    node.generation = 3;
    node.instance = Some(InstanceRecord {
        id: CURRENT.into(),
        generation: 3,
        instance_type: "m5.large".into(),
        market: Market::Spot,
        launched_at: Utc::now(),
    });
    node
}

fn all_events(instance_id: &str) -> Vec<InstanceEvent> {
    let id = || instance_id.to_owned();
    let mut events = vec![InstanceEvent::RebalanceRecommendation { instance_id: id() }];
    for action in [InterruptionAction::Terminate, InterruptionAction::Stop, InterruptionAction::Hibernate] {
        events.push(InstanceEvent::InterruptionWarning { instance_id: id(), action });
    }
    for state in [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::ShuttingDown,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Terminated,
    ] {
        events.push(InstanceEvent::StateChange { instance_id: id(), state });
    }
    events
}

/// The expected step kind and resulting state for the current instance.
fn expected(state: NodeState, event: &InstanceEvent) -> (&'static str, Option<NodeState>) {
    use InstanceEvent::{InterruptionWarning, RebalanceRecommendation, StateChange};
    use InstanceState as I;
    use NodeState as N;
    match (state, event) {
        (N::Paused | N::Error | N::Deallocated, _) => ("ignore", None),
        (N::Deallocating, StateChange { state: I::Terminated, .. }) => ("continue", None),
        (N::Deallocating, _) => ("ignore", None),
        (N::Launching, StateChange { state: I::Terminated, .. }) => ("continue", None),
        (N::Launching, _) => ("ignore", None),
        (_, StateChange { state: I::Terminated, .. }) => ("launch", Some(N::Launching)),
        (N::Running, InterruptionWarning { action: InterruptionAction::Terminate, .. }) => ("record", Some(N::Recovering)),
        (s, InterruptionWarning { .. }) => ("record", Some(s)),
        (s, RebalanceRecommendation { .. }) => ("record", Some(s)),
        (N::Running, StateChange { state: I::ShuttingDown, .. }) => ("record", Some(N::Recovering)),
        (N::Running | N::Recovering, StateChange { state: I::Stopped, .. }) => ("record", Some(N::Stopped)),
        (N::Stopped, StateChange { state: I::Pending | I::Running, .. }) => ("record", Some(N::Running)),
        _ => ("ignore", None),
    }
}

fn kind(step: &Step) -> (&'static str, Option<NodeState>) {
    match step {
        Step::Ignore(_) => ("ignore", None),
        Step::Apply { next, actions } if actions.contains(&Action::Launch) => ("launch", Some(next.state)),
        Step::Apply { next, .. } => ("record", Some(next.state)),
        Step::Continue(_) => ("continue", None),
        Step::Refuse(_) => ("refuse", None),
    }
}

/// The record a step writes, if any.
fn written(step: &Step) -> Option<&Node> {
    match step {
        Step::Apply { next, .. } => Some(next),
        _ => None,
    }
}

#[test]
fn every_state_and_event_of_the_current_instance() {
    let mut pairs = 0;
    for state in STATES {
        let node = node_in(state);
        for event in all_events(CURRENT) {
            let step = on_instance_event(&node, &event, Utc::now());
            assert_eq!(kind(&step), expected(state, &event), "state {state:?}, event {event:?}");
            if let Some(next) = written(&step) {
                let launch = kind(&step).0 == "launch";
                assert_eq!(next.generation, node.generation + u64::from(launch), "{state:?} {event:?}");
                assert_eq!(next.instance, node.instance, "the instance changes only once launched");
                assert_eq!(next.eni, node.eni, "the ENI is kept for life");
                assert_eq!(next.history.len(), node.history.len() + 1, "each change is in the history");
            }
            pairs += 1;
        }
    }
    assert_eq!(pairs, STATES.len() * 10);
}

#[test]
fn events_about_another_instance_are_ignored_in_every_state() {
    for state in STATES {
        for event in all_events(OTHER) {
            assert!(
                matches!(on_instance_event(&node_in(state), &event, Utc::now()), Step::Ignore(_)),
                "{state:?} {event:?}"
            );
        }
    }
}

#[test]
fn the_same_event_twice_changes_nothing_the_second_time() {
    for state in [NodeState::Running, NodeState::Recovering, NodeState::Stopped] {
        for event in all_events(CURRENT) {
            let step = on_instance_event(&node_in(state), &event, Utc::now());
            let Some(once) = written(&step) else { continue };
            let twice = on_instance_event(once, &event, Utc::now());
            assert!(
                matches!(twice, Step::Ignore(_) | Step::Continue(_)),
                "{state:?} {event:?} applied twice gave {twice:?}"
            );
        }
    }
}

/// A stop interruption runs its course (warning, stopped, running again); then the
/// warning's event is delivered once more: it must not be recorded a second time.
#[test]
fn a_late_duplicate_of_an_applied_event_is_not_applied_again() {
    let warning = InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action: InterruptionAction::Stop };
    let stopped = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Stopped };
    let running = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Running };
    let mut node = node_in(NodeState::Running);
    for (id, event) in [("ev-1", &warning), ("ev-2", &stopped), ("ev-3", &running)] {
        node = written(&on_delivered_event(&node, id, event, None, Utc::now())).expect("applied").clone();
    }
    assert_eq!(node.state, NodeState::Running);
    assert_eq!(node.applied_events, ["ev-1", "ev-2", "ev-3"]);
    // Without its id the same warning would be recorded again: the state machine alone
    // cannot tell a duplicate from a new interruption of the restarted instance.
    assert!(written(&on_instance_event(&node, &warning, Utc::now())).is_some());
    for (id, event) in [("ev-1", &warning), ("ev-2", &stopped)] {
        let again = on_delivered_event(&node, id, event, None, Utc::now());
        assert!(matches!(again, Step::Ignore(_)), "{id} delivered again gave {again:?}");
    }
}

/// A launch the event started and a crash cut short is carried on by Lambda's retry.
#[test]
fn a_retried_event_carries_on_the_work_it_started() {
    let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
    let step = on_delivered_event(&node_in(NodeState::Running), "ev-9", &terminated, None, Utc::now());
    let launching = written(&step).expect("applied").clone();
    assert!(launching.applied("ev-9"));
    let retried = on_delivered_event(&launching, "ev-9", &terminated, None, Utc::now());
    assert_eq!(retried, Step::Continue(vec![Action::Launch]));
}

#[test]
fn a_node_remembers_only_its_newest_applied_events() {
    let mut node = node_in(NodeState::Running);
    for i in 0..(crate::model::APPLIED_EVENTS_LIMIT + 5) {
        node.note_applied(&format!("ev-{i}"));
    }
    assert_eq!(node.applied_events.len(), crate::model::APPLIED_EVENTS_LIMIT);
    assert!(!node.applied("ev-4") && node.applied("ev-5"));
}

#[test]
fn warning_then_termination_and_termination_alone_both_launch_once() {
    let running = node_in(NodeState::Running);
    let step = on_instance_event(
        &running,
        &InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action: InterruptionAction::Terminate },
        Utc::now(),
    );
    let warned = written(&step).expect("a warning is recorded").clone();
    assert_eq!(warned.state, NodeState::Recovering);
    let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
    for node in [&running, &warned] {
        match on_instance_event(node, &terminated, Utc::now()) {
            Step::Apply { next, actions } => {
                assert_eq!(next.state, NodeState::Launching);
                assert_eq!(next.generation, 4);
                assert_eq!(actions, vec![Action::Launch]);
            }
            other => panic!("termination gave {other:?}"),
        }
    }
}

#[test]
fn stop_interruption_is_recorded_not_replaced() {
    let node = node_in(NodeState::Running);
    let step = on_instance_event(
        &node,
        &InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action: InterruptionAction::Stop },
        Utc::now(),
    );
    let warned = written(&step).expect("recorded").clone();
    assert_eq!(warned.state, NodeState::Running);
    let step = on_instance_event(
        &warned,
        &InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Stopped },
        Utc::now(),
    );
    let stopped = written(&step).expect("recorded").clone();
    assert_eq!(stopped.state, NodeState::Stopped);
    assert_eq!(stopped.generation, node.generation);
    assert!(stopped.history.last().is_some_and(|h| h.what.contains("spot interruption")));
}

#[test]
fn user_actions_in_every_state() {
    use NodeState as N;
    let by = Some("arn:aws:iam::123456789012:user/ops");
    for state in STATES {
        let node = node_in(state);
        let resume = match state {
            N::Paused => "launch",
            N::Launching => "continue",
            N::Error | N::Deallocating | N::Deallocated => "refuse",
            _ => "ignore",
        };
        assert_eq!(kind(&on_resume(&node, Utc::now(), by)).0, resume, "resume in {state:?}");
        let pause = match state {
            N::Running | N::Recovering | N::Stopped | N::Error | N::Launching => "record",
            // The node names an instance: terminate it again, in case that failed before.
            N::Paused => "continue",
            _ => "refuse",
        };
        assert_eq!(kind(&on_pause(&node, Utc::now(), by)).0, pause, "pause in {state:?}");
        let recycle = match state {
            N::Launching => "continue",
            N::Deallocating | N::Deallocated => "refuse",
            _ => "launch",
        };
        assert_eq!(kind(&on_recycle(&node, Utc::now(), by)).0, recycle, "recycle in {state:?}");
        let deallocate = match state {
            N::Deallocating => "continue",
            N::Deallocated => "ignore",
            _ => "record",
        };
        assert_eq!(kind(&on_deallocate(&node, false, Utc::now(), by)).0, deallocate, "deallocate in {state:?}");
        for step in [on_resume(&node, Utc::now(), by), on_pause(&node, Utc::now(), by), on_recycle(&node, Utc::now(), by)] {
            if let Some(next) = written(&step) {
                assert_eq!(next.history.last().and_then(|h| h.by.as_deref()), by, "the caller is on record");
            }
        }
    }
}

#[test]
fn pause_recycle_and_deallocate_terminate_the_current_instance_first() {
    let node = node_in(NodeState::Running);
    let terminate = Action::Terminate(CURRENT.into());
    let actions = |step: Step| match step {
        Step::Apply { actions, .. } => actions,
        other => panic!("{other:?}"),
    };
    assert_eq!(actions(on_pause(&node, Utc::now(), None)), vec![terminate.clone()]);
    assert_eq!(actions(on_recycle(&node, Utc::now(), None)), vec![terminate.clone(), Action::Launch]);
    assert_eq!(actions(on_deallocate(&node, true, Utc::now(), None)), vec![terminate, Action::ReleaseNetwork]);
    // A paused node has no instance to terminate.
    let paused = node_in(NodeState::Paused);
    assert_eq!(actions(on_recycle(&paused, Utc::now(), None)), vec![Action::Launch]);
    assert_eq!(actions(on_deallocate(&paused, false, Utc::now(), None)), vec![Action::ReleaseNetwork]);
    // A launch under way is called off: what it started is terminated too.
    let launching = node_in(NodeState::Launching);
    assert_eq!(
        actions(on_pause(&launching, Utc::now(), None)),
        vec![Action::Terminate(CURRENT.into()), Action::TerminateLaunched]
    );
    assert_eq!(
        actions(on_deallocate(&launching, false, Utc::now(), None)),
        vec![Action::Terminate(CURRENT.into()), Action::TerminateLaunched, Action::ReleaseNetwork]
    );
}

#[test]
fn a_patch_changes_launch_settings_and_refuses_the_network_identity() {
    let mut node = node_in(NodeState::Running);
    node.persistence.private_ip = Some("10.0.1.50".parse().expect("ip"));
    let patch = NodePatch { instance_types: Some(vec!["m6i.large".into()]), fallback_to_on_demand: Some(false), ..NodePatch::default() };
    let next = patched(&node, &patch, Utc::now(), Some("ops")).expect("allowed");
    assert_eq!(next.spec.instance_types, vec!["m6i.large"]);
    assert!(!next.spec.fallback_to_on_demand);
    assert_eq!(next.generation, node.generation, "takes effect at the next launch");

    let subnet = NodePatch { subnet_id: Some("subnet-2".into()), ..NodePatch::default() };
    assert_eq!(patched(&node, &subnet, Utc::now(), None).map_err(|e| e.field.into_owned()), Err("subnet_id".to_owned()));
    let same_subnet = NodePatch { subnet_id: Some("subnet-1".into()), ..NodePatch::default() };
    assert!(patched(&node, &same_subnet, Utc::now(), None).is_ok(), "restating the subnet is no change");
    let ip = NodePatch { private_ip: Some("10.0.1.51".into()), ..NodePatch::default() };
    assert_eq!(patched(&node, &ip, Utc::now(), None).map_err(|e| e.field.into_owned()), Err("private_ip".to_owned()));
    let empty = NodePatch { instance_types: Some(vec![]), ..NodePatch::default() };
    assert_eq!(patched(&node, &empty, Utc::now(), None).map_err(|e| e.field.into_owned()), Err("instance_types".to_owned()));
}

#[test]
fn deallocated_forgets_the_network_unless_the_eni_is_kept() {
    let mut node = node_in(NodeState::Deallocating);
    node.eni = Some(crate::model::EniRecord {
        id: "eni-1".into(),
        private_ip: "10.0.1.9".parse().expect("ip"),
        mac_address: "0e:00:00:00:00:01".into(),
        availability_zone: "us-east-1a".into(),
        secondary_private_ips: Vec::new(),
        ipv6_addresses: Vec::new(),
    });
    assert_eq!(deallocated(&node, Utc::now()).eni, None);
    node.keep_eni = true;
    assert!(deallocated(&node, Utc::now()).eni.is_some());
    assert_eq!(deallocated(&node, Utc::now()).state, NodeState::Deallocated);
}

#[test]
fn launched_and_failed_finish_a_launch() {
    let mut node = node_in(NodeState::Launching);
    node.generation = 4;
    let running = launched(&node, "i-new".into(), "m5.xlarge".into(), Market::OnDemand, Utc::now());
    assert_eq!(running.state, NodeState::Running);
    assert_eq!(running.instance_id(), Some("i-new"));
    assert_eq!(running.instance.as_ref().map(|i| i.generation), Some(4));
    let broken = failed(&node, "ENI eni-1 was deleted outside Tether".into(), Utc::now());
    assert_eq!(broken.state, NodeState::Error);
    assert_eq!(broken.last_error.as_deref(), Some("ENI eni-1 was deleted outside Tether"));
}

fn observed(instance: Option<InstanceState>, eni_exists: bool, elastic_ip: Option<ElasticIpFound>, stuck: bool) -> Observed {
    Observed { instance, eni_exists, deleted_extra_eni: None, deleted_data_volume: None, data_volume_detached: false, elastic_ip, stuck, impaired: None }
}

fn with_network(state: NodeState) -> Node {
    let mut node = node_in(state);
    node.eni = Some(crate::model::EniRecord {
        id: "eni-1".into(),
        private_ip: "10.0.1.10".parse().expect("an IP"),
        mac_address: "02:00:00:00:00:01".into(),
        availability_zone: "us-east-1a".into(),
        secondary_private_ips: Vec::new(),
        ipv6_addresses: Vec::new(),
    });
    node.elastic_ip = Some(crate::model::ElasticIpRecord { allocation_id: "eipalloc-1".into(), public_ip: "198.18.0.1".into(), allocated_by_tether: false });
    node
}

#[test]
fn the_reconciler_handles_a_lost_event_as_that_event() {
    use InstanceState as I;
    let fine = Some(ElasticIpFound::OnEni);
    let running = with_network(NodeState::Running);
    for gone in [None, Some(I::Terminated)] {
        let step = on_reconcile(&running, &observed(gone, true, fine.clone(), false), Utc::now());
        assert_eq!(kind(&step), ("launch", Some(NodeState::Launching)), "{gone:?}");
    }
    let step = on_reconcile(&running, &observed(Some(I::ShuttingDown), true, fine.clone(), false), Utc::now());
    assert_eq!(kind(&step), ("record", Some(NodeState::Recovering)));
    let stopped = with_network(NodeState::Stopped);
    let step = on_reconcile(&stopped, &observed(Some(I::Running), true, fine.clone(), false), Utc::now());
    assert_eq!(kind(&step), ("record", Some(NodeState::Running)));
    assert_eq!(kind(&on_reconcile(&running, &observed(Some(I::Running), true, fine, false), Utc::now())).0, "ignore");
}

#[test]
fn the_reconciler_carries_on_only_stalled_work() {
    let launching = with_network(NodeState::Launching);
    assert_eq!(kind(&on_reconcile(&launching, &observed(None, true, None, false), Utc::now())).0, "ignore");
    let Step::Continue(actions) = on_reconcile(&launching, &observed(None, true, None, true), Utc::now()) else { panic!("stalled launch not carried on") };
    assert_eq!(actions.last(), Some(&Action::Launch));
    let deallocating = with_network(NodeState::Deallocating);
    let Step::Continue(actions) = on_reconcile(&deallocating, &observed(None, true, None, true), Utc::now()) else { panic!("stalled deallocation not carried on") };
    assert_eq!(actions.last(), Some(&Action::ReleaseNetwork));
    for state in [NodeState::Error, NodeState::Deallocated] {
        let seen = observed(None, false, Some(ElasticIpFound::Missing), true);
        assert_eq!(kind(&on_reconcile(&with_network(state), &seen, Utc::now())).0, "ignore", "{state:?}");
    }
}

#[test]
fn the_reconciler_heals_a_free_elastic_ip_and_raises_a_condition_for_what_it_must_not_fight() {
    use crate::conditions::ConditionKind;
    for state in [NodeState::Running, NodeState::Paused] {
        let node = with_network(state);
        let alive = (state == NodeState::Running).then_some(InstanceState::Running);
        let step = on_reconcile(&node, &observed(alive, true, Some(ElasticIpFound::Free), false), Utc::now());
        let Step::Apply { next, actions } = step else { panic!("free Elastic IP not healed in {state:?}") };
        assert_eq!((next.state, actions), (state, vec![Action::AssociateElasticIp]));

        // Moved by a person: a condition naming the holder, the node left in its state.
        let elsewhere = observed(alive, true, Some(ElasticIpFound::Elsewhere("i-someone".into())), false);
        let degraded = written(&on_reconcile(&node, &elsewhere, Utc::now())).cloned().expect("a record");
        assert_eq!((degraded.state, degraded.last_error.as_deref()), (state, None), "drift is no ERROR");
        let message = degraded.condition(ConditionKind::ElasticIpElsewhere).map(|c| c.message.clone()).unwrap_or_default();
        assert!(message.contains("eipalloc-1") && message.contains("i-someone"), "{message}");
        assert_eq!(kind(&on_reconcile(&degraded, &elsewhere, Utc::now())).0, "ignore", "raised once");
        // Freed: associated again and cleared in one step; back by other hands: cleared.
        let Step::Apply { next, actions } = on_reconcile(&degraded, &observed(alive, true, Some(ElasticIpFound::Free), false), Utc::now()) else { panic!("not healed") };
        assert!(next.conditions.is_empty() && actions == vec![Action::AssociateElasticIp]);
        let back = written(&on_reconcile(&degraded, &observed(alive, true, Some(ElasticIpFound::OnEni), false), Utc::now())).cloned().expect("a record");
        assert!(back.conditions.is_empty());

        let released = written(&on_reconcile(&degraded, &observed(alive, true, Some(ElasticIpFound::Missing), false), Utc::now())).cloned().expect("a record");
        assert_eq!(released.state, state);
        let kinds: Vec<_> = released.conditions.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, vec![ConditionKind::ElasticIpReleased]);
    }
    let paused = with_network(NodeState::Paused);
    let no_eni = written(&on_reconcile(&paused, &observed(None, false, Some(ElasticIpFound::Free), false), Utc::now())).cloned().expect("a record");
    assert!(no_eni.last_error.unwrap_or_default().contains("eni-1 (10.0.1.10) was deleted outside Tether"));
}

#[test]
fn a_node_with_a_condition_is_recovered_like_any_other() {
    let mut node = with_network(NodeState::Running);
    node.raise(crate::conditions::ConditionKind::ElasticIpElsewhere, "moved".into(), Utc::now());
    let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
    let Step::Apply { next, actions } = on_instance_event(&node, &terminated, Utc::now()) else { panic!("not recovered") };
    assert_eq!((next.state, actions), (NodeState::Launching, vec![Action::Launch]));
    assert_eq!(next.conditions, node.conditions, "kept until its cause goes");
}

#[test]
fn the_reconciler_moves_an_on_demand_node_back_to_spot_as_its_policy_allows() {
    let healthy = observed(Some(InstanceState::Running), true, Some(ElasticIpFound::OnEni), false);
    let now = Utc::now();
    let on_demand = |policy: crate::model::RevertToSpot| {
        let mut node = with_network(NodeState::Running);
        node.spec.revert_to_spot = policy;
        if let Some(instance) = node.instance.as_mut() {
            instance.market = Market::OnDemand;
        }
        node
    };
    assert_eq!(kind(&on_reconcile(&on_demand(crate::model::RevertToSpot::Never), &healthy, now)).0, "ignore", "never is the default");

    let always = on_demand(crate::model::RevertToSpot::Always);
    let step = on_reconcile(&always, &healthy, now);
    let Step::Apply { next, actions } = &step else { panic!("not moved back: {step:?}") };
    assert_eq!((next.state, next.generation), (NodeState::Launching, always.generation + 1));
    assert_eq!(actions, &vec![Action::Terminate(CURRENT.into()), Action::Launch], "a recycle");
    assert_eq!(next.spot_revert_at, Some(now));
    assert!(next.history.last().is_some_and(|h| h.what.contains("back to spot")));

    // Once an hour at most: a move that found no spot capacity landed on on-demand again.
    let mut again = always.clone();
    again.spot_revert_at = Some(now - chrono::TimeDelta::minutes(59));
    assert_eq!(kind(&on_reconcile(&again, &healthy, now)).0, "ignore");
    again.spot_revert_at = Some(now - crate::model::SPOT_REVERT_INTERVAL);
    assert_eq!(kind(&on_reconcile(&again, &healthy, now)).0, "launch");

    // Outside its window, or on spot already, or with drift to report first: not moved.
    let hour = |h| chrono::NaiveTime::from_hms_opt(h, 0, 0).unwrap_or_default();
    let t = now.time();
    let closed = if t < hour(12) { (hour(13), hour(14)) } else { (hour(1), hour(2)) };
    let outside = on_demand(crate::model::RevertToSpot::Window { start: closed.0, end: closed.1 });
    assert_eq!(kind(&on_reconcile(&outside, &healthy, now)).0, "ignore");
    assert_eq!(kind(&on_reconcile(&with_network(NodeState::Running), &healthy, now)).0, "ignore", "on spot");
    let drifted = observed(Some(InstanceState::Running), true, Some(ElasticIpFound::Free), false);
    let Step::Apply { actions, .. } = on_reconcile(&always, &drifted, now) else { panic!("drift not healed") };
    assert_eq!(actions, vec![Action::AssociateElasticIp]);
}

#[test]
fn repairs_are_lost_events_a_free_elastic_ip_and_stalled_work_not_errors_or_policy() {
    let now = Utc::now();
    let healthy = observed(Some(InstanceState::Running), true, Some(ElasticIpFound::OnEni), false);
    let repairs = |node: &Node, seen: &Observed| repairs_drift(node, &on_reconcile(node, seen, now));
    let running = with_network(NodeState::Running);
    assert!(repairs(&running, &observed(None, true, Some(ElasticIpFound::OnEni), false)), "lost termination");
    assert!(repairs(&running, &observed(Some(InstanceState::Running), true, Some(ElasticIpFound::Free), false)), "free Elastic IP");
    assert!(repairs(&with_network(NodeState::Launching), &observed(None, true, None, true)), "stalled launch");
    assert!(!repairs(&running, &healthy), "nothing to do");
    assert!(!repairs(&running, &observed(Some(InstanceState::Running), false, None, false)), "ENI deleted: ERROR");
    assert!(!repairs(&running, &observed(Some(InstanceState::Running), true, Some(ElasticIpFound::Elsewhere("eni-x".into())), false)), "a condition");
    let mut on_demand = with_network(NodeState::Running);
    on_demand.spec.revert_to_spot = crate::model::RevertToSpot::Always;
    if let Some(instance) = on_demand.instance.as_mut() {
        instance.market = Market::OnDemand;
    }
    let step = on_reconcile(&on_demand, &healthy, now);
    assert_eq!(kind(&step).0, "launch", "moved back to spot");
    assert!(!repairs_drift(&on_demand, &step));
}

// ---- the hand-over after a spot interruption warning (`handover`) ----

mod handover {
    use chrono::TimeDelta;

    use super::*;
    use crate::lifecycle::{check_handover, on_deallocate, on_pause, on_recycle, patch_spec, NodePatch};

    const WARNING: &str = "ev-warning";

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    fn warning(action: InterruptionAction) -> InstanceEvent {
        InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action }
    }

    /// A running node that hands over `seconds` after a warning.
    fn handing_over(seconds: Option<u8>) -> Node {
        let mut node = with_network(NodeState::Running);
        node.spec.handover_after_warning_seconds = seconds;
        node
    }

    /// One delivery of the terminate warning EC2 sent at t(0), at `now`.
    fn deliver(node: &Node, now: DateTime<Utc>) -> Step {
        on_delivered_event(node, WARNING, &warning(InterruptionAction::Terminate), Some(t(0)), now)
    }

    fn terminates(step: &Step) -> bool {
        match step {
            Step::Apply { actions, .. } | Step::Continue(actions) => actions.iter().any(|a| matches!(a, Action::Terminate(_))),
            _ => false,
        }
    }

    /// The node once the warning's first delivery at t(1) is written.
    fn warned(seconds: u8) -> Node {
        written(&deliver(&handing_over(Some(seconds)), t(1))).expect("the warning is recorded").clone()
    }

    #[test]
    fn a_terminate_warning_hands_over_once_the_delay_has_passed_and_not_before() {
        let step = deliver(&handing_over(Some(30)), t(1));
        let Step::Apply { next: warned, actions } = &step else { panic!("{step:?}") };
        assert_eq!(warned.state, NodeState::Recovering);
        assert_eq!(actions, &vec![Action::DecideAgainAt(t(30))], "come back when due: 30 s after EC2 sent it");
        let record = warned.interruption.as_ref().expect("recorded");
        assert_eq!((record.sent_at, record.noticed_at, record.handed_over_at), (Some(t(0)), t(1), None));
        // Delivered again early (the re-queued message, or a duplicate): decided again, later.
        for early in [t(2), t(29)] {
            assert_eq!(deliver(warned, early), Step::Continue(vec![Action::DecideAgainAt(t(30))]), "at {early}");
        }
        // Due: recorded, then terminated.
        let step = deliver(warned, t(30));
        let Step::Apply { next: handed, actions } = &step else { panic!("not handed over: {step:?}") };
        assert_eq!(actions, &vec![Action::Terminate(CURRENT.into())], "only the warned instance");
        assert_eq!(handed.state, NodeState::Recovering, "the replacement follows its termination, as always");
        assert_eq!(handed.interruption.as_ref().and_then(|i| i.handed_over_at), Some(t(30)));
        let last = handed.history.last().expect("history");
        assert_eq!(last.what, "terminated 30 s after the spot interruption warning to hand over early");
        assert_eq!((last.instance_id.as_deref(), last.generation), (Some(CURRENT), 3));
        assert_eq!(handed.generation, warned.generation, "no generation of its own");
        // Every later delivery, however late: nothing more.
        for late in [t(30), t(31), t(500)] {
            assert!(matches!(deliver(handed, late), Step::Ignore(_)), "at {late}");
        }
        // Then the instance's termination launches the replacement, as without the setting.
        let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
        let step = on_delivered_event(handed, "ev-terminated", &terminated, Some(t(33)), t(33));
        assert_eq!(kind(&step), ("launch", Some(NodeState::Launching)));
    }

    #[test]
    fn a_warning_first_delivered_after_the_delay_hands_over_at_once() {
        for (seconds, now) in [(0, t(0)), (0, t(2)), (30, t(45))] {
            let step = deliver(&handing_over(Some(seconds)), now);
            let Step::Apply { next, actions } = &step else { panic!("{step:?}") };
            assert_eq!(actions, &vec![Action::Terminate(CURRENT.into())], "{seconds} s at {now}");
            assert_eq!(next.state, NodeState::Recovering);
            let texts: Vec<&str> = next.history.iter().rev().take(2).map(|h| h.what.as_str()).collect();
            assert!(texts[1].starts_with("spot interruption warning (terminate)") && texts[0].contains("to hand over early"), "{texts:?}");
            assert!(next.applied(WARNING));
        }
    }

    #[test]
    fn duplicated_warnings_terminate_once() {
        let mut node = warned(10);
        let mut terminations = 0;
        // Deliveries every second from t(1) to t(40), each written as the service would.
        for s in 1..=40 {
            let step = deliver(&node, t(s));
            terminations += usize::from(terminates(&step));
            if let Some(next) = written(&step) {
                node = next.clone();
            }
        }
        assert_eq!(terminations, 1);
        assert_eq!(node.history.iter().filter(|h| h.what.contains("to hand over early")).count(), 1);
        assert_eq!(node.history.iter().filter(|h| h.what.starts_with("spot interruption warning")).count(), 1);
    }

    /// Another warning about an instance already handed over (AWS may announce a stop,
    /// then a terminate): it is not handed over a second time.
    #[test]
    fn an_instance_handed_over_is_never_handed_over_again() {
        let handed = written(&deliver(&warned(5), t(5))).expect("handed over").clone();
        let stop = on_delivered_event(&handed, "ev-stop", &warning(InterruptionAction::Stop), Some(t(6)), t(6));
        let after_stop = written(&stop).expect("the stop warning is recorded").clone();
        let again = on_delivered_event(&after_stop, "ev-terminate-2", &warning(InterruptionAction::Terminate), Some(t(7)), t(20));
        assert!(!terminates(&again), "{again:?}");
        let after = written(&again).expect("recorded").clone();
        assert_eq!(after.history.iter().filter(|h| h.what.contains("to hand over early")).count(), 1);
        assert_eq!(after.interruption.and_then(|i| i.handed_over_at), Some(t(5)));
    }

    #[test]
    fn stop_and_hibernate_warnings_never_hand_over() {
        for action in [InterruptionAction::Stop, InterruptionAction::Hibernate] {
            let node = handing_over(Some(0));
            let event = warning(action);
            let step = on_delivered_event(&node, WARNING, &event, Some(t(0)), t(200));
            let Step::Apply { next, actions } = &step else { panic!("{step:?}") };
            assert!(actions.is_empty(), "{action:?}: {actions:?}");
            assert_eq!(next.state, NodeState::Running);
            assert!(matches!(on_delivered_event(next, WARNING, &event, Some(t(0)), t(300)), Step::Ignore(_)));
            // A terminate warning on a node stopped by a stop interruption keeps it stopped: no hand-over.
            let stopped = Node { state: NodeState::Stopped, ..next.clone() };
            assert!(!terminates(&on_delivered_event(&stopped, "ev-2", &warning(InterruptionAction::Terminate), Some(t(0)), t(300))));
        }
    }

    /// The node moved on between the warning and the due time: paused, recycled,
    /// deallocated, replaced (its instance terminated early), in error, or a new instance:
    /// the re-delivered warning leaves it alone.
    #[test]
    fn a_node_that_moved_on_since_the_warning_is_left_alone() {
        let warned = warned(30);
        let applied = |step: Step| written(&step).expect("applied").clone();
        let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
        let mut replaced = applied(on_instance_event(&warned, &terminated, t(5)));
        let replaced_launching = replaced.clone();
        replaced = crate::lifecycle::launched(&replaced, "i-00000000000000009".into(), "m5.large".into(), Market::Spot, t(8));
        let moved_on = [
            ("paused", applied(on_pause(&warned, t(5), None))),
            ("recycled", applied(on_recycle(&warned, t(5), None))),
            ("deallocating", applied(on_deallocate(&warned, false, t(5), None))),
            ("replacement launching", replaced_launching),
            ("replaced", replaced),
            ("in error", crate::lifecycle::failed(&warned, "Elastic IP moved".into(), t(5))),
        ];
        for (what, node) in moved_on {
            for now in [t(30), t(60)] {
                let step = deliver(&node, now);
                assert!(!terminates(&step), "{what}: {step:?}");
                assert!(!matches!(&step, Step::Continue(a) | Step::Apply { actions: a, .. } if a.iter().any(|a| matches!(a, Action::DecideAgainAt(_)))), "{what}: {step:?}");
            }
        }
        // A warning about an instance that is not the node's current one: nothing.
        let other = InstanceEvent::InterruptionWarning { instance_id: OTHER.into(), action: InterruptionAction::Terminate };
        assert!(matches!(on_delivered_event(&handing_over(Some(0)), "ev-o", &other, Some(t(0)), t(60)), Step::Ignore(_)));
    }

    #[test]
    fn without_the_setting_every_event_is_handled_exactly_as_before() {
        // Before the hand-over: the event's transition, its id noted, nothing else.
        let before = |node: &Node, id: &str, event: &InstanceEvent, now| match on_instance_event(node, event, now) {
            Step::Apply { .. } if node.applied(id) => Step::Ignore("this event was applied already (a duplicate delivery)"),
            Step::Apply { mut next, actions } => {
                next.note_applied(id);
                Step::Apply { next, actions }
            }
            other => other,
        };
        for state in STATES {
            for event in all_events(CURRENT) {
                let node = node_in(state);
                assert_eq!(on_delivered_event(&node, "ev-1", &event, None, t(500)), before(&node, "ev-1", &event, t(500)), "{state:?} {event:?}");
                // With the event's time: only the warning's record says when it was sent.
                let mut with_time = on_delivered_event(&node, "ev-1", &event, Some(t(0)), t(500));
                if let Step::Apply { next, .. } = &mut with_time {
                    if let Some(record) = next.interruption.as_mut().filter(|_| node.interruption.is_none()) {
                        assert_eq!(record.sent_at.take(), Some(t(0)));
                    }
                }
                assert_eq!(with_time, before(&node, "ev-1", &event, t(500)), "{state:?} {event:?} with its time");
                // With the setting, every other event is handled as before too.
                if !matches!(event, InstanceEvent::InterruptionWarning { action: InterruptionAction::Terminate, .. }) {
                    let mut setting = node.clone();
                    setting.spec.handover_after_warning_seconds = Some(0);
                    assert_eq!(on_delivered_event(&setting, "ev-1", &event, None, t(500)), before(&setting, "ev-1", &event, t(500)), "{state:?} {event:?}");
                }
            }
        }
    }

    #[test]
    fn the_delay_counts_from_the_warnings_time_else_from_when_it_was_applied() {
        let node = handing_over(Some(20));
        let unknown = on_delivered_event(&node, WARNING, &warning(InterruptionAction::Terminate), None, t(7));
        let Step::Apply { actions, .. } = &unknown else { panic!("{unknown:?}") };
        assert_eq!(actions, &vec![Action::DecideAgainAt(t(27))]);
    }

    #[test]
    fn the_setting_as_it_is_at_the_due_time_counts() {
        let warned = warned(60);
        let mut off = warned.clone();
        patch_spec(&mut off.spec, &NodePatch { handover_after_warning_seconds: Some(None), ..NodePatch::default() }).expect("a valid patch");
        assert!(matches!(deliver(&off, t(60)), Step::Ignore(_)), "turned off meanwhile");
        let mut sooner = warned.clone();
        patch_spec(&mut sooner.spec, &NodePatch { handover_after_warning_seconds: Some(Some(10)), ..NodePatch::default() }).expect("a valid patch");
        assert!(terminates(&deliver(&sooner, t(10))), "shortened meanwhile");
        // The handover's own decision, for the record.
        assert_eq!(crate::lifecycle::handover(&warned, CURRENT, t(59)), crate::lifecycle::Handover::DueAt(t(60)));
        assert_eq!(crate::lifecycle::handover(&warned, CURRENT, t(61)), crate::lifecycle::Handover::Due { since_warning: TimeDelta::seconds(61) });
    }

    #[test]
    fn the_reconciler_hands_over_when_the_due_delivery_was_lost() {
        let warned = warned(30);
        let running = observed(Some(InstanceState::Running), true, Some(ElasticIpFound::OnEni), false);
        assert_eq!(kind(&on_reconcile(&warned, &running, t(29))).0, "ignore", "not due");
        let step = on_reconcile(&warned, &running, t(40));
        let Step::Apply { next, actions } = &step else { panic!("{step:?}") };
        assert_eq!(actions, &vec![Action::Terminate(CURRENT.into())]);
        assert!(next.history.last().is_some_and(|h| h.what == "terminated 40 s after the spot interruption warning to hand over early"));
        assert!(repairs_drift(&warned, &step), "a lost delivery repaired");
        assert_eq!(kind(&on_reconcile(next, &running, t(50))).0, "ignore", "once");
        let shutting_down = observed(Some(InstanceState::ShuttingDown), true, Some(ElasticIpFound::OnEni), false);
        assert!(!terminates(&on_reconcile(&warned, &shutting_down, t(40))), "AWS is terminating it already");
        assert_eq!(kind(&on_reconcile(&with_network(NodeState::Running), &running, t(40))).0, "ignore", "no warning");
    }

    #[test]
    fn the_setting_is_0_to_110_seconds() {
        assert!(check_handover(None).is_ok() && check_handover(Some(0)).is_ok() && check_handover(Some(110)).is_ok());
        let (field, reason) = check_handover(Some(111)).expect_err("too late");
        assert_eq!(field, "handover_after_warning_seconds");
        assert!(reason.contains("0 to 110"), "{reason}");
        let mut spec = test_spec(&["m5.large"], true);
        let refused = patch_spec(&mut spec, &NodePatch { handover_after_warning_seconds: Some(Some(200)), ..NodePatch::default() }).expect_err("refused");
        assert_eq!(refused.field, "handover_after_warning_seconds");
        let changed = patch_spec(&mut spec, &NodePatch { handover_after_warning_seconds: Some(Some(45)), ..NodePatch::default() }).expect("valid");
        assert_eq!((changed, spec.handover_after_warning_seconds), (vec!["handover_after_warning_seconds"], Some(45)));
        // A PATCH's JSON: absent leaves it, null turns it off, a number sets it.
        let patch = |json: &str| serde_json::from_str::<NodePatch>(json).expect("a valid patch").handover_after_warning_seconds;
        assert_eq!((patch("{}"), patch(r#"{"handover_after_warning_seconds":null}"#), patch(r#"{"handover_after_warning_seconds":30}"#)), (None, Some(None), Some(Some(30))));
        assert_eq!(serde_json::to_string(&NodePatch { handover_after_warning_seconds: Some(None), ..NodePatch::default() }).ok().as_deref(), Some(r#"{"handover_after_warning_seconds":null}"#));
    }
}
