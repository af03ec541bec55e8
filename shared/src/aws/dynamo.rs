//! The DynamoDB node store. One table; node items are keyed `pk = node#<id>`, carry
//! the node's fields as attributes, `kind = node` for the `by-kind` index (listing reads
//! only nodes, not the other items the table holds), a top-level `instance_id` for the
//! `by-instance` index and, for a group's members, a top-level `group_id` for the
//! `by-group` index. Every write is conditional on `version`. Groups and address
//! reservations: `registry`.
//!
//! Node items written before `kind` existed are not in `by-kind`: until the reconciler has
//! given every node item its `kind` (`maintain_listing`, which then writes the item
//! `index#by-kind`), and while DynamoDB still builds the index, listing scans the table as
//! it used to. It checks again every hour, so a record written meanwhile by an older
//! function (during an upgrade) joins the index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::aws::aws_error;
use crate::error::{AwsError, ErrorClass};
use crate::model::{Node, NodeId};
use crate::ports::{NodeStore, ReconcilerBookmark};
use chrono::{DateTime, Utc};

pub const PARTITION_KEY: &str = "pk";
pub const INSTANCE_INDEX: &str = "by-instance";
pub const INSTANCE_ATTRIBUTE: &str = "instance_id";
pub const GROUP_INDEX: &str = "by-group";
pub const GROUP_ATTRIBUTE: &str = "group_id";
pub const KIND_INDEX: &str = "by-kind";
pub const KIND_ATTRIBUTE: &str = "kind";
const NODE_KIND: &str = "node";
/// The item saying when every node item last carried its `kind` (`checked_at`, epoch ms).
const KIND_INDEX_CHECK: &str = "index#by-kind";
const KIND_INDEX_RECHECK: Duration = Duration::from_secs(3600);
/// Node items given their `kind` at once by one check.
const MENDS_AT_ONCE: usize = 16;

/// A DynamoDB number attribute (times, counts) for the table's items.
pub(crate) fn number(n: i64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}
const BOOKMARK_KEY: &str = "reconciler#bookmark";
/// Items a listing reads per Scan call.
const SCAN_PAGE: i32 = 1000;

#[derive(Clone, Debug)]
pub struct DynamoNodeStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// When the `by-kind` index was last known to hold every node (epoch ms; 0: not known).
    kind_index_checked_at: Arc<AtomicI64>,
}

