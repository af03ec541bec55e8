//! One benchmark world: the fakes with the AWS model's timing, the service on the
//! simulation's clock, and N running nodes (each with its ENI and an Elastic IP), set up
//! with the model switched off (no time, no throttling, nothing counted).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tether::fake::{FakeEc2, FakeStore};
use tether::model::{NodeId, NodeSpec, Persistence};
use tether::service::Settings;
use lambda_runtime::LambdaEvent;
use tether::ports::EventQueue;
use tether::{Ports, Tether, TetherError};

use super::aws::AwsModel;
use super::lambda::{Function, Handler};
use super::queue::Queue;
use super::sim::{Sim, SimClock};

pub const SUBNET: &str = "subnet-bench";
pub const INSTANCE_TYPES: &[&str] = &["m5.large", "m6i.large", "c5.large"];

pub struct World {
    pub sim: Sim,
    pub clock: SimClock,
    pub model: Arc<AwsModel>,
    pub ec2: Arc<FakeEc2>,
    pub store: Arc<FakeStore>,
    pub tether: Tether,
    /// Each node and the instance it runs when the scenario starts.
    pub nodes: Vec<(NodeId, String)>,
}

fn origin() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

impl World {
    /// `pace`: the service paces RunInstances (and orders candidates by interruption) as
    /// it does now; off, it behaves as before the pace.
    pub fn new(nodes: usize, seed: u64, pace: bool) -> Self {
        let sim = Sim::new(origin());
        let clock = sim.clock.clone();
        let model = Arc::new(AwsModel::new(clock.clone(), seed));
        let ec2 = Arc::new(FakeEc2::new(seed).with_timing(model.clone(), Arc::new(clock.clone())));
        ec2.add_subnet(SUBNET, "10.0.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")), "us-east-1a");
        let store = Arc::new(FakeStore::new().with_timing(model.clone()));
        let ports = Ports {
            store: store.clone(),
            registry: store.clone(),
            events: store.clone(),
            bookmark: store.clone(),
            pace: store.clone(),
            network: ec2.clone(),
            instances: ec2.clone(),
            volumes: ec2.clone(),
        };
        let settings = Settings { jitter_seed: Some(seed), pace, ..Settings::default() };
        // The set-up is not measured: nothing paces it.
        let set_up = Tether::new(ports.clone(), Settings { pace: false, ..settings.clone() }).with_clock(Arc::new(clock.clone()));
        let tether = Tether::new(ports, settings).with_clock(Arc::new(clock.clone()));
        let mut world = World { sim, clock, model, ec2, store, tether: set_up, nodes: Vec::new() };
        world.start_nodes(nodes, seed);
        world.tether = tether;
        world
    }

    fn start_nodes(&mut self, count: usize, seed: u64) {
        self.ec2.set_throttling(false);
        let tether = self.tether.clone();
        let spec = NodeSpec {
            subnet_id: SUBNET.to_owned(),
            image_id: "ami-bench".to_owned(),
            instance_types: INSTANCE_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            ..NodeSpec::default()
        };
        let persistence = Persistence { allocate_elastic_ip: true, ..Persistence::default() };
        let started = std::time::Instant::now();
        let ids = self.sim.run(async move {
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let id = NodeId::derived(&format!("bench-{seed}-{i}"));
                let node = tether.create_node_as(id, spec.clone(), persistence.clone(), None).await.unwrap_or_else(|e| panic!("set-up: {e}"));
                tether.resume(&node.id, tether.deadline_in(Duration::from_secs(60)), None).await.unwrap_or_else(|e| panic!("set-up: {e}"));
                ids.push(node.id);
            }
            ids
        });
        self.ec2.advance();
        self.ec2.take_events();
        eprintln!("bench: {count} nodes set up in {:.1} s", started.elapsed().as_secs_f64());
        let nodes = self.store.nodes();
        self.nodes = ids
            .into_iter()
            .map(|id| {
                let instance = nodes.iter().find(|n| n.id == id).and_then(|n| n.instance_id().map(str::to_owned));
                (id, instance.unwrap_or_else(|| panic!("set-up: a node without its instance")))
            })
            .collect();
        self.ec2.set_throttling(true);
        self.model.switch(true);
    }

    /// One of Tether's functions on this world, invoked directly (`scheduled` on the
    /// result for the reconciler).
    pub fn function(&self, timeout: Duration, max_retries: usize, function: TetherFunction) -> Function {
        let tether = self.tether.clone();
        // Direct invocations put nothing back on a queue: this one stays empty.
        let queue = Queue::new("direct-invocation", self.clock.clone());
        let handler: Handler = Rc::new(move |event| {
            let (tether, queue) = (tether.clone(), queue.clone());
            Box::pin(async move { function.invoke(&tether, &queue, event).await.map(drop).map_err(|e| e.to_string()) })
        });
        Function { handler, timeout, max_retries, scheduled: false }
    }
}

/// Tether's functions, by their crates' handlers (what Lambda runs).
#[derive(Clone, Copy, Debug)]
pub enum TetherFunction {
    Interruption,
    StateChange,
    Reconciler,
}

impl TetherFunction {
    /// `queue`: where an event function puts a waiting event back.
    pub async fn invoke(self, tether: &Tether, queue: &dyn EventQueue, event: LambdaEvent<Value>) -> Result<Value, TetherError> {
        match self {
            TetherFunction::Interruption => tether_interruption::handler(tether, queue, event).await,
            TetherFunction::StateChange => tether_state_change::handler(tether, queue, event).await,
            TetherFunction::Reconciler => tether_reconciler::handler(tether, event).await,
        }
    }
}
