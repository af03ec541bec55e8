//! Stateful groups through the management API against the emulator: each rule of a group,
//! read back from what EC2 reports (instances, ENIs, Elastic IPs, subnet CIDR reservations)
//! as well as from the API's answers.

use lambda_http::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tether_tests::local_api::{as_lambda_request, ACCESS_KEY_ID};
use tether_tests::{Fixture, SetupError};

/// Calls the API as Lambda would after API Gateway authenticated the request.
async fn call(fx: &Fixture, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value), SetupError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = as_lambda_request(Request::builder().method(method).uri(path), body.as_bytes(), Some(ACCESS_KEY_ID))?;
    let response = fx.api.handle(request).await;
    let status = response.status();
    let value = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text)?,
        _ => Value::Null,
    };
    Ok((status, value))
}

/// The fixture's subnet (10.0.1.0/24, AZ a) and a second one (10.0.2.0/24, AZ b).
pub(crate) async fn second_subnet(fx: &Fixture) -> Result<String, SetupError> {
    let out = fx.ec2.create_subnet().vpc_id(&fx.vpc_id).cidr_block("10.0.2.0/24").availability_zone("us-east-1b").send().await?;
    Ok(out.subnet().and_then(|s| s.subnet_id()).ok_or("no subnet id")?.to_owned())
}

fn group_body(fx: &Fixture, subnets: &[&str], pool: &[&str], eips: &[&str], target: u32) -> Value {
    json!({
        "name": "cassandra",
        "subnet_ids": subnets,
        "template": {"image_id": fx.image_id, "instance_types": ["m5.large", "m6i.large"], "security_group_ids": [fx.security_group_id]},
        "target_capacity": target,
        "private_ip_pool": pool,
        "elastic_ip_pool": eips,
    })
}

/// The members as the API lists them: (pool IP or "-", state, private IP, public IP, ENI).
async fn members(fx: &Fixture, id: &str) -> Result<Vec<Value>, SetupError> {
    let (status, list) = call(fx, Method::GET, &format!("/groups/{id}/members"), None).await?;
    assert_eq!(status, StatusCode::OK, "{list}");
    Ok(list["members"].as_array().cloned().unwrap_or_default())
}

fn live(members: &[Value]) -> Vec<&Value> {
    members.iter().filter(|m| m["state"] != "deallocated").collect()
}

/// The states of the members made for pool address `ip`.
fn state_of_in(members: &[Value], ip: &str) -> Vec<String> {
    members.iter().filter(|m| m["pool_ip"] == ip).map(|m| m["state"].as_str().unwrap_or("").to_owned()).collect()
}

fn running(members: &[Value]) -> usize {
    members.iter().filter(|m| m["state"] == "running").count()
}

