//! The management API: its contract (the committed OpenAPI document) and every route and
//! action against the emulator, refusals included.

use std::path::PathBuf;

use lambda_http::http::{Method, Request, StatusCode};
use tether::ports::{Instances, NodeStore};
use serde_json::{json, Value};
use tether_tests::local_api::{as_lambda_request, ACCESS_KEY_ID};
use tether_tests::{Fixture, SetupError};

fn committed_document() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions/api").join(tether_api::openapi::COMMITTED_PATH)
}

/// The committed OpenAPI document is the implementation's: same routes, parameters and
/// schemas. `TETHER_UPDATE_OPENAPI=1` rewrites it after an intended change.
#[test]
fn the_openapi_document_matches_the_implementation() -> Result<(), SetupError> {
    let generated = tether_api::openapi::document();
    let path = committed_document();
    if std::env::var_os("TETHER_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&generated)? + "\n")?;
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let routes = |doc: &Value| -> Vec<String> {
        doc["paths"]
            .as_object()
            .map(|paths| paths.iter().flat_map(|(p, ops)| ops.as_object().into_iter().flatten().map(move |(m, _)| format!("{m} {p}"))).collect())
            .unwrap_or_default()
    };
    assert_eq!(routes(&committed), routes(&generated), "routes differ; run TETHER_UPDATE_OPENAPI=1 cargo test -p tether-tests openapi");
    if let Some(pointer) = first_difference(&committed, &generated, String::new()) {
        panic!("the document and the implementation differ at {pointer}; run TETHER_UPDATE_OPENAPI=1 cargo test -p tether-tests openapi");
    }
    assert_eq!(committed["openapi"], "3.1.0");
    Ok(())
}

/// The JSON pointer of the first place where two documents differ.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{at}/{k}")),
                _ => Some(format!("{at}/{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, format!("{at}/{i}")))
        }
        _ if a == b => None,
        _ => Some(if at.is_empty() { "/".into() } else { at }),
    }
}

/// Every route of the table is served: no route in the document goes unanswered.
#[test]
fn every_documented_route_is_routed() {
    for route in tether_api::routes::ROUTES {
        let id = format!("{}00000000000000000000000000000000", tether_api::routes::id_prefix(route.path));
        let path = route.path.replace("{id}", &id);
        let found = tether_api::routes::find(&route.method, &path);
        assert!(found.is_ok_and(|(r, _)| r.operation == route.operation), "{} {}", route.method, route.path);
    }
}

/// Calls the API as Lambda would after API Gateway authenticated the request.
pub(crate) async fn call(fx: &Fixture, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, Value), SetupError> {
    call_with(fx, method, path, body, &[]).await
}

async fn call_with(
    fx: &Fixture,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), SetupError> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(fx, method, path, &body, headers).await
}

/// Sends `body` as it is, with `headers` only (no Content-Type unless given).
async fn send(fx: &Fixture, method: Method, path: &str, body: &str, headers: &[(&str, &str)]) -> Result<(StatusCode, Value), SetupError> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = fx.api.handle(as_lambda_request(builder, body.as_bytes(), Some(ACCESS_KEY_ID))?).await;
    let status = response.status();
    let value = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text)?,
        _ => Value::Null,
    };
    Ok((status, value))
}

fn create_body(fx: &Fixture, persistence: Value, resume: bool) -> Value {
    json!({
        "spec": {
            "subnet_id": fx.subnet_id,
            "image_id": fx.image_id,
            "instance_types": ["m5.large", "m6i.large"],
            "security_group_ids": [fx.security_group_id],
        },
        "persistence": persistence,
        "resume": resume,
    })
}

