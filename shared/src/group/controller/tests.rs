//! The controller over every combination of pool members' states, holds, EC2-picked members,
//! targets, group states and Elastic-IP pools the enumeration below makes, and the rules one
//! by one on small readable cases.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::*;
use crate::group::{GroupId, GroupSubnet, MemberTemplate, Membership, Rollout};
use crate::model::{ElasticIpRecord, InstanceRecord, Market, Persistence};

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
}

fn template() -> MemberTemplate {
    MemberTemplate::of_spec(crate::model::test_spec(&["m5.large"], true))
}

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, host)
}

fn subnet(id: &str, cidr: &str, az: &str) -> GroupSubnet {
    GroupSubnet { id: id.into(), cidr: cidr.parse().expect("a test CIDR"), availability_zone: az.into(), vpc_id: "vpc-1".into() }
}

/// A group over two subnets (10.0.1.0/24 in a, 10.0.2.0/24 in b) with pool addresses
/// 10.0.1.<host> and `eips` Elastic IPs `eipalloc-1`, ...
fn group(pool: &[u8], eips: usize, target: u32) -> Group {
    Group {
        id: GroupId::derived("controller-tests"),
        name: "db".into(),
        subnets: vec![subnet("subnet-a", "10.0.1.0/24", "us-east-1a"), subnet("subnet-b", "10.0.2.0/24", "us-east-1b")],
        template: template(),
        target_capacity: target,
        private_ip_pool: pool.iter().map(|h| ip(*h)).collect(),
        elastic_ip_pool: (1..=eips).map(|n| format!("eipalloc-{n}")).collect(),
        max_unavailable: 1,
        deletion_protection: true,
        state: GroupState::Active,
        keep_enis: false,
        rollout: None,
        holds_cleared_at: None,
        schedules: Vec::new(),
        schedule_runs: Default::default(),
        version: 1,
        history: Vec::new(),
        created_at: at(0),
        updated_at: at(0),
    }
}

/// A member of `group` in `state`: for pool address `pool_ip` (or EC2-picked), `ordinal`.
fn member(group: &Group, pool_ip: Option<Ipv4Addr>, ordinal: u32, state: NodeState) -> Node {
    let id = match pool_ip {
        Some(ip) => group.id.pool_member(ip, ordinal),
        None => group.id.random_member(ordinal),
    };
    let subnet = pool_ip.and_then(|ip| group.subnet_of(ip)).map_or("subnet-a", |s| s.id.as_str());
    let mut node = Node::new(group.template.spec_in(subnet), Persistence { private_ip: pool_ip, ..Persistence::default() }, at(ordinal as i64));
    node.id = id;
    node.version = 3;
    node.state = state;
    node.group = Some(Membership { group_id: group.id.clone(), pool_ip, ordinal, held_since: None });
    if !matches!(state, NodeState::Paused | NodeState::Deallocated) {
        node.generation = 1;
        node.instance = Some(InstanceRecord { id: format!("i-{ordinal}"), generation: 1, instance_type: "m5.large".into(), market: Market::Spot, launched_at: at(10) });
    }
    node
}

fn held(mut node: Node) -> Node {
    if let Some(m) = node.group.as_mut() {
        m.held_since = Some(at(5));
    }
    node
}

fn with_eip(mut node: Node, allocation_id: &str) -> Node {
    node.persistence.elastic_ip_allocation_id = Some(allocation_id.into());
    node.elastic_ip = Some(ElasticIpRecord { allocation_id: allocation_id.into(), public_ip: "203.0.113.1".into(), allocated_by_tether: false });
    node
}