/// Runs the reconciler (which runs every group's controller) until nothing more is done.
async fn reconcile(fx: &Fixture) -> Result<(), SetupError> {
    for _ in 0..5 {
        let deadline = fx.tether.deadline_in(std::time::Duration::from_secs(20));
        let report = fx.tether.reconcile(deadline).await?;
        if report.repaired.is_empty() {
            return Ok(());
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_group_keeps_its_pool_addresses_and_elastic_ips_across_scaling() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let subnet_b = second_subnet(&fx).await?;
    let (eip_1, public_1) = fx.allocate_eip().await?;
    let (eip_2, public_2) = fx.allocate_eip().await?;
    let body = group_body(&fx, &[&fx.subnet_id, &subnet_b], &["10.0.1.20", "10.0.2.20", "10.0.1.21"], &[&eip_1, &eip_2], 2);
    let (status, group) = call(&fx, Method::POST, "/groups", Some(body)).await?;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let id = group["id"].as_str().ok_or("no id")?.to_owned();
    assert_eq!(group["status"]["running"], 2, "{group}");

    // Rule 1: one member per pool address, the target resumed in pool order, in the subnet
    // that holds each address; the third paused, with no ENI yet.
    let list = members(&fx, &id).await?;
    let summary: Vec<(String, String)> = list.iter().map(|m| (m["pool_ip"].as_str().unwrap_or("-").to_owned(), m["state"].as_str().unwrap_or("").to_owned())).collect();
    assert_eq!(summary, [("10.0.1.20".into(), "running".into()), ("10.0.2.20".into(), "running".into()), ("10.0.1.21".into(), "paused".into())]);
    assert!(list[2]["eni_id"].is_null());
    assert_eq!(list[1]["availability_zone"], "us-east-1b");
    // Rule 5: each running member took a pool Elastic IP, in pool order; EC2 agrees.
    assert_eq!((list[0]["public_ip"].as_str(), list[1]["public_ip"].as_str()), (Some(public_1.as_str()), Some(public_2.as_str())));
    for member in &list[..2] {
        let instance = fx.instance(member["instance_id"].as_str().ok_or("no instance")?).await?;
        assert_eq!(instance.private_ip_address(), member["pool_ip"].as_str(), "the instance runs on its pool address");
        assert_eq!(instance.public_ip_address(), member["public_ip"].as_str());
        // The template said nothing of the metadata service: IMDSv2 required, as for a node.
        let tokens = instance.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str().to_owned());
        assert_eq!(tokens.as_deref(), Some("required"), "{:?}", instance.metadata_options());
    }
    assert_eq!(group["template"]["metadata_options"]["http_tokens"], "required", "{group}");
    // The pool addresses are kept from EC2's random picks (explicit subnet CIDR reservations).
    let reserved = fx.ec2.get_subnet_cidr_reservations().subnet_id(&fx.subnet_id).send().await?;
    let mut cidrs: Vec<&str> = reserved.subnet_ipv4_cidr_reservations().iter().filter_map(|r| r.cidr()).collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.0.1.20/32", "10.0.1.21/32"]);

    // Rules 2 and 6: up to 4: the paused pool member first, then one with an address EC2
    // picks, in the emptier subnet (b has one member, a has two), without an Elastic IP.
    let (status, scaled) = call(&fx, Method::POST, &format!("/groups/{id}/scale"), Some(json!({"target_capacity": 4}))).await?;
    assert!(status.is_success(), "{scaled}");
    let list = members(&fx, &id).await?;
    assert_eq!(running(&list), 4, "{list:?}");
    let random = list.iter().find(|m| m["pool_ip"].is_null()).ok_or("no member beyond the pool")?;
    assert_eq!(random["spec"]["subnet_id"], subnet_b.as_str());
    assert!(random["public_ip"].is_null());
    assert!(random["elastic_ip_note"].as_str().is_some_and(|n| n.contains("held by another member")), "{random}");
    let private = random["private_ip"].as_str().ok_or("no private IP")?;
    assert!(!["10.0.1.20", "10.0.2.20", "10.0.1.21"].contains(&private));

    // Down to 1 and back to 3: paused members come back on their own ENI and address.
    let before: Vec<(Value, Value)> = list.iter().map(|m| (m["id"].clone(), m["eni_id"].clone())).collect();
    call(&fx, Method::POST, &format!("/groups/{id}/scale"), Some(json!({"target_capacity": 1}))).await?;
    let list = members(&fx, &id).await?;
    assert_eq!(running(&list), 1);
    assert_eq!(list[0]["state"], "running", "the first pool member stays: {list:?}");
    let (status, up) = call(&fx, Method::POST, &format!("/groups/{id}/scale"), Some(json!({"target_capacity": 3}))).await?;
    assert!(status.is_success(), "{up}");
    let list = members(&fx, &id).await?;
    assert_eq!(running(&list), 3);
    for m in list.iter().filter(|m| m["state"] == "running") {
        let (_, eni) = before.iter().find(|(id, _)| *id == m["id"]).ok_or("a new member")?;
        assert_eq!(&m["eni_id"], eni, "same ENI after the scale-down and up");
    }
    assert_eq!(list.iter().filter(|m| m["state"] == "running" && m["pool_ip"].is_string()).count(), 3, "pool members first");
    Ok(())
}

#[tokio::test]
async fn pool_refusals_name_the_address_and_create_nothing() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (eip, _) = fx.allocate_eip().await?;
    let (status, group) = call(&fx, Method::POST, "/groups", Some(group_body(&fx, &[&fx.subnet_id], &["10.0.1.30"], &[&eip], 0))).await?;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    for (pool, eips, field, says) in [
        (vec!["10.0.9.9"], vec![], "private_ip_pool", "outside every subnet"),
        (vec!["10.0.1.255"], vec![], "private_ip_pool", "reserves"),
        (vec!["10.0.1.31", "10.0.1.31"], vec![], "private_ip_pool", "listed twice"),
        (vec!["10.0.1.30"], vec![], "private_ip_pool", "reserved by"),
        (vec![], vec![eip.as_str()], "elastic_ip_pool", "reserved by"),
    ] {
        let (status, problem) = call(&fx, Method::POST, "/groups", Some(group_body(&fx, &[&fx.subnet_id], &pool, &eips, 0))).await?;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{pool:?}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains(says)), "{problem}");
    }
    // A single node may not take a group's pool address either.
    let node = json!({"spec": {"subnet_id": fx.subnet_id, "image_id": fx.image_id, "instance_types": ["m5.large"]}, "persistence": {"private_ip": "10.0.1.30"}});
    let (status, problem) = call(&fx, Method::POST, "/nodes", Some(node)).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("persistence.private_ip")), "{problem}");
    let (_, list) = call(&fx, Method::GET, "/groups", None).await?;
    assert_eq!(list["groups"].as_array().map(Vec::len), Some(1), "only the first group exists");
    Ok(())
}