#[tokio::test]
async fn create_resume_pause_recycle_and_deallocate_through_the_api() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    let (status, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({"private_ip": "10.0.1.70", "elastic_ip_allocation_id": allocation_id}), true))).await?;
    assert_eq!(status, StatusCode::CREATED, "{node}");
    assert_eq!(node["state"], "running");
    assert_eq!(node["private_ip"], "10.0.1.70");
    assert_eq!(node["public_ip"], public_ip.as_str());
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let first = node["instance_id"].as_str().ok_or("no instance")?.to_owned();

    let (status, shown) = call(&fx, Method::GET, &format!("/nodes/{id}"), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["eni_id"], node["eni_id"]);

    let (status, paused) = call(&fx, Method::POST, &format!("/nodes/{id}/pause"), None).await?;
    assert_eq!((status, paused["state"].as_str()), (StatusCode::OK, Some("paused")), "{paused}");
    assert_eq!(paused["instance_id"], Value::Null);
    assert_eq!(fx.cloud.describe_instance(&first).await?.map(|i| i.state), Some("terminated".into()));
    let (status, again) = call(&fx, Method::POST, &format!("/nodes/{id}/pause"), None).await?;
    assert_eq!((status, again["state"].as_str()), (StatusCode::OK, Some("paused")), "pausing twice is harmless");

    let (status, resumed) = call(&fx, Method::POST, &format!("/nodes/{id}/resume"), None).await?;
    assert_eq!((status, resumed["state"].as_str()), (StatusCode::OK, Some("running")), "{resumed}");
    assert_eq!(resumed["private_ip"], "10.0.1.70");
    assert_eq!(resumed["public_ip"], public_ip.as_str());
    let second = resumed["instance_id"].as_str().ok_or("no instance")?.to_owned();

    // Recycle: the old instance is terminated and a new one boots on the same ENI.
    let (status, recycled) = call(&fx, Method::POST, &format!("/nodes/{id}/recycle"), None).await?;
    assert_eq!(status, StatusCode::OK, "{recycled}");
    assert_eq!(recycled["generation"], 3);
    assert_ne!(recycled["instance_id"], second.as_str());
    assert_eq!(recycled["eni_id"], node["eni_id"]);

    let (status, history) = call(&fx, Method::GET, &format!("/nodes/{id}/history"), None).await?;
    assert_eq!(status, StatusCode::OK);
    let by: Vec<&str> = history["entries"].as_array().ok_or("no entries")?.iter().filter_map(|e| e["by"].as_str()).collect();
    assert!(by.len() >= 4 && by.iter().all(|b| b.ends_with(&format!("user/{ACCESS_KEY_ID}"))), "the caller is recorded: {history}");

    // Deallocate: the ENI is deleted, the user's Elastic IP only disassociated.
    let eni_id = node["eni_id"].as_str().ok_or("no ENI")?.to_owned();
    let (status, gone) = call(&fx, Method::DELETE, &format!("/nodes/{id}"), None).await?;
    assert_eq!((status, gone["state"].as_str()), (StatusCode::OK, Some("deallocated")), "{gone}");
    assert!(fx.ec2.describe_network_interfaces().network_interface_ids(&eni_id).send().await.is_err(), "ENI deleted");
    let eip = fx.ec2.describe_addresses().allocation_ids(&allocation_id).send().await?;
    let address = eip.addresses().first().ok_or("the user's Elastic IP must still exist")?;
    assert_eq!(address.association_id(), None, "disassociated, not released");

    let (status, refused) = call(&fx, Method::POST, &format!("/nodes/{id}/resume"), None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["detail"].as_str().is_some_and(|d| d.contains("deallocated")));
    Ok(())
}

#[tokio::test]
async fn an_elastic_ip_tether_allocated_is_released_and_a_kept_eni_stays() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({"allocate_elastic_ip": true}), true))).await?;
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let allocation_id = node["elastic_ip_allocation_id"].as_str().ok_or("Tether allocated no EIP")?.to_owned();
    let (status, _) = call(&fx, Method::POST, &format!("/nodes/{id}/deallocate"), Some(json!({}))).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(fx.ec2.describe_addresses().allocation_ids(&allocation_id).send().await.is_err(), "Tether's EIP released");

    let (_, kept) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({}), true))).await?;
    let kept_id = kept["id"].as_str().ok_or("no id")?.to_owned();
    let (status, gone) = call(&fx, Method::POST, &format!("/nodes/{kept_id}/deallocate"), Some(json!({"keep_eni": true}))).await?;
    assert_eq!((status, gone["state"].as_str()), (StatusCode::OK, Some("deallocated")));
    let eni = fx.eni(kept["eni_id"].as_str().ok_or("no ENI")?).await?;
    assert_eq!(eni.status(), Some(&aws_sdk_ec2::types::NetworkInterfaceStatus::Available), "kept, free for later use");
    Ok(())
}

