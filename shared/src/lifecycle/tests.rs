//! Every (state, event) pair, for the node's current instance and for another one.

use super::*;
use crate::model::{test_spec, Persistence};

const CURRENT: &str = "i-00000000000000001";
const OTHER: &str = "i-00000000000000002";

const STATES: [NodeState; 6] = [
    NodeState::Paused,
    NodeState::Launching,
    NodeState::Running,
    NodeState::Recovering,
    NodeState::Stopped,
    NodeState::Error,
];

fn node_in(state: NodeState) -> Node {
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
        (N::Paused | N::Error, _) => ("ignore", None),
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
        Step::Record(n) => ("record", Some(n.state)),
        Step::Launch(n) => ("launch", Some(n.state)),
        Step::ContinueLaunch => ("continue", None),
        Step::Refuse(_) => ("refuse", None),
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
            if let Step::Launch(next) | Step::Record(next) = &step {
                let launch = matches!(step, Step::Launch(_));
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
            let once = match on_instance_event(&node_in(state), &event, Utc::now()) {
                Step::Record(n) | Step::Launch(n) => n,
                _ => continue,
            };
            let twice = on_instance_event(&once, &event, Utc::now());
            assert!(
                matches!(twice, Step::Ignore(_) | Step::ContinueLaunch),
                "{state:?} {event:?} applied twice gave {twice:?}"
            );
        }
    }
}

#[test]
fn warning_then_termination_and_termination_alone_both_launch_once() {
    let running = node_in(NodeState::Running);
    let warned = match on_instance_event(
        &running,
        &InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action: InterruptionAction::Terminate },
        Utc::now(),
    ) {
        Step::Record(n) => n,
        other => panic!("warning gave {other:?}"),
    };
    assert_eq!(warned.state, NodeState::Recovering);
    let terminated = InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Terminated };
    for node in [&running, &warned] {
        match on_instance_event(node, &terminated, Utc::now()) {
            Step::Launch(next) => {
                assert_eq!(next.state, NodeState::Launching);
                assert_eq!(next.generation, 4);
            }
            other => panic!("termination gave {other:?}"),
        }
    }
}

#[test]
fn stop_interruption_is_recorded_not_replaced() {
    let node = node_in(NodeState::Running);
    let warned = match on_instance_event(
        &node,
        &InstanceEvent::InterruptionWarning { instance_id: CURRENT.into(), action: InterruptionAction::Stop },
        Utc::now(),
    ) {
        Step::Record(n) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(warned.state, NodeState::Running);
    let stopped = match on_instance_event(
        &warned,
        &InstanceEvent::StateChange { instance_id: CURRENT.into(), state: InstanceState::Stopped },
        Utc::now(),
    ) {
        Step::Record(n) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(stopped.state, NodeState::Stopped);
    assert_eq!(stopped.generation, node.generation);
    assert!(stopped.history.last().is_some_and(|h| h.what.contains("spot interruption")));
}

#[test]
fn resume_in_every_state() {
    for state in STATES {
        let node = node_in(state);
        let step = on_resume(&node, Utc::now());
        let want = match state {
            NodeState::Paused => "launch",
            NodeState::Launching => "continue",
            NodeState::Error => "refuse",
            _ => "ignore",
        };
        assert_eq!(kind(&step).0, want, "{state:?}");
    }
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