/// What the members look like once a plan's actions are done (launches succeed at once).
fn apply(group: &Group, members: &[Node], plan: &Plan) -> (Group, Vec<Node>) {
    let mut after: BTreeMap<NodeId, Node> = members.iter().map(|m| (m.id.clone(), m.clone())).collect();
    let running = |node: &mut Node| {
        node.state = NodeState::Running;
        node.generation += 1;
        let launched = InstanceRecord { id: format!("i-{}-{}", node.id, node.generation), generation: node.generation, instance_type: "m5.large".into(), market: Market::Spot, launched_at: at(100) };
        node.instance = Some(launched);
        if let Some(m) = node.group.as_mut() {
            m.held_since = None;
        }
    };
    let hand_eip = |node: &mut Node, eip: &Option<String>| {
        if let Some(eip) = eip {
            node.persistence.elastic_ip_allocation_id = Some(eip.clone());
        }
    };
    for action in &plan.actions {
        match action {
            GroupAction::Create { member, subnet_id, pool_ip, ordinal, resume, elastic_ip } => {
                assert!(!after.contains_key(member), "{member} created twice");
                let mut node = Node::new(group.template.spec_in(subnet_id), Persistence { private_ip: *pool_ip, ..Persistence::default() }, at(50));
                node.id = member.clone();
                node.group = Some(Membership { group_id: group.id.clone(), pool_ip: *pool_ip, ordinal: *ordinal, held_since: None });
                hand_eip(&mut node, elastic_ip);
                if *resume {
                    running(&mut node);
                }
                after.insert(member.clone(), node);
            }
            GroupAction::Sync { member, .. } => {
                let node = after.get_mut(member).expect("synced member exists");
                node.spec = group.template.spec_in(&node.spec.subnet_id);
            }
            GroupAction::Resume { member, elastic_ip, .. } => {
                let node = after.get_mut(member).expect("resumed member exists");
                hand_eip(node, elastic_ip);
                running(node);
            }
            GroupAction::Recycle { member, .. } => running(after.get_mut(member).expect("recycled member exists")),
            GroupAction::Pause { member, .. } => after.get_mut(member).expect("paused member exists").state = NodeState::Paused,
            GroupAction::Deallocate { member, .. } => after.get_mut(member).expect("deallocated member exists").state = NodeState::Deallocated,
        }
    }
    (plan.next.clone().unwrap_or_else(|| group.clone()), after.into_values().collect())
}

fn eip_of(node: &Node) -> Option<&str> {
    node.persistence.elastic_ip_allocation_id.as_deref()
}

