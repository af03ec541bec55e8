//! Stateful groups: creating them (every address checked and reserved before anything is
//! made), changing them, and the group actions. What the group then does to its members is
//! the controller's (`group::plan`), run by `group_run`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use tracing::info;

use super::addresses::release_write;
use super::manage::{check_name, check_private_ip, check_tags};
use super::{Tether, TetherError, MAX_CONFLICTS};
use crate::error::ErrorClass;
use crate::group::{self, Group, GroupId, GroupState, GroupStatus, GroupSubnet, MemberTemplate, Rollout};
use crate::lifecycle::{check_handover, check_launch_settings, patch_spec};
use crate::model::{MetadataOptions, Node, NodeState};
use crate::network_identity::check_address_request;
use crate::ports::{Address, Expect, Reservation, Write, MAX_WRITES};
use crate::views::{CreateGroup, GroupPatch};

/// The largest target capacity, and the largest pools.
pub const MAX_TARGET: u32 = 500;
pub const MAX_POOL: usize = 500;

/// Addresses one request may reserve or release: one transaction holds the group and them.
const MAX_ADDRESS_CHANGES: usize = MAX_WRITES - 1;

impl Tether {
    pub async fn group(&self, id: &GroupId) -> Result<Group, TetherError> {
        self.registry.group(id).await?.ok_or_else(|| TetherError::GroupNotFound(id.clone()))
    }

    /// The group with what its members make of it now.
    pub async fn group_status(&self, id: &GroupId) -> Result<(Group, Vec<Node>, GroupStatus), TetherError> {
        let group = self.group(id).await?;
        let members = self.registry.members(id).await?;
        let status = group::plan(&group, &members, self.clock.now()).status;
        Ok((group, members, status))
    }

    /// One page of groups; pass the returned id to get the next page.
    pub async fn groups(&self, limit: usize, start_after: Option<&GroupId>) -> Result<(Vec<Group>, Option<GroupId>), TetherError> {
        Ok(self.registry.groups(limit, start_after).await?)
    }

    /// Creates a group after checking its subnets, template and pools; reserves every pool
    /// address with it. Its members are made by the controller (`run_group`).
    pub async fn create_group(&self, request: CreateGroup, by: Option<&str>) -> Result<Group, TetherError> {
        self.create_group_as(GroupId::generate(), request, by).await
    }