impl DynamoNodeStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoNodeStore { client, table: table.into(), kind_index_checked_at: Arc::new(AtomicI64::new(0)) }
    }

    /// When every node item last carried its `kind`, from this process's memory or the
    /// table; `None` if never.
    async fn kind_index_checked_at(&self) -> Result<Option<i64>, AwsError> {
        let known = self.kind_index_checked_at.load(Ordering::Relaxed);
        if known > 0 {
            return Ok(Some(known));
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(KIND_INDEX_CHECK.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?;
        let checked_at = out.item.as_ref().and_then(|i| i.get("checked_at")).and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<i64>().ok());
        if let Some(at) = checked_at {
            self.kind_index_checked_at.store(at, Ordering::Relaxed);
        }
        Ok(checked_at)
    }

    /// One page of nodes from the `by-kind` index, in id order.
    async fn list_from_index(&self, limit: usize, start_after: Option<&NodeId>) -> Result<(Vec<Node>, Option<NodeId>), AwsError> {
        let mut nodes = Vec::new();
        let mut start = start_after.map(|id| {
            HashMap::from([
                (PARTITION_KEY.to_owned(), AttributeValue::S(node_key(id))),
                (KIND_ATTRIBUTE.to_owned(), AttributeValue::S(NODE_KIND.to_owned())),
            ])
        });
        loop {
            let wanted = if limit == 0 { SCAN_PAGE } else { i32::try_from(limit - nodes.len()).unwrap_or(SCAN_PAGE).min(SCAN_PAGE) };
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(KIND_INDEX)
                .key_condition_expression("#k = :k")
                .expression_attribute_names("#k", KIND_ATTRIBUTE)
                .expression_attribute_values(":k", AttributeValue::S(NODE_KIND.to_owned()))
                .set_exclusive_start_key(start.take())
                .limit(wanted)
                .send()
                .await
                .map_err(|e| aws_error("DynamoDB", "Query", e))?;
            nodes.extend(out.items.unwrap_or_default().into_iter().filter_map(|item| readable(item, |i| from_item::<Node>("Query", i))).map(|(_, node)| node));
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() && (limit == 0 || nodes.len() < limit) => start = Some(key),
                Some(key) if !key.is_empty() => {
                    let last = key.get(PARTITION_KEY).and_then(|k| k.as_s().ok()).and_then(|k| k.strip_prefix("node#")).and_then(NodeId::parse);
                    return Ok((nodes, last));
                }
                _ => return Ok((nodes, None)),
            }
        }
    }

    /// Gives `kind` to every node item without it; how many it gave it to.
    async fn mend_kinds(&self) -> Result<usize, AwsError> {
        let (keys, _) = self
            .scan_matching("begins_with(#pk, :prefix) AND attribute_not_exists(#k)", &[("#k", KIND_ATTRIBUTE)], "node#", 0, None, |item| {
                Ok(item.get(PARTITION_KEY).and_then(|k| k.as_s().ok()).cloned().unwrap_or_default())
            })
            .await?;
        let mends = futures_util::stream::iter(keys.into_iter().map(|key| self.mend_kind(key)));
        let counts: Vec<Result<usize, AwsError>> = futures_util::StreamExt::collect(futures_util::StreamExt::buffer_unordered(mends, MENDS_AT_ONCE)).await;
        counts.into_iter().sum()
    }

    async fn mend_kind(&self, key: String) -> Result<usize, AwsError> {
        let mended = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(key))
            .update_expression("SET #k = :k")
            // Not on a record deleted meanwhile; one that has its kind by now is fine.
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#k)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_names("#k", KIND_ATTRIBUTE)
            .expression_attribute_values(":k", AttributeValue::S(NODE_KIND.to_owned()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "UpdateItem", e));
        match mended {
            Ok(_) => Ok(1),
            Err(e) if e.class == ErrorClass::Conflict => Ok(0),
            Err(e) => Err(e),
        }
    }

    pub(super) fn item(&self, node: &Node) -> Result<HashMap<String, AttributeValue>, AwsError> {
        let mut item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(node).map_err(|e| codec_error("PutItem", e))?;
        item.insert(PARTITION_KEY.into(), AttributeValue::S(node_key(&node.id)));
        if let Some(instance_id) = node.instance_id() {
            item.insert(INSTANCE_ATTRIBUTE.into(), AttributeValue::S(instance_id.to_owned()));
        }
        if let Some(membership) = &node.group {
            item.insert(GROUP_ATTRIBUTE.into(), AttributeValue::S(membership.group_id.as_str().to_owned()));
        }
        item.insert(KIND_ATTRIBUTE.into(), AttributeValue::S(NODE_KIND.to_owned()));
        Ok(item)
    }

    /// One page of the items whose key starts with `prefix`, after the item keyed
    /// `start_after` (`limit` 0: every one). Items that do not parse are logged and skipped:
    /// one damaged record must not hide every other.
    pub(super) async fn scan_prefix<T>(
        &self,
        prefix: &str,
        limit: usize,
        start_after: Option<String>,
        parse: impl Fn(HashMap<String, AttributeValue>) -> Result<T, AwsError>,
    ) -> Result<(Vec<T>, Option<String>), AwsError> {
        self.scan_matching("begins_with(#pk, :prefix)", &[], prefix, limit, start_after, parse).await
    }

    /// `scan_prefix` with a filter of its own (`#pk` and `:prefix` bound; `names` binds more).
    async fn scan_matching<T>(
        &self,
        filter: &str,
        names: &[(&str, &str)],
        prefix: &str,
        limit: usize,
        start_after: Option<String>,
        parse: impl Fn(HashMap<String, AttributeValue>) -> Result<T, AwsError>,
    ) -> Result<(Vec<T>, Option<String>), AwsError> {
        let mut found = Vec::new();
        let mut start = start_after.map(|key| HashMap::from([(PARTITION_KEY.to_owned(), AttributeValue::S(key))]));
        loop {
            let request = names.iter().fold(self.client.scan(), |r, (name, attribute)| r.expression_attribute_names(*name, *attribute));
            let out = request
                .table_name(&self.table)
                .filter_expression(filter)
                .expression_attribute_names("#pk", PARTITION_KEY)
                .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()))
                .set_exclusive_start_key(start.take())
                // Limit counts items read before the filter: other kinds of item share the
                // table, so read generously rather than page after near-empty page.
                .limit(SCAN_PAGE)
                .send()
                .await
                .map_err(|e| aws_error("DynamoDB", "Scan", e))?;
            for item in out.items.unwrap_or_default() {
                let Some(read) = readable(item, &parse) else { continue };
                found.push(read);
                if found.len() == limit {
                    // The scan can go on from the last item returned, whatever page it was on.
                    let last = found.last().map(|(key, _)| key.clone());
                    return Ok((found.into_iter().map(|(_, v)| v).collect(), last));
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok((found.into_iter().map(|(_, v)| v).collect(), None)),
            }
        }
    }
}

/// An item's key and what `parse` makes of it; an item that does not parse is logged and
/// skipped: one damaged record must not hide every other.
fn readable<T>(item: HashMap<String, AttributeValue>, parse: impl Fn(HashMap<String, AttributeValue>) -> Result<T, AwsError>) -> Option<(String, T)> {
    let key = item.get(PARTITION_KEY).and_then(|k| k.as_s().ok()).cloned().unwrap_or_default();
    match parse(item) {
        Ok(value) => Some((key, value)),
        Err(e) => {
            tracing::error!(pk = key, error = %e, "unreadable record skipped");
            None
        }
    }
}

