//! The group controller: `(group, members) → plan`, pure. The service runs a plan's actions
//! (each conditional on the member's version seen here, so that a plan made from a stale
//! read changes nothing), and runs the controller again until a plan is empty.
//!
//! The rules, in the order they apply:
//! 1. every pool address has exactly one member that is not deallocated: a missing one is
//!    created paused (a deallocated one is replaced by the next for the same address);
//! 2. a member of an address taken out of the pool is deallocated if it never ran;
//! 3. an active group keeps `target_capacity` members counting (running, recovering,
//!    launching, stopped), less the held ones: paused pool members are resumed first (pool
//!    order), then paused others, then new members with addresses EC2 picks, spread evenly
//!    across the subnets; a surplus is paused (EC2-picked addresses newest first, then pool
//!    members from the end of the pool); a paused group pauses every member;
//! 4. a member resumed without an Elastic IP takes the first free one of the pool;
//! 5. a rolling recycle replaces `max_unavailable` running members at a time, each batch
//!    back before the next;
//! 6. a group being deallocated deallocates every member, then is deallocated itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::model::{Group, GroupState};
use crate::model::{Node, NodeId, NodeState};

/// One thing to do to a member. `seen` is the member's version the plan was made from: the
/// service does nothing if the member changed since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupAction {
    /// Bring a member's spec back to the template (after the template changed): its next
    /// launch uses it.
    Sync { member: NodeId, seen: u64 },
    /// Create a member, paused, in `subnet_id`; `resume` it at once, with `elastic_ip` (a
    /// free address of the pool) if one is given.
    Create { member: NodeId, subnet_id: String, pool_ip: Option<Ipv4Addr>, ordinal: u32, resume: bool, elastic_ip: Option<String> },
    /// Resume a paused member, handing it `elastic_ip` first if it has none.
    Resume { member: NodeId, seen: u64, elastic_ip: Option<String> },
    Pause { member: NodeId, seen: u64 },
    Recycle { member: NodeId, seen: u64 },
    Deallocate { member: NodeId, seen: u64, keep_eni: bool },
}

impl GroupAction {
    pub fn member(&self) -> &NodeId {
        match self {
            GroupAction::Create { member, .. }
            | GroupAction::Sync { member, .. }
            | GroupAction::Resume { member, .. }
            | GroupAction::Pause { member, .. }
            | GroupAction::Recycle { member, .. }
            | GroupAction::Deallocate { member, .. } => member,
        }
    }

    /// Whether the action launches an instance (the service paces those).
    pub fn launches(&self) -> bool {
        matches!(self, GroupAction::Create { resume: true, .. } | GroupAction::Resume { .. } | GroupAction::Recycle { .. })
    }
}

/// The group as its members make it now, for the API and the CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupStatus {
    pub target_capacity: u32,
    /// Members running, recovering, launching or stopped.
    pub counting: u32,
    pub running: u32,
    pub launching: u32,
    pub paused: u32,
    /// Paused through the node API: the group leaves them alone until it is resumed.
    pub held: u32,
    pub error: u32,
    pub deallocating: u32,
    /// A rolling recycle under way: the running members still on an instance launched
    /// before it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_remaining: Option<u32>,
    /// Why fewer members run than the target, in words; `None` when none are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_target: Option<String>,
    /// Nothing left for the group to do: no action planned, no member launching, recovering
    /// or being deallocated, no rolling recycle. Members held or in error may still keep it
    /// below its target (`below_target` says so): they wait for the user, not the group.
    #[serde(default)]
    pub settled: bool,
}

/// What the controller decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<GroupAction>,
    /// The group record to write, when it changes (a rollout finished, the deallocation done).
    pub next: Option<Group>,
    pub status: GroupStatus,
}

fn counts(state: NodeState) -> bool {
    matches!(state, NodeState::Running | NodeState::Recovering | NodeState::Launching | NodeState::Stopped)
}

fn live(member: &Node) -> bool {
    member.state != NodeState::Deallocated
}

/// Whether the member ever launched (its address is then persisted for it).
fn has_run(member: &Node) -> bool {
    member.generation > 0 || member.eni.is_some()
}

fn pool_ip(member: &Node) -> Option<Ipv4Addr> {
    member.group.as_ref().and_then(|m| m.pool_ip)
}

fn ordinal(member: &Node) -> u32 {
    member.group.as_ref().map_or(0, |m| m.ordinal)
}