#[tokio::test]
async fn import_adopts_a_running_instance_with_its_ip_and_eip() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let launched = fx.run_one().subnet_id(&fx.subnet_id).private_ip_address("10.0.1.80").send().await?;
    let instance = launched.instances().first().ok_or("no instance")?;
    let instance_id = instance.instance_id().ok_or("no id")?.to_owned();
    let eni_id = instance.network_interfaces().first().and_then(|n| n.network_interface_id()).ok_or("no ENI")?.to_owned();
    let (allocation_id, public_ip) = fx.allocate_eip().await?;
    fx.ec2.associate_address().allocation_id(&allocation_id).network_interface_id(&eni_id).send().await?;

    fx.calls.take();
    let (status, node) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": instance_id, "instance_types": ["m5.large"]}))).await?;
    assert_eq!(status, StatusCode::CREATED, "{node}");
    // The deploy's IAM lets the API change an ENI only once it carries Tether's tag
    // (`ec2:ResourceTag/tether:managed`): the tags go on first.
    let calls = fx.calls.take();
    let position = |operation: &str| calls.iter().position(|c| c == operation).ok_or(format!("no {operation} in {calls:?}"));
    assert!(position("EC2.CreateTags")? < position("EC2.ModifyNetworkInterfaceAttribute")?, "{calls:?}");
    assert_eq!((node["state"].as_str(), node["private_ip"].as_str(), node["public_ip"].as_str()), (Some("running"), Some("10.0.1.80"), Some(public_ip.as_str())));
    let eni = fx.eni(&eni_id).await?;
    assert_eq!(eni.attachment().and_then(|a| a.delete_on_termination()), Some(false), "the ENI now outlives the instance");

    let (status, twice) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": instance_id}))).await?;
    assert_eq!(status, StatusCode::CONFLICT, "already managed: {twice}");

    // The imported node recovers like any other.
    fx.interrupt(&instance_id).await?;
    let id = tether::NodeId::parse(node["id"].as_str().ok_or("no id")?).ok_or("bad id")?;
    let event = tether::events::InstanceEvent::StateChange { instance_id: instance_id.clone(), state: tether::events::InstanceState::Terminated };
    fx.tether.handle_event("ev-import-1", "invocation-1", &event, fx.tether.deadline_in(std::time::Duration::from_secs(30))).await?;
    let after = fx.tether.node(&id).await?;
    assert_eq!(after.generation, 2);
    let replacement = fx.instance(after.instance_id().ok_or("no instance")?).await?;
    assert_eq!(replacement.private_ip_address(), Some("10.0.1.80"));
    assert_eq!(replacement.public_ip_address(), Some(public_ip.as_str()));
    // The instance's metadata settings were copied (the emulator's default: IMDSv1 allowed,
    // one hop) and the replacement keeps them.
    assert_eq!(node["spec"]["metadata_options"]["http_tokens"], "optional", "{node}");
    let tokens = replacement.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str().to_owned());
    assert_eq!(tokens.as_deref(), Some("optional"));
    Ok(())
}

