//! The recovery service: reads a node, asks the lifecycle what to do, and does it
//! through the ports. Every node write is conditional; a lost race is re-read and re-decided.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use serde::Serialize;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::error::{AwsError, ErrorClass};
use crate::events::{InstanceEvent, InstanceState};
use crate::lifecycle::{self, Step};
use crate::model::{EniRecord, Market, Node, NodeId, NodeSpec, NodeState, Persistence};
use crate::ports::{Cloud, EniRequest, LaunchRequest, LaunchedInstance, NodeStore};

/// How often one request re-reads and re-decides after losing a race on a node.
const MAX_CONFLICTS: usize = 8;

/// Errors of the service layer. `is_retryable` tells the handler whether to let
/// Lambda retry the event (error) or to acknowledge it (logged, success).
#[derive(Debug, thiserror::Error)]
pub enum TetherError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("ENI {eni_id} of node {node_id} is still attached to the previous instance after waiting {waited:?}: {source}")]
    EniStillAttached { node_id: NodeId, eni_id: String, waited: Duration, source: Box<AwsError> },
    #[error("no capacity for node {node_id}: tried {tried}; last error: {source}")]
    NoCapacity { node_id: NodeId, tried: String, source: Box<AwsError> },
    #[error("node {node_id} kept changing under this request ({MAX_CONFLICTS} conflicting writes)")]
    Contended { node_id: NodeId },
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    #[error("invalid node: {field}: {reason}")]
    InvalidNode { field: &'static str, reason: String },
}

impl TetherError {
    pub fn is_retryable(&self) -> bool {
        match self {
            TetherError::Aws(e) => e.is_retryable(),
            TetherError::EniStillAttached { .. } | TetherError::NoCapacity { .. } | TetherError::Contended { .. } => true,
            TetherError::NodeNotFound(_) | TetherError::InvalidNode { .. } => false,
        }
    }

    /// AWS's error code behind this error, if one is.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            TetherError::Aws(e) => e.code.as_deref(),
            TetherError::EniStillAttached { source: e, .. } | TetherError::NoCapacity { source: e, .. } => e.code.as_deref(),
            _ => None,
        }
    }
}

/// What a request did, returned to the caller and logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Ignored { reason: String },
    Recorded { node_id: NodeId, state: NodeState },
    Launched { node_id: NodeId, generation: u64, instance_id: String },
    /// The node went to ERROR; `reason` says why (AWS's code included).
    Failed { node_id: NodeId, reason: String },
    Refused { reason: String },
}

/// Tunables, read once from the environment (see `config`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// First wait before retrying a launch on an ENI that is still in use.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Time kept back from the invocation's deadline to record the outcome.
    pub deadline_margin: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(5),
            deadline_margin: Duration::from_secs(3),
        }
    }
}

#[derive(Clone)]
pub struct Tether {
    store: Arc<dyn NodeStore>,
    cloud: Arc<dyn Cloud>,
    settings: Settings,
}

impl Tether {
    pub fn new(store: Arc<dyn NodeStore>, cloud: Arc<dyn Cloud>, settings: Settings) -> Self {
        Tether { store, cloud, settings }
    }

    /// Creates a paused node. Nothing exists in EC2 until `resume`.
    pub async fn create_node(&self, spec: NodeSpec, persistence: Persistence) -> Result<Node, TetherError> {
        validate(&spec, &persistence)?;
        let node = Node::new(spec, persistence, Utc::now());
        self.store.create(&node).await?;
        info!(node_id = %node.id, "node created");
        Ok(node)
    }

    pub async fn node(&self, id: &NodeId) -> Result<Node, TetherError> {
        self.store.get(id).await?.ok_or_else(|| TetherError::NodeNotFound(id.clone()))
    }

    /// Resumes a node: at the first resume its ENI is created and the Elastic IP
    /// associated; then an instance is launched on the ENI.
    pub async fn resume(&self, id: &NodeId, deadline: Instant) -> Result<Outcome, TetherError> {
        let node = self.node(id).await?;
        let span = tracing::info_span!("resume", node_id = %id);
        self.decide_and_act(node, deadline, |node| lifecycle::on_resume(node, Utc::now()))
            .instrument(span)
            .await
    }

