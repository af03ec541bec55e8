//! `tether-api`: the management API behind an API Gateway HTTP API (payload 2.0, IAM
//! auth). Handlers translate: parse and check the request, call the service, answer
//! JSON or an RFC 9457 problem. The route table in `routes` also writes `openapi`.

mod groups;
pub mod openapi;
mod problem;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use lambda_http::http::{header, Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tether::config::Config;
use tether::lifecycle::NodePatch;
use tether::ports::{Claim, IdempotencyStore};
use tether::views::{CreateNode, Deallocate, NodeHistory, NodeList, NodeView};
use tether::{ImportRequest, NodeId, NodeState, Outcome, Tether, TetherError};
use tracing::{info, warn};

use problem::{from_error, json, problem, respond};
use routes::{NoRoute, Operation, Route};

/// Request bodies larger than this are refused (413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_PAGE: usize = 25;
const MAX_PAGE: usize = 100;

pub struct Api {
    tether: Tether,
    idempotency: Arc<dyn IdempotencyStore>,
    /// How long a long action (resume, recycle, deallocate) may work before answering 202;
    /// API Gateway gives an integration 30 seconds.
    action_budget: Duration,
}

pub(crate) type Answer = Response<Body>;

impl Api {
    pub fn new(tether: Tether, idempotency: Arc<dyn IdempotencyStore>, action_budget: Duration) -> Self {
        Api { tether, idempotency, action_budget }
    }

    /// Config and AWS clients from the environment, as in Lambda.
    pub async fn from_env() -> Result<Self, lambda_http::Error> {
        let config = Config::from_env()?;
        let sdk = tether::lambda::load_sdk().await;
        Ok(Api::from_sdk(&sdk, &config, Duration::from_secs(20)))
    }

    /// The API on AWS clients from an SDK config (endpoint, region, credentials).
    pub fn from_sdk(sdk: &tether::lambda::SdkConfig, config: &Config, action_budget: Duration) -> Self {
        let tether = tether::lambda::tether_from_sdk(sdk, config);
        let idempotency = tether::lambda::idempotency_from_sdk(sdk, config);
        Api::new(tether, Arc::new(idempotency), action_budget)
    }

    /// Answers one request; never fails (errors are problem answers).
    pub async fn handle(&self, request: Request) -> Answer {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (route, id) = match routes::find(&method, &path) {
            Ok(found) => found,
            Err(NoRoute::NotFound) => return problem(StatusCode::NOT_FOUND, "no-route", format!("no route {method} {path}"), None),
            Err(NoRoute::MethodNotAllowed(allowed)) => {
                let allowed = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                let mut answer = problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", format!("{path} allows {allowed}"), None);
                if let Ok(value) = allowed.parse() {
                    answer.headers_mut().insert(header::ALLOW, value);
                }
                return answer;
            }
        };
        // API Gateway's IAM authorizer is the only gate: no identity from it, no service.
        let Some(caller) = caller(&request) else {
            return problem(StatusCode::FORBIDDEN, "not-authenticated", "the request carries no IAM identity from API Gateway; sign it with SigV4", None);
        };
        let body: &[u8] = match request.body() {
            Body::Empty => &[],
            Body::Text(text) => text.as_bytes(),
            Body::Binary(bytes) => bytes,
            _ => &[],
        };
        if body.len() > MAX_BODY_BYTES {
            return problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", format!("request bodies are limited to {MAX_BODY_BYTES} bytes"), None);
        }
        if let Err(answer) = json_content_type(&request, body) {
            return *answer;
        }
        let query = request.uri().query().unwrap_or_default().to_owned();
        let call = Call { route, id, query: &query, body, caller: &caller };
        if method != Method::POST {
            return self.dispatch(&call).await;
        }
        let Some(key) = request.headers().get("idempotency-key") else {
            return self.dispatch(&call).await;
        };
        let key = match key.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => k,
            _ => return problem(StatusCode::BAD_REQUEST, "invalid-header", "Idempotency-Key must be 1 to 255 visible ASCII characters", Some("Idempotency-Key")),
        };
        self.once(&call, key, &method, &path).await
    }

