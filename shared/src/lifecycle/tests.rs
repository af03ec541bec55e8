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
        node = written(&on_delivered_event(&node, id, event, Utc::now())).expect("applied").clone();
    }
    assert_eq!(node.state, NodeState::Running);
    assert_eq!(node.applied_events, ["ev-1", "ev-2", "ev-3"]);
    // Without its id the same warning would be recorded again: the state machine alone
    // cannot tell a duplicate from a new interruption of the restarted instance.
    assert!(written(&on_instance_event(&node, &warning, Utc::now())).is_some());
    for (id, event) in [("ev-1", &warning), ("ev-2", &stopped)] {
        let again = on_delivered_event(&node, id, event, Utc::now());
        assert!(matches!(again, Step::Ignore(_)), "{id} delivered again gave {again:?}");
    }
}

/// A launch the event started and a crash cut short is carried on by Lambda's retry.
#[test]
fn a_retried_event_carries_on_the_work_it_started() {
    let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
    let step = on_delivered_event(&node_in(NodeState::Running), "ev-9", &terminated, Utc::now());
    let launching = written(&step).expect("applied").clone();
    assert!(launching.applied("ev-9"));
    let retried = on_delivered_event(&launching, "ev-9", &terminated, Utc::now());
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
    Observed { instance, eni_exists, elastic_ip, stuck }
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
fn the_reconciler_heals_a_free_elastic_ip_and_reports_what_it_must_not_fight() {
    for state in [NodeState::Running, NodeState::Paused] {
        let node = with_network(state);
        let alive = (state == NodeState::Running).then_some(InstanceState::Running);
        let step = on_reconcile(&node, &observed(alive, true, Some(ElasticIpFound::Free), false), Utc::now());
        let Step::Apply { next, actions } = step else { panic!("free Elastic IP not healed in {state:?}") };
        assert_eq!((next.state, actions), (state, vec![Action::AssociateElasticIp]));
        let elsewhere = observed(alive, true, Some(ElasticIpFound::Elsewhere("i-someone".into())), false);
        let failed = written(&on_reconcile(&node, &elsewhere, Utc::now())).cloned().expect("a record");
        let reason = failed.last_error.unwrap_or_default();
        assert_eq!(failed.state, NodeState::Error);
        assert!(reason.contains("eipalloc-1") && reason.contains("i-someone"), "{reason}");
        let missing = written(&on_reconcile(&node, &observed(alive, true, Some(ElasticIpFound::Missing), false), Utc::now())).cloned().expect("a record");
        assert_eq!(missing.state, NodeState::Error);
    }
    let paused = with_network(NodeState::Paused);
    let no_eni = written(&on_reconcile(&paused, &observed(None, false, Some(ElasticIpFound::Free), false), Utc::now())).cloned().expect("a record");
    assert!(no_eni.last_error.unwrap_or_default().contains("eni-1 (10.0.1.10) was deleted outside Tether"));
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
    let mut on_demand = with_network(NodeState::Running);
    on_demand.spec.revert_to_spot = crate::model::RevertToSpot::Always;
    if let Some(instance) = on_demand.instance.as_mut() {
        instance.market = Market::OnDemand;
    }
    let step = on_reconcile(&on_demand, &healthy, now);
    assert_eq!(kind(&step).0, "launch", "moved back to spot");
    assert!(!repairs_drift(&on_demand, &step));
}