    /// Handles an EC2 event about an instance.
    pub async fn handle_instance_event(&self, event: &InstanceEvent, deadline: Instant) -> Result<Outcome, TetherError> {
        let instance_id = event.instance_id();
        let Some(node) = self.store.find_by_instance(instance_id).await? else {
            debug!(instance_id, "no node has this instance as its current one; ignored");
            return Ok(Outcome::Ignored { reason: format!("instance {instance_id} is no node's current instance") });
        };
        let span = tracing::info_span!("event", node_id = %node.id, instance_id, generation = node.generation);
        self.decide_and_act(node, deadline, |node| lifecycle::on_instance_event(node, event, Utc::now()))
            .instrument(span)
            .await
    }

    /// Runs the lifecycle's step; on a lost race re-reads the node and decides again.
    async fn decide_and_act(
        &self,
        mut node: Node,
        deadline: Instant,
        decide: impl Fn(&Node) -> Step,
    ) -> Result<Outcome, TetherError> {
        for _ in 0..MAX_CONFLICTS {
            match self.act(&node, decide(&node), deadline).await {
                Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => {
                    debug!(node_id = %node.id, "node changed meanwhile; re-reading");
                    node = self.node(&node.id).await?;
                }
                other => return other,
            }
        }
        Err(TetherError::Contended { node_id: node.id })
    }

    async fn act(&self, node: &Node, step: Step, deadline: Instant) -> Result<Outcome, TetherError> {
        match step {
            Step::Ignore(reason) => {
                debug!(node_id = %node.id, state = ?node.state, reason, "ignored");
                Ok(Outcome::Ignored { reason: reason.to_owned() })
            }
            Step::Refuse(reason) => Ok(Outcome::Refused { reason }),
            Step::Record(next) => {
                let saved = self.store.save(&next).await?;
                info!(node_id = %saved.id, state = ?saved.state, what = last_history(&saved), "recorded");
                Ok(Outcome::Recorded { node_id: saved.id, state: saved.state })
            }
            Step::Launch(next) => {
                let saved = self.store.save(&next).await?;
                info!(node_id = %saved.id, generation = saved.generation, previous_instance_id = saved.instance_id(), "launching");
                self.launch(saved, deadline).await
            }
            Step::ContinueLaunch => self.launch(node.clone(), deadline).await,
        }
    }

    /// Launches the node's current generation on its ENI, creating the ENI and
    /// associating the EIP first if this is the first launch.
    async fn launch(&self, node: Node, deadline: Instant) -> Result<Outcome, TetherError> {
        let (node, eni, fresh_eni) = match self.ensure_network(node, deadline).await? {
            Ok(ready) => ready,
            Err(outcome) => return Ok(outcome),
        };
        let client_token = node.id.client_token(node.generation);
        let started = Instant::now();
        let mut tried = Vec::new();
        let mut last_capacity_error = None;
        for (instance_type, market) in candidates(&node.spec) {
            let request = LaunchRequest {
                node_id: &node.id,
                generation: node.generation,
                spec: &node.spec,
                eni_id: &eni.id,
                instance_type,
                market,
                client_token: client_token.clone(),
            };
            let launched = self
                .with_retries(deadline, fresh_eni, || self.cloud.launch(&request))
                .await;
            let launched = match launched {
                // The token already launched an instance with another candidate (an earlier
                // attempt fell back, then died before recording it): adopt that instance.
                Err(e) if e.code_is("IdempotentParameterMismatch") => match self.cloud.find_launched(&client_token).await? {
                    Some(earlier) => Ok(earlier),
                    // Not visible yet (DescribeInstances is eventually consistent): try again later.
                    None => Err(AwsError { class: ErrorClass::Transient, ..e }),
                },
                other => other,
            };
            match launched {
                Ok(instance) => return self.record_launch(&node, instance, deadline).await,
                Err(e) if e.class == ErrorClass::NoCapacity => {
                    warn!(node_id = %node.id, instance_type, ?market, code = e.code.as_deref(), "no capacity; trying the next candidate");
                    tried.push(format!("{instance_type}/{}", market_name(market)));
                    last_capacity_error = Some(e);
                }
                Err(e) if e.class == ErrorClass::EniInUse => {
                    return Err(TetherError::EniStillAttached {
                        node_id: node.id.clone(),
                        eni_id: eni.id.clone(),
                        waited: started.elapsed(),
                        source: Box::new(e),
                    })
                }
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => return self.fail(&node, format!("launch on ENI {} failed: {e}", eni.id)).await,
            }
        }
        let source = Box::new(last_capacity_error.unwrap_or_else(|| {
            AwsError::from_code("EC2", "RunInstances", None, Some("no instance type to try"), None)
        }));
        let err = TetherError::NoCapacity { node_id: node.id.clone(), tried: tried.join(", "), source };
        let mut next = node.clone();
        next.last_error = Some(err.to_string());
        next.record(Utc::now(), format!("no capacity: tried {}", tried.join(", ")));
        self.store.save(&next).await?;
        Err(err)
    }