#[tokio::test]
async fn refusals_name_the_field_and_the_fix() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let check = |(status, problem): (StatusCode, Value), want: StatusCode, field: Option<&str>| {
        assert_eq!(status, want, "{problem}");
        assert_eq!(problem["field"].as_str(), field, "{problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
    };
    let mut body = create_body(&fx, json!({"private_ip": "10.0.9.9"}), false);
    check(call(&fx, Method::POST, "/nodes", Some(body.clone())).await?, StatusCode::UNPROCESSABLE_ENTITY, Some("persistence.private_ip"));
    body["persistence"] = json!({"private_ip": "10.0.1.1"});
    check(call(&fx, Method::POST, "/nodes", Some(body.clone())).await?, StatusCode::UNPROCESSABLE_ENTITY, Some("persistence.private_ip"));
    body["persistence"] = json!({});
    body["spec"]["subnet_id"] = json!("subnet-0000000000000dead");
    check(call(&fx, Method::POST, "/nodes", Some(body.clone())).await?, StatusCode::UNPROCESSABLE_ENTITY, Some("spec.subnet_id"));
    body["spec"]["subnet_id"] = json!(fx.subnet_id);
    body["spec"]["instance_types"] = json!(["m5.large", "m99.huge"]);
    let (status, problem) = call(&fx, Method::POST, "/nodes", Some(body.clone())).await?;
    check((status, problem.clone()), StatusCode::UNPROCESSABLE_ENTITY, Some("spec.instance_types"));
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("m99.huge")));
    body["spec"]["instance_types"] = json!(["m5.large"]);
    body["spec"]["color"] = json!("blue");
    check(call(&fx, Method::POST, "/nodes", Some(body.clone())).await?, StatusCode::BAD_REQUEST, Some("spec.color"));

    // A chosen IP already in use, and an Elastic IP held by another node.
    let (allocation_id, _) = fx.allocate_eip().await?;
    let (status, _) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({"private_ip": "10.0.1.90", "elastic_ip_allocation_id": allocation_id}), true))).await?;
    assert_eq!(status, StatusCode::CREATED);
    check(call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({"private_ip": "10.0.1.90"}), false))).await?, StatusCode::UNPROCESSABLE_ENTITY, Some("persistence.private_ip"));
    check(
        call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({"elastic_ip_allocation_id": allocation_id}), false))).await?,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("persistence.elastic_ip_allocation_id"),
    );

    // PATCH changes launch settings and refuses the network identity.
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({}), false))).await?;
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let (status, patched) = call(&fx, Method::PATCH, &format!("/nodes/{id}"), Some(json!({"instance_types": ["m6i.large"], "tags": {"team": "db"}}))).await?;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["spec"]["instance_types"], json!(["m6i.large"]));
    check(call(&fx, Method::PATCH, &format!("/nodes/{id}"), Some(json!({"subnet_id": "subnet-0other"}))).await?, StatusCode::UNPROCESSABLE_ENTITY, Some("subnet_id"));

    // Actions that do not fit the state, unknown nodes, bad parameters, big bodies.
    let (status, paused) = call(&fx, Method::POST, &format!("/nodes/{id}/pause"), None).await?;
    assert_eq!((status, paused["state"].as_str()), (StatusCode::OK, Some("paused")), "pausing a paused node is harmless");
    check(call(&fx, Method::GET, "/nodes/tn-00000000000000000000000000000000", None).await?, StatusCode::NOT_FOUND, None);
    check(call(&fx, Method::GET, "/nodes?limit=0", None).await?, StatusCode::BAD_REQUEST, Some("limit"));
    check(call(&fx, Method::DELETE, &format!("/nodes/{id}?keep_eni=maybe"), None).await?, StatusCode::BAD_REQUEST, Some("keep_eni"));
    let big = json!({"spec": {"user_data": "x".repeat(tether_api::MAX_BODY_BYTES)}});
    check(call(&fx, Method::POST, "/nodes", Some(big)).await?, StatusCode::PAYLOAD_TOO_LARGE, None);
    Ok(())
}

/// A body labelled as anything but JSON is refused (415) before anything is created; an
/// unlabelled one is read as JSON; a body that is not a JSON object is named as such.
#[tokio::test]
async fn bodies_must_be_json_objects_labelled_as_json_or_unlabelled() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let body = create_body(&fx, json!({}), false).to_string();
    for media_type in ["text/plain", "application/xml", "application/x-www-form-urlencoded"] {
        let (status, problem) = send(&fx, Method::POST, "/nodes", &body, &[("content-type", media_type)]).await?;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{media_type}: {problem}");
        assert_eq!(problem["field"], "Content-Type", "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("application/json") && detail.contains(media_type), "{problem}");
    }
    let (_, list) = call(&fx, Method::GET, "/nodes", None).await?;
    assert_eq!(list["nodes"], json!([]), "a refused body creates nothing");

    for headers in [&[("content-type", "application/json; charset=utf-8")][..], &[("Content-Type", "Application/JSON")], &[]] {
        let (status, node) = send(&fx, Method::POST, "/nodes", &body, headers).await?;
        assert_eq!(status, StatusCode::CREATED, "{headers:?}: {node}");
    }

    // Not a JSON object: said so, and no field named (there is none).
    for (sent, says) in [("spec=subnet-1&image=ami-1", "it is not JSON"), ("[1, 2]", "not an array"), ("\"node\"", "not a string"), ("{\"spec\": ", "it is not JSON")] {
        let (status, problem) = send(&fx, Method::POST, "/nodes", sent, &[]).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sent}: {problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("the body must be a JSON object") && detail.contains(says), "{sent}: {problem}");
        assert!(problem.get("field").is_none_or(Value::is_null), "{sent}: {problem}");
    }
    // A field of the wrong type is still named.
    let (status, problem) = send(&fx, Method::PATCH, "/nodes/tn-00000000000000000000000000000000", r#"{"tags": 5}"#, &[]).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("tags")), "{problem}");
    Ok(())
}

