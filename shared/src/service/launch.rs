//! Launching a node's generation on its ENI: the network first (at the first launch),
//! then the candidates in order, retrying what is worth retrying until the deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::identity::Baseline;
use super::pace::{interruption_aware, pool, PaceState};
use super::{Outcome, Tether, TetherError};
use crate::conditions::ConditionKind;
use crate::error::{AwsError, ErrorClass};
use crate::events::{InstanceEvent, InstanceState};
use crate::lifecycle;
use crate::model::{ElasticIpRecord, EniRecord, Market, Node, NodeSpec, NodeState};
use crate::ports::{Address, Clock, EniRequest, LaunchRequest, LaunchedInstance};

impl Tether {
    /// Launches the node's current generation on its ENI, creating the ENI and
    /// associating the EIP first if this is the first launch.
    pub(super) async fn launch(&self, node: Node, deadline: DateTime<Utc>) -> Result<Outcome, TetherError> {
        let spec = match self.launch_spec(&node).await? {
            Ok(spec) => spec,
            Err(reason) => return self.fail(&node, reason).await,
        };
        // The volumes the node had before this launch (one made just now may not be
        // visible to DescribeVolumes yet: EC2's reads are eventually consistent).
        let had: Vec<String> = node.data_volumes.iter().map(|v| v.volume_id.clone()).collect();
        let (node, eni, fresh_eni) = match self.ensure_network(node, &spec, deadline).await? {
            Ok(ready) => ready,
            Err(outcome) => return Ok(outcome),
        };
        // Data safety first: never a launch without the node's data.
        if let Some(reason) = self.lost_data_volume(&node, &had).await? {
            return self.fail(&node, reason).await;
        }
        // A later template version may have changed its security groups: the ENI carries them.
        if spec.launch_template.is_some() && node.spec.security_group_ids.is_empty() && !fresh_eni {
            self.network.set_security_groups(&eni.id, &spec.security_group_ids).await?;
        }
        let client_token = node.id.client_token(node.generation);
        let started = self.clock.now();
        // The first slot comes before the order of the candidates: it carries the pools EC2
        // refused lately, which go last (as does the pool EC2 just took this node's instance from).
        let mut pace = PaceState::default();
        if self.settings.pace {
            let slot = self.pace.take(self.clock.now(), self.pace_horizon(deadline)).await?;
            if slot.at.is_none() {
                return Err(self.paced(&node, deadline, slot.next_free));
            }
            pace.first = Some(slot);
        }
        let refused = pace.first.as_ref().map(|s| s.refused.clone()).unwrap_or_default();
        let reclaimed = node.instance.as_ref().filter(|i| self.settings.pace && node.replacing_lost_instance && i.generation < node.generation && i.market == Market::Spot);
        let reclaimed = reclaimed.map(|i| pool(&i.instance_type, Market::Spot, &eni.availability_zone));
        let pace = std::sync::Mutex::new(pace);
        let mut tried = Vec::new();
        let mut last_capacity_error = None;
        for (instance_type, market) in interruption_aware(candidates(&spec), &eni.availability_zone, &refused, reclaimed.as_deref()) {
            let request = LaunchRequest {
                node_id: &node.id,
                generation: node.generation,
                spec: &spec,
                eni_id: &eni.id,
                extra_enis: &node.extra_enis,
                instance_type,
                market,
                client_token: client_token.clone(),
            };
            let launched = self.with_retries(deadline, fresh_eni, || self.paced_launch(&node, &request, deadline, &pace)).await;
            let full = pace.lock().unwrap_or_else(std::sync::PoisonError::into_inner).full.take();
            if let Some(next_free) = full {
                return Err(self.paced(&node, deadline, next_free));
            }
            let launched = match launched {
                // The token already launched an instance with another candidate (an earlier
                // attempt fell back, then died before recording it): adopt that instance.
                Err(e) if e.code_is("IdempotentParameterMismatch") => match self.instances.find_launched(&client_token).await? {
                    Some(earlier) => Ok(earlier),
                    // Not visible yet (DescribeInstances is eventually consistent): try again later.
                    None => Err(AwsError { class: ErrorClass::Transient, ..e }),
                },
                other => other,
            };
            match launched {
                Ok(instance) => return self.record_launch(&node, instance, deadline).await,
                Err(e) if e.class == ErrorClass::NoCapacity => {
                    warn!(instance_type, ?market, code = e.code.as_deref(), "no capacity; trying the next candidate");
                    self.note_refused(&pool(instance_type, market, &eni.availability_zone)).await;
                    tried.push(format!("{instance_type}/{}", market.as_str()));
                    last_capacity_error = Some(e);
                }
                Err(e) if e.class == ErrorClass::EniInUse => return Err(TetherError::eni_still_attached(&node, &eni.id, self.waited_since(started), e)),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) if e.code_is("InvalidNetworkInterfaceID.NotFound") => {
                    // EC2 names the ENI it does not know.
                    let reason = match node.extra_enis.iter().find(|x| e.message.contains(&x.id)) {
                        Some(extra) => lifecycle::extra_eni_deleted(extra),
                        None => lifecycle::eni_deleted(&eni),
                    };
                    return self.fail(&node, reason).await;
                }
                Err(e) => return self.fail(&node, format!("launch on ENI {} failed: {e}", eni.id)).await,
            }
        }
        let source = Box::new(last_capacity_error.unwrap_or_else(|| {
            AwsError::from_code("EC2", "RunInstances", None, Some("no instance type to try"), None)
        }));
        let err = TetherError::NoCapacity { node_id: node.id.clone(), tried: tried.join(", "), source };
        let mut next = node.clone();
        next.last_error = Some(err.to_string());
        next.record(self.clock.now(), format!("no capacity: tried {}", tried.join(", ")));
        self.store.save(&next).await?;
        Err(err)
    }

    /// One RunInstances. When the ENI is in use, whoever holds it is looked at: this
    /// generation's instance (launched by a request that died before recording it) is
    /// adopted; an older generation's that the node does not record is terminated;
    /// a newer generation's means the node moved on, and this request re-reads it.
    pub(super) async fn launch_on_eni(&self, node: &Node, request: &LaunchRequest<'_>) -> Result<LaunchedInstance, AwsError> {
        let in_use = match self.instances.launch(request).await {
            Err(e) if e.class == ErrorClass::EniInUse => e,
            other => return other,
        };
        let Some(holder) = self.instances.instance_on_eni(request.eni_id).await?.filter(|h| h.node_id == node.id) else { return Err(in_use) };
        let summary = holder.resource;
        match holder.generation {
            Some(g) if g == node.generation => {
                info!(adopted = summary.id, "this generation's instance already holds the ENI; adopted");
                let gone = matches!(summary.state.as_str(), "shutting-down" | "terminated");
                Ok(LaunchedInstance { id: summary.id, instance_type: summary.instance_type, market: summary.market, gone })
            }
            Some(g) if g > node.generation => Err(AwsError {
                class: ErrorClass::Conflict,
                message: format!("generation {g} of node {} holds its ENI: this request's generation {} is stale", node.id, node.generation),
                ..in_use
            }),
            // The instance the node records is being replaced by the lifecycle's own actions
            // (a recycle's terminate, or EC2's interruption): wait for it. Any other older one
            // is a leftover (launched, then the node moved on before recording it).
            _ if node.instance_id() == Some(summary.id.as_str()) => Err(in_use),
            _ => {
                if !matches!(summary.state.as_str(), "shutting-down" | "terminated") {
                    self.instances.terminate(&summary.id).await?;
                    info!(terminated = summary.id, holder_generation = holder.generation, "an older generation held the ENI; terminated");
                }
                Err(in_use)
            }
        }
    }

    /// Records the generation's instance. One that is already gone (a retried launch whose
    /// instance was reclaimed before it was recorded) is handled like its termination.
    async fn record_launch(&self, node: &Node, instance: LaunchedInstance, deadline: DateTime<Utc>) -> Result<Outcome, TetherError> {
        let mut node = node.clone();
        let mut attempts = 0;
        let saved = loop {
            let next = lifecycle::launched(&node, instance.id.clone(), instance.instance_type.clone(), instance.market, self.clock.now());
            match self.store.save(&next).await {
                Ok(saved) => {
                    self.count_transition(&node, &saved);
                    super::note_written(&saved);
                    break saved;
                }
                Err(e) if e.class == ErrorClass::Conflict && attempts < super::MAX_CONFLICTS => attempts += 1,
                Err(e) => return Err(e.into()),
            }
            let current = self.node(&node.id).await?;
            if current.state == NodeState::Launching && current.generation == node.generation {
                node = current;
                continue;
            }
            // The node moved on (paused, recycled, deallocated) while this request launched:
            // what it launched is nobody's now, unless someone recorded it already.
            if current.instance_id() != Some(instance.id.as_str()) && !instance.gone {
                self.instances.terminate(&instance.id).await?;
                warn!(terminated = instance.id, state = ?current.state, "node moved on during the launch; its instance terminated");
            }
            return Ok(Outcome::Ignored { reason: format!("node {} moved on during the launch of generation {}", node.id, node.generation) });
        };
        if instance.gone {
            warn!(gone = instance.id, "the generation's instance is already gone; launching the next");
            let terminated = InstanceEvent::StateChange { instance_id: instance.id, state: InstanceState::Terminated };
            let decide = move |n: &Node, now| lifecycle::on_instance_event(n, &terminated, now);
            return Box::pin(self.decide_and_act(saved, deadline, decide)).await;
        }
        info!(instance_type = instance.instance_type, market = ?instance.market, "launched");
        // One try at the data volumes: an instance still pending gets them from its
        // `running` event (or the reconciler).
        let (node_id, generation) = (saved.id.clone(), saved.generation);
        // Boxed: every launch's future would carry it on its stack.
        match Box::pin(self.attach_data_volumes(saved)).await {
            Ok(failed @ Outcome::Failed { .. }) => return Ok(failed),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "data volumes not attached yet; the instance's running event or the reconciler attaches them"),
        }
        Ok(Outcome::Launched { node_id, generation, instance_id: instance.id })
    }

    /// Runs `call` until it succeeds, fails for good, or the deadline nears, with jittered
    /// exponential backoff. Retried: throttling and server faults, the ENI still attached to
    /// an instance, and (just after creating the ENI) EC2 not knowing the ENI yet.
    pub(super) async fn with_retries<T, F, Fut>(&self, deadline: DateTime<Utc>, fresh_eni: bool, call: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AwsError>>,
    {
        let budget = (deadline - self.clock.now()).to_std().unwrap_or_default().saturating_sub(self.settings.deadline_margin);
        let mut backoff = ExponentialBuilder::new().with_jitter();
        if let Some(seed) = self.settings.jitter_seed {
            backoff = backoff.with_jitter_seed(seed);
        }
        let backoff = backoff
            .with_min_delay(self.settings.retry_min_delay)
            .with_max_delay(self.settings.retry_max_delay)
            .without_max_times()
            .with_total_delay(Some(budget));
        call.retry(backoff)
            .sleep(ClockSleeper(self.clock.clone()))
            .when(|e: &AwsError| {
                matches!(e.class, ErrorClass::EniInUse | ErrorClass::Transient)
                    || (fresh_eni && e.code_is("InvalidNetworkInterfaceID.NotFound"))
            })
            .notify(|e: &AwsError, wait: Duration| {
                info!(operation = e.operation, code = e.code.as_deref(), ?wait, "not possible yet; retrying")
            })
            .await
    }

    /// The node's ENI, with the Elastic IP on it. At the first launch the ENI is found (an
    /// earlier attempt may have made it) or created, and recorded on the node before
    /// anything runs on it; the third value then says EC2 may not know it everywhere yet.
    /// `Err(outcome)`: the node went to ERROR.
    async fn ensure_network(&self, mut node: Node, launch_spec: &NodeSpec, deadline: DateTime<Utc>) -> Result<Result<(Node, EniRecord, bool), Outcome>, TetherError> {
        let first_launch = node.generation == 1;
        let wants_eip = node.persistence.elastic_ip_allocation_id.is_some() || node.persistence.allocate_elastic_ip;
        // An Elastic IP not on record yet is still to be chosen and associated (a first
        // attempt may have died before that).
        let eip_pending = wants_eip && node.elastic_ip.is_none();
        let extras_pending = node.extra_enis.len() < node.spec.extra_enis.len();
        let volumes_pending = node.data_volumes.len() < node.spec.data_volumes.len();
        let eni = match node.eni.clone() {
            Some(eni) if !first_launch && !eip_pending && !extras_pending && !volumes_pending => return Ok(Ok((node, eni, false))),
            Some(eni) => eni,
            None => {
                // One an earlier attempt made may have been changed (or half changed) for another spec.
                let (eni, baseline) = match self.network.find_node_eni(&node.id).await? {
                    Some(eni) => (eni, Baseline::Unknown),
                    None => {
                        if let Err(reason) = self.claim_before_launch(&node).await? {
                            return self.fail(&node, reason).await.map(Err);
                        }
                        let spec = &node.spec;
                        let request = EniRequest {
                            node_id: node.id.clone(),
                            subnet_id: spec.subnet_id.clone(),
                            // The template's, when the spec names none.
                            security_group_ids: launch_spec.security_group_ids.clone(),
                            private_ip: node.persistence.private_ip,
                            secondary_ip_count: spec.secondary_private_ips.as_ref().and_then(|s| s.count).unwrap_or(0),
                            ipv6_count: spec.ipv6.as_ref().and_then(|s| s.count).unwrap_or(0),
                            tags: spec.eni_tags.clone(),
                            device_index: 0,
                        };
                        let created = match self.network.create_eni(&request).await {
                            Ok(eni) => eni,
                            Err(e) if e.is_retryable() => return Err(e.into()),
                            Err(e) if e.code_is("InvalidIPAddress.InUse") => match self.leftover_holding(&node).await? {
                                // Tether's own ENI of a deallocated node holds the address (a
                                // launch that raced the deallocation made it after it looked): the
                                // sweep deletes it, and the launch waits for that instead of
                                // failing for good. A group's next member for a pool address
                                // meets this when its predecessor was deallocated mid-launch.
                                Some(why) => {
                                    let mut next = node.clone();
                                    next.last_error = Some(why.clone());
                                    next.record(self.clock.now(), why);
                                    self.store.save(&next).await?;
                                    return Err(AwsError { class: ErrorClass::Transient, ..e }.into());
                                }
                                None => return self.fail(&node, format!("creating the node's ENI failed: {e}")).await.map(Err),
                            },
                            Err(e) => return self.fail(&node, format!("creating the node's ENI failed: {e}")).await.map(Err),
                        };
                        (created, Baseline::New)
                    }
                };
                // The addresses and settings the ENI could not be made with (named secondaries,
                // the source/destination check), before anything runs on it.
                let eni = match self.converge_eni(&node.spec, baseline, &eni).await? {
                    Ok((eni, _)) => eni,
                    Err(refused) => {
                        node.eni = Some(eni);
                        let node = self.store.save(&node).await?;
                        return self.fail(&node, refused.reason()).await.map(Err);
                    }
                };
                info!(eni_id = eni.id, private_ip = %eni.private_ip, az = eni.availability_zone, "ENI ready");
                node.eni = Some(eni.clone());
                node.record(self.clock.now(), eni_ready(&eni));
                node = self.store.save(&node).await?;
                eni
            }
        };
        // The Elastic IP is on record before it is associated: a request that loses a race
        // (or dies) here leaves at most a free, tagged Elastic IP, which the reconciler releases.
        if node.elastic_ip.is_none() {
            let record = match (&node.persistence.elastic_ip_allocation_id, node.persistence.allocate_elastic_ip) {
                (Some(allocation_id), _) => match self.network.describe_eip(allocation_id).await? {
                    Some(info) => Some(ElasticIpRecord { allocation_id: allocation_id.clone(), public_ip: info.public_ip, allocated_by_tether: false }),
                    None => {
                        let reason = format!("Elastic IP {allocation_id} no longer exists; deallocate this node, or create one with another Elastic IP");
                        return self.fail(&node, reason).await.map(Err);
                    }
                },
                (None, true) => {
                    let (allocation_id, public_ip) = self.network.allocate_eip(&node.id).await?;
                    Some(ElasticIpRecord { allocation_id, public_ip, allocated_by_tether: true })
                }
                (None, false) => None,
            };
            if let Some(record) = record {
                node.record(self.clock.now(), format!("Elastic IP {} ({}) for the ENI", record.allocation_id, record.public_ip));
                node.elastic_ip = Some(record);
                node = self.store.save(&node).await?;
            }
        }
        if let Some(eip) = node.elastic_ip.clone() {
            let allocation_id = eip.allocation_id.clone();
            let associate = || self.with_retries(deadline, true, || self.network.associate_eip(&allocation_id, &eni.id));
            let mut associated = associate().await;
            if associated.as_ref().is_err_and(|e| !e.is_retryable()) && self.take_back_pool_eip(&node, &allocation_id).await? {
                associated = associate().await;
            }
            match associated {
                Ok(public_ip) => info!(allocation_id, public_ip, eni_id = eni.id, "Elastic IP on the ENI"),
                Err(e) if e.is_retryable() => return Err(e.into()),
                // Someone else holds it: the node runs without it, with a condition naming the
                // holder, and the reconciler associates it once it is free.
                Err(e) if e.code_is("Resource.AlreadyAssociated") => {
                    let holder = self.network.describe_eip(&allocation_id).await?.map(|i| i.holder().to_owned()).unwrap_or_else(|| "another resource".into());
                    warn!(allocation_id, holder, "Elastic IP held elsewhere; the node runs without it");
                    if node.raise(ConditionKind::ElasticIpElsewhere, lifecycle::elastic_ip_elsewhere(&eip, &holder), self.clock.now()) {
                        let before = node.clone();
                        node = self.store.save(&node).await?;
                        self.count_transition(&before, &node);
                    }
                }
                Err(e) => {
                    let reason = format!("associating Elastic IP {allocation_id} failed: {e}");
                    return self.fail(&node, reason).await.map(Err);
                }
            }
        }
        let node = Box::pin(self.ensure_data_volumes(node, &eni)).await?;
        let node = match self.ensure_extra_enis(node, deadline).await? {
            Ok(node) => node,
            Err(outcome) => return Ok(Err(outcome)),
        };
        Ok(Ok((node, eni, true)))
    }

    /// A group member's pool Elastic IP, handed to it, found on the ENI of another member
    /// deallocated with its ENI kept (a launch of that member, racing its deallocation, put it
    /// back after the deallocation took it off): it is the pool's, so it is taken off that
    /// ENI. Whether it was; anything else holding it is left alone.
    async fn take_back_pool_eip(&self, node: &Node, allocation_id: &str) -> Result<bool, TetherError> {
        let Some(membership) = node.group.as_ref().filter(|_| node.persistence.elastic_ip_allocation_id.as_deref() == Some(allocation_id)) else {
            return Ok(false);
        };
        let address = Address::ElasticIp { allocation_id: allocation_id.to_owned() };
        let handed = self.registry.reservation(&address).await?.is_some_and(|r| r.owner == membership.group_id.as_str() && r.member.as_ref() == Some(&node.id));
        let Some(holder) = self.network.describe_eip(allocation_id).await?.and_then(|e| e.network_interface_id).filter(|_| handed) else { return Ok(false) };
        let Some(tagged) = self.network.node_enis().await?.into_iter().find(|t| t.resource.id == holder) else { return Ok(false) };
        let Some(owner) = self.store.get(&tagged.node_id).await? else { return Ok(false) };
        let same_group = owner.group.as_ref().is_some_and(|m| m.group_id == membership.group_id);
        if owner.id == node.id || owner.state != NodeState::Deallocated || !same_group {
            return Ok(false);
        }
        self.network.disassociate_eip(allocation_id, &holder).await?;
        info!(allocation_id, eni_id = holder, deallocated = %owner.id, "pool Elastic IP taken off a deallocated member's kept ENI");
        Ok(true)
    }

    /// When creating the node's ENI found its chosen private IP in use: the words saying why
    /// the launch waits, if it is only for a while: the ENI holding it is Tether's, of a node
    /// deallocated (or being deallocated) that does not keep it, which the reconciler's sweep
    /// (or that deallocation) deletes, or it was deleted since. `None`: someone keeps it.
    async fn leftover_holding(&self, node: &Node) -> Result<Option<String>, TetherError> {
        let Some(ip) = node.persistence.private_ip else { return Ok(None) };
        // One ENI at most holds the address: the subnet's addresses are unique.
        if let Some(tagged) = self.network.node_enis().await?.into_iter().find(|t| t.resource.private_ip == ip && t.node_id != node.id) {
            let Some(owner) = self.store.get(&tagged.node_id).await? else { return Ok(None) };
            let kept = owner.keep_eni && (owner.eni.as_ref().is_some_and(|e| e.id == tagged.resource.id) || owner.extra_enis.iter().any(|e| e.id == tagged.resource.id));
            if !matches!(owner.state, NodeState::Deallocated | NodeState::Deallocating) || kept {
                return Ok(None);
            }
            return Ok(Some(format!(
                "private IP {ip} is still held by ENI {} of node {}, deallocated without keeping it: the launch waits until it is deleted",
                tagged.resource.id, owner.id
            )));
        }
        if self.network.private_ip_in_use(&node.spec.subnet_id, ip).await? {
            return Ok(None);
        }
        Ok(Some(format!("private IP {ip} was in use, and is free again: the launch tries again")))
    }

    /// How long since `started`, on the service's clock.
    pub(super) fn waited_since(&self, started: DateTime<Utc>) -> Duration {
        (self.clock.now() - started).to_std().unwrap_or_default()
    }

    /// The spec this launch uses: the node's, over its launch template's version as it is now
    /// (`Err`: why the node cannot launch: the template or version is gone, or now sets what
    /// Tether refuses).
    async fn launch_spec(&self, node: &Node) -> Result<Result<NodeSpec, String>, TetherError> {
        let Some(template) = &node.spec.launch_template else { return Ok(Ok(node.spec.clone())) };
        let Some(settings) = self.instances.launch_template(template).await? else {
            return Ok(Err(format!("{} no longer exists: point launch_template at another (PATCH), or remove it", template.describe())));
        };
        if let Err((field, reason)) = crate::launch_options::check_template(&node.spec, &settings) {
            return Ok(Err(format!("{field}: {reason}")));
        }
        info!(template = template.describe(), version = settings.version, "launch template read");
        Ok(Ok(crate::launch_options::with_template(&node.spec, &settings)))
    }

    /// Puts the node in ERROR with `reason`; the request itself succeeded in deciding that.
    pub(super) async fn fail(&self, node: &Node, reason: String) -> Result<Outcome, TetherError> {
        warn!(reason, "node in ERROR");
        let saved = self.store.save(&lifecycle::failed(node, reason.clone(), self.clock.now())).await?;
        self.count_transition(node, &saved);
        Ok(Outcome::Failed { node_id: saved.id, reason })
    }
}

