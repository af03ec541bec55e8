//! The API client: SigV4-signed HTTP/1 requests (hyper, rustls on aws-lc-rs for https),
//! retried on throttling, 5xx from the gateway and broken connections.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, ACCEPT, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tether::views::Problem;

use crate::CliError;

/// The SigV4 service name of API Gateway's execute API.
pub const SIGNING_NAME: &str = "execute-api";
/// One request may take this long before it is abandoned (and retried): API Gateway
/// ends an integration after 30 seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// A Retry-After longer than this is cut to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where the API lives: `https://abc123.execute-api.eu-west-1.amazonaws.com[/stage]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: String,
    /// Host and port, exactly as sent in the Host header and signed.
    pub authority: String,
    /// The stage path without a trailing slash (`""` for the `$default` stage).
    pub base_path: String,
}

impl Endpoint {
    pub fn parse(raw: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = raw.trim().parse().map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_owned(),
            _ => return Err(format!("`{raw}` must start with https:// (or http:// for a local API)")),
        };
        let authority = uri.authority().ok_or_else(|| format!("`{raw}` names no host"))?.as_str().to_owned();
        if authority.contains('@') {
            return Err(format!("`{raw}`: user names in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("`{raw}`: the endpoint cannot have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Endpoint { scheme, authority, base_path })
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}{}", self.scheme, self.authority, self.base_path, path_and_query)
    }
}

/// A path segment or query value, percent-encoded (RFC 3986 unreserved characters kept).
pub fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An answer of the API.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// The Retry-After header, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
}

enum Transport {
    Plain(HyperClient<HttpConnector, Full<Bytes>>),
    Tls(HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// How often and how patiently a request is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
}

pub struct ApiClient {
    endpoint: Endpoint,
    region: String,
    credentials: Credentials,
    transport: Transport,
    retry: RetryPolicy,
}

impl ApiClient {
    pub fn new(endpoint: Endpoint, region: String, credentials: Credentials, retry: RetryPolicy) -> Result<ApiClient, CliError> {
        let builder = HyperClient::builder(TokioExecutor::new());
        let transport = if endpoint.scheme == "https" {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| CliError::Config(format!("cannot load the system's root certificates for https: {e}")))?
                .https_only()
                .enable_http1()
                .build();
            Transport::Tls(builder.build(connector))
        } else {
            Transport::Plain(builder.build(HttpConnector::new()))
        };
        Ok(ApiClient { endpoint, region, credentials, transport, retry })
    }

    /// Sends one request, signed anew for each try; retries what is safe to retry (every
    /// request of the CLI is: reads, and POSTs carrying an Idempotency-Key).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
        progress: &mut (dyn std::io::Write + Send),
    ) -> Result<Answer, CliError> {
        let body = body.map(Bytes::from);
        let mut attempt = 1;
        loop {
            let outcome = self.send_once(&method, path_and_query, body.clone(), idempotency_key).await;
            let (why, retry_after) = match &outcome {
                Ok(answer) => match retryable(answer) {
                    Some(retry_after) => (format!("HTTP {}", answer.status), retry_after),
                    None => return outcome,
                },
                Err(CliError::Transport(why)) => (why.clone(), None),
                Err(_) => return outcome,
            };
            if attempt >= self.retry.attempts {
                return outcome;
            }
            let backoff = self.retry.base_delay.saturating_mul(1 << (attempt - 1).min(16));
            let delay = retry_after.map(|d| d.min(MAX_RETRY_AFTER)).unwrap_or(backoff);
            let _ = writeln!(progress, "{why}; retrying in {:.1}s ({}/{})", delay.as_secs_f64(), attempt, self.retry.attempts - 1);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send_once(&self, method: &Method, path_and_query: &str, body: Option<Bytes>, idempotency_key: Option<&str>) -> Result<Answer, CliError> {
        let url = self.endpoint.url(path_and_query);
        let payload = body.clone().unwrap_or_default();
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(HOST, &self.endpoint.authority)
            .header(ACCEPT, "application/json, application/problem+json")
            .header(USER_AGENT, concat!("tether-cli/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some(key) = idempotency_key {
            builder = builder.header(HeaderName::from_static("idempotency-key"), key);
        }
        let mut request = builder
            .body(Full::new(payload.clone()))
            .map_err(|e| CliError::Config(format!("cannot build a request for {url}: {e}")))?;
        self.sign(&mut request, &url, &payload)?;

        let sent = match &self.transport {
            Transport::Plain(client) => tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await,
            Transport::Tls(client) => tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await,
        };
        let response = match sent {
            Err(_) => return Err(CliError::Transport(format!("no answer from {url} within {}s ({method})", REQUEST_TIMEOUT.as_secs()))),
            Ok(Err(e)) => return Err(CliError::Transport(format!("cannot reach {url} ({method}): {}", chain(&e)))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => return Err(CliError::Transport(format!("reading the answer of {url} ({method}): {}", chain(&e)))),
            Err(_) => return Err(CliError::Transport(format!("the answer of {url} ({method}) stalled"))),
        };
        Ok(Answer { status, body, retry_after })
    }

    /// SigV4 for API Gateway: host, content-type (when there is a body), x-amz-date and
    /// x-amz-security-token (for temporary credentials) are signed, over the exact URL sent.
    fn sign(&self, request: &mut Request<Full<Bytes>>, url: &str, payload: &[u8]) -> Result<(), CliError> {
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| CliError::Config(format!("cannot sign the request: {e}")))?
            .into();
        let signed_headers: Vec<(&str, &str)> = [HOST, CONTENT_TYPE]
            .iter()
            .filter_map(|name| Some((name.as_str(), request.headers().get(name)?.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(request.method().as_str(), url, signed_headers.into_iter(), SignableBody::Bytes(payload))
            .map_err(|e| CliError::Config(format!("cannot sign the request: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| CliError::Config(format!("cannot sign the request: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// Retry-After as delay-seconds or an HTTP date (RFC 9110 10.2.3).
fn parse_retry_after(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(seconds) = raw.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// `Some(delay)` if the answer is worth another try: throttled (429), the gateway or the
/// function unavailable (502, 503, 504), or an earlier try with the same Idempotency-Key
/// still in progress (409 `request-in-progress`).
fn retryable(answer: &Answer) -> Option<Option<Duration>> {
    match answer.status.as_u16() {
        429 | 502 | 503 | 504 => Some(answer.retry_after),
        409 => {
            let problem: Problem = serde_json::from_slice(&answer.body).ok()?;
            problem.kind.ends_with(":request-in-progress").then_some(answer.retry_after)
        }
        _ => None,
    }
}

/// An error and its sources, one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
