//! A local stand-in for API Gateway in front of the `api` function: an HTTP/1 server on
//! 127.0.0.1 that checks each request's SigV4 signature against the local credentials
//! (as API Gateway's IAM authorization does against IAM), then hands the function the
//! caller's identity in the HTTP API authorizer context, exactly where Lambda puts it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;
use tether::Tether;
use tether_api::Api;

use crate::{SetupError, REGION};

/// The credentials the local front accepts (the emulator's fake ones).
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";
/// The account the local callers belong to.
pub const ACCOUNT_ID: &str = "123456789012";
/// The SigV4 service name of API Gateway's execute API.
pub const SIGNING_NAME: &str = "execute-api";

/// Bodies larger than this are cut off by the front, as API Gateway limits payloads.
const FRONT_BODY_LIMIT: usize = 1024 * 1024;

pub struct LocalApi {
    pub url: String,
    _server: tokio::task::JoinHandle<()>,
}

impl LocalApi {
    /// Serves `api` on a free port of 127.0.0.1 until dropped.
    pub async fn start(api: Arc<Api>) -> Result<LocalApi, SetupError> {
        Self::start_on(api, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(api: Arc<Api>, address: SocketAddr) -> Result<LocalApi, SetupError> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(api.clone(), request));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(LocalApi { url, _server: server })
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        self._server.abort();
    }
}

/// The reconciler run every so often in the background, as the deployed stack's schedule
/// runs it every minute: it carries on what API calls leave (the next batch of a group's
/// rolling recycle, the end of a deallocation). Stops when dropped.
pub struct ScheduledReconciler {
    task: tokio::task::JoinHandle<()>,
}

impl ScheduledReconciler {
    /// A run every `every`, each bounded as a Lambda invocation is.
    pub fn every(tether: Tether, every: Duration) -> ScheduledReconciler {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let deadline = tether.deadline_in(RECONCILER_BUDGET);
                if let Err(e) = tether.reconcile(deadline).await {
                    tracing::warn!(error = %e, "scheduled reconciler run failed");
                }
            }
        });
        ScheduledReconciler { task }
    }
}

impl Drop for ScheduledReconciler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long one scheduled run may take (the deployed function's timeout is under a minute).
const RECONCILER_BUDGET: Duration = Duration::from_secs(50);

async fn answer(api: Arc<Api>, request: hyper::Request<hyper::body::Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, FRONT_BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(plain(413, r#"{"message":"Request Entity Too Large"}"#)),
    };
    let access_key = match verify_signature(&parts, &body) {
        Ok(key) => key,
        Err(why) => return Ok(plain(403, &serde_json::json!({ "message": why }).to_string())),
    };
    let mut builder = lambda_http::http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let request = match as_lambda_request(builder, &body, Some(&access_key)) {
        Ok(request) => request,
        Err(e) => return Ok(plain(400, &serde_json::json!({ "message": e.to_string() }).to_string())),
    };
    let response = api.handle(request).await;
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Text(text) => Bytes::from(text),
        lambda_http::Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    Ok(hyper::Response::from_parts(parts, Full::new(bytes)))
}

/// The request as Lambda hands it to the function: body, and (for a caller that API
/// Gateway authenticated) the IAM identity in the HTTP API authorizer context.
pub fn as_lambda_request(
    builder: lambda_http::http::request::Builder,
    body: &[u8],
    access_key: Option<&str>,
) -> Result<lambda_http::Request, SetupError> {
    let lambda_body = if body.is_empty() {
        lambda_http::Body::Empty
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => lambda_http::Body::Text(text),
            Err(e) => lambda_http::Body::Binary(e.into_bytes()),
        }
    };
    let request = builder.body(lambda_body)?;
    let Some(access_key) = access_key else { return Ok(request) };
    let context: ApiGatewayV2httpRequestContext = serde_json::from_value(serde_json::json!({
        "accountId": ACCOUNT_ID,
        "apiId": "local",
        "stage": "$default",
        "routeKey": "$default",
        "requestId": uuid::Uuid::new_v4().to_string(),
        "http": {
            "method": request.method().as_str(),
            "path": request.uri().path(),
            "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1",
            "userAgent": request.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
        },
        "authorizer": {"iam": {
            "accessKey": access_key,
            "accountId": ACCOUNT_ID,
            "callerId": access_key,
            "userArn": format!("arn:aws:iam::{ACCOUNT_ID}:user/{access_key}"),
            "userId": access_key,
        }},
    }))?;
    Ok(request.with_request_context(RequestContext::ApiGatewayV2(context)))
}

fn plain(status: u16, body: &str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::FORBIDDEN);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// Checks the request's SigV4 signature by signing it again with the local secret;
/// returns the caller's access key id.
fn verify_signature(parts: &hyper::http::request::Parts, body: &[u8]) -> Result<String, String> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization").ok_or("Missing Authentication Token")?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("only AWS4-HMAC-SHA256 signatures are accepted")?;
    let field = |name: &str| {
        fields.split(',').map(str::trim).find_map(|f| f.strip_prefix(name)).map(str::to_owned)
    };
    let credential = field("Credential=").ok_or("the Authorization header has no Credential")?;
    let signed_headers = field("SignedHeaders=").ok_or("the Authorization header has no SignedHeaders")?;
    let signature = field("Signature=").ok_or("the Authorization header has no Signature")?;
    let mut scope = credential.split('/');
    let access_key = scope.next().unwrap_or_default().to_owned();
    let (_date, region, service) = (scope.next(), scope.next(), scope.next());
    if access_key != ACCESS_KEY_ID {
        return Err(format!("The security token included in the request is invalid (unknown access key {access_key})"));
    }
    if region != Some(REGION) || service != Some(SIGNING_NAME) {
        return Err(format!("Credential should be scoped to {REGION}/{SIGNING_NAME}"));
    }
    let amz_date = header("x-amz-date").ok_or("the request has no X-Amz-Date")?;
    let time = chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|e| format!("X-Amz-Date `{amz_date}` is not a SigV4 date: {e}"))?
        .and_utc();
    let names: Vec<&str> = signed_headers.split(';').collect();
    let headers: Vec<(&str, &str)> = parts
        .headers
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let host = header("host").unwrap_or("127.0.0.1");
    let uri = format!("http://{host}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let identity = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "local-front").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(SIGNING_NAME)
        .time(time.into())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(parts.method.as_str(), uri, headers.into_iter(), SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    let expected = sign(signable, &params).map_err(|e| e.to_string())?.signature().to_owned();
    if expected == signature {
        Ok(access_key)
    } else {
        Err("The request signature we calculated does not match the signature you provided".into())
    }
}
