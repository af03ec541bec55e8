//! The invariants of groups and address reservations in a settled world, read from the
//! fakes' own state (the table's groups, nodes and reservations; EC2's ENIs and subnet
//! CIDR reservations), never from what the service says it did. Members are nodes: the
//! node invariants (`check`) hold for them too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::fake::EniView;
use crate::group::{Group, GroupState};
use crate::model::{Node, NodeState};
use crate::ports::{Address, Reservation};

/// What the fakes hold, as the group invariants read it.
pub struct Seen<'a> {
    pub groups: &'a [Group],
    pub nodes: &'a [Node],
    pub reservations: &'a [Reservation],
    pub enis: &'a [EniView],
    /// The ENIs whose private IP EC2 picked.
    pub picked: &'a BTreeSet<String>,
    /// EC2's subnet CIDR reservations: (id, subnet id, range).
    pub subnet_reservations: &'a [(String, String, Ipv4Net)],
    /// Those made within the sweep's grace (`SUBNET_RESERVATION_GRACE`): the sweep leaves
    /// them alone for now, named or not.
    pub young_subnet_reservations: &'a BTreeSet<String>,
}

/// Everything wrong with groups and reservations; empty when every invariant holds.
pub fn violations(seen: &Seen<'_>) -> Vec<String> {
    let mut found = Vec::new();
    for group in seen.groups {
        let members: Vec<&Node> = seen.nodes.iter().filter(|n| n.group.as_ref().is_some_and(|m| m.group_id == group.id)).collect();
        check_group(group, &members, seen, &mut found);
        for member in &members {
            check_member_history(group, member, &mut found);
        }
    }
    check_addresses_in_ec2(seen, &mut found);
    check_reservations(seen, &mut found);
    found
}

/// The addresses a node claims: its chosen private IP (in its subnet) and Elastic IP, its
/// named secondary IPs, and its extra ENIs' chosen IPs and Elastic IPs.
fn chosen_addresses(node: &Node) -> Vec<Address> {
    let private = |subnet_id: &str, ip| Address::PrivateIp { subnet_id: subnet_id.to_owned(), ip };
    let ip = node.persistence.private_ip.map(|ip| private(&node.spec.subnet_id, ip));
    let eip = node.persistence.elastic_ip_allocation_id.clone().map(|allocation_id| Address::ElasticIp { allocation_id });
    let secondary = node.spec.secondary_private_ips.iter().flat_map(|s| &s.addresses).map(|ip| private(&node.spec.subnet_id, *ip));
    let extra = node.spec.extra_enis.iter().flat_map(|e| {
        let eip = e.elastic_ip_allocation_id.clone().map(|allocation_id| Address::ElasticIp { allocation_id });
        e.private_ip.map(|ip| private(&e.subnet_id, ip)).into_iter().chain(eip)
    });
    ip.into_iter().chain(eip).chain(secondary).chain(extra).collect()
}

fn live(node: &Node) -> bool {
    node.state != NodeState::Deallocated
}

fn pool_ip(member: &Node) -> Option<Ipv4Addr> {
    member.group.as_ref().and_then(|m| m.pool_ip)
}

/// The address of `ip` in the group's subnet that holds it.
fn pool_address(group: &Group, ip: Ipv4Addr) -> Option<Address> {
    group.subnet_of(ip).map(|s| Address::PrivateIp { subnet_id: s.id.clone(), ip })
}

fn reservation<'a>(seen: &'a Seen<'_>, address: &Address) -> Option<&'a Reservation> {
    seen.reservations.iter().find(|r| r.address == *address)
}

