//! The OpenAPI 3.1 document, written from the route table and the JSON schemas of the
//! very types the handlers read and write. `openapi.json` in this crate is the committed
//! copy; a test fails when it and the implementation disagree.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use tether::lifecycle::NodePatch;
use tether::views::{
    CreateGroup, CreateNode, Deallocate, DeallocateGroup, GroupList, GroupMembers, GroupPatch, GroupView, NodeHistory, NodeList, NodeView, Problem, Scale,
};
use tether::ImportRequest;

use crate::routes::{Route, COMMON_ERRORS, ROUTES};

/// Where the committed document lives, relative to this crate.
pub const COMMITTED_PATH: &str = "openapi.json";

pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    register::<NodeView>(&mut generator);
    register::<NodeList>(&mut generator);
    register::<NodeHistory>(&mut generator);
    register::<CreateNode>(&mut generator);
    register::<NodePatch>(&mut generator);
    register::<ImportRequest>(&mut generator);
    register::<Deallocate>(&mut generator);
    register::<GroupView>(&mut generator);
    register::<GroupList>(&mut generator);
    register::<GroupMembers>(&mut generator);
    register::<CreateGroup>(&mut generator);
    register::<GroupPatch>(&mut generator);
    register::<Scale>(&mut generator);
    register::<DeallocateGroup>(&mut generator);
    register::<Problem>(&mut generator);

    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths.entry(route.path).or_insert_with(|| json!({}));
        item[route.method.as_str().to_lowercase()] = operation(route);
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "GatewayMessage".into(),
        json!({
            "description": "API Gateway's own refusal, before the function runs",
            "type": "object",
            "properties": {"message": {"type": "string"}},
            "required": ["message"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tether management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Stateful spot nodes that keep their ENI, private IP and Elastic IP, and stateful groups of them with private-IP and Elastic-IP pools. Every route needs SigV4 (API Gateway IAM authorization). POSTs honour an Idempotency-Key header.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "sigv4": {"type": "apiKey", "name": "Authorization", "in": "header", "x-amazon-apigateway-authtype": "awsSigv4"}
            }
        },
        "security": [{"sigv4": []}],
    })
}

fn register<T: JsonSchema>(generator: &mut SchemaGenerator) {
    generator.subschema_for::<T>();
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn operation(route: &Route) -> Value {
    let mut parameters = Vec::new();
    let prefix = crate::routes::id_prefix(route.path);
    let (what, id_pattern) = if prefix == "tg-" { ("group", "^tg-[0-9a-f]{32}$") } else { ("node", "^tn-[0-9a-f]{32}$") };
    if route.path.contains("{id}") {
        parameters.push(json!({
            "name": "id", "in": "path", "required": true,
            "description": format!("The {what} id (`{prefix}` and 32 hex digits)"),
            "schema": {"type": "string", "pattern": id_pattern},
        }));
    }
    for (name, kind, description) in route.query {
        let schema = match (*name, *kind) {
            ("limit", _) => json!({"type": "integer", "minimum": 1, "maximum": 100}),
            ("next_token", _) => json!({"type": "string", "pattern": id_pattern}),
            (_, kind) => json!({"type": kind}),
        };
        parameters.push(json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema}));
    }
    if route.method == lambda_http::http::Method::POST {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Run this request at most once; a retry with the same key gets the first answer",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
        }));
    }
    let mut responses = Map::new();
    for (status, schema) in route.success {
        responses.insert(
            status.to_string(),
            json!({"description": success_description(*status), "content": {"application/json": {"schema": schema_ref(schema)}}}),
        );
    }
    // A body labelled as anything but JSON is refused; only routes that read one check.
    let media_type_error: &[u16] = if route.body.is_some() { &[415] } else { &[] };
    for status in route.errors.iter().chain(media_type_error).chain(COMMON_ERRORS) {
        let mut content = json!({"application/problem+json": {"schema": schema_ref("Problem")}});
        // API Gateway itself refuses a bad signature (403) or an oversized payload (413)
        // before the function runs, with its own `{"message": ...}` body.
        if matches!(status, 403 | 413) {
            content["application/json"] = json!({"schema": schema_ref("GatewayMessage")});
        }
        responses.insert(status.to_string(), json!({"description": error_description(*status), "content": content}));
    }
    let mut op = json!({
        "operationId": route.operation_id,
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some((schema, required)) = route.body {
        op["requestBody"] = json!({
            "required": required,
            "description": "JSON, sent as Content-Type: application/json. A request without a Content-Type header is read as JSON too; any other media type is refused with 415.",
            "content": {"application/json": {"schema": schema_ref(schema)}},
        });
    }
    op
}

fn success_description(status: u16) -> &'static str {
    match status {
        201 => "Created",
        202 => "Accepted: the action goes on (the node shows how far it got)",
        _ => "OK",
    }
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "The request is malformed (the problem names the field)",
        403 => "Not authenticated: a missing or wrong SigV4 signature (API Gateway), or no IAM identity reached the function",
        404 => "No such node or group",
        409 => "The action does not fit the node's state, or the Idempotency-Key is in use",
        413 => "The body is larger than 64 KiB (the function) or than API Gateway accepts",
        415 => "The body is labelled with another media type than application/json (the Accept header names it)",
        422 => "A field is invalid for AWS (the problem names the field and the fix)",
        503 => "AWS throttled or faulted; retry after the Retry-After seconds",
        _ => "Error",
    }
}