    /// `create_group` with the id chosen by the caller: the chaos test derives it from its
    /// seed, so that a scenario (whose members' ids derive from it) replays exactly.
    pub(crate) async fn create_group_as(&self, id: GroupId, mut request: CreateGroup, by: Option<&str>) -> Result<Group, TetherError> {
        check_group_name("name", &request.name)?;
        check_template("template", &request.template)?;
        check_public_ip_beside_pool(&request.template, &request.elastic_ip_pool)?;
        // IMDSv2 required unless the request (or its launch template) says otherwise, as for a node.
        let (launch, launch_template) = self.checked_launch(&request.template.spec_in(""), "template.").await?;
        if launch_template.as_ref().is_none_or(|t| t.metadata_options.is_none()) {
            request.template.metadata_options.get_or_insert_with(MetadataOptions::default);
        }
        self.check_instance_types(&launch.instance_types, "template.instance_types", 0, "template.instance_types").await?;
        check_target("target_capacity", request.target_capacity)?;
        check_max_unavailable(request.max_unavailable)?;
        crate::schedules::check_schedules(&request.schedules).map_err(|(field, reason)| TetherError::invalid(field, reason))?;
        let subnets = self.group_subnets(&request.subnet_ids, &[]).await?;
        let now = self.clock.now();
        let mut group = Group {
            id,
            name: request.name,
            subnets,
            template: request.template,
            target_capacity: request.target_capacity,
            private_ip_pool: Vec::new(),
            elastic_ip_pool: Vec::new(),
            max_unavailable: request.max_unavailable,
            deletion_protection: request.deletion_protection,
            state: GroupState::Active,
            keep_enis: false,
            rollout: None,
            holds_cleared_at: None,
            schedules: request.schedules,
            schedule_runs: Default::default(),
            version: 0,
            history: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        // The Elastic IPs and the count first: nothing is made in EC2 for a request refused.
        let eip_claims = self.claim_elastic_ips(&group, &request.elastic_ip_pool).await?;
        let changes = request.private_ip_pool.len() + eip_claims.len();
        check_changes(if request.private_ip_pool.len() >= eip_claims.len() { "private_ip_pool" } else { "elastic_ip_pool" }, changes)?;
        let mut claims = self.claim_private_ips(&group, &request.private_ip_pool).await?;
        claims.extend(eip_claims);
        group.private_ip_pool = request.private_ip_pool;
        group.elastic_ip_pool = request.elastic_ip_pool;
        group.record_by(now, format!("created: target {}, {} pool addresses, {} pool Elastic IPs", group.target_capacity, group.private_ip_pool.len(), group.elastic_ip_pool.len()), by);
        let mut writes = vec![Write::CreateGroup(group.clone())];
        writes.extend(claims.iter().map(|r| Write::PutReservation { reservation: r.clone(), expect: Expect::Absent }));
        if let Err(e) = self.write_claims(writes, &claims, group.id.as_str()).await {
            self.undo_ahead(&claims).await;
            return Err(e);
        }
        for reservation in &claims {
            self.reserve_in_subnet(reservation).await;
        }
        info!(group_id = %group.id, "group created");
        Ok(group)
    }

    /// Writes a group with its reservations; a reservation someone took meanwhile is named.
    async fn write_claims(&self, writes: Vec<Write>, claims: &[Reservation], mine: &str) -> Result<(), TetherError> {
        match self.registry.write(writes).await {
            Err(e) if e.class == ErrorClass::Conflict => {
                let named: Vec<(Address, &str)> = claims.iter().map(|r| (r.address.clone(), pool_field(&r.address))).collect();
                match self.reservation_conflict(&named, mine).await? {
                    Some(taken) => Err(taken),
                    None => Err(e.into()),
                }
            }
            other => Ok(other?),
        }
    }

    /// The subnets, described by EC2: they exist and lie in one VPC. `known` are the
    /// group's own already (not described again).
    async fn group_subnets(&self, ids: &[String], known: &[GroupSubnet]) -> Result<Vec<GroupSubnet>, TetherError> {
        let field = "subnet_ids";
        if ids.is_empty() {
            return Err(TetherError::invalid(field, "list at least one subnet of the group's VPC"));
        }
        let mut subnets: Vec<GroupSubnet> = Vec::new();
        for id in ids {
            if !id.starts_with("subnet-") || check_name(field, id).is_err() {
                return Err(TetherError::invalid(field, format!("`{}` is not a subnet id like subnet-0123456789abcdef0", id.escape_debug())));
            }
            if subnets.iter().any(|s| s.id == *id) {
                return Err(TetherError::invalid(field, format!("{id} is listed twice")));
            }
            let subnet = match known.iter().find(|s| s.id == *id) {
                Some(s) => s.clone(),
                None => {
                    let info = self.network.describe_subnet(id).await?.ok_or_else(|| TetherError::invalid(field, format!("subnet {id} does not exist in this Region")))?;
                    GroupSubnet { id: id.clone(), cidr: info.cidr, availability_zone: info.availability_zone, vpc_id: info.vpc_id }
                }
            };
            // Against the group's subnets kept too: a pool address moves between members of one VPC only.
            if let Some(other) = subnets.iter().chain(known).find(|s| s.vpc_id != subnet.vpc_id) {
                return Err(TetherError::invalid(
                    field,
                    format!("{id} is in {}, {} in {}: a group's subnets are of one VPC", subnet.vpc_id, other.id, other.vpc_id),
                ));
            }
            subnets.push(subnet);
        }
        Ok(subnets)
    }

    /// The reservations of pool addresses new to `group`, each checked: inside one of its
    /// subnets, not one of the 5 AWS reserves, listed once, not reserved by another node or
    /// group, not in use in EC2. Each is reserved in its subnet ahead of the claim
    /// (`reserve_ahead`); the caller undoes them (`undo_ahead`) if the claim is not written.
    async fn claim_private_ips(&self, group: &Group, ips: &[Ipv4Addr]) -> Result<Vec<Reservation>, TetherError> {
        let field = "private_ip_pool";
        if ips.len() > MAX_POOL {
            return Err(TetherError::invalid(field, format!("a pool takes at most {MAX_POOL} addresses")));
        }
        // What needs no call first: a refusal then leaves nothing made in EC2.
        let mut seen = BTreeSet::new();
        let mut new = Vec::new();
        for &ip in ips {
            if !seen.insert(ip) {
                return Err(TetherError::invalid(field, format!("{ip} is listed twice")));
            }
            if group.private_ip_pool.contains(&ip) {
                continue;
            }
            let Some(subnet) = group.subnet_of(ip) else {
                let ranges: Vec<String> = group.subnets.iter().map(|s| format!("{} ({})", s.cidr, s.id)).collect();
                return Err(TetherError::invalid(field, format!("{ip} is outside every subnet of the group: {}", ranges.join(", "))));
            };
            check_private_ip(subnet.cidr, ip).map_err(|reason| TetherError::invalid(field, reason))?;
            new.push(Address::PrivateIp { subnet_id: subnet.id.clone(), ip });
        }
        let mut unclaimed = Vec::new();
        for address in new {
            if self.unreserved(&address, field, group.id.as_str()).await?.is_none() {
                unclaimed.push(address);
            }
        }
        let mut claims = Vec::new();
        for address in unclaimed {
            let made = self.reserve_ahead(&address, group.id.as_str()).await;
            claims.push(Reservation { subnet_reservation: made, ..Reservation::new(address.clone(), group.id.as_str()) });
            let Address::PrivateIp { subnet_id, ip } = &address else { continue };
            let in_use = match self.network.private_ip_in_use(subnet_id, *ip).await {
                Ok(false) => None,
                Ok(true) => Some(TetherError::invalid(field, format!("{ip} is already in use in {subnet_id}; choose a free address"))),
                Err(e) => Some(e.into()),
            };
            if let Some(refused) = in_use {
                self.undo_ahead(&claims).await;
                return Err(refused);
            }
        }
        Ok(claims)
    }

    /// The reservations of Elastic IPs new to `group`'s pool: they exist, are associated
    /// with nothing, are listed once, and no other node or group has them.
    async fn claim_elastic_ips(&self, group: &Group, allocation_ids: &[String]) -> Result<Vec<Reservation>, TetherError> {
        let field = "elastic_ip_pool";
        if allocation_ids.len() > MAX_POOL {
            return Err(TetherError::invalid(field, format!("a pool takes at most {MAX_POOL} Elastic IPs")));
        }
        let mut seen = BTreeSet::new();
        let mut claims = Vec::new();
        for allocation_id in allocation_ids {
            if !allocation_id.starts_with("eipalloc-") || check_name(field, allocation_id).is_err() {
                return Err(TetherError::invalid(field, format!("`{}` is not an allocation id like eipalloc-0123", allocation_id.escape_debug())));
            }
            if !seen.insert(allocation_id) {
                return Err(TetherError::invalid(field, format!("{allocation_id} is listed twice")));
            }
            if group.elastic_ip_pool.contains(allocation_id) {
                continue;
            }
            let address = Address::ElasticIp { allocation_id: allocation_id.clone() };
            if self.unreserved(&address, field, group.id.as_str()).await?.is_some() {
                continue;
            }
            let eip = self
                .network
                .describe_eip(allocation_id)
                .await?
                .ok_or_else(|| TetherError::invalid(field, format!("Elastic IP allocation {allocation_id} does not exist in this Region")))?;
            if eip.association_id.is_some() {
                return Err(TetherError::invalid(
                    field,
                    format!("Elastic IP {} ({allocation_id}) is associated with {}; disassociate it or choose another", eip.public_ip, eip.holder()),
                ));
            }
            claims.push(Reservation::new(address, group.id.as_str()));
        }
        Ok(claims)
    }

    /// Changes a group; see `GroupPatch` for what each field does. The group's controller
    /// then makes its members follow.
    pub async fn patch_group(&self, id: &GroupId, patch: &GroupPatch, by: Option<&str>) -> Result<Group, TetherError> {
        if let Some(name) = &patch.name {
            check_group_name("name", name)?;
        }
        if let Some(target) = patch.target_capacity {
            check_target("target_capacity", target)?;
        }
        if let Some(max) = patch.max_unavailable {
            check_max_unavailable(max)?;
        }
        if let Some(template) = &patch.template {
            if template.subnet_id.is_some() || template.private_ip.is_some() {
                let field = if template.subnet_id.is_some() { "template.subnet_id" } else { "template.private_ip" };
                return Err(TetherError::invalid(field, "a group's members take their subnets from subnet_ids and their addresses from private_ip_pool"));
            }
        }
        // Subnet CIDR reservations made ahead of claims, undone if the change is refused.
        let mut ahead = Vec::new();
        let patched = self.patch_group_tries(id, patch, by, &mut ahead).await;
        if patched.is_err() {
            self.undo_ahead(&ahead).await;
        }
        patched
    }

    /// `patch_group`'s change, tried again on a lost race; `ahead` collects the subnet CIDR
    /// reservations made for new pool addresses.
    async fn patch_group_tries(&self, id: &GroupId, patch: &GroupPatch, by: Option<&str>, ahead: &mut Vec<Reservation>) -> Result<Group, TetherError> {
        for _ in 0..MAX_CONFLICTS {
            let group = self.group(id).await?;
            if matches!(group.state, GroupState::Deallocating | GroupState::Deallocated) {
                return Err(TetherError::Conflict(format!("group {id} is {}; it cannot change", state_name(group.state))));
            }
            let now = self.clock.now();
            let mut next = group.clone();
            let mut what = Vec::new();
            let mut writes = Vec::new();
            // Reservations the writes delete: their subnet CIDR reservations go once they are done.
            let mut released = Vec::new();
            if let Some(name) = patch.name.as_ref().filter(|n| **n != group.name) {
                what.push(format!("name {name}"));
                next.name = name.clone();
            }
            if let Some(template) = &patch.template {
                let mut spec = group.template.spec_in("");
                let changed = patch_spec(&mut spec, template).map_err(|e| TetherError::invalid(format!("template.{}", e.field), e.reason))?;
                next.template = MemberTemplate::of_spec(spec);
                check_template("template", &next.template)?;
                let launch_changed = next.template.image_id != group.template.image_id || next.template.block_devices != group.template.block_devices;
                if launch_changed || (next.template.launch_template.is_some() && next.template != group.template) {
                    self.checked_launch(&next.template.spec_in(""), "template.").await?;
                }
                if let Some(types) = template.instance_types.as_ref().filter(|_| next.template.instance_types != group.template.instance_types) {
                    self.check_instance_types(types, "template.instance_types", 0, "template.instance_types").await?;
                }
                if !changed.is_empty() {
                    what.push(format!("template ({}; every member's next launch uses it)", changed.join(", ")));
                }
            }
            if let Some(target) = patch.target_capacity.filter(|t| *t != group.target_capacity) {
                what.push(format!("target capacity {} → {target}", group.target_capacity));
                next.target_capacity = target;
            }
            if let Some(max) = patch.max_unavailable.filter(|m| *m != group.max_unavailable) {
                what.push(format!("max unavailable {} → {max}", group.max_unavailable));
                next.max_unavailable = max;
            }
            if let Some(on) = patch.deletion_protection.filter(|on| *on != group.deletion_protection) {
                what.push(format!("deletion protection {}", if on { "on" } else { "off" }));
                next.deletion_protection = on;
            }
            if let Some(schedules) = patch.schedules.as_ref().filter(|s| **s != group.schedules) {
                crate::schedules::check_schedules(schedules).map_err(|(field, reason)| TetherError::invalid(field, reason))?;
                what.push(format!("schedules: {}", schedules.iter().map(|s| s.key()).collect::<Vec<_>>().join("; ")));
                crate::schedules::runs_from(&mut next.schedule_runs, schedules, now);
                next.schedules = schedules.clone();
            }
            let members = self.registry.members(id).await?;
            if let Some(ids) = &patch.subnet_ids {
                next.subnets = self.group_subnets(ids, &group.subnets).await?;
                for gone in group.subnets.iter().filter(|s| !ids.contains(&s.id)) {
                    if let Some(m) = members.iter().find(|m| m.state != NodeState::Deallocated && m.spec.subnet_id == gone.id) {
                        return Err(TetherError::conflict_on("subnet_ids", format!("member {} lives in {}: a subnet is removed only once no member lives in it", m.id, gone.id)));
                    }
                    // The pool as patched: its addresses are removed in the same request.
                    let pool = patch.private_ip_pool.as_ref().unwrap_or(&group.private_ip_pool);
                    if let Some(ip) = pool.iter().find(|ip| gone.cidr.contains(*ip)) {
                        return Err(TetherError::invalid("subnet_ids", format!("pool address {ip} lies in {}: remove it from private_ip_pool first", gone.id)));
                    }
                }
                if next.subnets != group.subnets {
                    what.push(format!("subnets {}", ids.join(", ")));
                }
            }
            if let Some(pool) = &patch.elastic_ip_pool {
                let claims = self.claim_elastic_ips(&next, pool).await?;
                for reservation in &claims {
                    writes.push(Write::PutReservation { reservation: reservation.clone(), expect: Expect::Absent });
                }
                let removed: Vec<&String> = group.elastic_ip_pool.iter().filter(|a| !pool.contains(a)).collect();
                for allocation_id in &removed {
                    let address = Address::ElasticIp { allocation_id: (*allocation_id).clone() };
                    if let Some(r) = self.registry.reservation(&address).await?.filter(|r| r.owner == id.as_str()) {
                        if let Some(member) = &r.member {
                            return Err(TetherError::conflict_on(
                                "elastic_ip_pool",
                                format!("Elastic IP {allocation_id} is held by member {member}: it stays in the pool until that member is deallocated"),
                            ));
                        }
                        writes.push(release_write(&r));
                        released.push(r);
                    }
                }
                if !claims.is_empty() || !removed.is_empty() {
                    what.push(format!("Elastic-IP pool: {} added, {} removed", claims.len(), removed.len()));
                }
                next.elastic_ip_pool = pool.clone();
            }
            check_public_ip_beside_pool(&next.template, &next.elastic_ip_pool)?;
            if let Some(pool) = &patch.private_ip_pool {
                let claims = self.claim_private_ips(&next, pool).await?;
                ahead.extend(claims.iter().cloned());
                for reservation in &claims {
                    writes.push(Write::PutReservation { reservation: reservation.clone(), expect: Expect::Absent });
                }
                let removed: Vec<Ipv4Addr> = group.private_ip_pool.iter().filter(|ip| !pool.contains(ip)).copied().collect();
                for ip in &removed {
                    writes.extend(self.pool_ip_leaves(&group, *ip, &members, &mut released).await?);
                }
                if !claims.is_empty() || !removed.is_empty() {
                    what.push(format!("private-IP pool: {} added, {} removed", claims.len(), removed.len()));
                }
                next.private_ip_pool = pool.clone();
            }
            check_changes(if patch.private_ip_pool.is_some() { "private_ip_pool" } else { "elastic_ip_pool" }, writes.len())?;
            if what.is_empty() && writes.is_empty() {
                return Ok(group);
            }
            next.record_by(now, format!("changed: {}", what.join("; ")), by);
            let claims: Vec<Reservation> = writes
                .iter()
                .filter_map(|w| match w {
                    Write::PutReservation { reservation, expect: Expect::Absent } => Some(reservation.clone()),
                    _ => None,
                })
                .collect();
            writes.insert(0, Write::SaveGroup(next.clone()));
            match self.write_claims(writes, &claims, id.as_str()).await {
                Err(TetherError::Aws(e)) if e.class == ErrorClass::Conflict => continue,
                other => other?,
            }
            self.unreserve_released(&released).await;
            for reservation in &claims {
                self.reserve_in_subnet(reservation).await;
            }
            return Ok(Group { version: next.version + 1, ..next });
        }
        Err(TetherError::GroupContended { group_id: id.clone() })
    }

    /// What happens to `ip`'s reservation when it leaves the pool: it passes to the member
    /// made for the address (one that ran keeps the address; one that never ran keeps it
    /// until the controller deallocates it, so that a resume under way meanwhile cannot
    /// launch it on an address nobody reserves); without one it is released (and added to
    /// `released`). Conditional on the members being as read. A member being deallocated
    /// keeps nothing: its deallocation, which read the reservation as the group's, would
    /// not release it.
    async fn pool_ip_leaves(&self, group: &Group, ip: Ipv4Addr, members: &[Node], released: &mut Vec<Reservation>) -> Result<Vec<Write>, TetherError> {
        let Some(subnet) = group.subnet_of(ip) else { return Ok(Vec::new()) };
        let address = Address::PrivateIp { subnet_id: subnet.id.clone(), ip };
        let Some(r) = self.registry.reservation(&address).await?.filter(|r| r.owner == group.id.as_str()) else { return Ok(Vec::new()) };
        let live: Vec<&Node> = members.iter().filter(|m| m.state != NodeState::Deallocated && m.group.as_ref().and_then(|g| g.pool_ip) == Some(ip)).collect();
        let mut writes: Vec<Write> = live.iter().map(|m| Write::CheckNode { id: m.id.clone(), version: m.version }).collect();
        let ran = |m: &&&Node| m.generation > 0 || m.eni.is_some();
        let keeper = live.iter().filter(|m| m.state != NodeState::Deallocating).min_by_key(|m| !ran(m));
        match keeper {
            Some(keeper) => writes.push(Write::PutReservation { reservation: Reservation { owner: keeper.id.to_string(), ..r.clone() }, expect: Expect::of(Some(&r)) }),
            None => {
                // Nor a member made for it since the members were read (a controller run that
                // planned before the pool changed): it would launch on an address nobody
                // reserves. Its id is derived: the next ordinal for the address.
                let ordinal = members.iter().filter(|m| m.group.as_ref().and_then(|g| g.pool_ip) == Some(ip)).filter_map(|m| m.group.as_ref().map(|g| g.ordinal)).max().unwrap_or(0) + 1;
                writes.push(Write::CheckNoNode { id: group.id.pool_member(ip, ordinal) });
                writes.push(release_write(&r));
                released.push(r);
            }
        }
        Ok(writes)
    }

    /// Sets a new target capacity.
    pub async fn scale_group(&self, id: &GroupId, target: u32, by: Option<&str>) -> Result<Group, TetherError> {
        self.patch_group(id, &GroupPatch { target_capacity: Some(target), ..GroupPatch::default() }, by).await
    }

    /// Pauses every member; the target is kept for the resume.
    pub async fn pause_group(&self, id: &GroupId, by: Option<&str>) -> Result<Group, TetherError> {
        self.change_group(id, by, |group, _| match group.state {
            GroupState::Paused => Ok(None),
            GroupState::Active => Ok(Some(("paused: every member is paused; the target is kept".into(), Group { state: GroupState::Paused, ..group.clone() }))),
            other => Err(gone(&group.id, other)),
        })
        .await
    }

    /// Resumes a paused group, and clears every hold: held members count again.
    pub async fn resume_group(&self, id: &GroupId, by: Option<&str>) -> Result<Group, TetherError> {
        self.change_group(id, by, |group, now| match group.state {
            GroupState::Paused | GroupState::Active => {
                Ok(Some(("resumed: holds cleared; the target is kept again".into(), Group { state: GroupState::Active, holds_cleared_at: Some(now), ..group.clone() })))
            }
            other => Err(gone(&group.id, other)),
        })
        .await
    }

    /// A rolling recycle: every running member is replaced by a new instance on its own ENI,
    /// `max_unavailable` at a time, each batch back running before the next.
    pub async fn recycle_group(&self, id: &GroupId, by: Option<&str>) -> Result<Group, TetherError> {
        self.change_group(id, by, |group, now| match (group.state, &group.rollout) {
            (GroupState::Active, Some(_)) => Ok(None),
            (GroupState::Active, None) => Ok(Some((
                format!("rolling recycle started, {} member(s) at a time", group.max_unavailable),
                Group { rollout: Some(Rollout { started_at: now }), ..group.clone() },
            ))),
            (GroupState::Paused, _) => Err(TetherError::Conflict(format!("group {} is paused: resume it first (its members launch with the template when resumed)", group.id))),
            (other, _) => Err(gone(&group.id, other)),
        })
        .await
    }

    /// Deallocates every member (their ENIs deleted unless `keep_enis`), then the group; its
    /// record and history stay. Refused while deletion protection is on.
    pub async fn deallocate_group(&self, id: &GroupId, keep_enis: bool, by: Option<&str>) -> Result<Group, TetherError> {
        self.change_group(id, by, |group, _| match group.state {
            GroupState::Deallocating | GroupState::Deallocated => Ok(None),
            _ if group.deletion_protection => Err(TetherError::conflict_on(
                "deletion_protection",
                format!(
                    "group {} has deletion protection on: turn it off first (PATCH /groups/{} {{\"deletion_protection\": false}}; CLI: tether groups update {} --no-deletion-protection)",
                    group.id, group.id, group.id
                ),
            )),
            _ => Ok(Some((
                format!("deallocate requested{}", if keep_enis { " (keep ENIs)" } else { "" }),
                Group { state: GroupState::Deallocating, keep_enis, rollout: None, ..group.clone() },
            ))),
        })
        .await
    }

    /// Runs the group's scheduled action whose slot is due (`schedules::due_now`), then records
    /// the slot as run: a pause, resume or recycle of the group as the API's (one with nothing
    /// to do, or refused, recorded as such). What it did, if anything.
    pub(super) async fn run_group_schedule(&self, group: &Group) -> Result<Option<String>, TetherError> {
        if !matches!(group.state, GroupState::Active | GroupState::Paused) {
            return Ok(None);
        }
        let Some((schedule, slot)) = crate::schedules::due_now(&group.schedules, &group.schedule_runs, group.created_at, self.clock.now()) else { return Ok(None) };
        let by = format!("schedule `{}` ({})", schedule.cron.trim(), schedule.time_zone);
        let action = schedule.action;
        let done = match action {
            crate::schedules::ScheduledAction::Pause => self.pause_group(&group.id, Some(&by)).await,
            crate::schedules::ScheduledAction::Resume => self.resume_group(&group.id, Some(&by)).await,
            crate::schedules::ScheduledAction::Recycle => self.recycle_group(&group.id, Some(&by)).await,
        };
        let what = match done {
            Ok(_) => format!("scheduled {} run", action.as_str()),
            Err(e @ (TetherError::Conflict(_) | TetherError::ConflictOn { .. })) => format!("scheduled {}: nothing to do ({e})", action.as_str()),
            Err(e) => return Err(e),
        };
        let key = schedule.key();
        self.change_group(&group.id, Some(&by), |g, _| {
            let mut next = g.clone();
            next.schedule_runs.insert(key.clone(), slot);
            Ok(Some((what.clone(), next)))
        })
        .await?;
        Ok(Some(what))
    }

    /// Writes what `decide` makes of the group (nothing for `None`), recorded with its words;
    /// a lost race is re-read and decided again.
    async fn change_group(
        &self,
        id: &GroupId,
        by: Option<&str>,
        decide: impl Fn(&Group, DateTime<Utc>) -> Result<Option<(String, Group)>, TetherError>,
    ) -> Result<Group, TetherError> {
        for _ in 0..MAX_CONFLICTS {
            let group = self.group(id).await?;
            let now = self.clock.now();
            let Some((what, mut next)) = decide(&group, now)? else { return Ok(group) };
            next.record_by(now, what, by);
            match self.registry.write(vec![Write::SaveGroup(next.clone())]).await {
                Err(e) if e.class == ErrorClass::Conflict => continue,
                other => other?,
            }
            info!(group_id = %id, state = state_name(next.state), "group changed");
            return Ok(Group { version: next.version + 1, ..next });
        }
        Err(TetherError::GroupContended { group_id: id.clone() })
    }
}

fn gone(id: &GroupId, state: GroupState) -> TetherError {
    TetherError::Conflict(format!("group {id} is {}", state_name(state)))
}

pub(crate) fn state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Active => "active",
        GroupState::Paused => "paused",
        GroupState::Deallocating => "being deallocated",
        GroupState::Deallocated => "deallocated",
    }
}