/// The group's own rules: one member per pool address, the target kept (or every member
/// paused), nothing left of a deallocated group.
fn check_group(group: &Group, members: &[&Node], seen: &Seen<'_>, found: &mut Vec<String>) {
    let id = &group.id;
    let live_members: Vec<&Node> = members.iter().copied().filter(|m| live(m)).collect();
    match group.state {
        GroupState::Active | GroupState::Paused => {
            for ip in &group.private_ip_pool {
                let for_ip = live_members.iter().filter(|m| pool_ip(m) == Some(*ip)).count();
                if for_ip != 1 {
                    found.push(format!("group {id}: pool address {ip} has {for_ip} members that are not deallocated"));
                }
                let reserved = pool_address(group, *ip).and_then(|a| reservation(seen, &a));
                if reserved.is_none_or(|r| r.owner != id.as_str()) {
                    found.push(format!("group {id}: pool address {ip} is not reserved for it: {reserved:?}"));
                }
            }
            for allocation_id in &group.elastic_ip_pool {
                let address = Address::ElasticIp { allocation_id: allocation_id.clone() };
                if reservation(seen, &address).is_none_or(|r| r.owner != id.as_str()) {
                    found.push(format!("group {id}: pool Elastic IP {allocation_id} is not reserved for it: {:?}", reservation(seen, &address)));
                }
            }
            let counting = live_members.iter().filter(|m| counts(m.state)).count() as u32;
            let held = live_members.iter().filter(|m| group.holds(m)).count() as u32;
            let in_error = live_members.iter().filter(|m| m.state == NodeState::Error).count();
            let want = if group.state == GroupState::Paused { 0 } else { group.target_capacity.saturating_sub(held) };
            // Members in error do not count; the ones the group made to make up for them
            // may fail as well (each error is checked to have a hand-made cause).
            if counting > want || (counting < want && in_error == 0) {
                found.push(format!(
                    "group {id} ({:?}, target {}, {held} held): {counting} members counting, wanted {want} ({in_error} in error)",
                    group.state, group.target_capacity
                ));
            }
            if group.rollout.is_some() && group.state == GroupState::Active {
                found.push(format!("group {id}: its rolling recycle never finished"));
            }
        }
        GroupState::Deallocating => found.push(format!("group {id} stuck being deallocated")),
        GroupState::Deallocated => {
            for member in &live_members {
                found.push(format!("deallocated group {id} has member {} {:?}", member.id, member.state));
            }
            for r in seen.reservations.iter().filter(|r| r.owner == id.as_str()) {
                found.push(format!("deallocated group {id} still holds {}", r.address));
            }
            for ip in &group.private_ip_pool {
                // One made within the sweep's grace is left for now (a claim may be under way).
                let reserved_in_ec2 = group.subnet_of(*ip).is_some_and(|s| {
                    seen.subnet_reservations.iter().any(|(rid, subnet, range)| *subnet == s.id && range.contains(ip) && !seen.young_subnet_reservations.contains(rid))
                });
                let named = pool_address(group, *ip).is_some_and(|a| reservation(seen, &a).is_some());
                if reserved_in_ec2 && !named {
                    found.push(format!("deallocated group {id}: its pool address {ip} is still reserved in EC2"));
                }
            }
        }
    }
    // A member that ran keeps its address: its ENI has its pool address.
    for member in &live_members {
        if let (Some(ip), Some(eni)) = (pool_ip(member), &member.eni) {
            if eni.private_ip != ip || seen.enis.iter().any(|e| e.id == eni.id && e.private_ip != ip) {
                found.push(format!("member {} of pool address {ip} has ENI {} with {}", member.id, eni.id, eni.private_ip));
            }
        }
    }
}

fn counts(state: NodeState) -> bool {
    matches!(state, NodeState::Running | NodeState::Recovering | NodeState::Launching | NodeState::Stopped)
}

/// A group never undoes a user's action on a member, read from the member's history (the
/// newest entries) and the group's: a held member is not resumed (or recycled) by its group
/// (a hold is its "held: …" entry; the user's own resume or recycle, or the group's resume
/// since, ends it; the group's resumes clear holds placed until then). And a member that ran
/// keeps its address: the group deallocates it only with the group itself.
fn check_member_history(group: &Group, member: &Node, found: &mut Vec<String>) {
    let by_group = format!("group {}", group.id);
    let mut clearings: Vec<_> = group.history.iter().filter(|h| h.what.starts_with("resumed")).map(|h| h.at).collect();
    clearings.extend(group.holds_cleared_at);
    let mut held_since = None;
    let mut ran = false;
    for entry in &member.history {
        let launch = entry.what.starts_with("resume requested") || entry.what.starts_with("recycle requested");
        ran |= entry.what.starts_with("launched generation") || (entry.what.starts_with("ENI ") && entry.what.ends_with(" ready"));
        let dealloc_by_group = entry.what.starts_with("deallocate requested") && entry.by.as_deref() == Some(by_group.as_str());
        if dealloc_by_group && ran && matches!(group.state, GroupState::Active | GroupState::Paused) {
            found.push(format!("member {} ran, yet its group deallocated it at {} while not deallocated itself", member.id, entry.at));
        }
        if entry.what.starts_with("held:") {
            held_since = Some(entry.at);
        } else if launch && entry.by.as_deref() == Some(by_group.as_str()) {
            // `Group::holds`: a hold placed after the last resume of the group counts.
            let cleared = |since| clearings.iter().any(|c| *c >= since && *c <= entry.at);
            if let Some(since) = held_since.filter(|since| !cleared(*since)) {
                found.push(format!("member {} held since {since} was resumed by its group at {} ({})", member.id, entry.at, entry.what));
            }
            held_since = None;
        } else if launch {
            held_since = None;
        }
    }
}

