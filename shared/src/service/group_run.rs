//! Running a group's controller: read the group and its members, plan (`group::plan`), and do
//! the plan's actions, each only if the member is still at the version the plan was made
//! from (a plan made from a stale read changes nothing; the next run plans again). A run's
//! launches are paced by EC2's RunInstances bucket (5 at once, then 2 a second; the bucket
//! is the account's, shared by every run, so a run that meets throttling backs off) and run a
//! few at a time until the deadline; what is left is the next run's.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tracing::{info, warn, Instrument};

use super::identity::Baseline;
use super::addresses::release_write;
use super::{Outcome, Tether, TetherError};
use crate::error::ErrorClass;
use crate::group::{self, Group, GroupAction, GroupId, GroupState, GroupStatus, Membership};
use crate::lifecycle::{self, Step};
use crate::model::{Node, NodeId, Persistence};
use crate::ports::{Address, Clock, Expect, Reservation, Write, MAX_WRITES};

/// Actions one run has under way at once (launches, and the others).
const LAUNCH_CONCURRENCY: usize = 8;

/// How long the actions that launch nothing (deallocate, pause, sync) may wait on EC2.
const OTHERS_WAIT: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// What one run of a group's controller did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupRun {
    pub group_id: Option<GroupId>,
    /// Each action done, in words.
    pub done: Vec<String>,
    /// Actions not done because the member changed since the plan was made.
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
    /// Actions left for the next run (the deadline came first).
    pub left: usize,
    /// The group as its members made it when the run began.
    pub status: GroupStatus,
}

/// Starts at most `burst` launches at once, then one every `interval` (a token bucket on
/// the service's clock), however many run concurrently.
struct Pacer {
    interval: chrono::TimeDelta,
    tolerance: chrono::TimeDelta,
    next: Mutex<Option<DateTime<Utc>>>,
}

impl Pacer {
    fn new(per_second: u32, burst: u32) -> Self {
        let interval = chrono::TimeDelta::milliseconds(1000 / i64::from(per_second.max(1)));
        Pacer { interval, tolerance: interval * (burst.max(1) as i32 - 1), next: Mutex::new(None) }
    }

    async fn wait(&self, clock: &dyn Clock) {
        let now = clock.now();
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let theoretical = next.unwrap_or(now).max(now - self.tolerance);
            let slot = (theoretical - self.tolerance).max(now);
            *next = Some(theoretical + self.interval);
            slot
        };
        if let Ok(wait) = (slot - now).to_std() {
            if wait > Duration::ZERO {
                clock.sleep(wait).await;
            }
        }
    }
}

/// How an action ended.
enum Done {
    Did(String),
    Skipped(String),
}

impl Tether {
    /// One run of the group's controller, until its plan is done or the deadline nears.
    pub async fn run_group(&self, id: &GroupId, deadline: DateTime<Utc>) -> Result<GroupRun, TetherError> {
        let span = tracing::info_span!("group", group_id = %id);
        self.run_group_in_span(id, deadline).instrument(span).await
    }

