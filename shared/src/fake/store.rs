//! `FakeStore` and `FakeIdempotency`: the DynamoDB table in memory, with the adapters'
//! conditional writes, and injectable faults per DynamoDB operation name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::clock::{yield_now, CallTiming, Timing};
use std::sync::Arc;
use super::faults::{aws, with_fault, Fault, FaultInjection, Faults};
use crate::error::AwsError;
use crate::group::{Group, GroupId};
use crate::model::{Node, NodeId};
use crate::ports::{pace_step, Claim, EventClaim, EventClaims, IdempotencyStore, LaunchPace, NodeStore, PaceSlot, ReconcilerBookmark, Reservation, PACE_BURST, PACE_INTERVAL};

mod registry;

const DYNAMODB: &str = "DynamoDB";

fn condition_failed(operation: &'static str) -> AwsError {
    aws(DYNAMODB, operation, "ConditionalCheckFailedException", "The conditional request failed")
}

#[derive(Default)]
struct Table {
    nodes: BTreeMap<NodeId, Node>,
    groups: BTreeMap<GroupId, Group>,
    /// Address reservations by their key (`Address::key`).
    reservations: BTreeMap<String, Reservation>,
    /// The `by-instance` index: instance id → nodes whose current instance it is.
    by_instance: HashMap<String, BTreeSet<NodeId>>,
    /// Event claims (`pk = event#<id>` in the adapter): event id → (invocation id, until).
    event_claims: HashMap<String, (String, DateTime<Utc>)>,
    reconciler_bookmark: Option<NodeId>,
    /// The pace item: its `tat`, the pools refused for capacity, and the last `tat` the
    /// (one) caller saw, which picks the update tried first as the adapter's does.
    pace_tat: Option<DateTime<Utc>>,
    refused_pools: BTreeMap<String, DateTime<Utc>>,
    pace_seen: Option<DateTime<Utc>>,
    faults: Faults,
    calls: BTreeMap<&'static str, u64>,
}

impl Table {
    fn put(&mut self, node: Node) {
        if let Some(old) = self.nodes.get(&node.id).and_then(|n| n.instance_id().map(str::to_owned)) {
            if let Some(ids) = self.by_instance.get_mut(&old) {
                ids.remove(&node.id);
                if ids.is_empty() {
                    self.by_instance.remove(&old);
                }
            }
        }
        if let Some(instance_id) = node.instance_id() {
            self.by_instance.entry(instance_id.to_owned()).or_default().insert(node.id.clone());
        }
        self.nodes.insert(node.id.clone(), node);
    }
}

/// The node table in memory: `create` and `save` are conditional as in `DynamoNodeStore`;
/// `find_by_instance` reads an index kept up to date on every write; `list` pages in id
/// order (the adapter's Scan order is the table's hash order: callers may not rely on any).
#[derive(Default)]
pub struct FakeStore {
    table: Mutex<Table>,
    timing: Timing,
}