/// The history's words for a new ENI and its addresses.
fn eni_ready(eni: &EniRecord) -> String {
    let mut what = format!("ENI {} with private IP {}", eni.id, eni.private_ip);
    if !eni.secondary_private_ips.is_empty() {
        what += &format!(", secondary IPs {}", eni.secondary_private_ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    if !eni.ipv6_addresses.is_empty() {
        what += &format!(", IPv6 {}", eni.ipv6_addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    }
    what + " ready"
}

/// Backoff sleeps on the service's clock.
struct ClockSleeper(Arc<dyn Clock>);

impl backon::Sleeper for ClockSleeper {
    type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn sleep(&self, duration: Duration) -> Self::Sleep {
        self.0.sleep(duration)
    }
}

/// The launch candidates in order: each instance type on spot, then each on
/// on-demand if the node allows it. All in the ENI's AZ: the ENI cannot move.
fn candidates(spec: &NodeSpec) -> impl Iterator<Item = (&str, Market)> {
    let spot = spec.instance_types.iter().map(|t| (t.as_str(), Market::Spot));
    let on_demand = spec
        .instance_types
        .iter()
        .filter(|_| spec.fallback_to_on_demand)
        .map(|t| (t.as_str(), Market::OnDemand));
    spot.chain(on_demand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_spec as spec;

    #[test]
    fn candidates_are_spot_in_order_then_on_demand() {
        let two_types = spec(&["m5.large", "m6i.large"], true);
        let with = candidates(&two_types).collect::<Vec<_>>();
        assert_eq!(
            with,
            vec![
                ("m5.large", Market::Spot),
                ("m6i.large", Market::Spot),
                ("m5.large", Market::OnDemand),
                ("m6i.large", Market::OnDemand)
            ]
        );
        let spot_only = spec(&["m5.large"], false);
        let without = candidates(&spot_only).collect::<Vec<_>>();
        assert_eq!(without, vec![("m5.large", Market::Spot)]);
    }

    #[test]
    fn pools_refused_lately_or_just_reclaimed_are_tried_last() {
        let spec = spec(&["m5.large", "m6i.large", "c5.large"], true);
        let refused = std::collections::BTreeMap::from([("m6i.large/spot/az-a".to_owned(), chrono::Utc::now())]);
        let order = interruption_aware(candidates(&spec), "az-a", &refused, Some("m5.large/spot/az-a"));
        assert_eq!(
            order,
            vec![
                ("c5.large", Market::Spot),
                ("m5.large", Market::OnDemand),
                ("m6i.large", Market::OnDemand),
                ("c5.large", Market::OnDemand),
                ("m5.large", Market::Spot),
                ("m6i.large", Market::Spot),
            ]
        );
        let elsewhere = interruption_aware(candidates(&spec), "az-b", &refused, None);
        assert_eq!(elsewhere, candidates(&spec).collect::<Vec<_>>(), "another AZ's pools are other pools");
    }
}
