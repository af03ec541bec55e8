//! The scenario's group: its set-up, and the moves of users (and of the scheduled
//! controller) on it and on its members.

use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};

use super::{block_on, Finished, GroupMove, Move, Origin, UserAction, World, SUBNET, SUBNET_B};
use crate::group::{GroupId, GroupState, MemberTemplate};
use crate::lifecycle::NodePatch;
use crate::model::{NodeId, NodeState};
use crate::service::Tether;
use crate::views::{CreateGroup, GroupPatch};

/// Where pool addresses come from: away from the single nodes' chosen ones (10.0.1.10+n).
const POOL_HOSTS: std::ops::RangeInclusive<u8> = 100..=107;

/// Runs one group request as the API does.
pub(super) async fn run(tether: &Tether, id: &GroupId, action: GroupMove, deadline: DateTime<Utc>) -> Finished {
    let by = Some("chaos");
    match action {
        GroupMove::Scale(target) => Finished::of(tether.scale_group(id, target, by).await),
        GroupMove::Patch(patch) => Finished::of(tether.patch_group(id, &patch, by).await),
        GroupMove::Pause => Finished::of(tether.pause_group(id, by).await),
        GroupMove::Resume => Finished::of(tether.resume_group(id, by).await),
        GroupMove::Roll { n } => {
            // A new image, and ENI settings the members' ENIs take on at once (a sync).
            let template = NodePatch {
                image_id: Some(format!("ami-chaos{n}")),
                secondary_private_ips: Some(crate::model::SecondaryIps { count: Some(n), addresses: Vec::new() }),
                source_dest_check: Some(n != 2),
                ..NodePatch::default()
            };
            let patch = GroupPatch { template: Some(template), ..GroupPatch::default() };
            match tether.patch_group(id, &patch, by).await {
                Ok(_) => Finished::of(tether.recycle_group(id, by).await),
                Err(e) => Finished::of::<()>(Err(e)),
            }
        }
        GroupMove::Run => Finished::of(tether.run_group(id, deadline).await),
        GroupMove::Deallocate { keep_enis } => {
            let off = GroupPatch { deletion_protection: Some(false), ..GroupPatch::default() };
            match tether.patch_group(id, &off, by).await {
                Ok(_) => Finished::of(tether.deallocate_group(id, keep_enis, by).await),
                Err(e) => Finished::of::<()>(Err(e)),
            }
        }
    }
}

fn pool_candidates(subnets: &[&str]) -> Vec<Ipv4Addr> {
    let mut candidates = Vec::new();
    for subnet in subnets {
        let third = if *subnet == SUBNET { 1 } else { 2 };
        candidates.extend(POOL_HOSTS.map(|host| Ipv4Addr::new(10, 0, third, host)));
    }
    candidates
}

impl World {
    /// The group of the scenario, made through the API (no faults): 1–2 subnets, 0–4 pool
    /// addresses, 0–3 of the user's Elastic IPs, a target of 0–5.
    pub(super) fn create_group(&mut self, rng: &mut fastrand::Rng) {
        let subnets: Vec<&str> = if rng.bool() { vec![SUBNET, SUBNET_B] } else { vec![SUBNET] };
        let mut pool = pool_candidates(&subnets);
        rng.shuffle(&mut pool);
        pool.truncate(rng.usize(0..=4));
        let eips = (0..rng.usize(0..=3)).map(|_| self.ec2.hand_allocate_eip().expect("no Elastic IP limit is set").0).collect();
        let template = MemberTemplate::of_spec(super::random_launch(rng));
        let request = CreateGroup {
            name: "chaos".into(),
            subnet_ids: subnets.iter().map(|s| (*s).to_owned()).collect(),
            template,
            target_capacity: rng.u32(0..=5),
            private_ip_pool: pool,
            elastic_ip_pool: eips,
            max_unavailable: rng.u32(1..=2),
            deletion_protection: true,
            // Drawn last: an eighth of the groups pause, resume or recycle every hour.
            schedules: (rng.u8(0..8) == 0)
                .then(|| crate::schedules::Schedule {
                    action: [crate::schedules::ScheduledAction::Pause, crate::schedules::ScheduledAction::Resume, crate::schedules::ScheduledAction::Recycle][rng.usize(..3)],
                    cron: format!("{} * * * *", rng.u8(0..60)),
                    time_zone: "UTC".into(),
                })
                .into_iter()
                .collect(),
        };
        let id = GroupId::derived(&format!("chaos-{}", self.seed));
        let group = block_on(self.tether.create_group_as(id, request, Some("chaos"))).expect("a valid group");
        self.note(format!(
            "created group {} in {:?}: target {}, pool {:?}, Elastic IPs {:?}",
            group.id,
            group.subnets.iter().map(|s| &s.id).collect::<Vec<_>>(),
            group.target_capacity,
            group.private_ip_pool,
            group.elastic_ip_pool
        ));
        self.group_deallocatable = rng.u8(0..4) == 0;
        self.group = Some(group.id);
    }

