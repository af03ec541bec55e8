//! Groups and address reservations in the node table, and the transactions that write them
//! with the nodes. Group items: `pk = group#<id>`, the group's fields as attributes.
//! Reservation items: `pk = addr#ip#<subnet>#<ip>` or `addr#eip#<allocation id>`, with
//! `owner` (a node or group id), `member` (a pool Elastic IP's member) and
//! `subnet_reservation` (the EC2 one, for private IPs).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};

use super::aws_error;
use super::dynamo::{codec_error, from_item, node_key, DynamoNodeStore, GROUP_ATTRIBUTE, GROUP_INDEX, PARTITION_KEY};
use crate::error::{AwsError, ErrorClass};
use crate::group::{Group, GroupId};
use crate::model::{Node, NodeId};
use crate::ports::{Address, Expect, Registry, Reservation, SubnetReservation, Write};

const GROUP_PREFIX: &str = "group#";
const ADDRESS_PREFIX: &str = "addr#";

fn group_key(id: &GroupId) -> String {
    format!("{GROUP_PREFIX}{id}")
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn build_error(e: impl std::fmt::Display) -> AwsError {
    AwsError { service: "DynamoDB", operation: "TransactWriteItems", code: None, message: e.to_string(), class: ErrorClass::Permanent }
}

/// The address a reservation key names.
fn address_of(key: &str) -> Option<Address> {
    let rest = key.strip_prefix(ADDRESS_PREFIX)?;
    if let Some(allocation_id) = rest.strip_prefix("eip#") {
        return Some(Address::ElasticIp { allocation_id: allocation_id.to_owned() });
    }
    let (subnet_id, ip) = rest.strip_prefix("ip#")?.split_once('#')?;
    Some(Address::PrivateIp { subnet_id: subnet_id.to_owned(), ip: ip.parse::<Ipv4Addr>().ok()? })
}

fn reservation_item(r: &Reservation) -> Result<HashMap<String, AttributeValue>, AwsError> {
    let mut item = HashMap::from([(PARTITION_KEY.to_owned(), s(r.address.key())), ("owner".to_owned(), s(r.owner.clone()))]);
    if let Some(member) = &r.member {
        item.insert("member".into(), s(member.as_str()));
    }
    if let Some(subnet_reservation) = &r.subnet_reservation {
        let value = serde_dynamo::to_attribute_value(subnet_reservation).map_err(|e| codec_error("PutItem", e))?;
        item.insert("subnet_reservation".into(), value);
    }
    Ok(item)
}

fn reservation_of(item: HashMap<String, AttributeValue>) -> Result<Reservation, AwsError> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let unreadable = |what: &str| AwsError { service: "DynamoDB", operation: "GetItem", code: None, message: format!("reservation item without {what}"), class: ErrorClass::Permanent };
    let address = text(PARTITION_KEY).as_deref().and_then(address_of).ok_or_else(|| unreadable("an address key"))?;
    let subnet_reservation = match item.get("subnet_reservation") {
        Some(value) => Some(serde_dynamo::from_attribute_value::<_, SubnetReservation>(value.clone()).map_err(|e| codec_error("GetItem", e))?),
        None => None,
    };
    Ok(Reservation {
        address,
        owner: text("owner").ok_or_else(|| unreadable("an owner"))?,
        member: text("member").as_deref().and_then(NodeId::parse),
        subnet_reservation,
    })
}

/// The condition, names and values a write's `expect` makes (only the names it uses:
/// DynamoDB refuses unused ones).
fn expectation(expect: &Expect) -> (String, HashMap<String, String>, HashMap<String, AttributeValue>) {
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let condition = match expect {
        Expect::Absent => {
            names.insert("#pk".into(), PARTITION_KEY.into());
            "attribute_not_exists(#pk)".to_owned()
        }
        Expect::Held { owner, member } => {
            names.insert("#o".into(), "owner".into());
            names.insert("#m".into(), "member".into());
            values.insert(":o".into(), s(owner.clone()));
            match member {
                Some(m) => {
                    values.insert(":m".into(), s(m.as_str()));
                    "#o = :o AND #m = :m".to_owned()
                }
                None => "#o = :o AND attribute_not_exists(#m)".to_owned(),
            }
        }
    };
    (condition, names, values)
}

impl DynamoNodeStore {
    fn group_item(&self, group: &Group) -> Result<HashMap<String, AttributeValue>, AwsError> {
        let mut item: HashMap<String, AttributeValue> = serde_dynamo::to_item(group).map_err(|e| codec_error("PutItem", e))?;
        item.insert(PARTITION_KEY.into(), s(group_key(&group.id)));
        Ok(item)
    }

