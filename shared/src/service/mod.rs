//! The service: reads a node, asks the lifecycle what to do, and does it through the
//! ports. Every node write is conditional; a lost race is re-read and re-decided.

mod addresses;
mod data_volumes;
mod extra_enis;
mod group_run;
mod groups;
mod identity;
mod launch;
mod manage;
mod pace;
mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::field::Empty;
use tracing::{debug, error, info, warn, Instrument};

use crate::error::{AwsError, ErrorClass};
use crate::events::InstanceEvent;
use crate::lifecycle::{self, Action, Metric, NodePatch, PatchError, Step};
use crate::group::GroupId;
use crate::model::{Node, NodeId, NodeState};
use crate::ports::{Address, Clock, EventClaim, EventClaims, Instances, LaunchPace, MetricsSink, Network, NoMetrics, NodeStore, ReconcilerBookmark, Registry, SystemClock, Volumes};

pub use manage::ImportRequest;
pub use group_run::GroupRun;
pub use reconcile::ReconcileReport;

/// How often one request re-reads and re-decides after losing a race on a node.
pub(crate) const MAX_CONFLICTS: usize = 8;

/// Errors of the service layer. `is_retryable` tells a handler whether to let Lambda
/// retry the event (error) or to acknowledge it (logged, success).
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
    /// Every RunInstances slot within the pace's horizon is taken: the launch waits outside
    /// this invocation (its event is delivered again about `retry_after` later).
    #[error("node {node_id}'s launch waits for the RunInstances pace: every slot for the next {horizon:?} is taken; next free in about {retry_after:?}")]
    Paced { node_id: NodeId, horizon: Duration, retry_after: Duration },
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
    #[error("group {0} not found")]
    GroupNotFound(GroupId),
    #[error("group {group_id} kept changing under this request ({MAX_CONFLICTS} conflicting writes)")]
    GroupContended { group_id: GroupId },
    /// Another invocation, still within its deadline, is handling this EventBridge event.
    #[error("event {event_id} is being handled by another invocation; retry after its deadline")]
    EventInProgress { event_id: String },
    /// A request names something invalid: `field` says what, `reason` how to fix it.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The request does not fit the node's state.
    #[error("{0}")]
    Conflict(String),
    /// The request's `field` does not fit the group's state (a member still uses what it
    /// removes): `reason` says what to do first.
    #[error("{field}: {reason}")]
    ConflictOn { field: String, reason: String },
}