    async fn run_group_in_span(&self, id: &GroupId, deadline: DateTime<Utc>) -> Result<GroupRun, TetherError> {
        let mut group = self.group(id).await?;
        let members = self.registry.members(id).await?;
        let plan = group::plan(&group, &members, self.clock.now());
        let mut run = GroupRun { group_id: Some(id.clone()), status: plan.status.clone(), ..GroupRun::default() };
        if let Some(next) = plan.next {
            match self.write_planned_group(&group, next.clone()).await {
                Ok(what) => run.done.push(what),
                // Changed meanwhile: the next run plans on what it is now.
                Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => return Ok(run),
                Err(e) => return Err(e),
            }
            // As written: members are created only while the group is still as planned.
            group = Group { version: next.version + 1, ..next };
        }
        let (launches, others): (Vec<GroupAction>, Vec<GroupAction>) = plan.actions.into_iter().partition(GroupAction::launches);
        let out_of_time = |t: &Tether| t.clock.now() + t.settings.deadline_margin >= deadline;
        // A deallocation waits for the old instance to let go of its ENI only briefly: the
        // instance's termination event (or the next run) finishes it, and the others go on.
        let others_deadline = deadline.min(self.clock.now() + OTHERS_WAIT);
        let mut results: Vec<(String, Result<Done, TetherError>)> = stream::iter(others)
            .map(|action| {
                let group = &group;
                async move {
                    if out_of_time(self) {
                        return (describe(&action), Ok(Done::Skipped("left for the next run: the deadline came first".into())));
                    }
                    (describe(&action), Box::pin(self.member_action(group, action, others_deadline)).await)
                }
            })
            .buffer_unordered(LAUNCH_CONCURRENCY)
            .collect()
            .await;
        let pacer = Pacer::new(self.settings.launches_per_second, self.settings.launch_burst);
        let paced: Vec<(String, Result<Done, TetherError>)> = stream::iter(launches)
            .map(|action| {
                let pacer = &pacer;
                let group = &group;
                async move {
                    pacer.wait(self.clock.as_ref()).await;
                    if out_of_time(self) {
                        return (describe(&action), Ok(Done::Skipped("left for the next run: the deadline came first".into())));
                    }
                    (describe(&action), Box::pin(self.member_action(group, action, deadline)).await)
                }
            })
            .buffer_unordered(LAUNCH_CONCURRENCY)
            .collect()
            .await;
        results.extend(paced);
        for (what, result) in results {
            match result {
                Ok(Done::Did(outcome)) => run.done.push(format!("{what}: {outcome}")),
                Ok(Done::Skipped(why)) if why.starts_with("left for") => run.left += 1,
                Ok(Done::Skipped(why)) => run.skipped.push(format!("{what}: {why}")),
                Err(e) if e.is_retryable() => run.skipped.push(format!("{what}: not yet ({e})")),
                Err(e) => {
                    warn!(action = what, error = %e, "group action failed");
                    run.failed.push(format!("{what}: {e}"));
                }
            }
        }
        info!(done = run.done.len(), skipped = run.skipped.len(), skipped_why = ?run.skipped, failed = run.failed.len(), left = run.left, "group run");
        Ok(run)
    }

    /// Writes the group record the plan changed. A group whose members are all deallocated
    /// releases its pool's reservations with it (a transaction holds 100 writes: earlier
    /// batches release only, the last one records the group deallocated).
    async fn write_planned_group(&self, group: &Group, next: Group) -> Result<String, TetherError> {
        let what = next.history.last().map(|h| h.what.clone()).unwrap_or_default();
        if next.state != GroupState::Deallocated {
            self.registry.write(vec![Write::SaveGroup(next)]).await?;
            return Ok(what);
        }
        let mut released = Vec::new();
        for address in pool_addresses(group) {
            if let Some(r) = self.registry.reservation(&address).await?.filter(|r| r.owner == group.id.as_str()) {
                released.push(r);
            }
        }
        while released.len() >= MAX_WRITES {
            let batch: Vec<Reservation> = released.drain(..MAX_WRITES - 1).collect();
            self.registry.write(batch.iter().map(release_write).collect()).await?;
            self.unreserve_released(&batch).await;
        }
        let mut writes = vec![Write::SaveGroup(next)];
        writes.extend(released.iter().map(release_write));
        self.registry.write(writes).await?;
        self.unreserve_released(&released).await;
        Ok(what)
    }

    /// The member as the plan saw it, or `None` if it changed since.
    async fn member_at(&self, id: &NodeId, seen: u64) -> Result<Option<Node>, TetherError> {
        Ok(self.store.get(id).await?.filter(|n| n.version == seen))
    }