/// The plan for `group` with `members` (every node whose membership names the group).
pub fn plan(group: &Group, members: &[Node], now: DateTime<Utc>) -> Plan {
    let mut members: Vec<&Node> = members.iter().filter(|m| m.group.as_ref().is_some_and(|g| g.group_id == group.id)).collect();
    // Pool members in pool order (those of addresses taken out of it after), then the others.
    let rank = |m: &Node| match pool_ip(m) {
        Some(ip) => (0, group.private_ip_pool.iter().position(|p| *p == ip).unwrap_or(usize::MAX), ordinal(m)),
        None => (1, 0, ordinal(m)),
    };
    members.sort_by_key(|m| (rank(m), m.id.clone()));
    let status = status(group, &members);
    let mut planner = Planner { group, members: &members, actions: Vec::new(), next: None };
    match group.state {
        GroupState::Deallocated => {}
        GroupState::Deallocating => planner.deallocate_all(now),
        GroupState::Active | GroupState::Paused => {
            planner.sync_specs();
            let created = planner.fill_pool();
            planner.retire_removed_pool_members();
            if group.state == GroupState::Active {
                planner.keep_target(created);
                planner.roll(now);
            } else {
                planner.pause_all();
            }
        }
    }
    let under_way = members.iter().any(|m| matches!(m.state, NodeState::Launching | NodeState::Recovering | NodeState::Deallocating));
    let settled = planner.actions.is_empty() && planner.next.is_none() && group.rollout.is_none() && !under_way;
    Plan { actions: planner.actions, next: planner.next, status: GroupStatus { settled, ..status } }
}

struct Planner<'a> {
    group: &'a Group,
    members: &'a [&'a Node],
    actions: Vec<GroupAction>,
    next: Option<Group>,
}