#[tokio::test]
async fn members_are_replaced_held_and_recycled_as_a_group_user_expects() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (eip, public) = fx.allocate_eip().await?;
    let (_, group) = call(&fx, Method::POST, "/groups", Some(group_body(&fx, &[&fx.subnet_id], &["10.0.1.40", "10.0.1.41"], &[&eip], 2))).await?;
    let id = group["id"].as_str().ok_or("no id")?.to_owned();
    let list = members(&fx, &id).await?;
    assert_eq!(running(&list), 2, "{list:?}");

    // Rule 3: the pool member deallocated through the node API is replaced by a new one for
    // the same address (after the old ENI is gone), and its Elastic IP goes to the new one.
    let first = list[0]["id"].as_str().ok_or("no id")?.to_owned();
    call(&fx, Method::POST, &format!("/nodes/{first}/deallocate"), None).await?;
    settle_node(&fx, &first).await?;
    reconcile(&fx).await?;
    let list = members(&fx, &id).await?;
    let for_40: Vec<&Value> = list.iter().filter(|m| m["pool_ip"] == "10.0.1.40").collect();
    assert_eq!(for_40.len(), 2, "{list:?}");
    let new = for_40.iter().find(|m| m["state"] != "deallocated").ok_or("no new member")?;
    assert_eq!((new["state"].as_str(), new["private_ip"].as_str(), new["public_ip"].as_str()), (Some("running"), Some("10.0.1.40"), Some(public.as_str())));

    // Rule 8: a member paused through the node API is held: not resumed, not replaced.
    let other = list.iter().find(|m| m["pool_ip"] == "10.0.1.41").ok_or("no member")?["id"].as_str().ok_or("no id")?.to_owned();
    call(&fx, Method::POST, &format!("/nodes/{other}/pause"), None).await?;
    reconcile(&fx).await?;
    let (status, shown) = call(&fx, Method::GET, &format!("/groups/{id}"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((shown["status"]["held"].as_u64(), shown["status"]["running"].as_u64()), (Some(1), Some(1)), "{shown}");
    assert!(shown["status"]["below_target"].as_str().is_some_and(|w| w.contains("held")), "{shown}");
    call(&fx, Method::POST, &format!("/groups/{id}/resume"), None).await?;
    assert_eq!(running(&members(&fx, &id).await?), 2, "the group's resume clears the hold");

    // Rules 7 and 9: an image change rolls through the members, one at a time, no address changing.
    let before = members(&fx, &id).await?;
    let images = fx.ec2.describe_images().owners("amazon").send().await?;
    let other_image = images.images().iter().filter_map(|i| i.image_id()).find(|i| *i != fx.image_id).ok_or("one AMI only")?.to_owned();
    let (status, patched) = call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(json!({"template": {"image_id": other_image}}))).await?;
    assert!(status.is_success(), "{patched}");
    call(&fx, Method::POST, &format!("/groups/{id}/recycle"), None).await?;
    for _ in 0..10 {
            reconcile(&fx).await?;
        let (_, shown) = call(&fx, Method::GET, &format!("/groups/{id}"), None).await?;
        if shown["rollout"].is_null() {
            break;
        }
    }
    let after = members(&fx, &id).await?;
    for m in live(&after) {
        let old = before.iter().find(|b| b["id"] == m["id"]).ok_or("a member appeared")?;
        assert_eq!((&m["private_ip"], &m["eni_id"], &m["public_ip"]), (&old["private_ip"], &old["eni_id"], &old["public_ip"]), "identity kept");
        assert_ne!(m["instance_id"], old["instance_id"], "a new instance");
        assert_eq!(m["spec"]["image_id"], other_image.as_str());
        let instance = fx.instance(m["instance_id"].as_str().ok_or("no instance")?).await?;
        assert_eq!(instance.image_id(), Some(other_image.as_str()));
    }

    // Rule 5: an Elastic IP a member holds cannot leave the pool; a free one can.
    let (status, problem) = call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(json!({"elastic_ip_pool": []}))).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("held by member")), "{problem}");

    // Rule 7: deletion protection first, then everything is deallocated and released.
    let (status, problem) = call(&fx, Method::DELETE, &format!("/groups/{id}"), None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("deletion_protection")), "{problem}");
    call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(json!({"deletion_protection": false}))).await?;
    call(&fx, Method::DELETE, &format!("/groups/{id}"), None).await?;
    for _ in 0..10 {
            reconcile(&fx).await?;
        let (_, shown) = call(&fx, Method::GET, &format!("/groups/{id}"), None).await?;
        if shown["state"] == "deallocated" {
            break;
        }
    }
    let (_, shown) = call(&fx, Method::GET, &format!("/groups/{id}"), None).await?;
    assert_eq!(shown["state"], "deallocated", "{shown}");
    assert!(members(&fx, &id).await?.iter().all(|m| m["state"] == "deallocated"));
    let reserved = fx.ec2.get_subnet_cidr_reservations().subnet_id(&fx.subnet_id).send().await?;
    assert!(reserved.subnet_ipv4_cidr_reservations().is_empty(), "the pool addresses are EC2's again");
    assert_eq!(fx.cloud_eip(&eip).await?.association_id(), None, "the user's Elastic IP is left to them, disassociated");
    Ok(())
}