/// In EC2: no private IP on two ENIs; an address EC2 picked is never one Tether reserved
/// (a pool address, another node's chosen IP); every Elastic IP is on record for at most one
/// live node. (EC2 associates an Elastic IP with one ENI at most by construction.)
fn check_addresses_in_ec2(seen: &Seen<'_>, found: &mut Vec<String>) {
    let mut by_ip: BTreeMap<(&str, Ipv4Addr), Vec<&str>> = BTreeMap::new();
    for eni in seen.enis {
        by_ip.entry((eni.subnet_id.as_str(), eni.private_ip)).or_default().push(&eni.id);
    }
    for ((subnet, ip), enis) in by_ip.iter().filter(|(_, e)| e.len() > 1) {
        found.push(format!("private IP {ip} ({subnet}) is on {} ENIs: {enis:?}", enis.len()));
    }
    for eni in seen.enis.iter().filter(|e| seen.picked.contains(&e.id)) {
        let address = Address::PrivateIp { subnet_id: eni.subnet_id.clone(), ip: eni.private_ip };
        let pool = seen.groups.iter().find(|g| g.state != GroupState::Deallocated && pool_address(g, eni.private_ip).as_ref() == Some(&address) && g.private_ip_pool.contains(&eni.private_ip));
        if let Some(group) = pool {
            found.push(format!("ENI {} (node {:?}) got pool address {} of group {} from EC2", eni.id, eni.node_id, eni.private_ip, group.id));
        }
        let chosen = seen.nodes.iter().find(|n| {
            live(n) && n.persistence.private_ip == Some(eni.private_ip) && n.spec.subnet_id == eni.subnet_id && n.eni.as_ref().is_none_or(|e| e.id != eni.id)
        });
        if let Some(node) = chosen {
            found.push(format!("ENI {} (node {:?}) got {} from EC2: node {}'s chosen address", eni.id, eni.node_id, eni.private_ip, node.id));
        }
    }
    let mut on_record: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for node in seen.nodes.iter().filter(|n| live(n)) {
        let recorded = node.elastic_ip.as_ref().map(|e| e.allocation_id.as_str());
        for allocation_id in recorded.into_iter().chain(node.persistence.elastic_ip_allocation_id.as_deref()) {
            on_record.entry(allocation_id).or_default().insert(node.id.as_str());
        }
    }
    for (allocation_id, nodes) in on_record.iter().filter(|(_, n)| n.len() > 1) {
        found.push(format!("Elastic IP {allocation_id} is on record for {} live nodes: {nodes:?}", nodes.len()));
    }
}

/// The reservations: each names an owner that exists, is not deallocated and claims the
/// address; every live node's chosen addresses and every pool address are reserved; every
/// reserved private IP is reserved in EC2 too, and nothing else is.
fn check_reservations(seen: &Seen<'_>, found: &mut Vec<String>) {
    let node = |id: &str| seen.nodes.iter().find(|n| n.id.as_str() == id);
    let group = |id: &str| seen.groups.iter().find(|g| g.id.as_str() == id);
    for r in seen.reservations {
        let claimed = match (node(&r.owner), group(&r.owner)) {
            (Some(n), _) => live(n) && chosen_addresses(n).contains(&r.address) && r.member.is_none(),
            (None, Some(g)) => {
                let in_pool = match &r.address {
                    Address::PrivateIp { ip, .. } => pool_address(g, *ip).as_ref() == Some(&r.address) && g.private_ip_pool.contains(ip),
                    Address::ElasticIp { allocation_id } => g.elastic_ip_pool.contains(allocation_id),
                };
                let handed = r.member.as_ref().is_none_or(|m| {
                    node(m.as_str()).is_some_and(|n| {
                        live(n) && n.group.as_ref().is_some_and(|ms| ms.group_id == g.id) && chosen_addresses(n).contains(&r.address)
                    })
                });
                g.state != GroupState::Deallocated && in_pool && handed
            }
            (None, None) => false,
        };
        if !claimed {
            let owner = node(&r.owner).map(|n| format!("node {:?}", n.state)).or_else(|| group(&r.owner).map(|g| format!("group {:?}", g.state)));
            found.push(format!("reservation of {} names {} ({owner:?}), which does not claim it", r.address, r.holder()));
        }
        if let Address::PrivateIp { subnet_id, ip } = &r.address {
            let in_ec2 = seen.subnet_reservations.iter().any(|(_, subnet, range)| subnet == subnet_id && range.contains(ip));
            let recorded = r.subnet_reservation.as_ref().is_some_and(|s| s.tethers && seen.subnet_reservations.iter().any(|(id, _, _)| *id == s.id));
            if !in_ec2 || !recorded {
                found.push(format!("reserved {} has no EC2 subnet CIDR reservation of Tether's on record ({:?}; in EC2: {in_ec2})", r.address, r.subnet_reservation));
            }
        }
    }
    for n in seen.nodes.iter().filter(|n| live(n)) {
        for address in chosen_addresses(n) {
            let theirs = reservation(seen, &address).is_some_and(|r| {
                r.owner == n.id.as_str()
                    || n.group.as_ref().is_some_and(|m| {
                        r.owner == m.group_id.as_str() && (matches!(address, Address::PrivateIp { .. }) || r.member.as_ref() == Some(&n.id))
                    })
            });
            if !theirs {
                found.push(format!("node {} ({:?}): its {address} is not reserved for it: {:?}", n.id, n.state, reservation(seen, &address)));
            }
        }
    }
    for (id, subnet, range) in seen.subnet_reservations {
        let named = seen.reservations.iter().any(|r| matches!(&r.address, Address::PrivateIp { subnet_id, ip } if subnet_id == subnet && range.contains(ip)));
        if !named && !seen.young_subnet_reservations.contains(id) {
            found.push(format!("EC2 subnet CIDR reservation {id} ({range} in {subnet}) is left for an address no reservation names"));
        }
    }
}