impl Planner<'_> {
    fn next_group(&mut self) -> &mut Group {
        self.next.get_or_insert_with(|| self.group.clone())
    }

    fn live_for(&self, ip: Ipv4Addr) -> impl Iterator<Item = &&Node> {
        self.members.iter().filter(move |m| live(m) && pool_ip(m) == Some(ip))
    }

    /// Every live member launches as the template says (members' specs are the group's to
    /// change: the node API refuses a PATCH of a member).
    fn sync_specs(&mut self) {
        for member in self.members.iter().filter(|m| live(m) && m.state != NodeState::Deallocating) {
            if member.spec != self.group.template.spec_in(&member.spec.subnet_id) || member.eni_sync_pending {
                self.actions.push(GroupAction::Sync { member: member.id.clone(), seen: member.version });
            }
        }
    }

    /// Rule 1: a paused member for every pool address that has none. Returns, in pool order,
    /// each `Create`'s place in the pool and in the actions (the target may resume them).
    fn fill_pool(&mut self) -> Vec<(usize, usize)> {
        let mut created = Vec::new();
        for (rank, &ip) in self.group.private_ip_pool.iter().enumerate() {
            if self.live_for(ip).next().is_some() {
                continue;
            }
            // Validated against the subnets when the address entered the pool.
            let Some(subnet) = self.group.subnet_of(ip) else { continue };
            let ordinal = self.members.iter().filter(|m| pool_ip(m) == Some(ip)).map(|m| ordinal(m)).max().unwrap_or(0) + 1;
            created.push((rank, self.actions.len()));
            self.actions.push(GroupAction::Create {
                member: self.group.id.pool_member(ip, ordinal),
                subnet_id: subnet.id.clone(),
                pool_ip: Some(ip),
                ordinal,
                resume: false,
                elastic_ip: None,
            });
        }
        created
    }

    /// Rule 2: an address taken out of the pool takes along the members made for it that
    /// never ran (held or not: the pool edit is the user's later word on that address); one
    /// that ran keeps its address and stays until deallocated.
    fn retire_removed_pool_members(&mut self) {
        for member in self.members.iter().filter(|m| live(m)) {
            let Some(ip) = pool_ip(member) else { continue };
            if !self.group.private_ip_pool.contains(&ip) && !has_run(member) && member.state == NodeState::Paused {
                self.actions.push(GroupAction::Deallocate { member: member.id.clone(), seen: member.version, keep_eni: false });
            }
        }
    }

    /// Rules 3 and 4.
    fn keep_target(&mut self, created: Vec<(usize, usize)>) {
        // A held member of an address leaving the pool is being deallocated: no longer held.
        let retiring: Vec<&NodeId> = self.actions.iter().filter(|a| matches!(a, GroupAction::Deallocate { .. })).map(GroupAction::member).collect();
        let held = self.members.iter().filter(|m| self.group.holds(m) && !retiring.contains(&&m.id)).count() as u32;
        let want = self.group.target_capacity.saturating_sub(held);
        let counting: Vec<&Node> = self.members.iter().copied().filter(|m| counts(m.state)).collect();
        let have = counting.len() as u32;
        let mut free_eips = self.free_elastic_ips();
        if have < want {
            let mut need = (want - have) as usize;
            // Pool members first, in pool order: those to create, and the paused ones.
            let pool_order = |ip: Option<Ipv4Addr>| ip.and_then(|ip| self.group.private_ip_pool.iter().position(|p| *p == ip));
            let mut waiting: Vec<(usize, Waiting)> = created.into_iter().map(|(rank, index)| (rank, Waiting::Created(index))).collect();
            for member in self.members.iter().filter(|m| m.state == NodeState::Paused && !self.group.holds(m) && !retiring.contains(&&m.id)) {
                // Pool members first; one that kept an address taken out of the pool (it ran)
                // is still a member: after them, before the others.
                let rank = match pool_ip(member) {
                    Some(ip) => pool_order(Some(ip)).unwrap_or(usize::MAX - 1),
                    None => usize::MAX,
                };
                waiting.push((rank, Waiting::Paused(member)));
            }
            waiting.sort_by_key(|(rank, w)| (*rank, match w { Waiting::Created(_) => 0, Waiting::Paused(m) => ordinal(m) }));
            for (_, chosen) in waiting.into_iter().take(need) {
                need -= 1;
                match chosen {
                    Waiting::Created(index) => {
                        let eip = free_eips.pop();
                        if let GroupAction::Create { resume, elastic_ip, .. } = &mut self.actions[index] {
                            *resume = true;
                            *elastic_ip = eip;
                        }
                    }
                    Waiting::Paused(member) => {
                        let has_eip = member.elastic_ip.is_some() || member.persistence.elastic_ip_allocation_id.is_some();
                        let elastic_ip = if has_eip { None } else { free_eips.pop() };
                        self.actions.push(GroupAction::Resume { member: member.id.clone(), seen: member.version, elastic_ip });
                    }
                }
            }
            self.create_random(need, &mut free_eips);
        } else if have > want {
            self.pause_surplus(counting, (have - want) as usize);
        }
    }

    /// New members with addresses EC2 picks, each in the subnet with the fewest members.
    fn create_random(&mut self, count: usize, free_eips: &mut Vec<String>) {
        let mut per_subnet: BTreeMap<&str, usize> = self.group.subnets.iter().map(|s| (s.id.as_str(), 0)).collect();
        for member in self.members.iter().filter(|m| live(m)) {
            if let Some(n) = per_subnet.get_mut(member.spec.subnet_id.as_str()) {
                *n += 1;
            }
        }
        for action in &self.actions {
            if let GroupAction::Create { subnet_id, .. } = action {
                if let Some(n) = per_subnet.get_mut(subnet_id.as_str()) {
                    *n += 1;
                }
            }
        }
        let first_ordinal = self.members.iter().filter(|m| pool_ip(m).is_none()).map(|m| ordinal(m)).max().unwrap_or(0) + 1;
        for next_ordinal in (first_ordinal..).take(count) {
            // The emptiest subnet; on a tie, the first in the user's order.
            let Some(subnet) = self.group.subnets.iter().min_by_key(|s| per_subnet.get(s.id.as_str()).copied().unwrap_or(0)) else { return };
            if let Some(n) = per_subnet.get_mut(subnet.id.as_str()) {
                *n += 1;
            }
            self.actions.push(GroupAction::Create {
                member: self.group.id.random_member(next_ordinal),
                subnet_id: subnet.id.clone(),
                pool_ip: None,
                ordinal: next_ordinal,
                resume: true,
                elastic_ip: free_eips.pop(),
            });
        }
    }

    /// The pool's Elastic IPs no live member holds, the first of the pool last (taken first).
    fn free_elastic_ips(&self) -> Vec<String> {
        let held = |allocation_id: &String| {
            self.members.iter().any(|m| {
                live(m)
                    && (m.persistence.elastic_ip_allocation_id.as_ref() == Some(allocation_id)
                        || m.elastic_ip.as_ref().is_some_and(|e| e.allocation_id == *allocation_id))
            })
        };
        self.group.elastic_ip_pool.iter().filter(|a| !held(a)).rev().cloned().collect()
    }

    /// EC2-picked addresses newest first, then members of addresses no longer in the pool,
    /// then pool members from the end of the pool.
    fn pause_surplus(&mut self, mut counting: Vec<&Node>, surplus: usize) {
        let pool = &self.group.private_ip_pool;
        counting.sort_by_key(|m| match pool_ip(m) {
            None => (0, u32::MAX - ordinal(m)),
            Some(ip) => match pool.iter().position(|p| *p == ip) {
                None => (1, u32::MAX - ordinal(m)),
                Some(rank) => (2, u32::MAX - rank as u32),
            },
        });
        for member in counting.into_iter().take(surplus) {
            self.actions.push(GroupAction::Pause { member: member.id.clone(), seen: member.version });
        }
    }

    fn pause_all(&mut self) {
        for member in self.members.iter().filter(|m| counts(m.state)) {
            self.actions.push(GroupAction::Pause { member: member.id.clone(), seen: member.version });
        }
    }

    /// Rule 5: `max_unavailable` members at a time, and only while every counting member is
    /// back running (nothing launching or recovering), so a batch is back before the next.
    fn roll(&mut self, now: DateTime<Utc>) {
        let Some(rollout) = &self.group.rollout else { return };
        let busy = |a: &GroupAction| a.launches() || matches!(a, GroupAction::Pause { .. });
        let touched: Vec<NodeId> = self.actions.iter().filter(|a| busy(a)).map(|a| a.member().clone()).collect();
        let unavailable = self.members.iter().any(|m| matches!(m.state, NodeState::Launching | NodeState::Recovering));
        let old: Vec<&Node> = self
            .members
            .iter()
            .copied()
            .filter(|m| m.state == NodeState::Running && !touched.contains(&m.id))
            .filter(|m| m.instance.as_ref().is_some_and(|i| i.launched_at < rollout.started_at))
            .collect();
        if old.is_empty() {
            if !unavailable {
                let next = self.next_group();
                next.rollout = None;
                next.record_by(now, "rolling recycle finished: every running member is on a new instance", None);
            }
            return;
        }
        if unavailable || !touched.is_empty() {
            return;
        }
        for member in old.into_iter().take(self.group.max_unavailable.max(1) as usize) {
            self.actions.push(GroupAction::Recycle { member: member.id.clone(), seen: member.version });
        }
    }

    /// Rule 6.
    fn deallocate_all(&mut self, now: DateTime<Utc>) {
        let mut remaining = 0;
        for member in self.members.iter().filter(|m| live(m)) {
            remaining += 1;
            if member.state != NodeState::Deallocating {
                self.actions.push(GroupAction::Deallocate { member: member.id.clone(), seen: member.version, keep_eni: self.group.keep_enis });
            }
        }
        if remaining == 0 {
            let next = self.next_group();
            next.state = GroupState::Deallocated;
            next.record_by(now, "deallocated: every member is deallocated", None);
        }
    }
}

