//! Idempotency keys in the node table: items `pk = idem#<key>` with the request's
//! fingerprint, a state (`in_progress`, `done`), the answer, and `expires_at` for
//! DynamoDB TTL clean-up. Correctness never depends on TTL: an expired item is
//! treated as absent by the conditions themselves.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::Utc;

use super::aws_error;
use super::dynamo::{number, PARTITION_KEY};
use crate::error::{AwsError, ErrorClass};
use crate::ports::{Claim, IdempotencyStore};

/// How long an answer is replayed.
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// A claim older than this whose request never completed may be taken over.
const STALE_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct DynamoIdempotencyStore {
    client: Client,
    table: String,
}

impl DynamoIdempotencyStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoIdempotencyStore { client, table: table.into() }
    }
}

fn key(k: &str) -> AttributeValue {
    AttributeValue::S(format!("idem#{k}"))
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

#[async_trait]
impl IdempotencyStore for DynamoIdempotencyStore {
    async fn claim(&self, k: &str, fingerprint: &str) -> Result<Claim, AwsError> {
        let now = Utc::now().timestamp();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, key(k))
            .item("fingerprint", AttributeValue::S(fingerprint.to_owned()))
            .item("state", AttributeValue::S("in_progress".into()))
            .item("claimed_at", number(now))
            .item("expires_at", number(now + KEEP_FOR.as_secs() as i64))
            .condition_expression("attribute_not_exists(#pk) OR expires_at < :now OR (#state = :in_progress AND claimed_at < :stale)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":now", number(now))
            .expression_attribute_values(":in_progress", AttributeValue::S("in_progress".into()))
            .expression_attribute_values(":stale", number(now - STALE_AFTER.as_secs() as i64))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "PutItem", e));
        match put {
            Ok(_) => return Ok(Claim::New),
            Err(e) if e.class == ErrorClass::Conflict => {}
            Err(e) => return Err(e),
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, key(k))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?;
        // Gone between the two calls (released): the caller may simply try again.
        let Some(item) = out.item else { return Ok(Claim::InProgress) };
        if text(&item, "fingerprint") != Some(fingerprint) {
            return Ok(Claim::Mismatch);
        }
        match (text(&item, "state"), item.get("status").and_then(|v| v.as_n().ok()), text(&item, "body")) {
            (Some("done"), Some(status), Some(body)) => Ok(Claim::Replay {
                status: status.parse().unwrap_or(200),
                body: body.to_owned(),
            }),
            _ => Ok(Claim::InProgress),
        }
    }

    async fn complete(&self, k: &str, fingerprint: &str, status: u16, body: &str) -> Result<(), AwsError> {
        // A whole item, not an update (only the RunInstances pace's item is updated in place).
        let now = Utc::now().timestamp();
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, key(k))
            .item("fingerprint", AttributeValue::S(fingerprint.to_owned()))
            .item("state", AttributeValue::S("done".into()))
            .item("status", number(i64::from(status)))
            .item("body", AttributeValue::S(body.to_owned()))
            .item("claimed_at", number(now))
            .item("expires_at", number(now + KEEP_FOR.as_secs() as i64))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "PutItem", e))?;
        Ok(())
    }

    async fn release(&self, k: &str) -> Result<(), AwsError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, key(k))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "DeleteItem", e))?;
        Ok(())
    }
}