/// Reconciles until the node is deallocated (the emulator terminates at once: nothing waits).
async fn settle_node(fx: &Fixture, id: &str) -> Result<(), SetupError> {
    let node_id = tether::NodeId::parse(id).ok_or("bad id")?;
    for _ in 0..20 {
        if fx.tether.node(&node_id).await?.state == tether::NodeState::Deallocated {
            return Ok(());
        }
            reconcile(fx).await?;
    }
    Err(format!("{id} never deallocated").into())
}

/// The demo's group verdict is read from the emulator: all yes for a group scaled as the
/// demo scales it, and `no` once a member's record is deliberately broken (it claims a pool
/// address its instance does not run on).
#[tokio::test]
async fn the_demos_group_summary_says_no_when_a_member_record_is_broken() -> Result<(), SetupError> {
    use tether::ports::{NodeStore, Registry};
    use tether_tests::demo::group::{summarize_group, DemoGroup};
    let fx = Fixture::new().await?;
    let api = tether_tests::local_api::LocalApi::start(fx.api.clone()).await?;
    let env = tether_cli::Environment {
        api_url: Some(api.url.clone()),
        region: Some(tether_tests::REGION.to_owned()),
        credentials: Some(aws_credential_types::Credentials::new(ACCESS_KEY_ID, tether_tests::local_api::SECRET_ACCESS_KEY, None, None, "demo-test")),
        poll_interval: std::time::Duration::from_millis(50),
        ..tether_cli::Environment::default()
    };
    let market = std::time::Duration::from_secs(10);
    let mut group = DemoGroup::create(&fx, &env, market).await?;
    for step in 1..=3 {
        // Each step is due by the market's end: scale to 2, 3, then 4.
        let taken = group.step_due(market, &fx, &env).await?;
        assert!(taken.is_some(), "step {step} not taken");
    }
    let summary = summarize_group(&fx, &group).await?;
    assert_eq!(summary.fields(), "groups=1 members_running=4/4 pool_ips_kept=yes eips_on_members=2/2 scaled_up_same_eni=yes", "{:?}", summary.problems);
    assert!(summary.ok());

    let members = fx.store.members(&group.id).await?;
    let mut broken = members.into_iter().find(|m| m.group.as_ref().is_some_and(|g| g.pool_ip.is_some())).ok_or("no pool member")?;
    if let Some(membership) = broken.group.as_mut() {
        membership.pool_ip = Some(fx.subnet_ip(99));
    }
    fx.store.save(&broken).await?;
    let summary = summarize_group(&fx, &group).await?;
    assert!(summary.fields().contains("pool_ips_kept=no"), "{}", summary.fields());
    assert!(!summary.ok());
    Ok(())
}