    async fn member_action(&self, group: &Group, action: GroupAction, deadline: DateTime<Utc>) -> Result<Done, TetherError> {
        let by = format!("group {}", group.id);
        let by = Some(by.as_str());
        let changed = || Ok(Done::Skipped("the member changed since the plan was made".into()));
        match action {
            GroupAction::Create { member, subnet_id, pool_ip, ordinal, resume, elastic_ip } => {
                let now = self.clock.now();
                let persistence = Persistence { private_ip: pool_ip, elastic_ip_allocation_id: elastic_ip.clone(), allocate_elastic_ip: false };
                let mut node = Node::new(group.template.spec_in(&subnet_id), persistence, now);
                node.id = member.clone();
                node.group = Some(Membership { group_id: group.id.clone(), pool_ip, ordinal, held_since: None });
                node.history.clear();
                let made_for = pool_ip.map_or_else(|| "an address EC2 picks".to_owned(), |ip| format!("pool address {ip}"));
                node.record_by(now, format!("created by group {} for {made_for}", group.id), by);
                // Only while the group is as planned: a run that planned before the group was
                // deallocated (or paused, or its pool changed) would otherwise add a member the
                // deallocation never sees, left running after the group is deallocated.
                let mut writes = vec![Write::CreateNode(node.clone()), Write::CheckGroup { id: group.id.clone(), version: group.version }];
                writes.extend(elastic_ip.iter().map(|eip| hand_elastic_ip(group, eip, &member)));
                match self.registry.write(writes).await {
                    Err(e) if e.class == ErrorClass::Conflict => return Ok(Done::Skipped("made meanwhile, its Elastic IP handed on, or the group changed".into())),
                    other => other?,
                }
                if !resume {
                    return Ok(Done::Did("created, paused".into()));
                }
                self.member_step(node, deadline, |n, now| unheld(lifecycle::on_resume(n, now, by))).await
            }
            GroupAction::Resume { member, seen, elastic_ip } => {
                let Some(mut node) = self.member_at(&member, seen).await? else { return changed() };
                if let Some(eip) = elastic_ip.filter(|_| node.persistence.elastic_ip_allocation_id.is_none()) {
                    let mut next = node.clone();
                    next.persistence.elastic_ip_allocation_id = Some(eip.clone());
                    next.record_by(self.clock.now(), format!("Elastic IP {eip} of the group's pool handed to it"), by);
                    match self.registry.write(vec![Write::SaveNode(next.clone()), hand_elastic_ip(group, &eip, &member)]).await {
                        Err(e) if e.class == ErrorClass::Conflict => return Ok(Done::Skipped("the member or the Elastic IP changed meanwhile".into())),
                        other => other?,
                    }
                    node = Node { version: next.version + 1, ..next };
                }
                self.member_step(node, deadline, |n, now| unheld(lifecycle::on_resume(n, now, by))).await
            }
            GroupAction::Pause { member, seen } => {
                let Some(node) = self.member_at(&member, seen).await? else { return changed() };
                self.member_step(node, deadline, |n, now| lifecycle::on_pause(n, now, by)).await
            }
            GroupAction::Recycle { member, seen } => {
                let Some(node) = self.member_at(&member, seen).await? else { return changed() };
                self.member_step(node, deadline, |n, now| unheld(lifecycle::on_recycle(n, now, by))).await
            }
            GroupAction::Deallocate { member, seen, keep_eni } => {
                let Some(node) = self.member_at(&member, seen).await? else { return changed() };
                self.member_step(node, deadline, |n, now| lifecycle::on_deallocate(n, keep_eni, now, by)).await
            }
            GroupAction::Sync { member, seen } => {
                let Some(node) = self.member_at(&member, seen).await? else { return changed() };
                let mut next = node.clone();
                next.spec = group.template.spec_in(&node.spec.subnet_id);
                if next.spec != node.spec {
                    next.record_by(self.clock.now(), "launch settings brought to the group's template; they take effect at the next launch", by);
                }
                // What lives on the ENI is marked pending with the spec, so that only the run
                // that wins this write changes the ENI (two runs changing it at once could
                // each add the addresses a count asks for).
                next.eni_sync_pending = node.eni.is_some() && (node.eni_sync_pending || lifecycle::eni_settings_differ(&node.spec, &next.spec));
                let saved = match self.store.save(&next).await {
                    Err(e) if e.class == ErrorClass::Conflict => return changed(),
                    other => other?,
                };
                if !saved.eni_sync_pending {
                    return Ok(Done::Did("launch settings synced".into()));
                }
                self.converge_member_eni(saved, by).await
            }
        }
    }