#[tokio::test]
async fn an_action_that_does_not_fit_the_state_answers_409_and_why() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({}), false))).await?;
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let (status, gone) = call(&fx, Method::POST, &format!("/nodes/{id}/deallocate"), None).await?;
    assert_eq!((status, gone["state"].as_str()), (StatusCode::OK, Some("deallocated")), "a never-resumed node deallocates at once");
    for action in ["resume", "recycle", "pause"] {
        let (status, problem) = call(&fx, Method::POST, &format!("/nodes/{id}/{action}"), None).await?;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("deallocated")), "{problem}");
    }
    Ok(())
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_runs_once() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let body = create_body(&fx, json!({}), true);
    let key = [("Idempotency-Key", "create-db-1")];
    let (first_status, first) = call_with(&fx, Method::POST, "/nodes", Some(body.clone()), &key).await?;
    let (again_status, again) = call_with(&fx, Method::POST, "/nodes", Some(body), &key).await?;
    assert_eq!((first_status, again_status), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["id"], again["id"], "the retry gets the first answer");
    let (_, list) = call(&fx, Method::GET, "/nodes?limit=100", None).await?;
    assert_eq!(list["nodes"].as_array().map(Vec::len), Some(1), "one node, not two");
    let id = first["id"].as_str().ok_or("no id")?;
    let pause_key = [("Idempotency-Key", "pause-1")];
    let (s1, _) = call_with(&fx, Method::POST, &format!("/nodes/{id}/pause"), None, &pause_key).await?;
    let (s2, replayed) = call_with(&fx, Method::POST, &format!("/nodes/{id}/pause"), None, &pause_key).await?;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(replayed["state"], "paused");
    Ok(())
}

#[tokio::test]
async fn nodes_are_listed_a_page_at_a_time() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let mut created = Vec::new();
    for _ in 0..5 {
        let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({}), false))).await?;
        created.push(node["id"].as_str().ok_or("no id")?.to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/nodes?limit=2".to_owned();
    loop {
        let (status, page) = call(&fx, Method::GET, &path, None).await?;
        assert_eq!(status, StatusCode::OK);
        let nodes = page["nodes"].as_array().ok_or("no nodes")?;
        assert!(nodes.len() <= 2);
        seen.extend(nodes.iter().filter_map(|n| n["id"].as_str().map(str::to_owned)));
        match page["next_token"].as_str() {
            Some(token) => path = format!("/nodes?limit=2&next_token={token}"),
            None => break,
        }
    }
    seen.sort();
    created.sort();
    assert_eq!(seen, created, "every node once");
    Ok(())
}

#[tokio::test]
async fn requests_without_an_iam_identity_are_refused() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let request = as_lambda_request(Request::builder().method(Method::GET).uri("/nodes"), b"", None)?;
    let response = fx.api.handle(request).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn a_deallocation_waits_for_the_eni_and_finishes_on_the_termination_event() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({}), true))).await?;
    let id = tether::NodeId::parse(node["id"].as_str().ok_or("no id")?).ok_or("bad id")?;
    let instance_id = node["instance_id"].as_str().ok_or("no instance")?.to_owned();
    let eni_id = node["eni_id"].as_str().ok_or("no ENI")?.to_owned();
    // As on AWS, the terminated instance holds its ENI a while: stage the deallocation as
    // recorded while the instance still runs, then deliver the termination event early.
    let running = fx.tether.node(&id).await?;
    let tether::lifecycle::Step::Apply { next, .. } = tether::lifecycle::on_deallocate(&running, false, chrono::Utc::now(), None) else {
        return Err("deallocate did not apply".into());
    };
    fx.store.save(&next).await?;
    let terminated = tether::events::InstanceEvent::StateChange { instance_id: instance_id.clone(), state: tether::events::InstanceState::Terminated };
    let short = fx.tether.deadline_in(std::time::Duration::from_millis(600));
    let err = fx.tether.handle_event("ev-dealloc-1", "invocation-1", &terminated, short).await.expect_err("the ENI is still attached");
    assert!(err.is_retryable() && err.aws_code() == Some("InvalidNetworkInterface.InUse"), "{err}");
    assert_eq!(fx.tether.node(&id).await?.state, tether::NodeState::Deallocating, "not given up");
    fx.eni(&eni_id).await?;

    fx.interrupt(&instance_id).await?;
    // Lambda's retry of the same event: the failed invocation gave its claim up.
    fx.tether.handle_event("ev-dealloc-1", "invocation-2", &terminated, fx.tether.deadline_in(std::time::Duration::from_secs(30))).await?;
    assert_eq!(fx.tether.node(&id).await?.state, tether::NodeState::Deallocated);
    assert!(fx.ec2.describe_network_interfaces().network_interface_ids(&eni_id).send().await.is_err(), "ENI deleted");
    Ok(())
}