/// A measurement, not part of `make test` (it takes a minute or two): a group of 100 members
/// created through the API converges through the reconciler's runs, its RunInstances calls
/// paced. Prints how long it took and the most RunInstances calls sent in any second (EC2's
/// bucket: 5 at once, then 2 a second); run it with `cargo test -p tether-tests --test
/// emulator -- --ignored a_group_of_100 --nocapture`.
#[tokio::test]
#[ignore = "a measurement: run it by name"]
async fn a_group_of_100_members_converges_with_paced_launches() -> Result<(), SetupError> {
    let settings = tether::Settings { deadline_margin: std::time::Duration::from_millis(500), ..tether_tests::fast_settings() };
    let fx = Fixture::with_settings(settings).await?;
    let started = std::time::Instant::now();
    fx.calls.take();
    let (status, group) = call(&fx, Method::POST, "/groups", Some(group_body(&fx, &[&fx.subnet_id], &[], &[], 100))).await?;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let id = group["id"].as_str().ok_or("no id")?.to_owned();
    let mut launches = Vec::new();
    let mut runs = 1;
    loop {
        launches.extend(fx.calls.take_timed().into_iter().filter(|(name, _)| name == "EC2.RunInstances").map(|(_, at)| at));
        let list = members(&fx, &id).await?;
        if running(&list) == 100 {
            break;
        }
        assert!(runs < 20, "not converged after {runs} runs: {} running", running(&list));
        let deadline = fx.tether.deadline_in(std::time::Duration::from_secs(55));
        fx.tether.reconcile(deadline).await?;
        runs += 1;
    }
    let busiest = launches.iter().map(|t| launches.iter().filter(|u| **u >= *t && u.duration_since(*t).as_millis() < 1000).count()).max().unwrap_or(0);
    println!(
        "group of 100: converged in {:.1} s over {runs} controller passes (the API's 3 s, then the reconciler's); {} RunInstances calls, at most {busiest} sent in any second",
        started.elapsed().as_secs_f64(),
        launches.len()
    );
    assert_eq!(launches.len(), 100, "one launch per member");
    assert!(busiest <= 5 + 2, "launches are paced: {busiest} sent in one second");
    Ok(())
}

