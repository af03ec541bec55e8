//! The RunInstances pace in the node table: one item, `pk = pace#RunInstances`, holding the
//! bucket's theoretical arrival time (`tat`, epoch milliseconds) and the pools EC2 refused
//! for capacity (`pool#<type>/<market>/<AZ>` = until, epoch milliseconds). A slot is one
//! conditional UpdateItem: `tat + interval` while launches queue (the common case in a mass
//! interruption), `now + interval` after a quiet while; which one is tried first follows the
//! last `tat` this process saw (or expects: a launch that starts the queue tells the
//! process's other launches at once), the other only when that guess was wrong. This item is the
//! only one written with UpdateItem (an atomic read-modify-write of one attribute).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

use super::aws_error;
use super::dynamo::{number, PARTITION_KEY};
use crate::error::{AwsError, ErrorClass};
use crate::ports::{pace_step, LaunchPace, PaceSlot, PACE_BURST, PACE_INTERVAL};

const KEY: &str = "pace#RunInstances";
const POOL_PREFIX: &str = "pool#";

pub struct DynamoLaunchPace {
    client: Client,
    table: String,
    /// The last `tat` this process saw (epoch ms): later than now means launches queue.
    last_tat: AtomicI64,
}

impl DynamoLaunchPace {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoLaunchPace { client, table: table.into(), last_tat: AtomicI64::new(0) }
    }

    /// One conditional update of `tat`: `queued` adds the interval to a `tat` in the future
    /// (no further than `limit`); otherwise `tat` starts again from `now`. The item as
    /// written, or `None` when the condition did not hold.
    async fn update(&self, queued: bool, now: i64, limit: i64) -> Result<Option<HashMap<String, AttributeValue>>, AwsError> {
        let interval = i64::try_from(PACE_INTERVAL.as_millis()).unwrap_or(500);
        let request = self.client.update_item().table_name(&self.table).key(PARTITION_KEY, AttributeValue::S(KEY.to_owned())).return_values(ReturnValue::AllNew);
        let request = if queued {
            request
                .update_expression("SET tat = tat + :interval")
                .condition_expression("tat >= :now AND tat <= :limit")
                .expression_attribute_values(":interval", number(interval))
                .expression_attribute_values(":now", number(now))
                .expression_attribute_values(":limit", number(limit))
        } else {
            request
                .update_expression("SET tat = :next")
                .condition_expression("attribute_not_exists(tat) OR tat < :now")
                .expression_attribute_values(":next", number(now + interval))
                .expression_attribute_values(":now", number(now))
        };
        match request.send().await.map_err(|e| aws_error("DynamoDB", "UpdateItem", e)) {
            Ok(output) => Ok(Some(output.attributes.unwrap_or_default())),
            Err(e) if e.class == ErrorClass::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn millis(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn refused(item: &HashMap<String, AttributeValue>, now: DateTime<Utc>) -> BTreeMap<String, DateTime<Utc>> {
    item.keys()
        .filter_map(|name| Some((name.strip_prefix(POOL_PREFIX)?.to_owned(), at(millis(item, name)?))))
        .filter(|(_, until)| *until > now)
        .collect()
}

#[async_trait]
impl LaunchPace for DynamoLaunchPace {
    async fn take(&self, now: DateTime<Utc>, horizon: Duration) -> Result<PaceSlot, AwsError> {
        let now_ms = now.timestamp_millis();
        let tolerance = PACE_INTERVAL * (PACE_BURST - 1);
        let limit = (now + tolerance + horizon).timestamp_millis();
        let queued_first = self.last_tat.load(Ordering::Relaxed) >= now_ms;
        if !queued_first {
            // Expect this one to start the queue: the process's other launches asking
            // meanwhile then guess right.
            self.last_tat.store(now_ms + i64::try_from(PACE_INTERVAL.as_millis()).unwrap_or(500), Ordering::Relaxed);
        }
        for queued in [queued_first, !queued_first] {
            let Some(item) = self.update(queued, now_ms, limit).await? else { continue };
            let tat = millis(&item, "tat").map(at).unwrap_or(now);
            self.last_tat.store(tat.timestamp_millis(), Ordering::Relaxed);
            // The slot is the one before the `tat` just written.
            let before = tat - PACE_INTERVAL;
            let (slot, _) = pace_step(Some(before), now, Duration::MAX).unwrap_or((now, tat));
            return Ok(PaceSlot { at: Some(slot), next_free: slot, refused: refused(&item, now) });
        }
        // Both conditions failed: every slot within the horizon is taken.
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(KEY.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?
            .item
            .unwrap_or_default();
        let tat = millis(&item, "tat").map(at).unwrap_or(now);
        self.last_tat.store(tat.timestamp_millis(), Ordering::Relaxed);
        Ok(PaceSlot { at: None, next_free: (tat - tolerance).max(now), refused: refused(&item, now) })
    }

    async fn refuse_pool(&self, pool: &str, until: DateTime<Utc>) -> Result<(), AwsError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(KEY.to_owned()))
            .update_expression("SET #pool = :until")
            .expression_attribute_names("#pool", format!("{POOL_PREFIX}{pool}"))
            .expression_attribute_values(":until", number(until.timestamp_millis()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "UpdateItem", e))?;
        Ok(())
    }
}