/// A candidate to meet the target: a pool member about to be created, or a paused member.
enum Waiting<'a> {
    Created(usize),
    Paused(&'a Node),
}

fn status(group: &Group, members: &[&Node]) -> GroupStatus {
    let count = |keep: &dyn Fn(&Node) -> bool| members.iter().filter(|m| keep(m)).count() as u32;
    let mut status = GroupStatus {
        target_capacity: group.target_capacity,
        counting: count(&|m| counts(m.state)),
        running: count(&|m| m.state == NodeState::Running),
        launching: count(&|m| matches!(m.state, NodeState::Launching | NodeState::Recovering)),
        paused: count(&|m| m.state == NodeState::Paused && !group.holds(m)),
        held: count(&|m| group.holds(m)),
        error: count(&|m| m.state == NodeState::Error),
        deallocating: count(&|m| m.state == NodeState::Deallocating),
        rollout_remaining: group.rollout.as_ref().map(|r| {
            count(&|m| m.state == NodeState::Running && m.instance.as_ref().is_some_and(|i| i.launched_at < r.started_at))
        }),
        below_target: None,
        settled: false,
    };
    if status.running >= group.target_capacity && group.state == GroupState::Active {
        return status;
    }
    let ids = |keep: &dyn Fn(&Node) -> bool| {
        let ids: Vec<&str> = members.iter().filter(|m| keep(m)).map(|m| m.id.as_str()).collect();
        ids.join(", ")
    };
    let mut why = Vec::new();
    match group.state {
        GroupState::Paused => why.push("the group is paused".to_owned()),
        GroupState::Deallocating | GroupState::Deallocated => why.push("the group is deallocated".to_owned()),
        GroupState::Active => {}
    }
    if status.held > 0 {
        why.push(format!("{} held (paused through the node API; resume them or the group): {}", status.held, ids(&|m| group.holds(m))));
    }
    if status.error > 0 {
        why.push(format!("{} in error (see each member's last_error): {}", status.error, ids(&|m| m.state == NodeState::Error)));
    }
    if status.launching > 0 {
        let waiting = members.iter().filter(|m| m.state == NodeState::Launching && m.last_error.is_some()).count();
        let mut text = format!("{} launching or recovering", status.launching);
        if waiting > 0 {
            text.push_str(&format!(" ({waiting} waiting for capacity or their ENI; see last_error)"));
        }
        why.push(text);
    }
    if group.state == GroupState::Active && status.counting + status.held < group.target_capacity {
        why.push(format!("{} to be resumed or created by the group", group.target_capacity - status.counting - status.held));
    }
    if !why.is_empty() {
        status.below_target = Some(format!("{} of {} running: {}", status.running, group.target_capacity, why.join("; ")));
    }
    status
}

#[cfg(test)]
mod tests;