#[tokio::test]
async fn names_aws_would_choke_on_are_refused_before_any_aws_call() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let mut body = create_body(&fx, json!({}), true);
    body["spec"]["tags"] = json!({"a": "\u{e}"});
    let (status, problem) = call(&fx, Method::POST, "/nodes", Some(body.clone())).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("spec.tags.a")), "{problem}");
    body["spec"]["tags"] = json!({"tether:node-id": "mine"});
    let (status, _) = call(&fx, Method::POST, "/nodes", Some(body.clone())).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "Tether's own tag prefix is reserved");
    body["spec"]["tags"] = json!({});
    body["spec"]["instance_types"] = json!(["\u{12}"]);
    let (status, problem) = call(&fx, Method::POST, "/nodes", Some(body)).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("spec.instance_types")), "{problem}");
    let (status, problem) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": "\u{12}"}))).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("instance_id")), "{problem}");
    let (_, list) = call(&fx, Method::GET, "/nodes", None).await?;
    assert_eq!(list["nodes"], json!([]), "nothing was created");
    Ok(())
}

#[tokio::test]
async fn a_launch_that_cannot_finish_can_be_called_off() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    // No capacity anywhere for this type in the emulator, and no on-demand fallback.
    let mut body = create_body(&fx, json!({}), true);
    body["spec"]["instance_types"] = json!(["u-6tb1.112xlarge"]);
    body["spec"]["fallback_to_on_demand"] = json!(false);
    let (status, node) = call(&fx, Method::POST, "/nodes", Some(body)).await?;
    assert_eq!((status, node["state"].as_str()), (StatusCode::CREATED, Some("launching")), "{node}");
    assert!(node["last_error"].as_str().is_some_and(|e| e.contains("InsufficientInstanceCapacity")), "{node}");
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let (status, again) = call(&fx, Method::POST, &format!("/nodes/{id}/resume"), None).await?;
    assert_eq!((status, again["state"].as_str()), (StatusCode::ACCEPTED, Some("launching")), "still no capacity: {again}");
    let (status, shown) = call(&fx, Method::GET, &format!("/nodes/{id}"), None).await?;
    assert_eq!((status, shown["state"].as_str()), (StatusCode::OK, Some("launching")), "a GET answers 200, as documented: {shown}");
    let (status, paused) = call(&fx, Method::POST, &format!("/nodes/{id}/pause"), None).await?;
    assert_eq!((status, paused["state"].as_str()), (StatusCode::OK, Some("paused")), "{paused}");
    let (status, gone) = call(&fx, Method::DELETE, &format!("/nodes/{id}"), None).await?;
    assert_eq!((status, gone["state"].as_str()), (StatusCode::OK, Some("deallocated")), "{gone}");
    let (status, problem) = call(&fx, Method::PATCH, &format!("/nodes/{id}"), Some(json!({"instance_types": ["m5.large"]}))).await?;
    assert_eq!(status, StatusCode::CONFLICT, "changing a deallocated node does not fit its state: {problem}");
    assert_eq!(fx.instances_in_vpc().await?, Vec::<String>::new(), "nothing left running");
    Ok(())
}