impl FakeStore {
    pub fn new() -> Self {
        FakeStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One DynamoDB call: a point where the caller's executor may run another invocation,
    /// then counted, an injected fault, the call; answered after the timing.
    async fn call<T>(&self, operation: &'static str, f: impl FnOnce(&mut Table) -> Result<T, AwsError>) -> Result<T, AwsError> {
        yield_now().await;
        let result = {
            let mut table = self.lock();
            *table.calls.entry(operation).or_default() += 1;
            let fault = table.faults.take(operation);
            with_fault(fault, DYNAMODB, operation, || f(&mut table))
        };
        self.timing.answered(DYNAMODB, operation, "", &result).await;
        result
    }

    /// Calls take time as `timing` says (the benchmark's model of DynamoDB).
    pub fn with_timing(self, timing: Arc<dyn CallTiming>) -> Self {
        self.timing.set(timing);
        self
    }

    /// Every node record, by id (no faults, not counted).
    pub fn nodes(&self) -> Vec<Node> {
        self.lock().nodes.values().cloned().collect()
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn call_count(&self, operation: &str) -> u64 {
        self.lock().calls.get(operation).copied().unwrap_or(0)
    }
}

#[async_trait]
impl NodeStore for FakeStore {
    async fn create(&self, node: &Node) -> Result<(), AwsError> {
        self.call("PutItem", |t| {
            if t.nodes.contains_key(&node.id) {
                return Err(condition_failed("PutItem"));
            }
            t.put(node.clone());
            Ok(())
        }).await
    }

    async fn get(&self, id: &NodeId) -> Result<Option<Node>, AwsError> {
        self.call("GetItem", |t| Ok(t.nodes.get(id).cloned())).await
    }

    async fn find_by_instance(&self, instance_id: &str) -> Result<Option<Node>, AwsError> {
        self.call("Query", |t| {
            let nodes = t.by_instance.get(instance_id).into_iter().flatten().filter_map(|id| t.nodes.get(id));
            Ok(nodes.max_by_key(|n| n.generation).cloned())
        }).await
    }

    async fn save(&self, node: &Node) -> Result<Node, AwsError> {
        self.call("PutItem", |t| {
            // `#v = :v`: an absent item has no version, so the condition fails too.
            if t.nodes.get(&node.id).map(|n| n.version) != Some(node.version) {
                return Err(condition_failed("PutItem"));
            }
            let mut next = node.clone();
            next.version += 1;
            t.put(next.clone());
            Ok(next)
        }).await
    }

    async fn list(&self, limit: usize, start_after: Option<&NodeId>) -> Result<(Vec<Node>, Option<NodeId>), AwsError> {
        self.call("Scan", |t| {
            let after = |n: &&Node| start_after.is_none_or(|s| n.id > *s);
            let rest = t.nodes.values().filter(after);
            // As the adapter: a full page names its last id (even when nothing follows);
            // `limit` 0 never fills, so it returns everything.
            if limit == 0 {
                return Ok((rest.cloned().collect(), None));
            }
            let page: Vec<Node> = rest.take(limit).cloned().collect();
            let next = (page.len() == limit).then(|| page.last().map(|n| n.id.clone())).flatten();
            Ok((page, next))
        }).await
    }
}

/// The reconciler's bookmark item in the node table.
/// The pace as `DynamoLaunchPace` keeps it: the same conditional updates, in the same order.
#[async_trait]
impl LaunchPace for FakeStore {
    async fn take(&self, now: DateTime<Utc>, horizon: std::time::Duration) -> Result<PaceSlot, AwsError> {
        let tolerance = PACE_INTERVAL * (PACE_BURST - 1);
        let limit = now + tolerance + horizon;
        let queued_first = {
            let mut table = self.lock();
            let queued = table.pace_seen.is_some_and(|seen| seen >= now);
            if !queued {
                table.pace_seen = Some(now + PACE_INTERVAL);
            }
            queued
        };
        let live = |t: &Table| t.refused_pools.iter().filter(|(_, until)| **until > now).map(|(p, u)| (p.clone(), *u)).collect();
        for queued in [queued_first, !queued_first] {
            let updated = self
                .call("UpdateItem", |t| {
                    let tat = match (queued, t.pace_tat) {
                        (true, Some(tat)) if tat >= now && tat <= limit => tat + PACE_INTERVAL,
                        (false, None) => now + PACE_INTERVAL,
                        (false, Some(tat)) if tat < now => now + PACE_INTERVAL,
                        _ => return Err(condition_failed("UpdateItem")),
                    };
                    t.pace_tat = Some(tat);
                    t.pace_seen = Some(tat);
                    Ok((tat, live(t)))
                })
                .await;
            match updated {
                Ok((tat, refused)) => {
                    let (slot, _) = pace_step(Some(tat - PACE_INTERVAL), now, std::time::Duration::MAX).unwrap_or((now, tat));
                    return Ok(PaceSlot { at: Some(slot), next_free: slot, refused });
                }
                Err(e) if e.class == crate::error::ErrorClass::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        self.call("GetItem", |t| {
            let tat = t.pace_tat.unwrap_or(now);
            t.pace_seen = Some(tat);
            Ok(PaceSlot { at: None, next_free: (tat - tolerance).max(now), refused: live(t) })
        })
        .await
    }

    async fn refuse_pool(&self, pool: &str, until: DateTime<Utc>) -> Result<(), AwsError> {
        self.call("UpdateItem", |t| {
            t.refused_pools.insert(pool.to_owned(), until);
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl ReconcilerBookmark for FakeStore {
    async fn load(&self) -> Result<Option<NodeId>, AwsError> {
        self.call("GetItem", |t| Ok(t.reconciler_bookmark.clone())).await
    }

    async fn store(&self, after: Option<&NodeId>) -> Result<(), AwsError> {
        self.call("PutItem", |t| {
            t.reconciler_bookmark = after.cloned();
            Ok(())
        }).await
    }
}

/// Event claims live in the node table, as the adapter keeps them.
#[async_trait]
impl EventClaims for FakeStore {
    async fn claim(&self, event_id: &str, invocation_id: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<EventClaim, AwsError> {
        let put = self.call("PutItem", |t| {
            if t.event_claims.get(event_id).is_some_and(|(_, held_until)| *held_until >= now) {
                return Err(condition_failed("PutItem"));
            }
            t.event_claims.insert(event_id.to_owned(), (invocation_id.to_owned(), until));
            Ok(())
        }).await;
        match put {
            Ok(()) => Ok(EventClaim::Claimed),
            Err(e) if e.class == crate::error::ErrorClass::Conflict => Ok(EventClaim::HeldElsewhere),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, event_id: &str, invocation_id: &str) -> Result<(), AwsError> {
        self.call("DeleteItem", |t| {
            // Conditional on the owner; a failed condition means someone else holds it now.
            if t.event_claims.get(event_id).is_some_and(|(owner, _)| owner == invocation_id) {
                t.event_claims.remove(event_id);
            }
            Ok(())
        }).await
    }
}

/// How long an answer is replayed, and when an unfinished claim may be taken over: the
/// adapter's figures.
const KEEP_FOR: i64 = 24 * 3600;
const STALE_AFTER: i64 = 60;

#[derive(Clone, Debug, Default)]
struct IdemItem {
    fingerprint: Option<String>,
    state: Option<String>,
    claimed_at: Option<i64>,
    expires_at: Option<i64>,
    status: Option<u16>,
    body: Option<String>,
}

struct IdemTable {
    items: HashMap<String, IdemItem>,
    now: i64,
    faults: Faults,
}

/// Idempotency records as `DynamoIdempotencyStore` keeps them, on a virtual clock (seconds;
/// starts at 2023-11-14T22:13:20Z).
pub struct FakeIdempotency {
    table: Mutex<IdemTable>,
}

impl Default for FakeIdempotency {
    fn default() -> Self {
        FakeIdempotency { table: Mutex::new(IdemTable { items: HashMap::new(), now: 1_700_000_000, faults: Faults::default() }) }
    }
}

impl FakeIdempotency {
    pub fn new() -> Self {
        FakeIdempotency::default()
    }

    fn lock(&self) -> MutexGuard<'_, IdemTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn call<T>(&self, operation: &'static str, f: impl FnOnce(&mut IdemTable) -> Result<T, AwsError>) -> Result<T, AwsError> {
        yield_now().await;
        let mut table = self.lock();
        let fault = table.faults.take(operation);
        with_fault(fault, DYNAMODB, operation, || f(&mut table))
    }

    pub fn advance_clock(&self, by: Duration) {
        self.lock().now += i64::try_from(by.as_secs()).unwrap_or(i64::MAX / 2);
    }

    /// Keys on record (TTL never deletes anything here: correctness must not depend on it).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().items.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[async_trait]
impl IdempotencyStore for FakeIdempotency {
    async fn claim(&self, key: &str, fingerprint: &str) -> Result<Claim, AwsError> {
        let put = self.call("PutItem", |t| {
            let now = t.now;
            let free = match t.items.get(key) {
                None => true,
                // A missing attribute makes its comparison false, as in DynamoDB.
                Some(item) => {
                    item.expires_at.is_some_and(|e| e < now)
                        || (item.state.as_deref() == Some("in_progress") && item.claimed_at.is_some_and(|c| c < now - STALE_AFTER))
                }
            };
            if !free {
                return Err(condition_failed("PutItem"));
            }
            let item = IdemItem {
                fingerprint: Some(fingerprint.to_owned()),
                state: Some("in_progress".to_owned()),
                claimed_at: Some(now),
                expires_at: Some(now + KEEP_FOR),
                status: None,
                body: None,
            };
            t.items.insert(key.to_owned(), item);
            Ok(())
        }).await;
        match put {
            Ok(()) => return Ok(Claim::New),
            Err(e) if e.class == crate::error::ErrorClass::Conflict => {}
            Err(e) => return Err(e),
        }
        self.call("GetItem", |t| {
            let Some(item) = t.items.get(key) else { return Ok(Claim::InProgress) };
            if item.fingerprint.as_deref() != Some(fingerprint) {
                return Ok(Claim::Mismatch);
            }
            match (item.state.as_deref(), item.status, &item.body) {
                (Some("done"), Some(status), Some(body)) => Ok(Claim::Replay { status, body: body.clone() }),
                _ => Ok(Claim::InProgress),
            }
        }).await
    }

    async fn complete(&self, key: &str, fingerprint: &str, status: u16, body: &str) -> Result<(), AwsError> {
        // PutItem without a condition: the whole record, even if it was released meanwhile.
        self.call("PutItem", |t| {
            let now = t.now;
            let item = IdemItem {
                fingerprint: Some(fingerprint.to_owned()),
                state: Some("done".to_owned()),
                claimed_at: Some(now),
                expires_at: Some(now + KEEP_FOR),
                status: Some(status),
                body: Some(body.to_owned()),
            };
            t.items.insert(key.to_owned(), item);
            Ok(())
        }).await
    }

    async fn release(&self, key: &str) -> Result<(), AwsError> {
        self.call("DeleteItem", |t| {
            t.items.remove(key);
            Ok(())
        }).await
    }
}

/// Faults by DynamoDB API name: `PutItem`, `GetItem`, `Query`, `Scan`, `DeleteItem`.
impl FaultInjection for FakeStore {
    fn inject(&self, operation: &str, fault: Fault) {
        self.lock().faults.push(operation, fault);
    }
}

/// Faults by DynamoDB API name: `PutItem`, `GetItem`, `DeleteItem`.
impl FaultInjection for FakeIdempotency {
    fn inject(&self, operation: &str, fault: Fault) {
        self.lock().faults.push(operation, fault);
    }
}