    /// A Put of `item`, new (`version` None) or over the stored `version`.
    fn versioned_put(&self, item: HashMap<String, AttributeValue>, version: Option<u64>) -> Result<TransactWriteItem, AwsError> {
        let put = Put::builder().table_name(&self.table).set_item(Some(item));
        let put = match version {
            None => put.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", PARTITION_KEY),
            Some(v) => put
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        Ok(TransactWriteItem::builder().put(put.build().map_err(build_error)?).build())
    }

    /// A check that the item keyed `key` is at `version`, or absent (`None`).
    fn condition_check(&self, key: String, version: Option<u64>) -> Result<TransactWriteItem, AwsError> {
        let check = ConditionCheck::builder().table_name(&self.table).key(PARTITION_KEY, s(key));
        let check = match version {
            None => check.condition_expression("attribute_not_exists(#pk)").expression_attribute_names("#pk", PARTITION_KEY),
            Some(v) => check
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        Ok(TransactWriteItem::builder().condition_check(check.build().map_err(build_error)?).build())
    }

    fn transact_item(&self, write: &Write) -> Result<TransactWriteItem, AwsError> {
        let bumped = |node: &Node| Node { version: node.version + 1, ..node.clone() };
        match write {
            Write::CreateNode(node) => self.versioned_put(self.item(node)?, None),
            Write::SaveNode(node) => self.versioned_put(self.item(&bumped(node))?, Some(node.version)),
            Write::CreateGroup(group) => self.versioned_put(self.group_item(group)?, None),
            Write::SaveGroup(group) => {
                let next = Group { version: group.version + 1, ..group.clone() };
                self.versioned_put(self.group_item(&next)?, Some(group.version))
            }
            Write::CheckNode { id, version } => self.condition_check(node_key(id), Some(*version)),
            Write::CheckNoNode { id } => self.condition_check(node_key(id), None),
            Write::CheckGroup { id, version } => self.condition_check(group_key(id), Some(*version)),
            Write::PutReservation { reservation, expect } => {
                let (condition, names, values) = expectation(expect);
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(reservation_item(reservation)?))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values).filter(|v| !v.is_empty()))
                    .build()
                    .map_err(build_error)?;
                Ok(TransactWriteItem::builder().put(put).build())
            }
            Write::DeleteReservation { address, expect } => {
                let (condition, names, values) = expectation(expect);
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .key(PARTITION_KEY, s(address.key()))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values).filter(|v| !v.is_empty()))
                    .build()
                    .map_err(build_error)?;
                Ok(TransactWriteItem::builder().delete(delete).build())
            }
        }
    }
}

/// What a write is about, for the error naming the one whose condition failed.
fn described(write: &Write) -> String {
    match write {
        Write::CreateNode(n) => format!("create node {}", n.id),
        Write::SaveNode(n) => format!("save node {} at version {}", n.id, n.version),
        Write::CheckNode { id, version } => format!("node {id} still at version {version}"),
        Write::CheckNoNode { id } => format!("no node {id}"),
        Write::CreateGroup(g) => format!("create group {}", g.id),
        Write::SaveGroup(g) => format!("save group {} at version {}", g.id, g.version),
        Write::CheckGroup { id, version } => format!("group {id} still at version {version}"),
        Write::PutReservation { reservation, expect } => format!("reserve {} for {} (expecting {expect:?})", reservation.address, reservation.holder()),
        Write::DeleteReservation { address, expect } => format!("release {address} (expecting {expect:?})"),
    }
}

#[async_trait]
impl Registry for DynamoNodeStore {
    async fn group(&self, id: &GroupId) -> Result<Option<Group>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(group_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?;
        out.item.map(|item| from_item("GetItem", item)).transpose()
    }

    async fn groups(&self, limit: usize, start_after: Option<&GroupId>) -> Result<(Vec<Group>, Option<GroupId>), AwsError> {
        let (groups, last) = self.scan_prefix(GROUP_PREFIX, limit, start_after.map(group_key), |item| from_item("Scan", item)).await?;
        Ok((groups, last.and_then(|key| key.strip_prefix(GROUP_PREFIX).and_then(GroupId::parse))))
    }