#[tokio::test]
async fn pool_edits_pauses_and_subnets_behave_as_a_group_user_expects() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let subnet_b = second_subnet(&fx).await?;
    let (_, group) = call(&fx, Method::POST, "/groups", Some(group_body(&fx, &[&fx.subnet_id], &["10.0.1.50", "10.0.1.51"], &[], 1))).await?;
    let id = group["id"].as_str().ok_or("no id")?.to_owned();

    // Rule 4: taking both addresses out of the pool deallocates the member that never ran
    // (10.0.1.51) and keeps the one that ran; a new address gets a paused member.
    let (status, patched) = call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(json!({"private_ip_pool": ["10.0.1.52"]}))).await?;
    assert!(status.is_success(), "{patched}");
    let list = members(&fx, &id).await?;
    assert_eq!(state_of_in(&list, "10.0.1.50"), ["running"], "it ran: it keeps its address");
    assert_eq!(state_of_in(&list, "10.0.1.51"), ["deallocated"], "never ran: deallocated");
    assert_eq!(state_of_in(&list, "10.0.1.52"), ["paused"], "the new address's member");
    let reserved = fx.ec2.get_subnet_cidr_reservations().subnet_id(&fx.subnet_id).send().await?;
    let mut cidrs: Vec<&str> = reserved.subnet_ipv4_cidr_reservations().iter().filter_map(|r| r.cidr()).collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.0.1.50/32", "10.0.1.52/32"], "the released address is EC2's again; the kept one stays reserved for its member");

    // Rule 7: pause keeps the target; resume brings it back.
    let (status, paused) = call(&fx, Method::POST, &format!("/groups/{id}/pause"), None).await?;
    assert_eq!((status, paused["state"].as_str(), paused["status"]["counting"].as_u64()), (StatusCode::OK, Some("paused"), Some(0)), "{paused}");
    assert_eq!(paused["target_capacity"], 1);
    let (status, resumed) = call(&fx, Method::POST, &format!("/groups/{id}/resume"), None).await?;
    assert_eq!((status, resumed["status"]["running"].as_u64()), (StatusCode::OK, Some(1)), "{resumed}");
    let list = members(&fx, &id).await?;
    assert_eq!(state_of_in(&list, "10.0.1.52"), ["running"], "the pool member first");
    assert_eq!(state_of_in(&list, "10.0.1.50"), ["paused"], "then the member that kept its address");

    // Rule 9: a subnet is added freely, removed only once no member lives in it.
    let (status, added) = call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(json!({"subnet_ids": [fx.subnet_id, subnet_b]}))).await?;
    assert!(status.is_success(), "{added}");
    assert_eq!(added["subnets"].as_array().map(Vec::len), Some(2));
    let (status, problem) = call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(json!({"subnet_ids": [subnet_b]}))).await?;
    assert!(status == StatusCode::CONFLICT || status == StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains(&fx.subnet_id)), "{problem}");

    // Rule 2: a member stuck launching for want of capacity still counts: no other is made.
    let stuck = json!({"template": {"instance_types": ["u-6tb1.112xlarge"], "fallback_to_on_demand": false}, "target_capacity": 2});
    call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(stuck)).await?;
    reconcile(&fx).await?;
    let list = members(&fx, &id).await?;
    assert_eq!(state_of_in(&list, "10.0.1.50"), ["launching"], "the member that kept its address comes back (for want of capacity, still launching)");
    assert_eq!(live(&list).len(), 2, "the launching member counts: no other is made: {list:?}");
    let (_, shown) = call(&fx, Method::GET, &format!("/groups/{id}"), None).await?;
    assert!(shown["status"]["below_target"].as_str().is_some_and(|w| w.contains("waiting for capacity")), "{shown}");
    Ok(())
}

