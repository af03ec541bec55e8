//! The reconciler: run on a schedule, it catches what events missed. It pages through the
//! nodes (bounded in nodes and time), observes each in EC2 and lets the lifecycle decide
//! (`on_reconcile`); then it sweeps what no node owns: instances of a generation no node
//! wants, ENIs and Elastic IPs left by a request that died half-way, and subnet CIDR
//! reservations no address reservation names (or missing for one).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn, Instrument};

use super::{Outcome, Tether, TetherError};
use crate::error::ErrorClass;
use crate::events::InstanceState;
use crate::lifecycle::{self, ElasticIpFound, Metric, Observed, Step};
use crate::group::GroupState;
use crate::model::{Node, NodeId, NodeState};
use crate::ports::Reservation;

/// Nodes read per page.
const PAGE_SIZE: usize = 100;
/// The longest one node's repair may take: what is not possible yet (an ENI still
/// attached, no capacity) waits for the next run instead of starving the other nodes.
const NODE_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// The least time one group's controller gets in a reconciler run (when many groups share it).
const GROUP_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
/// How long after a node's deallocation the sweep still looks in its subnet for a subnet
/// CIDR reservation its release left (the next run normally deletes it).
const LEFTOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub nodes_checked: usize,
    /// What was done, per node.
    pub repaired: Vec<String>,
    /// Nodes whose check failed (retried at the next run).
    pub failed: Vec<String>,
    /// The run reached the last node (it was not cut short by its bounds).
    pub complete: bool,
    /// Where the run started: after the node the previous run stopped at, or at the first.
    pub started_after: Option<NodeId>,
    /// Groups whose controller ran.
    pub groups_checked: usize,
}