impl TetherError {
    pub fn is_retryable(&self) -> bool {
        match self {
            TetherError::Aws(e) => e.is_retryable(),
            TetherError::EniStillAttached { .. }
            | TetherError::NoCapacity { .. }
            | TetherError::Contended { .. }
            | TetherError::GroupContended { .. }
            | TetherError::Paced { .. }
            | TetherError::EventInProgress { .. } => true,
            TetherError::NodeNotFound(_) | TetherError::GroupNotFound(_) | TetherError::Invalid { .. } | TetherError::Conflict(_) | TetherError::ConflictOn { .. } => false,
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

    /// The node's ENI is still attached to an instance after retrying since `started`.
    pub(crate) fn eni_still_attached(node: &Node, eni_id: &str, waited: Duration, source: AwsError) -> Self {
        TetherError::EniStillAttached {
            node_id: node.id.clone(),
            eni_id: eni_id.to_owned(),
            waited,
            source: Box::new(source),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TetherError::Invalid { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn conflict_on(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TetherError::ConflictOn { field: field.into(), reason: reason.into() }
    }
}

impl From<PatchError> for TetherError {
    fn from(e: PatchError) -> Self {
        match e.field.as_ref() {
            // The node's state, not the request, is at odds: as for actions, a conflict.
            "state" => TetherError::Conflict(e.reason),
            field => TetherError::Invalid { field: field.to_owned(), reason: e.reason },
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
    /// Recorded; the event is to be delivered again at `until` and decided then (a
    /// hand-over not yet due): the queued intake puts it back on its queue with the delay.
    Deferred { node_id: NodeId, until: DateTime<Utc>, reason: String },
}

/// Tunables, read once from the environment (see `config`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// First wait before retrying a launch on an ENI that is still in use.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Time kept back from the invocation's deadline to record the outcome.
    pub deadline_margin: Duration,
    /// A node launching or being deallocated with no progress for this long is carried
    /// on by the reconciler (its events were lost, or its invocations died).
    pub stuck_after: Duration,
    /// How many nodes one reconciler run checks at most.
    pub reconcile_max_nodes: usize,
    /// Seeds the retries' jitter (the chaos test replays a seed exactly); `None`: random.
    pub jitter_seed: Option<u64>,
    /// How fast one run of a group's controller starts launches: `launch_burst` at once,
    /// then `launches_per_second` (EC2's RunInstances bucket: 5, then 2 a second).
    pub launches_per_second: u32,
    pub launch_burst: u32,
    /// Every RunInstances takes a slot of the shared pace first (`ports::LaunchPace`), and
    /// the candidates are ordered by interruption (pools refused or just reclaimed last);
    /// off only to measure what the pace does (`make bench`).
    pub pace: bool,
    /// The furthest ahead a launch waits for its slot within an invocation; beyond it the
    /// event waits outside (delivered again later: `TetherError::Paced`).
    pub pace_horizon: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(5),
            deadline_margin: Duration::from_secs(3),
            stuck_after: Duration::from_secs(300),
            reconcile_max_nodes: 20_000,
            jitter_seed: None,
            launches_per_second: 2,
            launch_burst: 5,
            pace: true,
            // The invocation's own time left bounds it first (`launch::pace_horizon`).
            pace_horizon: Duration::from_secs(600),
        }
    }
}

/// The ports a `Tether` works through.
#[derive(Clone)]
pub struct Ports {
    pub store: Arc<dyn NodeStore>,
    pub registry: Arc<dyn Registry>,
    pub network: Arc<dyn Network>,
    pub instances: Arc<dyn Instances>,
    pub volumes: Arc<dyn Volumes>,
    pub events: Arc<dyn EventClaims>,
    pub bookmark: Arc<dyn ReconcilerBookmark>,
    pub pace: Arc<dyn LaunchPace>,
}

#[derive(Clone)]
pub struct Tether {
    store: Arc<dyn NodeStore>,
    registry: Arc<dyn Registry>,
    events: Arc<dyn EventClaims>,
    bookmark: Arc<dyn ReconcilerBookmark>,
    pace: Arc<dyn LaunchPace>,
    network: Arc<dyn Network>,
    instances: Arc<dyn Instances>,
    volumes: Arc<dyn Volumes>,
    clock: Arc<dyn Clock>,
    metrics: Arc<dyn MetricsSink>,
    settings: Settings,
}

impl Tether {
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Tether {
            store: ports.store,
            registry: ports.registry,
            events: ports.events,
            bookmark: ports.bookmark,
            pace: ports.pace,
            network: ports.network,
            instances: ports.instances,
            volumes: ports.volumes,
            clock: Arc::new(SystemClock),
            metrics: Arc::new(NoMetrics),
            settings,
        }
    }

    /// The same service recording metrics into `metrics` (none by default).
    pub fn with_metrics(mut self, metrics: Arc<dyn MetricsSink>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records what the transition from `before` to `after` (as written) counts.
    fn count_transition(&self, before: &Node, after: &Node) {
        for metric in lifecycle::metrics_of(before, after) {
            self.metrics.record(&metric, Some(after), self.clock.now());
        }
    }

    /// Counts an event that can never be processed (acknowledged, so Lambda's own error
    /// metric does not see it).
    pub fn count_unprocessable_event(&self) {
        self.metrics.record(&Metric::Error, None, self.clock.now());
    }

    /// The same service on another clock (the chaos test's virtual one).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The deadline `budget` from now, on the service's clock.
    pub fn deadline_in(&self, budget: Duration) -> DateTime<Utc> {
        self.clock.now() + budget
    }

    /// How long from now until `at`, on the service's clock (zero if it has passed).
    pub fn time_until(&self, at: DateTime<Utc>) -> Duration {
        (at - self.clock.now()).to_std().unwrap_or_default()
    }

    pub async fn node(&self, id: &NodeId) -> Result<Node, TetherError> {
        self.store.get(id).await?.ok_or_else(|| TetherError::NodeNotFound(id.clone()))
    }

    /// One page of nodes; pass the returned id to get the next page.
    pub async fn nodes(&self, limit: usize, start_after: Option<&NodeId>) -> Result<(Vec<Node>, Option<NodeId>), TetherError> {
        Ok(self.store.list(limit, start_after).await?)
    }

    /// Resumes a node: at the first resume its ENI is created and the Elastic IP
    /// associated; then an instance is launched on the ENI. A group member held by a pause
    /// through this API is the group's again.
    pub async fn resume(&self, id: &NodeId, deadline: DateTime<Utc>, by: Option<&str>) -> Result<Outcome, TetherError> {
        self.check_room_in_group(id).await?;
        self.user_action(id, deadline, "resume", |node, now| group_run::unheld(lifecycle::on_resume(node, now, by))).await
    }

    /// A paused group member resumed through the node API would make its group run more
    /// members than it wants (its target less the held members), or run one while the group
    /// is paused or being deallocated, and the group would pause it again: a tug of war. So
    /// a member the user holds may be resumed while its group is active (that ends the
    /// hold); another only while its group is below what it wants.
    async fn check_room_in_group(&self, id: &NodeId) -> Result<(), TetherError> {
        use crate::group::GroupState;
        let node = self.node(id).await?;
        let Some(membership) = node.group.as_ref().filter(|_| node.state == NodeState::Paused) else { return Ok(()) };
        let Some(group) = self.registry.group(&membership.group_id).await? else { return Ok(()) };
        match group.state {
            GroupState::Active => {}
            GroupState::Paused => {
                return Err(TetherError::Conflict(format!(
                    "node {id} is a member of group {0}, which is paused: the group would pause it again; resume the group instead (POST /groups/{0}/resume; CLI: tether groups resume {0})",
                    group.id
                )))
            }
            GroupState::Deallocating | GroupState::Deallocated => {
                return Err(TetherError::Conflict(format!("node {id} is a member of group {}, which is {}", group.id, groups::state_name(group.state))))
            }
        }
        if group.holds(&node) {
            return Ok(());
        }
        let members = self.registry.members(&group.id).await?;
        let counting = members.iter().filter(|m| matches!(m.state, NodeState::Running | NodeState::Recovering | NodeState::Launching | NodeState::Stopped)).count();
        let held = members.iter().filter(|m| group.holds(m)).count();
        let wanted = (group.target_capacity as usize).saturating_sub(held);
        if counting >= wanted {
            return Err(TetherError::Conflict(format!(
                "node {id} is a member of group {0}, which runs what it wants already ({counting} of its target {1}, {held} held): the group would pause a member again; scale it up instead (tether groups scale {0} {2})",
                group.id,
                group.target_capacity,
                group.target_capacity + 1
            )));
        }
        Ok(())
    }

    /// Pauses a node: its instance is terminated, its ENI and Elastic IP kept. A group
    /// member paused this way is held: its group leaves it alone until it is resumed here,
    /// or the group is resumed.
    pub async fn pause(&self, id: &NodeId, deadline: DateTime<Utc>, by: Option<&str>) -> Result<Outcome, TetherError> {
        self.user_action(id, deadline, "pause", |node, now| held(node, lifecycle::on_pause(node, now, by), now)).await
    }

    /// Replaces the node's instance by a new one on the same ENI.
    pub async fn recycle(&self, id: &NodeId, deadline: DateTime<Utc>, by: Option<&str>) -> Result<Outcome, TetherError> {
        self.check_room_in_group(id).await?;
        self.user_action(id, deadline, "recycle", |node, now| group_run::unheld(lifecycle::on_recycle(node, now, by))).await
    }

    /// Terminates the instance and deletes the ENI (unless `keep_eni`); releases the
    /// Elastic IP if Tether allocated it, else disassociates it.
    pub async fn deallocate(&self, id: &NodeId, keep_eni: bool, deadline: DateTime<Utc>, by: Option<&str>) -> Result<Outcome, TetherError> {
        self.user_action(id, deadline, "deallocate", |node, now| lifecycle::on_deallocate(node, keep_eni, now, by)).await
    }

    /// Changes the node's launch settings; they take effect at the next launch.
    pub async fn patch(&self, id: &NodeId, patch: &NodePatch, by: Option<&str>) -> Result<Node, TetherError> {
        for (field, value) in [("key_name", &patch.key_name), ("iam_instance_profile", &patch.iam_instance_profile), ("image_id", &patch.image_id)] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                manage::check_name(field, value)?;
            }
        }
        if let Some(tags) = &patch.tags {
            manage::check_tags("tags", tags)?;
        }
        if let Some(tags) = &patch.eni_tags {
            manage::check_tags("eni_tags", tags)?;
        }
        if let Some(tags) = &patch.volume_tags {
            manage::check_tags("volume_tags", tags)?;
        }
        if let Some(types) = &patch.instance_types {
            for instance_type in types {
                manage::check_name("instance_types", instance_type)?;
            }
        }
        for _ in 0..MAX_CONFLICTS {
            let node = self.node(id).await?;
            if let Some(types) = &patch.instance_types {
                self.check_instance_types(types, "instance_types", node.spec.extra_enis.len(), "instance_types").await?;
            }
            if let Some(membership) = &node.group {
                return Err(TetherError::Conflict(format!(
                    "node {id} is a member of group {}: its launch settings are the group's template; change them with PATCH /groups/{} (CLI: tether groups update)",
                    membership.group_id, membership.group_id
                )));
            }
            let mut next = lifecycle::patched(&node, patch, self.clock.now(), by)?;
            let launch_changed = next.spec.image_id != node.spec.image_id || next.spec.block_devices != node.spec.block_devices;
            if launch_changed || (next.spec.launch_template.is_some() && next.spec != node.spec) {
                self.checked_launch(&next.spec, "").await?;
            }
            manage::check_public_ip(&next.spec, &node.persistence).map_err(|reason| TetherError::invalid("public_ip_assignment", reason))?;
            if next.spec.secondary_private_ips != node.spec.secondary_private_ips || next.spec.ipv6 != node.spec.ipv6 {
                let subnet = self.network.describe_subnet(&node.spec.subnet_id).await?.ok_or_else(|| {
                    TetherError::Conflict(format!("the node's subnet {} no longer exists", node.spec.subnet_id))
                })?;
                let primary = node.eni.as_ref().map(|e| e.private_ip).or(node.persistence.private_ip);
                manage::check_eni_addresses("", &next.spec, primary, &subnet)?;
                let had = node.spec.secondary_private_ips.as_ref().map(|s| s.addresses.clone()).unwrap_or_default();
                for ip in next.spec.secondary_private_ips.iter().flat_map(|s| &s.addresses).filter(|ip| !had.contains(ip)) {
                    self.unreserved(&Address::PrivateIp { subnet_id: node.spec.subnet_id.clone(), ip: *ip }, "secondary_private_ips.addresses", node.id.as_str()).await?;
                }
            }
            // The ENI's own settings change at once (before the record says so: a refusal
            // leaves the spec as it was), from the ENI as EC2 has it (a try that lost a race
            // may have changed it already); what was done is in the history.
            if let Some(recorded) = node.eni.as_ref().filter(|_| patch.eni_field().is_some()) {
                let eni = self.network.find_node_eni(&node.id).await?.filter(|e| e.id == recorded.id).unwrap_or_else(|| recorded.clone());
                match self.converge_eni(&next.spec, identity::Baseline::Was(&node.spec), &eni).await? {
                    Ok((eni, done)) => {
                        if !done.is_empty() {
                            next.record_by(self.clock.now(), format!("ENI {}: {}", eni.id, done.join("; ")), by);
                        }
                        next.eni = Some(eni);
                    }
                    Err(refused) => return Err(TetherError::invalid(refused.field, refused.reason())),
                }
            }
            match self.save_claiming(&node, &next).await {
                Err(e) if e.class == ErrorClass::Conflict => continue,
                other => return Ok(other?),
            }
        }
        Err(TetherError::Contended { node_id: id.clone() })
    }

    async fn user_action(
        &self,
        id: &NodeId,
        deadline: DateTime<Utc>,
        name: &'static str,
        decide: impl Fn(&Node, DateTime<Utc>) -> Step,
    ) -> Result<Outcome, TetherError> {
        let node = self.node(id).await?;
        let span = node_span(name, &node);
        self.decide_and_act(node, deadline, decide).instrument(span).await
    }

    /// Handles one delivery of EventBridge event `event_id` (the same id on every delivery
    /// of one event) in invocation `invocation_id`. Events about instances no node runs (most
    /// of an account's state changes) cost one read and leave nothing behind; for a node's
    /// instance, one invocation at a time handles the event, and a transition it applied is
    /// not applied again by a later delivery.
    pub async fn handle_event(
        &self,
        event_id: &str,
        invocation_id: &str,
        event: &InstanceEvent,
        deadline: DateTime<Utc>,
    ) -> Result<Outcome, TetherError> {
        self.handle_event_sent_at(event_id, invocation_id, event, None, deadline).await
    }

    /// `handle_event` for an event EC2 sent at `sent_at` (EventBridge's `time`, if the event
    /// says): a hand-over's delay counts from it.
    pub async fn handle_event_sent_at(
        &self,
        event_id: &str,
        invocation_id: &str,
        event: &InstanceEvent,
        sent_at: Option<DateTime<Utc>>,
        deadline: DateTime<Utc>,
    ) -> Result<Outcome, TetherError> {
        let instance_id = event.instance_id();
        // `instance_id` follows the node (a replacement's once launched); `event` keeps what
        // the event was about.
        let span = tracing::info_span!("delivery", event_id, event = ?event, instance_id, node_id = Empty, generation = Empty);
        let result = self.handle_delivery(event_id, invocation_id, event, sent_at, deadline).instrument(span.clone()).await;
        let _in_span = span.enter();
        match &result {
            // Most of an account's state changes are about instances no node runs.
            Ok(outcome @ Outcome::Ignored { .. }) => debug!(?outcome, "handled"),
            Ok(outcome) => info!(?outcome, "handled"),
            Err(e) if e.is_retryable() => warn!(code = e.aws_code(), error = %e, "retryable failure; Lambda will retry"),
            Err(e) => error!(code = e.aws_code(), error = %e, "permanent failure; acknowledged"),
        }
        result
    }

    /// `handle_event` within its span, which it completes with the node's id and generation.
    async fn handle_delivery(&self, event_id: &str, invocation_id: &str, event: &InstanceEvent, sent_at: Option<DateTime<Utc>>, deadline: DateTime<Utc>) -> Result<Outcome, TetherError> {
        let instance_id = event.instance_id();
        let Some(node) = self.store.find_by_instance(instance_id).await? else {
            debug!("no node has this instance as its current one; ignored");
            return Ok(Outcome::Ignored { reason: format!("instance {instance_id} is no node's current instance") });
        };
        tracing::Span::current().record("node_id", node.id.to_string()).record("generation", node.generation);
        let decide = |node: &Node, now| lifecycle::on_delivered_event(node, event_id, event, sent_at, now);
        match self.events.claim(event_id, invocation_id, self.clock.now(), deadline).await? {
            EventClaim::Claimed => {}
            // Another invocation, alive until its deadline, holds the event. If the event
            // changes nothing now (its transition is on the node, nothing it started is
            // under way), this delivery is a duplicate; otherwise Lambda retries it later.
            EventClaim::HeldElsewhere => {
                return match decide(&node, self.clock.now()) {
                    Step::Ignore(reason) => {
                        debug!(reason, "duplicate delivery while another invocation holds the event; acknowledged");
                        Ok(Outcome::Ignored { reason: reason.to_owned() })
                    }
                    _ => Err(TetherError::EventInProgress { event_id: event_id.to_owned() }),
                };
            }
        }
        let result = self.decide_and_act(node, deadline, decide).await;
        let deferred = matches!(result, Ok(Outcome::Deferred { .. }));
        if deferred || result.as_ref().is_err_and(TetherError::is_retryable) {
            // So that Lambda's retry (or the deferred delivery) need not wait for this
            // invocation's deadline.
            if let Err(e) = self.events.release(event_id, invocation_id).await {
                warn!(error = %e, "could not release the event's claim; it lapses at the deadline");
            }
        }
        result
    }

    /// Runs the lifecycle's step; on a lost race re-reads the node and decides again.
    async fn decide_and_act(
        &self,
        mut node: Node,
        deadline: DateTime<Utc>,
        decide: impl Fn(&Node, DateTime<Utc>) -> Step,
    ) -> Result<Outcome, TetherError> {
        for _ in 0..MAX_CONFLICTS {
            match Box::pin(self.act(&node, decide(&node, self.clock.now()), deadline)).await {
                Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => {
                    debug!("node changed meanwhile; re-reading");
                    node = self.node(&node.id).await?;
                }
                other => return other,
            }
        }
        Err(TetherError::Contended { node_id: node.id })
    }

    async fn act(&self, node: &Node, step: Step, deadline: DateTime<Utc>) -> Result<Outcome, TetherError> {
        match step {
            Step::Ignore(reason) => {
                debug!(state = ?node.state, reason, "ignored");
                Ok(Outcome::Ignored { reason: reason.to_owned() })
            }
            Step::Refuse(reason) => Ok(Outcome::Refused { reason }),
            Step::Apply { next, actions } => {
                let saved = self.store.save(&next).await?;
                self.count_transition(node, &saved);
                note_written(&saved);
                info!(state = ?saved.state, what = last_history(&saved), "recorded");
                self.perform(saved, actions, deadline).await
            }
            Step::Continue(actions) => self.perform(node.clone(), actions, deadline).await,
        }
    }

    /// Performs a step's actions in order; the last one's outcome is the step's.
    async fn perform(&self, node: Node, actions: Vec<Action>, deadline: DateTime<Utc>) -> Result<Outcome, TetherError> {
        let mut outcome = Outcome::Recorded { node_id: node.id.clone(), state: node.state };
        for action in actions {
            match action {
                Action::Terminate(instance_id) => {
                    self.instances.terminate(&instance_id).await?;
                    info!(terminated = instance_id, "instance terminated");
                }
                Action::TerminateLaunched => {
                    let token = node.id.client_token(node.generation);
                    if let Some(launched) = self.instances.find_launched(&token).await?.filter(|i| !i.gone) {
                        self.instances.terminate(&launched.id).await?;
                        info!(terminated = launched.id, "launch called off; its instance terminated");
                    }
                }
                Action::AssociateElasticIp => {
                    if let (Some(eip), Some(eni)) = (&node.elastic_ip, &node.eni) {
                        self.network.associate_eip(&eip.allocation_id, &eni.id).await?;
                        info!(allocation_id = eip.allocation_id, eni_id = eni.id, "Elastic IP associated again");
                    }
                }
                Action::AttachDataVolumes => outcome = Box::pin(self.attach_data_volumes(node.clone())).await?,
                // Boxed: a launch's future (network, template, retries) is large, and every
                // entry point (events, the API, the reconciler) would carry it on its stack.
                Action::Launch => outcome = Box::pin(self.launch(node.clone(), deadline)).await?,
                Action::ReleaseNetwork => outcome = self.release_network(node.clone(), deadline).await?,
                Action::DecideAgainAt(until) => {
                    let wait = (until - self.clock.now()).num_milliseconds().max(0) as f64 / 1000.0;
                    info!(%until, wait_s = wait, "hand-over not yet due; the warning is to be delivered again then");
                    outcome = Outcome::Deferred { node_id: node.id.clone(), until, reason: "hand-over after the spot interruption warning not yet due".into() };
                }
            }
        }
        Ok(outcome)
    }
}

/// A pause through the node API holds a group member (already paused or not): its group
/// leaves it alone until it is resumed through the node API or the group is resumed.
fn held(node: &Node, step: Step, now: DateTime<Utc>) -> Step {
    if node.group.is_none() {
        return step;
    }
    let hold = |mut next: Node| {
        if let Some(m) = next.group.as_mut() {
            m.held_since = Some(now);
        }
        next.record(now, "held: the group leaves it alone until it is resumed (or the group is)");
        next
    };
    match step {
        Step::Apply { next, actions } => Step::Apply { next: hold(next), actions },
        Step::Continue(actions) => Step::Apply { next: hold(node.clone()), actions },
        Step::Ignore(_) if node.state == NodeState::Paused => Step::Apply { next: hold(node.clone()), actions: Vec::new() },
        other => other,
    }
}

/// The span of one piece of work on `node`: every line logged in it carries the node's
/// id, its current instance and its generation (kept current by `note_written`).
pub(crate) fn node_span(work: &str, node: &Node) -> tracing::Span {
    let span = tracing::info_span!("node", work, node_id = %node.id, instance_id = Empty, generation = node.generation);
    if let Some(instance_id) = node.instance_id() {
        span.record("instance_id", instance_id);
    }
    span
}

/// Brings the current span's node fields up to the record just written (a new generation,
/// a launched instance).
pub(crate) fn note_written(node: &Node) {
    let span = tracing::Span::current();
    span.record("generation", node.generation);
    if let Some(instance_id) = node.instance_id() {
        span.record("instance_id", instance_id);
    }
}

fn last_history(node: &Node) -> &str {
    node.history.last().map(|h| h.what.as_str()).unwrap_or_default()
}