/// A node recorded before address reservations existed (as a deployment upgrading finds it)
/// gets its reservations from the reconciler: in the table, and in EC2 as a subnet CIDR
/// reservation, so that no other ENI can be handed its chosen address any more.
#[tokio::test]
async fn nodes_recorded_before_reservations_get_theirs_from_the_reconciler() -> Result<(), SetupError> {
    use tether::ports::{Address, NodeStore, Registry};
    let fx = Fixture::new().await?;
    let persistence = tether::Persistence { private_ip: Some(fx.subnet_ip(77)), ..tether::Persistence::default() };
    let mut old = tether::Node::new(fx.spec(&["m5.large"]), persistence, chrono::Utc::now());
    old.addresses_reserved = false;
    fx.store.create(&old).await?;
    let address = Address::PrivateIp { subnet_id: fx.subnet_id.clone(), ip: fx.subnet_ip(77) };
    assert!(fx.store.reservation(&address).await?.is_none(), "an old record has none");
    reconcile(&fx).await?;
    let reserved = fx.store.reservation(&address).await?.ok_or("not backfilled")?;
    assert_eq!(reserved.owner, old.id.as_str());
    assert!(fx.tether.node(&old.id).await?.addresses_reserved);
    let in_ec2 = fx.ec2.get_subnet_cidr_reservations().subnet_id(&fx.subnet_id).send().await?;
    let cidrs: Vec<&str> = in_ec2.subnet_ipv4_cidr_reservations().iter().filter_map(|r| r.cidr()).collect();
    assert_eq!(cidrs, ["10.0.1.77/32"]);
    // A second node asking for the address is now refused before anything is made.
    let node = json!({"spec": {"subnet_id": fx.subnet_id, "image_id": fx.image_id, "instance_types": ["m5.large"]}, "persistence": {"private_ip": "10.0.1.77"}});
    let (status, problem) = call(&fx, Method::POST, "/nodes", Some(node)).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("persistence.private_ip")), "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains(old.id.as_str())), "{problem}");
    Ok(())
}

/// Two Tether stacks sharing a subnet: each describes its subnet CIDR reservations with its
/// table, and neither the sweep nor a release deletes the other's (they are told apart in
/// EC2's own answer, not by the fakes).
#[tokio::test]
async fn another_stacks_subnet_reservations_are_never_deleted() -> Result<(), SetupError> {
    use aws_sdk_ec2::types::SubnetCidrReservationType;
    let fx = Fixture::new().await?;
    let theirs = fx
        .ec2
        .create_subnet_cidr_reservation()
        .subnet_id(&fx.subnet_id)
        .cidr("10.0.1.78/32")
        .reservation_type(SubnetCidrReservationType::Explicit)
        .description("Tether (tether-other-stack): 10.0.1.78 for tn-0123456789abcdef0123456789abcdef")
        .send()
        .await?;
    let theirs = theirs.subnet_cidr_reservation().and_then(|r| r.subnet_cidr_reservation_id()).ok_or("no reservation id")?.to_owned();
    let node = json!({"spec": {"subnet_id": fx.subnet_id, "image_id": fx.image_id, "instance_types": ["m5.large"]}, "persistence": {"private_ip": "10.0.1.79"}});
    let (status, created) = call(&fx, Method::POST, "/nodes", Some(node)).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let described = |fx: &Fixture| {
        let ec2 = fx.ec2.clone();
        let subnet = fx.subnet_id.clone();
        async move {
            let out = ec2.get_subnet_cidr_reservations().subnet_id(subnet).send().await?;
            let found: Vec<(String, String)> = out
                .subnet_ipv4_cidr_reservations()
                .iter()
                .map(|r| (r.subnet_cidr_reservation_id().unwrap_or_default().to_owned(), r.description().unwrap_or_default().to_owned()))
                .collect();
            Ok::<_, SetupError>(found)
        }
    };
    let ours = format!("Tether ({}): 10.0.1.79 for {} at ", fx.table_name, created["id"].as_str().unwrap_or_default());
    assert!(described(&fx).await?.iter().any(|(_, d)| d.starts_with(&ours)), "ours names our table and when: {:?}", described(&fx).await?);
    reconcile(&fx).await?;
    let (status, _) = call(&fx, Method::POST, &format!("/nodes/{}/deallocate", created["id"].as_str().unwrap_or_default()), None).await?;
    assert_eq!(status, StatusCode::OK);
    reconcile(&fx).await?;
    let left: Vec<String> = described(&fx).await?.into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, [theirs], "ours deleted with its address, theirs kept");
    Ok(())
}