/// The request field an address of a group's pools is reported on.
fn pool_field(address: &Address) -> &'static str {
    match address {
        Address::PrivateIp { .. } => "private_ip_pool",
        Address::ElasticIp { .. } => "elastic_ip_pool",
    }
}

/// `field`: the pool the request changes most.
fn check_changes(field: &str, count: usize) -> Result<(), TetherError> {
    if count > MAX_ADDRESS_CHANGES {
        return Err(TetherError::invalid(
            field,
            format!(
                "one request writes at most {MAX_ADDRESS_CHANGES} items beside the group (DynamoDB's {MAX_WRITES}-item transaction): one per pool address or Elastic IP added or removed, plus one per member an address removed passes to; this one needs {count}: split it into several requests"
            ),
        ));
    }
    Ok(())
}

fn check_group_name(field: &str, name: &str) -> Result<(), TetherError> {
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(TetherError::invalid(field, "a group's name has 1 to 128 characters, without control characters"));
    }
    Ok(())
}

fn check_target(field: &str, target: u32) -> Result<(), TetherError> {
    if target > MAX_TARGET {
        return Err(TetherError::invalid(field, format!("{target} is more than a group keeps: 0 to {MAX_TARGET}")));
    }
    Ok(())
}

fn check_max_unavailable(max: u32) -> Result<(), TetherError> {
    if max == 0 || max > MAX_TARGET {
        return Err(TetherError::invalid("max_unavailable", format!("a rolling recycle replaces 1 to {MAX_TARGET} members at a time")));
    }
    Ok(())
}