    /// Records the generation's instance. One that is already gone (a retried launch whose
    /// instance was reclaimed before it was recorded) is handled like its termination.
    async fn record_launch(&self, node: &Node, instance: LaunchedInstance, deadline: Instant) -> Result<Outcome, TetherError> {
        let next = lifecycle::launched(node, instance.id.clone(), instance.instance_type.clone(), instance.market, Utc::now());
        let saved = self.store.save(&next).await?;
        if instance.gone {
            warn!(node_id = %saved.id, instance_id = instance.id, generation = saved.generation, "the generation's instance is already gone; launching the next");
            let terminated = InstanceEvent::StateChange { instance_id: instance.id, state: InstanceState::Terminated };
            let decide = move |n: &Node| lifecycle::on_instance_event(n, &terminated, Utc::now());
            return Box::pin(self.decide_and_act(saved, deadline, decide)).await;
        }
        info!(node_id = %saved.id, instance_id = instance.id, generation = saved.generation, instance_type = instance.instance_type, market = ?instance.market, "launched");
        Ok(Outcome::Launched { node_id: saved.id, generation: saved.generation, instance_id: instance.id })
    }

    /// Runs `call` until it succeeds, fails for good, or the deadline nears, with jittered
    /// exponential backoff. Retried: throttling and server faults, the ENI still attached to
    /// the old instance, and (just after creating the ENI) EC2 not knowing the ENI yet.
    async fn with_retries<T, F, Fut>(&self, deadline: Instant, fresh_eni: bool, call: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AwsError>>,
    {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.settings.deadline_margin);
        let backoff = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.settings.retry_min_delay)
            .with_max_delay(self.settings.retry_max_delay)
            .without_max_times()
            .with_total_delay(Some(budget));
        call.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &AwsError| {
                matches!(e.class, ErrorClass::EniInUse | ErrorClass::Transient)
                    || (fresh_eni && e.code_is("InvalidNetworkInterfaceID.NotFound"))
            })
            .notify(|e: &AwsError, wait: Duration| {
                info!(operation = e.operation, code = e.code.as_deref(), ?wait, "not possible yet; retrying")
            })
            .await
    }

    /// The node's ENI, with the Elastic IP on it. At the first launch the ENI is found (an
    /// earlier attempt may have made it) or created, and recorded on the node before
    /// anything runs on it; `fresh_eni` then tells that EC2 may not know it everywhere yet.
    /// `Err(outcome)`: the node went to ERROR.
    async fn ensure_network(
        &self,
        mut node: Node,
        deadline: Instant,
    ) -> Result<Result<(Node, EniRecord, bool), Outcome>, TetherError> {
        let first_launch = node.generation == 1;
        let eni = match node.eni.clone() {
            Some(eni) if !first_launch => return Ok(Ok((node, eni, false))),
            Some(eni) => eni,
            None => {
                let eni = match self.cloud.find_node_eni(&node.id).await? {
                    Some(eni) => eni,
                    None => {
                        let request = EniRequest {
                            node_id: node.id.clone(),
                            subnet_id: node.spec.subnet_id.clone(),
                            security_group_ids: node.spec.security_group_ids.clone(),
                            private_ip: node.persistence.private_ip,
                        };
                        match self.cloud.create_eni(&request).await {
                            Ok(eni) => eni,
                            Err(e) if e.is_retryable() => return Err(e.into()),
                            Err(e) => return self.fail(&node, format!("creating the node's ENI failed: {e}")).await.map(Err),
                        }
                    }
                };
                info!(node_id = %node.id, eni_id = eni.id, private_ip = %eni.private_ip, az = eni.availability_zone, "ENI ready");
                node.eni = Some(eni.clone());
                node.record(Utc::now(), format!("ENI {} with private IP {} ready", eni.id, eni.private_ip));
                node = self.store.save(&node).await?;
                eni
            }
        };
        if let Some(allocation_id) = node.persistence.elastic_ip_allocation_id.clone() {
            let associated = self
                .with_retries(deadline, true, || self.cloud.associate_eip(&allocation_id, &eni.id))
                .await;
            match associated {
                Ok(()) => info!(node_id = %node.id, allocation_id, eni_id = eni.id, "Elastic IP on the ENI"),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => {
                    let reason = format!("associating Elastic IP {allocation_id} failed: {e}");
                    return self.fail(&node, reason).await.map(Err);
                }
            }
        }
        Ok(Ok((node, eni, true)))
    }

    /// Puts the node in ERROR with `reason`; the request itself succeeded in deciding that.
    async fn fail(&self, node: &Node, reason: String) -> Result<Outcome, TetherError> {
        warn!(node_id = %node.id, generation = node.generation, reason, "node in ERROR");
        let saved = self.store.save(&lifecycle::failed(node, reason.clone(), Utc::now())).await?;
        Ok(Outcome::Failed { node_id: saved.id, reason })
    }
}