/// The invariants every plan keeps, checked on the members after its actions.
fn check(group: &Group, before: &[Node], plan: &Plan) -> Result<(), String> {
    let (_, after) = apply(group, before, plan);
    let live: Vec<&Node> = after.iter().filter(|m| m.state != NodeState::Deallocated).collect();
    let seen: BTreeMap<&NodeId, &Node> = before.iter().map(|m| (&m.id, m)).collect();
    for action in &plan.actions {
        let Some(old) = seen.get(action.member()) else { continue };
        let version = match action {
            GroupAction::Create { .. } => return Err(format!("{action:?} creates an existing member")),
            GroupAction::Resume { seen, .. }
            | GroupAction::Pause { seen, .. }
            | GroupAction::Recycle { seen, .. }
            | GroupAction::Deallocate { seen, .. }
            | GroupAction::Sync { seen, .. } => *seen,
        };
        if version != old.version {
            return Err(format!("{action:?} names version {version}, read {}", old.version));
        }
        // Holds and errors are the user's: only the deallocation of the whole group, or of
        // an address taken out of the pool, touches them.
        let retired = matches!(action, GroupAction::Deallocate { .. }) && pool_ip(old).is_some_and(|ip| !group.private_ip_pool.contains(&ip));
        let touches = !matches!(action, GroupAction::Sync { .. }) && !retired;
        if touches && group.state != GroupState::Deallocating && (group.holds(old) || old.state == NodeState::Error) {
            return Err(format!("{action:?} touches {:?} member {}", old.state, old.id));
        }
        if let GroupAction::Deallocate { .. } = action {
            if group.state != GroupState::Deallocating && (has_run(old) || pool_ip(old).is_some_and(|ip| group.private_ip_pool.contains(&ip))) {
                return Err(format!("{} deallocated though it ran or its address is in the pool", old.id));
            }
        }
        if let GroupAction::Resume { elastic_ip: Some(_), .. } = action {
            if eip_of(old).is_some() {
                return Err(format!("{} handed a second Elastic IP", old.id));
            }
        }
    }
    // No address twice among live members; every handed Elastic IP is the pool's.
    let mut eips = BTreeSet::new();
    for m in &live {
        if let Some(eip) = eip_of(m) {
            if !eips.insert(eip) {
                return Err(format!("Elastic IP {eip} on two live members"));
            }
            let had_it = before.iter().any(|b| b.id == m.id && eip_of(b) == Some(eip));
            if !had_it && !group.elastic_ip_pool.iter().any(|e| e == eip) {
                return Err(format!("{} got {eip}, not in the pool", m.id));
            }
        }
    }
    let mut ips = BTreeSet::new();
    for m in &live {
        if let Some(ip) = pool_ip(m) {
            if !ips.insert(ip) {
                return Err(format!("pool address {ip} on two live members"));
            }
        }
    }
    match group.state {
        GroupState::Active | GroupState::Paused => {
            for ip in &group.private_ip_pool {
                if !live.iter().any(|m| pool_ip(m) == Some(*ip)) {
                    return Err(format!("pool address {ip} has no live member"));
                }
            }
            let counting = live.iter().filter(|m| counts(m.state)).count() as u32;
            let held = after.iter().filter(|m| group.holds(m)).count() as u32;
            let want = if group.state == GroupState::Active { group.target_capacity.saturating_sub(held) } else { 0 };
            if counting != want {
                return Err(format!("{counting} members counting after the plan, want {want}"));
            }
            for m in live.iter().filter(|m| m.state != NodeState::Deallocating) {
                if m.spec != group.template.spec_in(&m.spec.subnet_id) {
                    return Err(format!("{} launches with another spec than the template", m.id));
                }
            }
        }
        GroupState::Deallocating => {
            if let Some(m) = live.iter().find(|m| m.state != NodeState::Deallocating) {
                return Err(format!("{} not deallocated by the group's deallocation", m.id));
            }
        }
        GroupState::Deallocated => {
            if !plan.actions.is_empty() {
                return Err("a deallocated group acts".into());
            }
        }
    }
    Ok(())
}

/// A pool address's member: none, or one in a state (held or not). `Stopped` and
/// `Recovering` count as `Running` does and are left out.
const POOL_STATES: [Option<(NodeState, bool)>; 8] = [
    None,
    Some((NodeState::Paused, false)),
    Some((NodeState::Paused, true)),
    Some((NodeState::Running, false)),
    Some((NodeState::Launching, false)),
    Some((NodeState::Error, false)),
    Some((NodeState::Deallocating, false)),
    Some((NodeState::Deallocated, false)),
];
/// The EC2-picked members: none, one in each state, or two.
const RANDOM_MEMBERS: [&[NodeState]; 7] = [
    &[],
    &[NodeState::Paused],
    &[NodeState::Running],
    &[NodeState::Deallocated],
    &[NodeState::Running, NodeState::Paused],
    &[NodeState::Deallocated, NodeState::Running],
    &[NodeState::Paused, NodeState::Paused],
];