/// A template's fields, as a node's spec is checked.
fn check_template(field: &str, template: &MemberTemplate) -> Result<(), TetherError> {
    // With a launch template, an empty image or type list takes the template's.
    let templated = template.launch_template.is_some();
    if let Some(launch_template) = &template.launch_template {
        launch_template.check().map_err(|(name, reason)| TetherError::invalid(format!("{field}.launch_template.{name}"), reason))?;
    }
    if !((template.image_id.starts_with("ami-") && check_name("", &template.image_id).is_ok()) || templated && template.image_id.is_empty()) {
        return Err(TetherError::invalid(format!("{field}.image_id"), "must be an AMI id like ami-0123456789abcdef0"));
    }
    if template.instance_types.is_empty() && !templated {
        return Err(TetherError::invalid(format!("{field}.instance_types"), "list at least one instance type, in order of preference"));
    }
    for instance_type in &template.instance_types {
        check_name(&format!("{field}.instance_types"), instance_type)?;
    }
    if let Some(sg) = template.security_group_ids.iter().find(|g| !g.starts_with("sg-") || check_name("", g).is_err()) {
        return Err(TetherError::invalid(format!("{field}.security_group_ids"), format!("`{}` is not a security group id like sg-0123", sg.escape_debug())));
    }
    if let Some(key) = &template.key_name {
        check_name(&format!("{field}.key_name"), key)?;
    }
    if let Some(profile) = &template.iam_instance_profile {
        check_name(&format!("{field}.iam_instance_profile"), profile)?;
    }
    // Each member's ENI is its own: addresses can only be counted, never named.
    let requests = [
        ("secondary_private_ips", template.secondary_private_ips.as_ref().map(|r| check_address_request(r, named))),
        ("ipv6", template.ipv6.as_ref().map(|r| check_address_request(r, named))),
    ];
    for (name, checked) in requests {
        if let Some(Err((request_field, reason))) = checked {
            let request_field = request_field.split('[').next().unwrap_or_default();
            return Err(TetherError::invalid(format!("{field}.{name}.{request_field}"), reason));
        }
    }
    check_launch_settings(template.metadata_options.as_ref(), &template.block_devices).map_err(|(name, reason)| TetherError::invalid(format!("{field}.{name}"), reason))?;
    crate::data_volumes::check_data_volumes(&template.data_volumes, &template.block_devices).map_err(|(name, reason)| TetherError::invalid(format!("{field}.{name}"), reason))?;
    template.auto_healing.check().map_err(|(name, reason)| TetherError::invalid(format!("{field}.auto_healing.{name}"), reason))?;
    check_handover(template.handover_after_warning_seconds).map_err(|(name, reason)| TetherError::invalid(format!("{field}.{name}"), reason))?;
    crate::launch_options::check_launch_options(template.spot_max_price.as_deref(), template.placement.as_ref(), template.capacity_reservation.as_ref())
        .map_err(|(name, reason)| TetherError::invalid(format!("{field}.{name}"), reason))?;
    check_tags(&format!("{field}.eni_tags"), &template.eni_tags)?;
    check_tags(&format!("{field}.volume_tags"), &template.volume_tags)?;
    check_tags(&format!("{field}.tags"), &template.tags)
}

/// Any named address in a group's template: each member's ENI needs its own.
fn named<A>(_: A) -> Result<(), String> {
    Err("a group's members each need their own addresses: give a count".to_owned())
}

/// A public IP from Amazon's pool is refused beside an Elastic-IP pool: a pool address is
/// the members' public IP (on eth0 it would hide the other).
fn check_public_ip_beside_pool(template: &MemberTemplate, elastic_ip_pool: &[String]) -> Result<(), TetherError> {
    if template.public_ip_assignment != crate::model::PublicIpAssignment::None && !elastic_ip_pool.is_empty() {
        return Err(TetherError::invalid(
            "template.public_ip_assignment",
            "the group has an Elastic-IP pool: its addresses are the members' public IPs; leave public_ip_assignment out, or empty elastic_ip_pool",
        ));
    }
    Ok(())
}