/// The launch candidates in order: each instance type on spot, then each on
/// on-demand if the node allows it. All in the ENI's AZ: the ENI cannot move.
fn candidates(spec: &NodeSpec) -> impl Iterator<Item = (&str, Market)> {
    let spot = spec.instance_types.iter().map(|t| (t.as_str(), Market::Spot));
    let on_demand = spec
        .instance_types
        .iter()
        .filter(|_| spec.fallback_to_on_demand)
        .map(|t| (t.as_str(), Market::OnDemand));
    spot.chain(on_demand)
}

fn market_name(market: Market) -> &'static str {
    match market {
        Market::Spot => "spot",
        Market::OnDemand => "on-demand",
    }
}

fn last_history(node: &Node) -> &str {
    node.history.last().map(|h| h.what.as_str()).unwrap_or_default()
}

fn validate(spec: &NodeSpec, persistence: &Persistence) -> Result<(), TetherError> {
    let invalid = |field, reason: &str| Err(TetherError::InvalidNode { field, reason: reason.to_owned() });
    if !spec.subnet_id.starts_with("subnet-") {
        return invalid("spec.subnet_id", "must be a subnet id like subnet-0123456789abcdef0");
    }
    if !spec.image_id.starts_with("ami-") {
        return invalid("spec.image_id", "must be an AMI id like ami-0123456789abcdef0");
    }
    if spec.instance_types.is_empty() || spec.instance_types.iter().any(|t| t.trim().is_empty()) {
        return invalid("spec.instance_types", "list at least one instance type, in order of preference");
    }
    if let Some(sg) = spec.security_group_ids.iter().find(|g| !g.starts_with("sg-")) {
        return invalid("spec.security_group_ids", &format!("`{sg}` is not a security group id like sg-0123"));
    }
    if persistence.elastic_ip_allocation_id.as_deref().is_some_and(|a| !a.starts_with("eipalloc-")) {
        return invalid("persistence.elastic_ip_allocation_id", "must be an allocation id like eipalloc-0123");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_spec as spec;

    #[test]
    fn candidates_are_spot_in_order_then_on_demand() {
        let two_types = spec(&["m5.large", "m6i.large"], true);
        let with = candidates(&two_types).collect::<Vec<_>>();
        assert_eq!(
            with,
            vec![
                ("m5.large", Market::Spot),
                ("m6i.large", Market::Spot),
                ("m5.large", Market::OnDemand),
                ("m6i.large", Market::OnDemand)
            ]
        );
        let spot_only = spec(&["m5.large"], false);
        let without = candidates(&spot_only).collect::<Vec<_>>();
        assert_eq!(without, vec![("m5.large", Market::Spot)]);
    }

    #[test]
    fn validation_names_the_field() {
        let err = validate(&spec(&[], true), &Persistence::default()).expect_err("no types");
        assert!(err.to_string().contains("spec.instance_types"), "{err}");
        let bad_eip = Persistence { private_ip: None, elastic_ip_allocation_id: Some("1.2.3.4".into()) };
        let err = validate(&spec(&["m5.large"], true), &bad_eip).expect_err("bad eip");
        assert!(err.to_string().contains("persistence.elastic_ip_allocation_id"), "{err}");
        assert!(validate(&spec(&["m5.large"], true), &Persistence::default()).is_ok());
    }
}