/// A group's template carries what a node's spec does (but extra ENIs): a launch template,
/// launch options and the ENI's identity (counts only). Every member launches from the
/// template with them; a template change of the ENI settings reaches every member's ENI at
/// once (the members' instances keep running); named addresses are refused.
#[tokio::test]
async fn a_group_template_carries_a_launch_template_and_eni_settings_to_every_member() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
        .image_id(&fx.image_id)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .security_group_ids(&fx.security_group_id)
        .build();
    let made = fx.ec2.create_launch_template().launch_template_name(format!("group-{}", fx.table_name)).launch_template_data(data).send().await?;
    let template_id = made.launch_template().and_then(|t| t.launch_template_id()).ok_or("no template id")?.to_owned();
    let body = json!({
        "name": "nat",
        "subnet_ids": [fx.subnet_id],
        "template": {
            "image_id": "", "instance_types": [],
            "launch_template": {"id": template_id},
            "secondary_private_ips": {"count": 1}, "source_dest_check": false, "eni_tags": {"role": "nat"},
            "ebs_optimized": true, "volume_tags": {"backup": "daily"},
        },
        "target_capacity": 2,
    });
    let (status, group) = call(&fx, Method::POST, "/groups", Some(body.clone())).await?;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let id = group["id"].as_str().ok_or("no id")?.to_owned();
    let eni_of = |m: &Value| m["eni_id"].as_str().map(str::to_owned).ok_or("no ENI");
    let list = members(&fx, &id).await?;
    assert_eq!(running(&list), 2, "{list:?}");
    for member in &list {
        let eni = fx.eni(&eni_of(member)?).await?;
        let secondary = eni.private_ip_addresses().iter().filter(|a| a.primary() != Some(true)).count();
        let role = eni.tag_set().iter().find(|t| t.key() == Some("role")).and_then(|t| t.value());
        assert_eq!((secondary, eni.source_dest_check(), role), (1, Some(false), Some("nat")), "{member}");
        let groups: Vec<&str> = eni.groups().iter().filter_map(|g| g.group_id()).collect();
        assert_eq!(groups, [fx.security_group_id.as_str()], "the launch template's group is on the member's ENI");
        let instance = fx.instance(member["instance_id"].as_str().ok_or("no instance")?).await?;
        assert_eq!((instance.instance_type().map(|t| t.as_str()), instance.ebs_optimized()), (Some("m5.large"), Some(true)), "the template's type");
    }

    // Two secondary IPs and the check back on: on every member's ENI, no instance replaced.
    let instances: Vec<Value> = list.iter().map(|m| m["instance_id"].clone()).collect();
    let patch = json!({"template": {"secondary_private_ips": {"count": 2}, "source_dest_check": true}});
    let (status, patched) = call(&fx, Method::PATCH, &format!("/groups/{id}"), Some(patch)).await?;
    assert!(status.is_success(), "{patched}");
    reconcile(&fx).await?;
    let list = members(&fx, &id).await?;
    assert_eq!(list.iter().map(|m| m["instance_id"].clone()).collect::<Vec<_>>(), instances, "the same instances");
    for member in &list {
        let eni = fx.eni(&eni_of(member)?).await?;
        let secondary: Vec<&str> = eni.private_ip_addresses().iter().filter(|a| a.primary() != Some(true)).filter_map(|a| a.private_ip_address()).collect();
        assert_eq!((secondary.len(), eni.source_dest_check()), (2, Some(true)), "{member}");
        assert_eq!(member["secondary_private_ips"].as_array().map(Vec::len), Some(2), "recorded on the member: {member}");
    }

    // Named addresses cannot be every member's: refused, naming the field.
    let mut named = body;
    named["template"]["secondary_private_ips"] = json!({"addresses": ["10.0.1.50"]});
    named["name"] = json!("named");
    let (status, problem) = call(&fx, Method::POST, "/groups", Some(named)).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("template.secondary_private_ips.addresses")), "{problem}");
    Ok(())
}