    /// The members not deallocated, by id.
    pub(super) fn live_members(&self) -> Vec<NodeId> {
        let Some(id) = &self.group else { return Vec::new() };
        self.store
            .nodes()
            .into_iter()
            .filter(|n| n.state != NodeState::Deallocated && n.group.as_ref().is_some_and(|m| m.group_id == *id))
            .map(|n| n.id)
            .collect()
    }

    fn start_group(&mut self, action: GroupMove) {
        let Some(group_id) = self.group.clone() else { return };
        self.note(format!("user {action:?} {group_id}"));
        self.start(Origin::Group { group_id, action });
    }

    pub(super) fn group_move(&mut self, chosen: Move) {
        let Some(group) = self.group.as_ref().and_then(|id| self.store.groups_now().into_iter().find(|g| g.id == *id)) else { return };
        match chosen {
            Move::GroupScale => {
                let target = self.rng.u32(0..=6);
                self.start_group(GroupMove::Scale(target));
            }
            Move::GroupPool => {
                // The client reads the group, then sends the whole new pool.
                let mut pool = group.private_ip_pool.clone();
                let what = self.rng.u8(0..3);
                if what != 0 && !pool.is_empty() {
                    pool.remove(self.rng.usize(..pool.len()));
                }
                if what != 1 {
                    let subnets: Vec<&str> = group.subnets.iter().map(|s| s.id.as_str()).collect();
                    let fresh: Vec<Ipv4Addr> = pool_candidates(&subnets).into_iter().filter(|ip| !group.private_ip_pool.contains(ip)).collect();
                    if !fresh.is_empty() {
                        pool.push(fresh[self.rng.usize(..fresh.len())]);
                    }
                }
                self.start_group(GroupMove::Patch(Box::new(GroupPatch { private_ip_pool: Some(pool), ..GroupPatch::default() })));
            }
            Move::GroupElasticIps => {
                let mut pool = group.elastic_ip_pool.clone();
                let what = self.rng.u8(0..3);
                if what != 0 && !pool.is_empty() {
                    pool.remove(self.rng.usize(..pool.len()));
                }
                if what != 1 {
                    pool.push(self.ec2.hand_allocate_eip().expect("no Elastic IP limit is set").0);
                }
                self.start_group(GroupMove::Patch(Box::new(GroupPatch { elastic_ip_pool: Some(pool), ..GroupPatch::default() })));
            }
            Move::GroupPause => self.start_group(GroupMove::Pause),
            Move::GroupResume => self.start_group(GroupMove::Resume),
            Move::GroupRoll => {
                let n = self.rng.u8(1..4);
                self.start_group(GroupMove::Roll { n });
            }
            Move::GroupRun => self.start_group(GroupMove::Run),
            Move::GroupDeallocate if group.state != GroupState::Deallocated => {
                let keep_enis = self.rng.u8(0..3) == 0;
                self.start_group(GroupMove::Deallocate { keep_enis });
            }
            Move::Member => {
                let members = self.live_members();
                if members.is_empty() {
                    return;
                }
                let member = members[self.rng.usize(..members.len())].clone();
                let action = match self.rng.u8(0..10) {
                    0..=2 => UserAction::Pause,
                    3..=5 => UserAction::Resume,
                    6..=7 => UserAction::Recycle,
                    _ => UserAction::Deallocate { keep_eni: self.rng.u8(0..3) == 0 },
                };
                self.start_user(member, action);
            }
            _ => {}
        }
    }
}
