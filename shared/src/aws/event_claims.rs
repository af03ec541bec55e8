//! Event claims in the node table: items `pk = event#<EventBridge id>` naming the
//! invocation that handles the event and until when (`until`, epoch milliseconds: the
//! invocation's deadline). A claim whose `until` has passed is taken over by the claim's
//! own condition; `expires_at` lets DynamoDB's TTL delete old items, and nothing depends on it.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use super::aws_error;
use super::dynamo::{number, PARTITION_KEY};
use crate::error::{AwsError, ErrorClass};
use crate::ports::{EventClaim, EventClaims};

/// How long after its invocation's deadline a claim item may be cleaned up by TTL.
const KEEP_FOR_SECONDS: i64 = 24 * 3600;

#[derive(Clone, Debug)]
pub struct DynamoEventClaims {
    client: Client,
    table: String,
}

impl DynamoEventClaims {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoEventClaims { client, table: table.into() }
    }
}

fn key(event_id: &str) -> AttributeValue {
    AttributeValue::S(format!("event#{event_id}"))
}

#[async_trait]
impl EventClaims for DynamoEventClaims {
    async fn claim(&self, event_id: &str, invocation_id: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<EventClaim, AwsError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, key(event_id))
            .item("invocation", AttributeValue::S(invocation_id.to_owned()))
            .item("until", number(until.timestamp_millis()))
            .item("expires_at", number(until.timestamp() + KEEP_FOR_SECONDS))
            .condition_expression("attribute_not_exists(#pk) OR #until < :now")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_names("#until", "until")
            .expression_attribute_values(":now", number(now.timestamp_millis()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "PutItem", e));
        match put {
            Ok(_) => Ok(EventClaim::Claimed),
            Err(e) if e.class == ErrorClass::Conflict => Ok(EventClaim::HeldElsewhere),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, event_id: &str, invocation_id: &str) -> Result<(), AwsError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, key(event_id))
            .condition_expression("invocation = :me")
            .expression_attribute_values(":me", AttributeValue::S(invocation_id.to_owned()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "DeleteItem", e));
        match delete {
            // Taken over meanwhile (this invocation ran past its deadline): not ours to delete.
            Err(e) if e.class == ErrorClass::Conflict => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