#[tokio::test]
async fn a_literal_path_is_never_taken_for_a_node_id() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let request = as_lambda_request(Request::builder().method(Method::PATCH).uri("/nodes/import"), b"{}", Some(ACCESS_KEY_ID))?;
    let response = fx.api.handle(request).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    Ok(())
}

#[tokio::test]
async fn the_remaining_refusals() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let unknown = "tn-00000000000000000000000000000000";
    for (method, path, body) in [
        (Method::PATCH, format!("/nodes/{unknown}"), Some(json!({"tags": {}}))),
        (Method::GET, format!("/nodes/{unknown}/history"), None),
        (Method::POST, format!("/nodes/{unknown}/resume"), None),
        (Method::POST, format!("/nodes/{unknown}/deallocate"), None),
    ] {
        let (status, problem) = call(&fx, method.clone(), &path, body).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
    }
    // Import: an instance that does not exist, and one that is stopped.
    let (status, problem) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": "i-0123456789abcdef0"}))).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("instance_id")), "{problem}");
    let launched = fx.run_one().subnet_id(&fx.subnet_id).send().await?;
    let stopped = launched.instances().first().and_then(|i| i.instance_id()).ok_or("no instance")?.to_owned();
    fx.ec2.stop_instances().instance_ids(&stopped).send().await?;
    let (status, problem) = call(&fx, Method::POST, "/nodes/import", Some(json!({"instance_id": stopped}))).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("stopped")), "{problem}");

    // PATCH of the private IP is refused, with the reason.
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({"private_ip": "10.0.1.40"}), false))).await?;
    let id = node["id"].as_str().ok_or("no id")?.to_owned();
    let (status, problem) = call(&fx, Method::PATCH, &format!("/nodes/{id}"), Some(json!({"private_ip": "10.0.1.41"}))).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("private_ip")), "{problem}");

    // Idempotency-Key: malformed (400), reused for another request (422).
    let (status, problem) = call_with(&fx, Method::POST, &format!("/nodes/{id}/pause"), None, &[("Idempotency-Key", "a b")]).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("Idempotency-Key")), "{problem}");
    let key = [("Idempotency-Key", "k-1")];
    call_with(&fx, Method::POST, &format!("/nodes/{id}/pause"), None, &key).await?;
    let (status, problem) = call_with(&fx, Method::POST, &format!("/nodes/{id}/resume"), None, &key).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("Idempotency-Key")), "{problem}");

    // Resume of a node in ERROR is refused with the reason and the way out.
    let mut broken = fx.tether.node(&tether::NodeId::parse(&id).ok_or("bad id")?).await?;
    broken = tether::lifecycle::failed(&broken, "ENI eni-0 was deleted outside Tether".into(), chrono::Utc::now());
    fx.store.save(&broken).await?;
    let (status, problem) = call(&fx, Method::POST, &format!("/nodes/{id}/resume"), None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("ERROR") && d.contains("recycle")), "{problem}");
    Ok(())
}

#[tokio::test]
async fn a_resume_carries_on_a_recycle_whose_terminate_never_happened() -> Result<(), SetupError> {
    let fx = Fixture::new().await?;
    let (_, node) = call(&fx, Method::POST, "/nodes", Some(create_body(&fx, json!({}), true))).await?;
    let id = tether::NodeId::parse(node["id"].as_str().ok_or("no id")?).ok_or("bad id")?;
    let first = node["instance_id"].as_str().ok_or("no instance")?.to_owned();
    // A recycle recorded its new generation, then died before terminating the old instance.
    let running = fx.tether.node(&id).await?;
    let tether::lifecycle::Step::Apply { next, .. } = tether::lifecycle::on_recycle(&running, chrono::Utc::now(), None) else {
        return Err("recycle did not apply".into());
    };
    fx.store.save(&next).await?;
    let (status, resumed) = call(&fx, Method::POST, &format!("/nodes/{id}/resume"), None).await?;
    assert_eq!((status, resumed["state"].as_str()), (StatusCode::OK, Some("running")), "{resumed}");
    assert_eq!(resumed["generation"], 2);
    assert_eq!(fx.cloud.describe_instance(&first).await?.map(|i| i.state), Some("terminated".into()), "the old one terminated at last");
    assert_eq!(fx.instances_in_vpc().await?.len(), 1, "one instance runs the node");
    Ok(())
}