    /// Runs a POST at most once per (caller, Idempotency-Key); later uses replay its answer.
    async fn once(&self, call: &Call<'_>, key: &str, method: &Method, path: &str) -> Answer {
        let scoped = format!("{}|{key}", call.caller);
        let fingerprint = {
            let mut hash = Sha256::new();
            for part in [method.as_str().as_bytes(), path.as_bytes(), call.query.as_bytes(), call.body] {
                hash.update(part);
                hash.update([0u8]);
            }
            hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        match self.idempotency.claim(&scoped, &fingerprint).await {
            Ok(Claim::New) => {}
            Ok(Claim::Replay { status, body }) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let content_type = if status.is_success() { "application/json" } else { "application/problem+json" };
                let mut answer = respond(status, content_type, body);
                answer.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
                return answer;
            }
            Ok(Claim::InProgress) => {
                return problem(StatusCode::CONFLICT, "request-in-progress", "a request with this Idempotency-Key is being processed; retry shortly", Some("Idempotency-Key"))
            }
            Ok(Claim::Mismatch) => {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "this Idempotency-Key was used for a different request; use a new key", Some("Idempotency-Key"))
            }
            Err(e) => return from_error(&e.into()),
        }
        let answer = self.dispatch(call).await;
        let text = match answer.body() {
            Body::Text(text) => text.clone(),
            _ => String::new(),
        };
        let stored = if answer.status().is_server_error() {
            self.idempotency.release(&scoped).await
        } else {
            self.idempotency.complete(&scoped, &fingerprint, answer.status().as_u16(), &text).await
        };
        if let Err(e) = stored {
            warn!(error = %e, "could not store the idempotent answer; a retry may run the request again");
        }
        answer
    }

    async fn dispatch(&self, call: &Call<'_>) -> Answer {
        info!(operation = call.route.operation_id, id = call.id, caller = call.caller, "request");
        if call.route.path.starts_with("/groups") {
            // Boxed: a group's futures (its controller's run included) are large.
            return Box::pin(self.groups(call)).await;
        }
        // Boxed as well: a spec's futures (create, patch, launch) outgrow a debug build's
        // 2 MiB thread stack when they sit on it.
        Box::pin(self.nodes(call)).await
    }

    async fn nodes(&self, call: &Call<'_>) -> Answer {
        let by = Some(call.caller);
        let node_id = match call.id.map(NodeId::parse) {
            Some(None) => return problem(StatusCode::NOT_FOUND, "node-not-found", format!("no node {}", call.id.unwrap_or_default()), None),
            Some(Some(id)) => Some(id),
            None => None,
        };
        let deadline = self.tether.deadline_in(self.action_budget);
        match (call.route.operation, node_id) {
            (Operation::ListNodes, _) => self.list(call.query).await,
            (Operation::CreateNode, _) => {
                let request: CreateNode = match parse(call.body, call.route) {
                    Ok(r) => r,
                    Err(answer) => return *answer,
                };
                let node = match self.tether.create_node(request.spec, request.persistence, by).await {
                    Ok(node) => node,
                    Err(e) => return from_error(&e),
                };
                if request.resume {
                    if let Err(e) = self.tether.resume(&node.id, deadline, by).await {
                        warn!(node_id = %node.id, error = %e, "resume after create did not finish; the node shows how far it got");
                    }
                }
                self.created(&node.id).await
            }
            (Operation::ImportNode, _) => {
                let request: ImportRequest = match parse(call.body, call.route) {
                    Ok(r) => r,
                    Err(answer) => return *answer,
                };
                match self.tether.import_instance(&request, by).await {
                    Ok(node) => self.created(&node.id).await,
                    Err(e) => from_error(&e),
                }
            }
            (Operation::GetNode, Some(id)) => self.show(&id, Some(StatusCode::OK)).await,
            (Operation::PatchNode, Some(id)) => {
                let patch: NodePatch = match parse(call.body, call.route) {
                    Ok(p) => p,
                    Err(answer) => return *answer,
                };
                match self.tether.patch(&id, &patch, by).await {
                    Ok(node) => json(StatusCode::OK, &NodeView::from(&node)),
                    Err(e) => from_error(&e),
                }
            }
            (Operation::NodeHistory, Some(id)) => match self.tether.node(&id).await {
                Ok(node) => json(StatusCode::OK, &NodeHistory { node_id: node.id.clone(), entries: node.history }),
                Err(e) => from_error(&e),
            },
            (Operation::PauseNode, Some(id)) => self.after(&id, self.tether.pause(&id, deadline, by).await).await,
            (Operation::ResumeNode, Some(id)) => self.after(&id, self.tether.resume(&id, deadline, by).await).await,
            (Operation::RecycleNode, Some(id)) => self.after(&id, self.tether.recycle(&id, deadline, by).await).await,
            (Operation::DeallocateNode, Some(id)) => {
                let options: Deallocate = match parse(call.body, call.route) {
                    Ok(o) => o,
                    Err(answer) => return *answer,
                };
                self.after(&id, self.tether.deallocate(&id, options.keep_eni, deadline, by).await).await
            }
            (Operation::DeleteNode, Some(id)) => {
                let keep_eni = match query_param(call.query, "keep_eni").as_deref() {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return problem(StatusCode::BAD_REQUEST, "invalid-parameter", format!("keep_eni must be true or false, not `{other}`"), Some("keep_eni"))
                    }
                };
                self.after(&id, self.tether.deallocate(&id, keep_eni, deadline, by).await).await
            }
            // Every node route with {id} is matched above (groups' went to `groups`).
            _ => problem(StatusCode::NOT_FOUND, "no-route", "this route needs a node id", None),
        }
    }

    async fn list(&self, query: &str) -> Answer {
        let (limit, start_after) = match page_of(query, NodeId::parse) {
            Ok(page) => page,
            Err(answer) => return *answer,
        };
        match self.tether.nodes(limit, start_after.as_ref()).await {
            Ok((nodes, next)) => json(
                StatusCode::OK,
                &NodeList { nodes: nodes.iter().map(NodeView::from).collect(), next_token: next.map(|id| id.to_string()) },
            ),
            Err(e) => from_error(&e),
        }
    }

    /// The node; with `status`, or for an action that goes on after the answer (`None`):
    /// 200 when the node is settled, 202 while it is launching or deallocating.
    async fn show(&self, id: &NodeId, status: Option<StatusCode>) -> Answer {
        match self.tether.node(id).await {
            Ok(node) => {
                let transitional = matches!(node.state, NodeState::Launching | NodeState::Deallocating);
                let status = status.unwrap_or(if transitional { StatusCode::ACCEPTED } else { StatusCode::OK });
                json(status, &NodeView::from(&node))
            }
            Err(e) => from_error(&e),
        }
    }

    async fn created(&self, id: &NodeId) -> Answer {
        let mut answer = self.show(id, Some(StatusCode::CREATED)).await;
        if let Ok(location) = format!("/nodes/{id}").parse() {
            answer.headers_mut().insert(header::LOCATION, location);
        }
        answer
    }

    /// The node after an action: 200 when it is settled, 202 while the action goes on
    /// (a launch waiting for the ENI or for capacity, a deallocation waiting for the ENI).
    async fn after(&self, id: &NodeId, outcome: Result<Outcome, TetherError>) -> Answer {
        match outcome {
            Ok(Outcome::Refused { reason }) => problem(StatusCode::CONFLICT, "state-conflict", reason, None),
            Ok(Outcome::Failed { reason, .. }) => problem(StatusCode::UNPROCESSABLE_ENTITY, "node-error", format!("the node went to ERROR: {reason}"), None),
            Ok(_) | Err(TetherError::EniStillAttached { .. } | TetherError::NoCapacity { .. }) => self.show(id, None).await,
            Err(e) => from_error(&e),
        }
    }
}

