//! What operators see of a node's life in Lambda: JSON log lines that each name the node,
//! its instance and its generation, and the metrics (replacements, recovery time,
//! fallbacks, drift repairs, errors) the service counts. Run on the fakes.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use super::*;
use crate::lambda::json_logs;
use crate::lifecycle::Metric;
use crate::model::{test_spec, InterruptionAction, Market, Node, NodeId, NodeSpec, NodeState, Persistence};
use crate::service::{Outcome, Ports, Settings, Tether};

const SUBNET: &str = "subnet-1";

/// Log lines collected in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

impl Lines {
    fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// The lines that are about a run, not a node.
const RUN_LINES: [&str; 1] = ["reconciled"];

/// A node's life: launched; interrupted while its first instance type has no spot
/// capacity (a fallback); its Elastic IP taken off by hand (drift the reconciler repairs);
/// paused, its ENI deleted by hand, resumed (ERROR). Returns the node as replaced, and what
/// was counted.
async fn life_of_a_node() -> (Node, Vec<(Metric, Option<NodeId>)>) {
    let ec2 = Arc::new(FakeEc2::new(7));
    ec2.add_subnet(SUBNET, "10.0.1.0/24".parse().unwrap(), "us-east-1a");
    let store = Arc::new(FakeStore::new());
    let metrics = Arc::new(RecordedMetrics::default());
    let ports = Ports { store: store.clone(), registry: store.clone(), events: store.clone(), bookmark: store.clone(), pace: store.clone(), network: ec2.clone(), instances: ec2.clone(), volumes: ec2.clone() };
    let settings = Settings { retry_min_delay: Duration::from_millis(1), retry_max_delay: Duration::from_millis(5), ..Settings::default() };
    let tether = Tether::new(ports, settings).with_metrics(metrics.clone());
    let deadline = || chrono::Utc::now() + Duration::from_secs(30);

    // A node on spot m5.large, then m6i.large; its EIP allocated by Tether.
    let spec = NodeSpec { subnet_id: SUBNET.into(), ..test_spec(&["m5.large", "m6i.large"], true) };
    let persistence = Persistence { allocate_elastic_ip: true, ..Persistence::default() };
    let node = tether.create_node(spec, persistence, None).await.unwrap();
    let Outcome::Launched { instance_id: first, .. } = tether.resume(&node.id, deadline(), None).await.unwrap() else { panic!("no launch") };

    // A spot interruption while m5.large spot has no capacity: the replacement falls back.
    ec2.set_out_of_capacity("m5.large", Market::Spot, true);
    ec2.warn_interruption(&first, InterruptionAction::Terminate);
    ec2.reclaim(&first);
    ec2.advance();
    for (n, event) in ec2.take_events().into_iter().enumerate() {
        tether.handle_event(&format!("ev-{n}"), "inv", &event, deadline()).await.unwrap();
    }
    let replaced = tether.node(&node.id).await.unwrap();
    assert_eq!((replaced.state, replaced.generation), (NodeState::Running, 2));

    // Drift the reconciler repairs: the Elastic IP taken off the ENI by hand.
    let allocation_id = replaced.elastic_ip.clone().unwrap().allocation_id;
    ec2.hand_disassociate_eip(&allocation_id);
    let report = tether.reconcile(deadline()).await.unwrap();
    assert_eq!(report.repaired.len(), 1, "{report:?}");

    // An error: the ENI deleted by hand while the node is paused; its resume cannot launch.
    tether.pause(&node.id, deadline(), None).await.unwrap();
    ec2.advance();
    for (n, event) in ec2.take_events().into_iter().enumerate() {
        tether.handle_event(&format!("ev-p{n}"), "inv", &event, deadline()).await.unwrap();
    }
    ec2.hand_delete_eni(&replaced.eni.clone().unwrap().id).unwrap();
    tether.resume(&node.id, deadline(), None).await.unwrap();
    assert_eq!(tether.node(&node.id).await.unwrap().state, NodeState::Error);
    (replaced, metrics.recorded())
}

#[tokio::test]
async fn a_nodes_life_is_logged_with_its_id_instance_and_generation_and_counted() {
    let lines = Lines::default();
    let _logging = tracing::subscriber::set_default(json_logs(EnvFilter::new("debug"), lines.clone()));
    // tracing caches whether a span or event is wanted per call site, on first use. Other
    // tests in this process (no subscriber: nothing wanted) may use a call site first while
    // this one's subscriber is being installed; a first life registers every call site it
    // uses, the rebuild asks this subscriber again, and the second life is the one checked.
    life_of_a_node().await;
    tracing::callsite::rebuild_interest_cache();
    lines.clear();
    let (replaced, recorded) = life_of_a_node().await;
    let node_id = replaced.id.clone();

    // The metrics, in the order they happened, each about the node.
    let kinds: Vec<_> = recorded.iter().map(|(m, _)| std::mem::discriminant(m)).collect();
    let expected = [
        Metric::Replacement,
        Metric::RecoveryTime(Duration::ZERO),
        Metric::Fallback { market: Market::Spot },
        Metric::DriftRepair,
        Metric::Error,
    ];
    assert_eq!(kinds, expected.iter().map(std::mem::discriminant).collect::<Vec<_>>(), "{recorded:?}");
    assert!(recorded.contains(&(Metric::Fallback { market: Market::Spot }, Some(node_id.clone()))));
    assert!(recorded.iter().all(|(_, about)| about.as_ref() == Some(&node_id)));

    // Every line: one JSON object, no key twice; every line about the node names it, its
    // generation, and (once it has one) its instance.
    let text = lines.text();
    let (mut about_the_node, mut launched_once) = (0, false);
    for line in text.lines() {
        let parsed: Map<String, Value> = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in parsed.keys() {
            assert_eq!(line.matches(&format!("\"{key}\":")).count(), 1, "`{key}` twice in {line}");
        }
        let message = parsed.get("message").and_then(Value::as_str).unwrap_or_default();
        if RUN_LINES.contains(&message) {
            continue;
        }
        about_the_node += 1;
        assert_eq!(parsed.get("node_id").and_then(Value::as_str), Some(node_id.as_str()), "no node_id: {line}");
        assert!(parsed.get("generation").is_some_and(Value::is_u64), "no generation: {line}");
        launched_once |= message == "launched";
        if launched_once {
            assert!(parsed.get("instance_id").is_some_and(Value::is_string), "no instance_id: {line}");
        }
    }
    assert!(about_the_node > 20, "only {about_the_node} lines:\n{text}");
    if std::env::var_os("SHOW_LOGS").is_some() {
        println!("{text}");
    }
    // The replacement's launch names the new generation and instance.
    let launched: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|l: &Value| l["message"] == "launched").collect();
    assert_eq!(launched.len(), 2, "{text}");
    assert_eq!(launched[1]["generation"], 2);
    assert_eq!(launched[1]["instance_id"].as_str(), replaced.instance_id());
    assert_eq!(launched[1]["instance_type"], "m6i.large");
}