    async fn members(&self, id: &GroupId) -> Result<Vec<Node>, AwsError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GROUP_INDEX)
            .key_condition_expression("#g = :g")
            .expression_attribute_names("#g", GROUP_ATTRIBUTE)
            .expression_attribute_values(":g", s(id.as_str()))
            .into_paginator()
            .items()
            .send();
        let mut members = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| aws_error("DynamoDB", "Query", e))?;
            members.push(from_item::<Node>("Query", item)?);
        }
        Ok(members)
    }

    async fn reservation(&self, address: &Address) -> Result<Option<Reservation>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(address.key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB", "GetItem", e))?;
        out.item.map(reservation_of).transpose()
    }

    async fn reservations(&self) -> Result<Vec<Reservation>, AwsError> {
        Ok(self.scan_prefix(ADDRESS_PREFIX, 0, None, reservation_of).await?.0)
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), AwsError> {
        if writes.is_empty() {
            return Ok(());
        }
        let items = writes.iter().map(|w| self.transact_item(w)).collect::<Result<Vec<_>, _>>()?;
        let sent = self.client.transact_write_items().set_transact_items(Some(items)).send().await;
        let Err(e) = sent else { return Ok(()) };
        // A failed condition cancels the whole transaction; its reasons name which write.
        let failed: Vec<String> = match e.as_service_error() {
            Some(service) if service.is_transaction_canceled_exception() => match service {
                aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(canceled) => canceled
                    .cancellation_reasons()
                    .iter()
                    .zip(&writes)
                    .filter(|(reason, _)| reason.code().is_some_and(|c| c != "None"))
                    .map(|(reason, write)| format!("{}: {}", described(write), reason.code().unwrap_or_default()))
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if failed.is_empty() {
            return Err(aws_error("DynamoDB", "TransactWriteItems", e));
        }
        Err(AwsError {
            service: "DynamoDB",
            operation: "TransactWriteItems",
            code: e.code().map(str::to_owned).or_else(|| Some("TransactionCanceledException".into())),
            message: format!("transaction cancelled: {}", failed.join("; ")),
            class: cancellation_class(&failed),
        })
    }
}

/// What a cancelled transaction's reasons (`<write>: <code>`) make of it: a request DynamoDB
/// refuses as such (`ValidationError`, `ItemCollectionSizeLimitExceeded`) fails the same
/// way again; a failed condition or a concurrent transaction is a lost race; throttling and
/// anything else is retried.
fn cancellation_class(failed: &[String]) -> ErrorClass {
    let any = |code: &str| failed.iter().any(|f| f.ends_with(code));
    if any("ValidationError") || any("ItemCollectionSizeLimitExceeded") {
        ErrorClass::Permanent
    } else if any("ConditionalCheckFailed") || any("TransactionConflict") {
        ErrorClass::Conflict
    } else {
        ErrorClass::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_transaction_is_classed_by_its_reasons() {
        let class = |reasons: &[&str]| cancellation_class(&reasons.iter().map(|r| format!("node tn-1: {r}")).collect::<Vec<_>>());
        assert_eq!(class(&["ConditionalCheckFailed"]), ErrorClass::Conflict);
        assert_eq!(class(&["TransactionConflict"]), ErrorClass::Conflict);
        assert_eq!(class(&["ConditionalCheckFailed", "ValidationError"]), ErrorClass::Permanent, "refused as sent: a retry fails the same way");
        assert_eq!(class(&["ThrottlingError"]), ErrorClass::Transient);
    }

    #[test]
    fn conditions_name_only_the_attributes_they_use() {
        for expect in [Expect::Absent, Expect::Held { owner: "tg-1".into(), member: None }, Expect::Held { owner: "tg-1".into(), member: NodeId::parse("tn-0123456789abcdef0123456789abcdef") }] {
            let (condition, names, values) = expectation(&expect);
            assert!(names.keys().all(|n| condition.contains(n.as_str())), "{condition} {names:?}");
            assert!(values.keys().all(|v| condition.contains(v.as_str())), "{condition} {values:?}");
        }
    }

    #[test]
    fn reservation_keys_name_their_address_and_read_back() {
        let ip = Address::PrivateIp { subnet_id: "subnet-0a".into(), ip: Ipv4Addr::new(10, 0, 1, 7) };
        let eip = Address::ElasticIp { allocation_id: "eipalloc-0b".into() };
        assert_eq!(ip.key(), "addr#ip#subnet-0a#10.0.1.7");
        for address in [ip, eip] {
            assert_eq!(address_of(&address.key()), Some(address.clone()));
            let mut r = Reservation::new(address, "tg-1");
            r.member = NodeId::parse("tn-0123456789abcdef0123456789abcdef");
            r.subnet_reservation = Some(SubnetReservation { id: "scr-1".into(), tethers: true });
            assert_eq!(reservation_of(reservation_item(&r).expect("an item")).expect("read back"), r);
        }
        assert_eq!(address_of("node#tn-1"), None);
    }
}