/// A listing's `limit` and `next_token` (read by `parse_id`), or a 400 naming the one at fault.
pub(crate) fn page_of<Id>(query: &str, parse_id: impl Fn(&str) -> Option<Id>) -> Result<(usize, Option<Id>), Box<Answer>> {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_PAGE,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                let detail = format!("limit must be a whole number from 1 to {MAX_PAGE}, not `{raw}`");
                return Err(Box::new(problem(StatusCode::BAD_REQUEST, "invalid-parameter", detail, Some("limit"))));
            }
        },
    };
    let start_after = match query_param(query, "next_token") {
        None => None,
        Some(raw) => match parse_id(&raw) {
            Some(id) => Some(id),
            None => {
                let detail = "next_token must be the `next_token` of a previous page";
                return Err(Box::new(problem(StatusCode::BAD_REQUEST, "invalid-parameter", detail, Some("next_token"))));
            }
        },
    };
    Ok((limit, start_after))
}

/// One request, as the dispatcher needs it.
pub(crate) struct Call<'a> {
    route: &'static Route,
    id: Option<&'a str>,
    query: &'a str,
    body: &'a [u8],
    caller: &'a str,
}

/// The caller's IAM identity, as API Gateway's IAM authorizer reports it.
fn caller(request: &Request) -> Option<String> {
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(context) => {
            let iam = context.authorizer.as_ref()?.iam.as_ref()?;
            iam.user_arn.clone().or_else(|| iam.caller_id.clone()).filter(|c| !c.is_empty())
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The media type the API reads; a body sent as anything else is refused (415). A request
/// without a Content-Type is read as JSON: many clients omit it.
pub const JSON: &str = "application/json";

/// A 415 problem unless a non-empty body is labelled `application/json` (parameters such as
/// `charset=utf-8` allowed) or not labelled at all.
fn json_content_type(request: &Request, body: &[u8]) -> Result<(), Box<Answer>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else { return Ok(()) };
    let media_type = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(JSON) {
        return Ok(());
    }
    let shown = if media_type.is_empty() { "an empty Content-Type".to_owned() } else { format!("`{media_type}`") };
    let mut answer = problem(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        format!("the body must be JSON sent as Content-Type: {JSON}, not {shown}"),
        Some("Content-Type"),
    );
    answer.headers_mut().insert(header::ACCEPT, header::HeaderValue::from_static(JSON));
    Err(Box::new(answer))
}

/// A JSON body into `T`, or a 400 problem naming the field at fault (none when the body is
/// not a JSON object at all).
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8], route: &Route) -> Result<T, Box<Answer>> {
    let required = route.body.is_some_and(|(_, required)| required);
    let invalid = |detail: String, field: Option<&str>| Box::new(problem(StatusCode::BAD_REQUEST, "invalid-request", detail, field));
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        if required {
            return Err(invalid("a JSON request body is required".into(), None));
        }
        &b"{}"[..]
    } else {
        body
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the body must be a JSON object; it is not JSON ({e})"), None))?;
    if !value.is_object() {
        return Err(invalid(format!("the body must be a JSON object, not {}", json_kind(&value)), None));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        // The path names the field at fault, an unknown one included (e.g. `spec.color`);
        // `.` is the body itself and `?` a place serde could not name.
        let path = e.path().to_string();
        let field = Some(path).filter(|f| f != "." && f != "?");
        invalid(message, field.as_deref())
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