pub(super) fn node_key(id: &NodeId) -> String {
    format!("node#{id}")
}

pub(super) fn from_item<T: serde::de::DeserializeOwned>(operation: &'static str, item: HashMap<String, AttributeValue>) -> Result<T, AwsError> {
    serde_dynamo::from_item(item).map_err(|e| codec_error(operation, e))
}

pub(super) fn codec_error(operation: &'static str, e: serde_dynamo::Error) -> AwsError {
    AwsError {
        service: "DynamoDB",
        operation,
        code: None,
        message: format!("item does not match Tether's model: {e}"),
        class: ErrorClass::Permanent,
    }
}

#[async_trait]
impl NodeStore for DynamoNodeStore {
    async fn create(&self, node: &Node) -> Result<(), AwsError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(node)?))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "PutItem", e))?;
        Ok(())
    }

    async fn get(&self, id: &NodeId) -> Result<Option<Node>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(node_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?;
        out.item.map(|item| from_item("GetItem", item)).transpose()
    }

    async fn find_by_instance(&self, instance_id: &str) -> Result<Option<Node>, AwsError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(INSTANCE_INDEX)
            .key_condition_expression("#i = :i")
            .expression_attribute_names("#i", INSTANCE_ATTRIBUTE)
            .expression_attribute_values(":i", AttributeValue::S(instance_id.to_owned()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "Query", e))?;
        // An instance belongs to one node; should two items ever name it, the newest generation wins.
        let mut nodes = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| from_item::<Node>("Query", item))
            .collect::<Result<Vec<_>, _>>()?;
        nodes.sort_by_key(|n| n.generation);
        Ok(nodes.pop())
    }

    async fn list(&self, limit: usize, start_after: Option<&NodeId>) -> Result<(Vec<Node>, Option<NodeId>), AwsError> {
        if self.kind_index_checked_at().await?.is_some() {
            match self.list_from_index(limit, start_after).await {
                // CloudFormation does not wait for a new index's backfill: until it is
                // active DynamoDB refuses to read it (`ValidationException`: "Cannot read
                // from backfilling global secondary index"); an index not there at all is
                // `ResourceNotFoundException` (so is a table not there, which the scan
                // reports in turn). Either way the table is scanned instead.
                Err(e) if matches!(e.code.as_deref(), Some("ValidationException" | "ResourceNotFoundException")) => {
                    tracing::warn!(error = %e, "the by-kind index cannot be read yet; listing scans the table");
                }
                listed => return listed,
            }
        }
        let (nodes, last) = self.scan_prefix("node#", limit, start_after.map(node_key), |item| from_item("Scan", item)).await?;
        Ok((nodes, last.and_then(|key| key.strip_prefix("node#").and_then(NodeId::parse))))
    }

    async fn maintain_listing(&self, now: DateTime<Utc>) -> Result<usize, AwsError> {
        let now = now.timestamp_millis();
        let recheck_after = i64::try_from(KIND_INDEX_RECHECK.as_millis()).unwrap_or(i64::MAX);
        if self.kind_index_checked_at().await?.is_some_and(|at| now - at < recheck_after) {
            return Ok(0);
        }
        let mended = self.mend_kinds().await?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PARTITION_KEY, AttributeValue::S(KIND_INDEX_CHECK.to_owned()))
            .item("checked_at", number(now))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "PutItem", e))?;
        self.kind_index_checked_at.store(now, Ordering::Relaxed);
        Ok(mended)
    }

    async fn save(&self, node: &Node) -> Result<Node, AwsError> {
        let mut next = node.clone();
        next.version += 1;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(&next)?))
            .condition_expression("#v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", AttributeValue::N(node.version.to_string()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "PutItem", e))?;
        Ok(next)
    }
}

/// The reconciler's bookmark: one item, `pk = reconciler#bookmark`, naming the last node a
/// run checked (absent attribute: start at the beginning). Last writer wins: two runs that
/// overlap only make one of them start a little earlier than it could.
#[async_trait]
impl ReconcilerBookmark for DynamoNodeStore {
    async fn load(&self) -> Result<Option<NodeId>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(BOOKMARK_KEY.into()))
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?;
        Ok(out.item.as_ref().and_then(|item| item.get("after")).and_then(|v| v.as_s().ok()).and_then(|id| NodeId::parse(id)))
    }

    async fn store(&self, after: Option<&NodeId>) -> Result<(), AwsError> {
        let mut put = self.client.put_item().table_name(&self.table).item(PARTITION_KEY, AttributeValue::S(BOOKMARK_KEY.into()));
        if let Some(id) = after {
            put = put.item("after", AttributeValue::S(id.as_str().to_owned()));
        }
        put.send().await.map_err(|e| aws_error("DynamoDB", "PutItem", e))?;
        Ok(())
    }
}