/// Every (pool members' states, holds, EC2-picked members, target, group state, Elastic-IP
/// pool, an address removed from the pool) combination: the invariants hold after the plan,
/// and a second plan on the result has nothing left to do.
#[test]
fn every_combination_keeps_the_invariants_and_settles() {
    let mut plans = 0;
    for pool_states in 0..POOL_STATES.len().pow(3) {
        let states: Vec<Option<(NodeState, bool)>> = (0..3).map(|i| POOL_STATES[pool_states / POOL_STATES.len().pow(i) % POOL_STATES.len()]).collect();
        for random_states in RANDOM_MEMBERS {
            for target in [0, 1, 3] {
                for group_state in [GroupState::Active, GroupState::Paused, GroupState::Deallocating] {
                    for (eips, removed) in [(0, false), (2, false), (2, true)] {
                        let mut g = group(&[10, 11, 12], eips, target);
                        g.state = group_state;
                        let mut members = Vec::new();
                        for (i, state) in states.iter().enumerate() {
                            let Some((state, hold)) = state else { continue };
                            let mut m = member(&g, Some(ip(10 + i as u8)), 1, *state);
                            if *hold {
                                m = held(m);
                            }
                            if i == 0 && eips > 0 && *state != NodeState::Deallocated {
                                m = with_eip(m, "eipalloc-1");
                            }
                            members.push(m);
                        }
                        for (n, state) in random_states.iter().enumerate() {
                            members.push(member(&g, None, n as u32 + 1, *state));
                        }
                        if removed {
                            // The last address leaves the pool.
                            g.private_ip_pool.pop();
                        }
                        let plan = plan(&g, &members, at(200));
                        plans += 1;
                        let context = || format!("pool {states:?}, random {random_states:?}, target {target}, {group_state:?}, eips {eips}, removed {removed}");
                        if let Err(why) = check(&g, &members, &plan) {
                            panic!("{why}\n  {}\n  plan: {:#?}", context(), plan.actions);
                        }
                        let (next_group, after) = apply(&g, &members, &plan);
                        let again = super::plan(&next_group, &after, at(300));
                        // Members being deallocated finish by themselves, then the group follows.
                        let settled = again.actions.is_empty() || after.iter().any(|m| m.state == NodeState::Deallocating);
                        assert!(settled, "a second plan still acts: {:?}\n  {}", again.actions, context());
                    }
                }
            }
        }
    }
    assert_eq!(plans, 8 * 8 * 8 * 7 * 3 * 3 * 3, "every combination planned");
}

fn ids(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .map(|a| {
            let kind = match a {
                GroupAction::Create { resume: true, .. } => "create+resume",
                GroupAction::Create { .. } => "create",
                GroupAction::Sync { .. } => "sync",
                GroupAction::Resume { .. } => "resume",
                GroupAction::Pause { .. } => "pause",
                GroupAction::Recycle { .. } => "recycle",
                GroupAction::Deallocate { .. } => "deallocate",
            };
            format!("{kind} {}", a.member())
        })
        .collect()
}

#[test]
fn a_new_group_makes_one_paused_member_per_pool_address_and_resumes_the_target_in_pool_order() {
    let g = group(&[10, 11, 12], 0, 2);
    let plan = plan(&g, &[], at(1));
    let pool = |host, ordinal| g.id.pool_member(ip(host), ordinal).to_string();
    assert_eq!(ids(&plan), [format!("create+resume {}", pool(10, 1)), format!("create+resume {}", pool(11, 1)), format!("create {}", pool(12, 1))]);
    let GroupAction::Create { subnet_id, pool_ip, .. } = &plan.actions[0] else { panic!("a create") };
    assert_eq!((subnet_id.as_str(), *pool_ip), ("subnet-a", Some(ip(10))), "in the subnet whose range holds it");
}

