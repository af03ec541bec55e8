//! Answers: JSON bodies and RFC 9457 problems that name the field and the fix.

use lambda_http::http::{header, StatusCode};
use lambda_http::{Body, Response};
use serde::Serialize;
use tether::views::Problem;
use tether::TetherError;

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_string(value).unwrap_or_else(|e| format!(r#"{{"error":"unserializable answer: {e}"}}"#));
    respond(status, "application/json", body)
}

pub fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::Text(body));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A problem answer; `kind` becomes `urn:tether:problem:<kind>`.
pub fn problem(status: StatusCode, kind: &str, detail: impl Into<String>, field: Option<&str>) -> Response<Body> {
    let problem = Problem {
        kind: format!("urn:tether:problem:{kind}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.into(),
        field: field.map(str::to_owned),
        aws_code: None,
    };
    problem_response(problem)
}

pub fn problem_response(problem: Problem) -> Response<Body> {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_string(&problem).unwrap_or_default();
    let mut response = respond(status, "application/problem+json", body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    }
    response
}

/// How the service's errors reach the caller.
pub fn from_error(e: &TetherError) -> Response<Body> {
    let (status, kind, field) = match e {
        TetherError::NodeNotFound(_) => (StatusCode::NOT_FOUND, "node-not-found", None),
        TetherError::GroupNotFound(_) => (StatusCode::NOT_FOUND, "group-not-found", None),
        TetherError::Invalid { field, .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", Some(field.as_str())),
        TetherError::Conflict(_) => (StatusCode::CONFLICT, "state-conflict", None),
        TetherError::ConflictOn { field, .. } => (StatusCode::CONFLICT, "state-conflict", Some(field.as_str())),
        // Worth retrying: AWS throttled or faulted, or the node is busy.
        e if e.is_retryable() => (StatusCode::SERVICE_UNAVAILABLE, "retry-later", None),
        // AWS refused for good: something in the request or the account, not in Tether.
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "aws-refused", None),
    };
    let mut p = Problem {
        kind: format!("urn:tether:problem:{kind}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: match e {
            TetherError::Invalid { reason, .. } | TetherError::ConflictOn { reason, .. } => reason.clone(),
            other => other.to_string(),
        },
        field: field.map(str::to_owned),
        aws_code: e.aws_code().map(str::to_owned),
    };
    if p.detail.is_empty() {
        p.detail = p.title.clone();
    }
    problem_response(p)
}