impl Tether {
    /// One reconciler run, the sweep first; then the nodes from where the last run stopped
    /// (its bookmark) until the last node, `reconcile_max_nodes`, or the deadline nears.
    /// A run that stops early leaves a bookmark for the next one.
    pub async fn reconcile(&self, deadline: DateTime<Utc>) -> Result<ReconcileReport, TetherError> {
        let mut report = ReconcileReport::default();
        let mut cursor = match self.bookmark.load().await {
            Ok(after) => after,
            Err(e) => {
                warn!(error = %e, code = e.code.as_deref(), "bookmark unreadable; starting at the first node");
                None
            }
        };
        report.started_after = cursor.clone();
        let mut last_checked = None;
        // Subnets where nodes (members included, deallocated ones too) chose addresses, and
        // the groups' subnets: a subnet CIDR reservation may be left there after every
        // reservation of the subnet is gone (the sweep looks only where some are).
        let mut subnets = BTreeSet::new();
        let out_of_time = |t: &Tether| t.clock.now() + t.settings.deadline_margin >= deadline;
        // First what no node owns (bounded by what exists), so that stalled nodes cannot starve it.
        // The reservations as the sweep read them, and the subnets it went through.
        let mut swept = (None, BTreeSet::new());
        if let Err(e) = self.sweep(&mut report, &mut swept).await {
            warn!(error = %e, code = e.aws_code(), "sweep failed; next run retries");
            report.failed.push(format!("sweep: {e}"));
        }
        'pages: loop {
            let (page, next) = self.store.list(PAGE_SIZE, cursor.as_ref()).await?;
            for node in page {
                if report.nodes_checked >= self.settings.reconcile_max_nodes || out_of_time(self) {
                    break 'pages;
                }
                report.nodes_checked += 1;
                last_checked = Some(node.id.clone());
                let recent = (self.clock.now() - node.updated_at).to_std().unwrap_or_default() < LEFTOVER_WINDOW;
                if node.persistence.private_ip.is_some() && (node.state != NodeState::Deallocated || recent) {
                    subnets.insert(node.spec.subnet_id.clone());
                }
                let span = super::node_span("reconcile", &node);
                let node_deadline = deadline.min(self.deadline_in(NODE_BUDGET));
                match self.reconcile_node(&node, node_deadline).instrument(span).await {
                    Ok(Some(what)) => report.repaired.push(format!("{}: {what}", node.id)),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(node_id = %node.id, instance_id = node.instance_id(), generation = node.generation, error = %e, code = e.aws_code(), "reconciling the node failed; next run retries");
                        report.failed.push(format!("{}: {e}", node.id));
                    }
                }
            }
            match next {
                Some(last) => cursor = Some(last),
                None => {
                    report.complete = true;
                    break;
                }
            }
        }
        // Then the groups, whose members the node pass has just brought up to date.
        if let Err(e) = self.run_groups(deadline, &mut report, &mut subnets).await {
            warn!(error = %e, code = e.aws_code(), "groups not reconciled; next run retries");
            report.failed.push(format!("groups: {e}"));
        }
        let unswept: BTreeSet<String> = subnets.difference(&swept.1).cloned().collect();
        if let (Some(reservations), false, false) = (&swept.0, unswept.is_empty(), out_of_time(self)) {
            match self.sweep_reservations(reservations, &unswept).await {
                Ok(done) => report.repaired.extend(done),
                Err(e) => report.failed.push(format!("subnet CIDR reservations: {e}")),
            }
        }
        let bookmark = if report.complete { None } else { last_checked.or(cursor) };
        if let Err(e) = self.bookmark.store(bookmark.as_ref()).await {
            warn!(error = %e, code = e.code.as_deref(), "bookmark not stored; the next run starts earlier");
        }
        info!(checked = report.nodes_checked, repaired = report.repaired.len(), failed = report.failed.len(), complete = report.complete, "reconciled");
        Ok(report)
    }

    /// Every group's controller, each within its share of the time left (an equal share of
    /// what remains, at least `GROUP_BUDGET`: one large group's launches may take the run).
    /// Notes every group's subnets in `subnets`.
    async fn run_groups(&self, deadline: DateTime<Utc>, report: &mut ReconcileReport, subnets: &mut BTreeSet<String>) -> Result<(), TetherError> {
        let mut cursor = None;
        loop {
            let (page, next) = self.registry.groups(PAGE_SIZE, cursor.as_ref()).await?;
            subnets.extend(page.iter().flat_map(|g| g.subnets.iter().map(|s| s.id.clone())));
            let active: Vec<_> = page.iter().filter(|g| g.state != GroupState::Deallocated).collect();
            for (done, group) in active.iter().enumerate() {
                if self.clock.now() + self.settings.deadline_margin >= deadline {
                    return Ok(());
                }
                report.groups_checked += 1;
                let left = (deadline - self.clock.now()).to_std().unwrap_or_default();
                let share = (left / (active.len() - done) as u32).max(GROUP_BUDGET);
                let group_deadline = deadline.min(self.deadline_in(share));
                match Box::pin(self.run_group(&group.id, group_deadline)).await {
                    Ok(run) => report.repaired.extend(run.done.iter().map(|d| format!("{}: {d}", group.id))),
                    Err(e) => {
                        warn!(group_id = %group.id, error = %e, "group run failed; next run retries");
                        report.failed.push(format!("{}: {e}", group.id));
                    }
                }
            }
            match next {
                Some(last) => cursor = Some(last),
                None => return Ok(()),
            }
        }
    }

    /// Observes one node and does what the lifecycle decides; `Some(what)` when it acted.
    /// Writes are conditional on the version listed: a node that moved on meanwhile is left
    /// to whoever moved it (its observations are stale). A node older than address
    /// reservations gets its reservations first.
    async fn reconcile_node(&self, node: &Node, deadline: DateTime<Utc>) -> Result<Option<String>, TetherError> {
        if let Some(what) = self.backfill_reservations(node).await? {
            return Ok(Some(what));
        }
        let seen = self.observe(node).await?;
        let step = lifecycle::on_reconcile(node, &seen, self.clock.now());
        if let Step::Ignore(_) = step {
            return Ok(None);
        }
        let repair = lifecycle::repairs_drift(node, &step);
        match self.act(node, step, deadline).await {
            Ok(Outcome::Ignored { .. }) => Ok(None),
            Ok(outcome) => {
                if repair {
                    self.metrics.record(&Metric::DriftRepair, Some(node), self.clock.now());
                }
                Ok(Some(format!("{outcome:?}")))
            }
            Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What EC2 says about the node, reading only what its state needs.
    async fn observe(&self, node: &Node) -> Result<Observed, TetherError> {
        let stuck = (self.clock.now() - node.updated_at).to_std().unwrap_or_default() >= self.settings.stuck_after;
        let mut seen = Observed { instance: None, eni_exists: true, elastic_ip: None, stuck };
        let watched = matches!(node.state, NodeState::Running | NodeState::Recovering | NodeState::Stopped | NodeState::Paused);
        if !watched {
            return Ok(seen);
        }
        if let (Some(instance_id), false) = (node.instance_id(), node.state == NodeState::Paused) {
            let summary = self.instances.describe_instance(instance_id).await?;
            seen.instance = summary.map(|s| instance_state(&s.state));
        }
        let attached = matches!(seen.instance, Some(InstanceState::Pending | InstanceState::Running | InstanceState::Stopping | InstanceState::Stopped));
        if let (Some(eni), false) = (&node.eni, attached) {
            // An attached ENI cannot be deleted; a detached one may have been.
            seen.eni_exists = self.network.find_node_eni(&node.id).await?.is_some_and(|found| found.id == eni.id);
        }
        if let Some(eip) = &node.elastic_ip {
            let eni_id = node.eni.as_ref().map(|e| e.id.as_str());
            seen.elastic_ip = Some(match self.network.describe_eip(&eip.allocation_id).await? {
                None => ElasticIpFound::Missing,
                Some(info) if info.network_interface_id.is_some() && info.network_interface_id.as_deref() == eni_id => ElasticIpFound::OnEni,
                Some(info) if info.association_id.is_none() => ElasticIpFound::Free,
                Some(info) => ElasticIpFound::Elsewhere(info.holder().to_owned()),
            });
        }
        Ok(seen)
    }

    /// Makes EC2's subnet CIDR reservations agree with the address reservations (in their
    /// subnets; `swept` says which, with the reservations read, for the end of the run);
    /// terminates instances no node wants, deletes detached ENIs and releases free Elastic
    /// IPs of nodes that no longer record them. An ENI or Elastic IP a node does not record
    /// yet may be its first launch's, under way: it is left alone until recorded otherwise.
    async fn sweep(&self, report: &mut ReconcileReport, swept: &mut (Option<Vec<Reservation>>, BTreeSet<String>)) -> Result<(), TetherError> {
        // The reservations' part first; its failure does not keep the rest from running (what
        // it did not do, the end of the run or the next run does).
        let failed = |report: &mut ReconcileReport, e: TetherError| {
            warn!(error = %e, code = e.aws_code(), "subnet CIDR reservations not swept; next run retries");
            report.failed.push(format!("subnet CIDR reservations: {e}"));
        };
        match self.registry.reservations().await {
            Ok(reservations) => {
                let subnets = Tether::reserved_subnets(&reservations);
                match self.sweep_reservations(&reservations, &subnets).await {
                    Ok(done) => {
                        report.repaired.extend(done);
                        swept.1 = subnets;
                    }
                    Err(e) => failed(report, e),
                }
                swept.0 = Some(reservations);
            }
            Err(e) => failed(report, e.into()),
        }
        for tagged in self.instances.node_instances().await? {
            let node = self.store.get(&tagged.node_id).await?;
            // A node this table does not know is another deployment's: never touched.
            let wanted = node.as_ref().is_none_or(|n| match n.state {
                NodeState::Running | NodeState::Recovering | NodeState::Stopped | NodeState::Error => n.instance_id() == Some(tagged.resource.id.as_str()),
                // The generation being launched: its launch (or the reconciler) records it.
                NodeState::Launching => tagged.generation == Some(n.generation),
                NodeState::Paused | NodeState::Deallocating | NodeState::Deallocated => false,
            });
            if !wanted {
                self.instances.terminate(&tagged.resource.id).await?;
                let state = node.map(|n| format!("{:?} at generation {}", n.state, n.generation));
                warn!(node_id = %tagged.node_id, instance_id = tagged.resource.id, generation = tagged.generation, ?state, "instance no node wants; terminated");
                report.repaired.push(format!("{}: terminated unwanted instance {} (node {state:?})", tagged.node_id, tagged.resource.id));
            }
        }
        for tagged in self.network.node_enis().await?.into_iter().filter(|t| !t.attached) {
            let node = self.store.get(&tagged.node_id).await?;
            if leftover(node.as_ref(), |n| n.eni.as_ref().map(|e| e.id.as_str()), &tagged.resource.id) {
                self.network.delete_eni(&tagged.resource.id).await?;
                warn!(node_id = %tagged.node_id, eni_id = tagged.resource.id, "ENI no node records; deleted");
                report.repaired.push(format!("{}: deleted leftover ENI {}", tagged.node_id, tagged.resource.id));
            }
        }
        for tagged in self.network.node_eips().await?.into_iter().filter(|t| !t.attached) {
            let node = self.store.get(&tagged.node_id).await?;
            let id = tagged.resource.allocation_id.as_str();
            if leftover(node.as_ref(), |n| n.elastic_ip.as_ref().map(|e| e.allocation_id.as_str()), id) {
                self.network.release_eip(id).await?;
                warn!(node_id = %tagged.node_id, allocation_id = id, "Elastic IP no node records; released");
                report.repaired.push(format!("{}: released leftover Elastic IP {id}", tagged.node_id));
            }
        }
        Ok(())
    }
}

/// Whether a detached resource tagged for `node` is left over: its node is deallocated
/// without keeping it, or records another one. A node this table does not know is another
/// deployment's (node ids are random): its resources are never touched.
fn leftover(node: Option<&Node>, recorded: impl Fn(&Node) -> Option<&str>, id: &str) -> bool {
    let Some(node) = node else { return false };
    match (node.state, recorded(node)) {
        (NodeState::Deallocated, kept) => kept != Some(id),
        (NodeState::Deallocating, _) => false,
        (_, Some(other)) => other != id,
        (_, None) => false,
    }
}

fn instance_state(name: &str) -> InstanceState {
    match name {
        "pending" => InstanceState::Pending,
        "running" => InstanceState::Running,
        "shutting-down" => InstanceState::ShuttingDown,
        "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        _ => InstanceState::Terminated,
    }
}
