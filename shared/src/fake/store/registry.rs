//! Groups and address reservations in the fake table, and its all-or-nothing transactions
//! (every condition is checked before anything is written, as TransactWriteItems does).

use async_trait::async_trait;

use super::{condition_failed, FakeStore, Table};
use crate::error::AwsError;
use crate::group::{Group, GroupId};
use crate::model::Node;
use crate::ports::{Address, Expect, Registry, Reservation, Write};

impl Table {
    fn expected(&self, address: &Address, expect: &Expect) -> bool {
        match (self.reservations.get(&address.key()), expect) {
            (None, Expect::Absent) => true,
            (Some(r), Expect::Held { owner, member }) => r.owner == *owner && r.member == *member,
            _ => false,
        }
    }

    /// Whether `write`'s condition holds now.
    fn holds(&self, write: &Write) -> bool {
        match write {
            Write::CreateNode(node) => !self.nodes.contains_key(&node.id),
            Write::SaveNode(node) => self.nodes.get(&node.id).map(|n| n.version) == Some(node.version),
            Write::CheckNode { id, version } => self.nodes.get(id).map(|n| n.version) == Some(*version),
            Write::CheckNoNode { id } => !self.nodes.contains_key(id),
            Write::CreateGroup(group) => !self.groups.contains_key(&group.id),
            Write::SaveGroup(group) => self.groups.get(&group.id).map(|g| g.version) == Some(group.version),
            Write::CheckGroup { id, version } => self.groups.get(id).map(|g| g.version) == Some(*version),
            Write::PutReservation { reservation, expect } => self.expected(&reservation.address, expect),
            Write::DeleteReservation { address, expect } => self.expected(address, expect),
        }
    }

    fn apply(&mut self, write: Write) {
        match write {
            Write::CreateNode(node) => self.put(node),
            Write::SaveNode(node) => self.put(Node { version: node.version + 1, ..node }),
            Write::CheckNode { .. } | Write::CheckNoNode { .. } | Write::CheckGroup { .. } => {}
            Write::CreateGroup(group) => {
                self.groups.insert(group.id.clone(), group);
            }
            Write::SaveGroup(group) => {
                self.groups.insert(group.id.clone(), Group { version: group.version + 1, ..group });
            }
            Write::PutReservation { reservation, .. } => {
                self.reservations.insert(reservation.address.key(), reservation);
            }
            Write::DeleteReservation { address, .. } => {
                self.reservations.remove(&address.key());
            }
        }
    }
}

impl FakeStore {
    /// Every group record (no faults, not counted).
    pub fn groups_now(&self) -> Vec<Group> {
        self.lock().groups.values().cloned().collect()
    }

    /// Every reservation (no faults, not counted).
    pub fn reservations_now(&self) -> Vec<Reservation> {
        self.lock().reservations.values().cloned().collect()
    }
}

#[async_trait]
impl Registry for FakeStore {
    async fn group(&self, id: &GroupId) -> Result<Option<Group>, AwsError> {
        self.call("GetItem", |t| Ok(t.groups.get(id).cloned())).await
    }

    async fn groups(&self, limit: usize, start_after: Option<&GroupId>) -> Result<(Vec<Group>, Option<GroupId>), AwsError> {
        self.call("Scan", |t| {
            let rest = t.groups.values().filter(|g| start_after.is_none_or(|s| g.id > *s));
            if limit == 0 {
                return Ok((rest.cloned().collect(), None));
            }
            let page: Vec<Group> = rest.take(limit).cloned().collect();
            let next = (page.len() == limit).then(|| page.last().map(|g| g.id.clone())).flatten();
            Ok((page, next))
        }).await
    }

    async fn members(&self, id: &GroupId) -> Result<Vec<Node>, AwsError> {
        self.call("Query", |t| Ok(t.nodes.values().filter(|n| n.group.as_ref().is_some_and(|m| m.group_id == *id)).cloned().collect())).await
    }

    async fn reservation(&self, address: &Address) -> Result<Option<Reservation>, AwsError> {
        self.call("GetItem", |t| Ok(t.reservations.get(&address.key()).cloned())).await
    }

    async fn reservations(&self) -> Result<Vec<Reservation>, AwsError> {
        self.call("Scan", |t| Ok(t.reservations.values().cloned().collect())).await
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), AwsError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.call("TransactWriteItems", |t| {
            if writes.len() > crate::ports::MAX_WRITES {
                return Err(super::aws("DynamoDB", "TransactWriteItems", "ValidationException", "Member must have length less than or equal to 100"));
            }
            let mut items = std::collections::BTreeSet::new();
            if let Some(twice) = writes.iter().find(|w| !items.insert(w.item())) {
                let message = format!("Transaction request cannot include multiple operations on one item: {}", twice.item());
                return Err(super::aws("DynamoDB", "TransactWriteItems", "ValidationException", message));
            }
            if let Some(failed) = writes.iter().find(|w| !t.holds(w)) {
                let mut e = condition_failed("TransactWriteItems");
                e.code = Some("TransactionCanceledException".into());
                e.message = format!("transaction cancelled: {failed:?}: ConditionalCheckFailed");
                return Err(e);
            }
            for write in writes {
                t.apply(write);
            }
            Ok(())
        }).await
    }
}