#[test]
fn capacity_beyond_the_pool_takes_ec2_picked_addresses_spread_across_subnets() {
    let g = group(&[10], 0, 4);
    let plan = plan(&g, &[member(&g, Some(ip(10)), 1, NodeState::Running)], at(1));
    let subnets: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            GroupAction::Create { subnet_id, pool_ip: None, .. } => Some(subnet_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(subnets, ["subnet-b", "subnet-a", "subnet-b"], "the pool member is in subnet-a: b, then a and b in turn");
    assert_eq!(plan.status.below_target.as_deref(), Some("1 of 4 running: 3 to be resumed or created by the group"));
}

#[test]
fn a_deallocated_pool_member_is_replaced_by_the_next_for_the_same_address() {
    let g = group(&[10], 0, 1);
    let gone = member(&g, Some(ip(10)), 1, NodeState::Deallocated);
    let plan = plan(&g, &[gone], at(1));
    assert_eq!(ids(&plan), [format!("create+resume {}", g.id.pool_member(ip(10), 2))]);
    // Still deallocating: not yet; one member per address that is not deallocated.
    let leaving = member(&g, Some(ip(10)), 1, NodeState::Deallocating);
    let waiting = super::plan(&g, &[leaving], at(1));
    assert!(waiting.actions.iter().all(|a| !matches!(a, GroupAction::Create { pool_ip: Some(_), .. })), "{:?}", waiting.actions);
}

#[test]
fn a_deallocated_random_member_is_not_made_again_and_a_stuck_launch_is_not_replaced() {
    let g = group(&[], 0, 2);
    let members = [member(&g, None, 1, NodeState::Deallocated), member(&g, None, 2, NodeState::Launching)];
    let plan = plan(&g, &members, at(1));
    assert_eq!(ids(&plan), [format!("create+resume {}", g.id.random_member(3))], "one new member; the launching one still counts");
    assert!(!plan.status.settled);
    let (_, after) = apply(&g, &members, &plan);
    assert!(!super::plan(&g, &after, at(2)).status.settled, "a member still launching: not settled");
}

#[test]
fn removing_an_address_deallocates_only_members_that_never_ran() {
    let mut g = group(&[10, 11], 0, 0);
    let never_ran = member(&g, Some(ip(10)), 1, NodeState::Paused);
    let mut ran = member(&g, Some(ip(11)), 1, NodeState::Paused);
    ran.generation = 2;
    g.private_ip_pool.clear();
    let plan = plan(&g, &[never_ran.clone(), ran], at(1));
    assert_eq!(ids(&plan), [format!("deallocate {}", never_ran.id)]);
}

#[test]
fn scaling_down_pauses_ec2_picked_members_newest_first_then_the_pool_from_its_end() {
    let g = group(&[10, 11], 0, 1);
    let members = [
        member(&g, Some(ip(10)), 1, NodeState::Running),
        member(&g, Some(ip(11)), 1, NodeState::Running),
        member(&g, None, 1, NodeState::Running),
        member(&g, None, 2, NodeState::Running),
    ];
    let plan = plan(&g, &members, at(1));
    assert_eq!(ids(&plan), [members[3].id.clone(), members[2].id.clone(), members[1].id.clone()].map(|id| format!("pause {id}")));
    // And up again: the paused pool member first, then the EC2-picked ones oldest first.
    let mut paused = members.clone();
    for m in &mut paused[1..] {
        m.state = NodeState::Paused;
    }
    let g3 = Group { target_capacity: 3, ..g };
    let up = super::plan(&g3, &paused, at(2));
    assert_eq!(ids(&up), [paused[1].id.clone(), paused[2].id.clone()].map(|id| format!("resume {id}")));
}

#[test]
fn held_members_are_left_alone_and_do_not_count_until_the_group_is_resumed() {
    let mut g = group(&[10, 11], 0, 2);
    let members = [held(member(&g, Some(ip(10)), 1, NodeState::Paused)), member(&g, Some(ip(11)), 1, NodeState::Running)];
    let plan = plan(&g, &members, at(10));
    assert!(plan.actions.is_empty(), "nothing resumed, nothing made to replace it: {:?}", plan.actions);
    assert_eq!((plan.status.held, plan.status.counting), (1, 1));
    assert!(plan.status.below_target.as_deref().is_some_and(|w| w.contains("1 held")), "{:?}", plan.status);
    assert!(plan.status.settled, "the hold waits for the user, not the group: {:?}", plan.status);
    g.holds_cleared_at = Some(at(20));
    let resumed = super::plan(&g, &members, at(21));
    assert_eq!(ids(&resumed), [format!("resume {}", members[0].id)]);
}

#[test]
fn elastic_ips_go_to_members_at_their_resume_in_pool_order_and_stay() {
    let g = group(&[10, 11, 12], 2, 3);
    let first = with_eip(member(&g, Some(ip(10)), 1, NodeState::Running), "eipalloc-2");
    let plan = plan(&g, &[first], at(1));
    let handed: Vec<Option<String>> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            GroupAction::Create { elastic_ip, resume: true, .. } => Some(elastic_ip.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(handed, [Some("eipalloc-1".to_owned()), None], "the free one to the next resumed, none left for the third");
}

#[test]
fn a_paused_group_pauses_every_member_and_keeps_the_pool() {
    let mut g = group(&[10], 0, 2);
    g.state = GroupState::Paused;
    let members = [member(&g, Some(ip(10)), 1, NodeState::Running), member(&g, None, 1, NodeState::Launching), member(&g, None, 2, NodeState::Error)];
    let plan = plan(&g, &members, at(1));
    assert_eq!(ids(&plan), [members[0].id.clone(), members[1].id.clone()].map(|id| format!("pause {id}")));
    assert!(plan.status.below_target.as_deref().is_some_and(|w| w.contains("paused")), "{:?}", plan.status);
}

#[test]
fn a_rolling_recycle_goes_max_unavailable_at_a_time_and_waits_for_each_batch() {
    let mut g = group(&[10, 11, 12], 0, 3);
    g.max_unavailable = 2;
    g.rollout = Some(Rollout { started_at: at(50) });
    let members: Vec<Node> = [10, 11, 12].iter().map(|h| member(&g, Some(ip(*h)), 1, NodeState::Running)).collect();
    let first = plan(&g, &members, at(60));
    assert_eq!(ids(&first), [members[0].id.clone(), members[1].id.clone()].map(|id| format!("recycle {id}")));
    let mut during = members.clone();
    during[0].state = NodeState::Launching;
    assert!(plan(&g, &during, at(61)).actions.is_empty(), "the batch is not back yet");
    let (_, after_first) = apply(&g, &members, &first);
    let second = plan(&g, &after_first, at(62));
    assert_eq!(ids(&second), [format!("recycle {}", members[2].id)]);
    let (_, done) = apply(&g, &after_first, &second);
    let last = plan(&g, &done, at(63));
    assert!(last.actions.is_empty() && last.next.as_ref().is_some_and(|n| n.rollout.is_none()), "finished: {last:?}");
}

#[test]
fn a_template_change_reaches_every_live_member_before_its_next_launch() {
    let mut g = group(&[10], 0, 1);
    let members = [member(&g, Some(ip(10)), 1, NodeState::Running), member(&g, None, 1, NodeState::Deallocated)];
    g.template.image_id = "ami-2".into();
    let plan = plan(&g, &members, at(1));
    assert_eq!(ids(&plan), [format!("sync {}", members[0].id)]);
}

#[test]
fn a_deallocating_group_deallocates_every_member_then_itself() {
    let mut g = group(&[10], 0, 2);
    g.state = GroupState::Deallocating;
    g.keep_enis = true;
    let members = [held(member(&g, Some(ip(10)), 1, NodeState::Paused)), member(&g, None, 1, NodeState::Error)];
    let plan = plan(&g, &members, at(1));
    assert!(plan.actions.iter().all(|a| matches!(a, GroupAction::Deallocate { keep_eni: true, .. })) && plan.actions.len() == 2, "{:?}", plan.actions);
    let gone: Vec<Node> = members.iter().map(|m| Node { state: NodeState::Deallocated, ..m.clone() }).collect();
    let done = super::plan(&g, &gone, at(2));
    assert_eq!(done.next.map(|n| n.state), Some(GroupState::Deallocated));
}

#[test]
fn member_ids_are_derived_from_the_group_the_address_and_the_ordinal() {
    let g = group(&[10], 0, 0);
    assert_eq!(g.id.pool_member(ip(10), 1), g.id.pool_member(ip(10), 1));
    assert_ne!(g.id.pool_member(ip(10), 1), g.id.pool_member(ip(10), 2));
    assert_ne!(g.id.pool_member(ip(10), 1), GroupId::derived("other").pool_member(ip(10), 1));
    assert_ne!(g.id.random_member(1), g.id.pool_member(ip(10), 1));
}
