//! The reconciler: run on a schedule, it catches what events missed. It observes EC2 in
//! bulk (every tagged instance and ENI, every Elastic IP: tag-filtered, paged calls whose
//! number grows with pages, not nodes), reads every node, and lets the lifecycle decide for
//! each (`on_reconcile`), reading EC2 for one node alone only where the bulk view cannot
//! say (a record newer than the view, a resource missing from it); it sweeps what no node
//! owns: instances of a generation no node wants, ENIs and Elastic IPs left by a request
//! that died half-way, and subnet CIDR reservations no address reservation names (or
//! missing for one).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn, Instrument};

use super::{Outcome, Tether, TetherError};
use crate::error::ErrorClass;
use crate::events::InstanceState;
use crate::lifecycle::{self, ElasticIpFound, Metric, Observed, Step};
use crate::group::GroupState;
use crate::model::{EniRecord, Node, NodeId, NodeState};
use crate::data_volumes::VolumeInfo;
use crate::ports::{ElasticIpInfo, InstanceSummary, Reservation, Tagged};

/// Nodes read per page.
const PAGE_SIZE: usize = 1000;
/// The longest one node's repair may take: what is not possible yet (an ENI still
/// attached, no capacity) waits for the next run instead of starving the other nodes.
const NODE_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);
/// The least time one group's controller gets in a reconciler run (when many groups share it).
const GROUP_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);
/// How long after a node's deallocation the sweep still looks in its subnet for a subnet
/// CIDR reservation its release left (the next run normally deletes it).
const LEFTOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What EC2 held for Tether when a run began, read in bulk.
struct InBulk {
    /// When the reading began: a record written since is newer than what it shows.
    taken_at: DateTime<Utc>,
    /// Tagged instances not terminated or shutting down, by id.
    instances: HashMap<String, Tagged<InstanceSummary>>,
    enis: Vec<Tagged<EniRecord>>,
    /// Every Elastic IP of the Region, by allocation id.
    eips: HashMap<String, ElasticIpInfo>,
    /// The Elastic IPs Tether allocated (tagged).
    tagged_eips: Vec<Tagged<ElasticIpInfo>>,
    /// The nodes' data volumes (tagged), by id.
    volumes: HashMap<String, Tagged<VolumeInfo>>,
    /// Running instances failing a status check, by id.
    impaired: HashMap<String, crate::health::Impaired>,
}

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
        let cursor = match self.bookmark.load().await {
            Ok(after) => after,
            Err(e) => {
                warn!(error = %e, code = e.code.as_deref(), "bookmark unreadable; starting at the first node");
                None
            }
        };
        report.started_after = cursor.clone();
        // EC2 first, then the table: a record is never older than the view of EC2 it is
        // compared with (one written since is seen as newer and observed alone).
        // Boxed, as the sweep and each node's repair: a run's future would otherwise carry
        // them all on the stack of the invocation that polls it.
        let bulk = match Box::pin(self.observe_in_bulk()).await {
            Ok(bulk) => Some(bulk),
            Err(e) => {
                warn!(error = %e, code = e.code.as_deref(), "EC2 not observed in bulk; nodes observed one by one, the sweep waits for the next run");
                report.failed.push(format!("observation in bulk: {e}"));
                None
            }
        };
        match self.store.maintain_listing(self.clock.now()).await {
            Ok(0) => {}
            Ok(mended) => info!(mended, "node records added to the listing index"),
            Err(e) => warn!(error = %e, code = e.code.as_deref(), "listing index not checked; next run retries"),
        }
        let nodes = self.all_nodes().await?;
        // Subnets where nodes (members included, deallocated ones too) chose addresses, and
        // the groups' subnets: a subnet CIDR reservation may be left there after every
        // reservation of the subnet is gone (the sweep looks only where some are).
        let mut subnets = BTreeSet::new();
        for node in nodes.values() {
            let recent = (self.clock.now() - node.updated_at).to_std().unwrap_or_default() < LEFTOVER_WINDOW;
            if node.persistence.private_ip.is_some() && (node.state != NodeState::Deallocated || recent) {
                subnets.insert(node.spec.subnet_id.clone());
            }
        }
        let out_of_time = |t: &Tether| t.clock.now() + t.settings.deadline_margin >= deadline;
        // First what no node owns (bounded by what exists), so that stalled nodes cannot starve it.
        // The reservations as the sweep read them, and the subnets it went through.
        let mut swept = (None, BTreeSet::new());
        if let Err(e) = Box::pin(self.sweep(&mut report, &mut swept, bulk.as_ref(), &nodes)).await {
            warn!(error = %e, code = e.aws_code(), "sweep failed; next run retries");
            report.failed.push(format!("sweep: {e}"));
        }
        let after = |id: &&NodeId| cursor.as_ref().is_none_or(|c| *id > c);
        let mut last_checked = None;
        report.complete = true;
        for node in nodes.iter().filter(|(id, _)| after(id)).map(|(_, n)| n) {
            if report.nodes_checked >= self.settings.reconcile_max_nodes || out_of_time(self) {
                report.complete = false;
                break;
            }
            report.nodes_checked += 1;
            last_checked = Some(node.id.clone());
            let span = super::node_span("reconcile", node);
            let node_deadline = deadline.min(self.deadline_in(NODE_BUDGET));
            match Box::pin(self.reconcile_node(node, node_deadline, bulk.as_ref()).instrument(span)).await {
                Ok(Some(what)) => report.repaired.push(format!("{}: {what}", node.id)),
                Ok(None) => {}
                Err(e) => {
                    warn!(node_id = %node.id, instance_id = node.instance_id(), generation = node.generation, error = %e, code = e.aws_code(), "reconciling the node failed; next run retries");
                    report.failed.push(format!("{}: {e}", node.id));
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

    /// Every node, by id (the order a run's bookmark follows).
    async fn all_nodes(&self) -> Result<BTreeMap<NodeId, Node>, TetherError> {
        let mut nodes = BTreeMap::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.store.list(PAGE_SIZE, cursor.as_ref()).await?;
            nodes.extend(page.into_iter().map(|n| (n.id.clone(), n)));
            match next {
                Some(last) => cursor = Some(last),
                None => return Ok(nodes),
            }
        }
    }

    /// EC2 as it is for Tether, in a few paged calls whatever the number of nodes.
    async fn observe_in_bulk(&self) -> Result<InBulk, crate::error::AwsError> {
        let taken_at = self.clock.now();
        let instances = self.instances.node_instances().await?.into_iter().map(|t| (t.resource.id.clone(), t)).collect();
        let enis = self.network.node_enis().await?;
        let eips = self.network.elastic_ips().await?.into_iter().map(|e| (e.allocation_id.clone(), e)).collect();
        let tagged_eips = self.network.node_eips().await?;
        let volumes = self.volumes.node_volumes().await?.into_iter().map(|t| (t.resource.id.clone(), t)).collect();
        let impaired = self.instances.impaired_instances().await?;
        Ok(InBulk { taken_at, instances, enis, eips, tagged_eips, volumes, impaired })
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
                match Box::pin(self.run_group_schedule(group)).await {
                    Ok(Some(what)) => report.repaired.push(format!("{}: {what}", group.id)),
                    Ok(None) => {}
                    Err(e) => report.failed.push(format!("{}: schedule: {e}", group.id)),
                }
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
    async fn reconcile_node(&self, node: &Node, deadline: DateTime<Utc>, bulk: Option<&InBulk>) -> Result<Option<String>, TetherError> {
        if let Some(what) = self.backfill_reservations(node).await? {
            return Ok(Some(what));
        }
        let seen = match bulk.and_then(|b| self.observed_in(b, node)) {
            Some(seen) => seen,
            None => self.observe(node).await?,
        };
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

    /// What is known of the node before EC2 is read (whether it is stuck), and whether its
    /// state is one whose instance and network EC2 is read for.
    fn unobserved(&self, node: &Node) -> (Observed, bool) {
        let stuck = (self.clock.now() - node.updated_at).to_std().unwrap_or_default() >= self.settings.stuck_after;
        let watched = matches!(node.state, NodeState::Running | NodeState::Recovering | NodeState::Stopped | NodeState::Paused);
        (Observed { instance: None, eni_exists: true, deleted_extra_eni: None, deleted_data_volume: None, data_volume_detached: false, elastic_ip: None, stuck, impaired: None }, watched)
    }

    /// What the bulk view says about the node, if it can say: the record is older than the
    /// view, and everything the node records is in it (what is missing, or newer, is read
    /// for this node alone: a fresh answer, never an eventually consistent absence).
    fn observed_in(&self, bulk: &InBulk, node: &Node) -> Option<Observed> {
        if node.updated_at >= bulk.taken_at {
            return None;
        }
        let (mut seen, watched) = self.unobserved(node);
        if !watched {
            return Some(seen);
        }
        if let (Some(instance_id), false) = (node.instance_id(), node.state == NodeState::Paused) {
            seen.instance = Some(instance_state(&bulk.instances.get(instance_id)?.resource.state));
            seen.impaired = bulk.impaired.get(instance_id).cloned();
        }
        if let (Some(eni), false) = (&node.eni, eni_attached(&seen)) {
            bulk.enis.iter().find(|t| t.resource.id == eni.id && t.node_id == node.id)?;
            for extra in &node.extra_enis {
                bulk.enis.iter().find(|t| t.resource.id == extra.id && t.node_id == node.id)?;
            }
        }
        if let Some(eip) = &node.elastic_ip {
            seen.elastic_ip = Some(elastic_ip_found(bulk.eips.get(&eip.allocation_id)?, node));
        }
        let mut volumes = Vec::new();
        for record in &node.data_volumes {
            volumes.push(bulk.volumes.get(&record.volume_id)?.resource.clone());
        }
        seen.data_volume_detached = data_volume_detached(node, &seen, &volumes);
        Some(seen)
    }

    /// What EC2 says about the node, reading only what its state needs.
    async fn observe(&self, node: &Node) -> Result<Observed, TetherError> {
        let (mut seen, watched) = self.unobserved(node);
        if !watched {
            return Ok(seen);
        }
        if let (Some(instance_id), false) = (node.instance_id(), node.state == NodeState::Paused) {
            let summary = self.instances.describe_instance(instance_id).await?;
            seen.instance = summary.map(|s| instance_state(&s.state));
        }
        if let (Some(eni), false) = (&node.eni, eni_attached(&seen)) {
            // An attached ENI cannot be deleted; a detached one may have been.
            seen.eni_exists = self.network.find_node_eni(&node.id).await?.is_some_and(|found| found.id == eni.id);
            for extra in &node.extra_enis {
                if self.network.find_extra_eni(&node.id, extra.device_index).await?.is_none_or(|found| found.id != extra.id) {
                    seen.deleted_extra_eni = Some(extra.device_index);
                }
            }
        }
        if let Some(eip) = &node.elastic_ip {
            seen.elastic_ip = Some(match self.network.describe_eip(&eip.allocation_id).await? {
                None => ElasticIpFound::Missing,
                Some(info) => elastic_ip_found(&info, node),
            });
        }
        if !node.data_volumes.is_empty() {
            let ids: Vec<String> = node.data_volumes.iter().map(|v| v.volume_id.clone()).collect();
            let volumes = self.volumes.describe_volumes(&ids).await?;
            // Gone for good only once it was seen (attached once, or recorded long ago): a
            // volume just made may not be visible yet.
            let gone = node.data_volumes.iter().find(|r| (r.attached_to.is_some() || seen.stuck) && !volumes.iter().any(|v| v.id == r.volume_id && v.exists()));
            seen.deleted_data_volume = gone.map(|r| r.volume_id.clone());
            seen.data_volume_detached = data_volume_detached(node, &seen, &volumes);
        }
        Ok(seen)
    }

    /// Makes EC2's subnet CIDR reservations agree with the address reservations (in their
    /// subnets; `swept` says which, with the reservations read, for the end of the run);
    /// terminates instances no node wants, deletes detached ENIs and releases free Elastic
    /// IPs of nodes that no longer record them. An ENI or Elastic IP a node does not record
    /// yet may be its first launch's, under way: it is left alone until recorded otherwise.
    async fn sweep(
        &self,
        report: &mut ReconcileReport,
        swept: &mut (Option<Vec<Reservation>>, BTreeSet<String>),
        bulk: Option<&InBulk>,
        nodes: &BTreeMap<NodeId, Node>,
    ) -> Result<(), TetherError> {
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
        // The rest compares the bulk view with the nodes as read after it.
        let Some(bulk) = bulk else { return Ok(()) };
        for tagged in bulk.instances.values() {
            let node = nodes.get(&tagged.node_id);
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
        // Deleting an ENI disassociates the Elastic IP on it: free from then on, though the
        // bulk view saw it associated.
        let mut deleted_enis = BTreeSet::new();
        for tagged in bulk.enis.iter().filter(|t| !t.attached) {
            let node = nodes.get(&tagged.node_id);
            let index = tagged.device_index;
            if leftover(node, |n| recorded_eni(n, index), &tagged.resource.id) {
                self.network.delete_eni(&tagged.resource.id).await?;
                deleted_enis.insert(tagged.resource.id.as_str());
                warn!(node_id = %tagged.node_id, eni_id = tagged.resource.id, "ENI no node records; deleted");
                report.repaired.push(format!("{}: deleted leftover ENI {}", tagged.node_id, tagged.resource.id));
            }
        }
        for tagged in bulk.volumes.values().filter(|t| !t.attached) {
            let id = tagged.resource.id.as_str();
            if leftover_volume(nodes.get(&tagged.node_id), id) {
                self.volumes.delete_volume(id).await?;
                warn!(node_id = %tagged.node_id, volume_id = id, "data volume no node records (a create that was retried); deleted");
                report.repaired.push(format!("{}: deleted leftover data volume {id}", tagged.node_id));
            }
        }
        let free = |t: &&Tagged<ElasticIpInfo>| !t.attached || t.resource.network_interface_id.as_deref().is_some_and(|e| deleted_enis.contains(e));
        for tagged in bulk.tagged_eips.iter().filter(free) {
            let node = nodes.get(&tagged.node_id);
            let id = tagged.resource.allocation_id.as_str();
            if leftover(node, |n| n.elastic_ip.as_ref().map(|e| e.allocation_id.as_str()), id) {
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

/// Whether a detached data volume tagged for `node` is left over: a duplicate of a create
/// that was retried, which the node never recorded. Only once every volume of its spec is
/// recorded (a create under way is not recorded yet), or the node is deallocated (what the
/// policy kept stays recorded). Never one of a node this table does not know.
fn leftover_volume(node: Option<&Node>, id: &str) -> bool {
    let Some(node) = node else { return false };
    let recorded = node.data_volumes.iter().any(|v| v.volume_id == id);
    let all_made = node.spec.data_volumes.iter().all(|d| node.data_volumes.iter().any(|v| v.device_name == d.device_name));
    match node.state {
        NodeState::Deallocating => false,
        NodeState::Deallocated => !recorded,
        _ => all_made && !recorded,
    }
}

/// Whether a data volume is not on the node's running instance (or not recorded there).
fn data_volume_detached(node: &Node, seen: &Observed, volumes: &[VolumeInfo]) -> bool {
    let (Some(current), Some(InstanceState::Running)) = (node.instance_id(), seen.instance) else { return false };
    node.data_volumes_to_attach()
        || volumes.iter().any(|v| node.data_volumes.iter().any(|r| r.volume_id == v.id) && v.attachment.as_ref().is_none_or(|(i, _)| i != current))
}

/// The ENI the node records at a device index (`None`: its own ENI, index 0).
fn recorded_eni(node: &Node, device_index: Option<u8>) -> Option<&str> {
    match device_index {
        None => node.eni.as_ref().map(|e| e.id.as_str()),
        Some(index) => node.extra_enis.iter().find(|e| e.device_index == index).map(|e| e.id.as_str()),
    }
}

/// Where the node's Elastic IP is, from EC2's description of it.
fn elastic_ip_found(info: &ElasticIpInfo, node: &Node) -> ElasticIpFound {
    let eni_id = node.eni.as_ref().map(|e| e.id.as_str());
    match info {
        i if i.network_interface_id.is_some() && i.network_interface_id.as_deref() == eni_id => ElasticIpFound::OnEni,
        i if i.association_id.is_none() => ElasticIpFound::Free,
        i => ElasticIpFound::Elsewhere(i.holder().to_owned()),
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

/// Whether the instance seen holds the node's ENI (an attached ENI cannot be deleted).
fn eni_attached(seen: &Observed) -> bool {
    matches!(seen.instance, Some(InstanceState::Pending | InstanceState::Running | InstanceState::Stopping | InstanceState::Stopped))
}