    /// Makes a member's ENI carry its spec's ENI settings (`eni_sync_pending`), from the ENI as
    /// EC2 has it, every setting sent (an earlier run may have died half way), then records it.
    async fn converge_member_eni(&self, mut node: Node, by: Option<&str>) -> Result<Done, TetherError> {
        let Some(recorded) = node.eni.clone() else { return Ok(Done::Skipped("no ENI".into())) };
        let (eni, done) = match self.network.find_node_eni(&node.id).await?.filter(|e| e.id == recorded.id) {
            Some(eni) => match self.converge_eni(&node.spec, Baseline::Unknown, &eni).await? {
                Ok(converged) => converged,
                // Left pending: the group's status shows it, and the next run tries again.
                Err(refused) => return Ok(Done::Skipped(format!("the template's ENI settings are not on the ENI: {}", refused.reason()))),
            },
            // Deleted outside Tether: nothing to change (the reconciler puts the member in error).
            None => (recorded, Vec::new()),
        };
        let spec = node.spec.clone();
        for _ in 0..super::MAX_CONFLICTS {
            let mut next = node.clone();
            next.eni = Some(eni.clone());
            next.eni_sync_pending = false;
            if !done.is_empty() {
                next.record_by(self.clock.now(), format!("ENI {}: {}", eni.id, done.join("; ")), by);
            }
            match self.store.save(&next).await {
                Err(e) if e.class == ErrorClass::Conflict => node = self.node(&node.id).await?,
                other => return other.map(|_| Done::Did("launch settings synced, on the ENI too".into())).map_err(Into::into),
            }
            // Another template since: its own sync finishes the ENI.
            if node.spec != spec || !node.eni_sync_pending {
                return Ok(Done::Skipped("the member changed meanwhile".into()));
            }
        }
        Ok(Done::Skipped("the member changed meanwhile".into()))
    }

    /// One lifecycle step on the member as read: a lost race skips it (the next run plans again).
    async fn member_step(&self, node: Node, deadline: DateTime<Utc>, decide: impl Fn(&Node, DateTime<Utc>) -> Step) -> Result<Done, TetherError> {
        let span = super::node_span("group", &node);
        let step = decide(&node, self.clock.now());
        match self.act(&node, step, deadline).instrument(span).await {
            Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => Ok(Done::Skipped("the member changed meanwhile".into())),
            // Waiting for capacity or for the ENI goes on by itself (events, the reconciler).
            Err(e @ (TetherError::NoCapacity { .. } | TetherError::EniStillAttached { .. })) => Ok(Done::Did(format!("under way: {e}"))),
            Ok(outcome) => Ok(Done::Did(outcome_words(&outcome))),
            Err(e) => Err(e),
        }
    }
}

/// The write that hands a pool Elastic IP (free, the group's) to `member`.
fn hand_elastic_ip(group: &Group, allocation_id: &str, member: &NodeId) -> Write {
    let address = Address::ElasticIp { allocation_id: allocation_id.to_owned() };
    let reservation = Reservation { member: Some(member.clone()), ..Reservation::new(address, group.id.as_str()) };
    Write::PutReservation { reservation, expect: Expect::Held { owner: group.id.to_string(), member: None } }
}

/// A step that launches the member clears its hold: it is the group's again.
pub(super) fn unheld(step: Step) -> Step {
    match step {
        Step::Apply { mut next, actions } => {
            if let Some(m) = next.group.as_mut() {
                m.held_since = None;
            }
            Step::Apply { next, actions }
        }
        other => other,
    }
}

/// Every address of the group's pools.
pub(super) fn pool_addresses(group: &Group) -> Vec<Address> {
    let ips = group.private_ip_pool.iter().filter_map(|ip| group.subnet_of(*ip).map(|s| Address::PrivateIp { subnet_id: s.id.clone(), ip: *ip }));
    let eips = group.elastic_ip_pool.iter().map(|a| Address::ElasticIp { allocation_id: a.clone() });
    ips.chain(eips).collect()
}

fn describe(action: &GroupAction) -> String {
    let kind = match action {
        GroupAction::Create { resume: true, .. } => "create and resume",
        GroupAction::Create { .. } => "create",
        GroupAction::Sync { .. } => "sync",
        GroupAction::Resume { .. } => "resume",
        GroupAction::Pause { .. } => "pause",
        GroupAction::Recycle { .. } => "recycle",
        GroupAction::Deallocate { .. } => "deallocate",
    };
    format!("{kind} {}", action.member())
}

fn outcome_words(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Launched { generation, instance_id, .. } => format!("generation {generation} launched as {instance_id}"),
        Outcome::Recorded { state, .. } => format!("now {state:?}"),
        Outcome::Ignored { reason } => format!("nothing to do: {reason}"),
        Outcome::Failed { reason, .. } => format!("went to ERROR: {reason}"),
        Outcome::Refused { reason } => format!("refused: {reason}"),
        Outcome::Deferred { until, reason, .. } => format!("deferred until {until}: {reason}"),
    }
}
