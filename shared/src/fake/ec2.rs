//! `FakeEc2`: subnets, ENIs, instances and Elastic IPs held in memory, with EC2's rules
//! (tests/emulator/README.md), its error codes, token-bucket throttling on a virtual clock,
//! capacity outages and injected faults.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use super::clock::{yield_now, CallTiming, Timing};
use crate::ports::{not_assigned_is_done, Clock};
use std::sync::Arc;
use super::faults::{aws, Fault, FaultInjection, Faults, When};
use crate::aws::ec2::{TAG_DEVICE_INDEX, TAG_GENERATION, TAG_MANAGED, TAG_NODE_ID};
use crate::error::{AwsError, ErrorClass};
use crate::events::{InstanceEvent, InstanceState};
use crate::model::{EniRecord, InterruptionAction, Market, NodeId, NodeSpec};
use crate::ports::{
    described_by, eip_not_found, tether_description, ElasticIpInfo, EniRequest, ImportableInstance, ImportedEni, InstanceSummary, Instances, LaunchRequest, LaunchedInstance, Network,
    SubnetCidr, SubnetInfo, SubnetReservation, Tagged,
};

mod ports;
mod state;
mod volumes;

pub use volumes::VolumeView;

const EC2: &str = "EC2";

/// The deployment (table name) the fake's subnet CIDR reservations are described with.
pub const FAKE_DEPLOYMENT: &str = "tether-fake";

/// Instance types every `FakeEc2` offers; `add_instance_type` adds more.
pub const KNOWN_INSTANCE_TYPES: &[&str] = &[
    "t3.micro", "t3.small", "t3.medium", "t3.large", "m5.large", "m5.xlarge", "m6i.large", "m6i.xlarge", "m7i.large",
    "c5.large", "c6i.large", "c7i.large", "r5.large", "r6i.large", "p5.48xlarge", "u-6tb1.112xlarge",
];

/// The most network interfaces an instance type takes (EC2's `MaximumNetworkInterfaces`,
/// as DescribeInstanceTypes gives it for the known types); 3 for one added by a test.
fn interface_limit(instance_type: &str) -> u8 {
    match instance_type {
        "t3.micro" => 2,
        "m5.xlarge" | "m6i.xlarge" => 4,
        "u-6tb1.112xlarge" => 15,
        "p5.48xlarge" => 64,
        _ => 3,
    }
}

/// EC2's published throttling figures, per account and Region and per API action (each
/// action has its own bucket): (what, capacity, refill per second). AWS's "Request
/// throttling for the Amazon EC2 API" page,
/// https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html, gives each.
/// Tether's Describe calls all filter or page, so they take the larger non-mutating bucket.
pub const EC2_BUCKETS: [(&str, u64, u64); 9] = [
    ("RunInstances", 5, 2),
    ("RunInstances.instances", 1000, 2),
    ("TerminateInstances", 100, 5),
    ("TerminateInstances.instances", 1000, 20),
    ("CreateNetworkInterface|DeleteNetworkInterface|ModifyNetworkInterfaceAttribute", 100, 5),
    ("CreateTags", 100, 10),
    ("CreateSubnetCidrReservation|DeleteSubnetCidrReservation", 5, 1),
    ("Describe*|Get*", 100, 20),
    ("other mutating", 50, 5),
];

/// The request bucket figures of `operation`, and its resource bucket's (one token per
/// instance: Tether's calls name one instance each).
fn buckets_of(operation: &str) -> ((u64, u64), Option<(u64, u64)>) {
    let row = |i: usize| (EC2_BUCKETS[i].1, EC2_BUCKETS[i].2);
    match operation {
        "RunInstances" => (row(0), Some(row(1))),
        "TerminateInstances" => (row(2), Some(row(3))),
        "CreateNetworkInterface" | "DeleteNetworkInterface" | "ModifyNetworkInterfaceAttribute" => (row(4), None),
        "CreateTags" => (row(5), None),
        "CreateSubnetCidrReservation" | "DeleteSubnetCidrReservation" => (row(6), None),
        op if op.starts_with("Describe") || op.starts_with("Get") => (row(7), None),
        _ => (row(8), None),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl Life {
    fn as_str(self) -> &'static str {
        match self {
            Life::Pending => "pending",
            Life::Running => "running",
            Life::Stopping => "stopping",
            Life::Stopped => "stopped",
            Life::ShuttingDown => "shutting-down",
            Life::Terminated => "terminated",
        }
    }

    /// TerminateInstances acts on it (a stopped instance can be terminated too).
    fn can_terminate(self) -> bool {
        !matches!(self, Life::ShuttingDown | Life::Terminated)
    }

    fn event_state(self) -> InstanceState {
        match self {
            Life::Pending => InstanceState::Pending,
            Life::Running => InstanceState::Running,
            Life::Stopping => InstanceState::Stopping,
            Life::Stopped => InstanceState::Stopped,
            Life::ShuttingDown => InstanceState::ShuttingDown,
            Life::Terminated => InstanceState::Terminated,
        }
    }
}

#[derive(Clone, Debug)]
struct Subnet {
    cidr: Ipv4Net,
    az: String,
    vpc_id: String,
    ipv6: Option<ipnet::Ipv6Net>,
    map_public_ip_on_launch: bool,
}

#[derive(Clone, Debug)]
struct Attachment {
    id: String,
    instance_id: String,
    delete_on_termination: bool,
    device_index: u8,
}

#[derive(Clone, Debug)]
struct Eni {
    id: String,
    subnet_id: String,
    private_ip: Ipv4Addr,
    mac: String,
    az: String,
    security_groups: Vec<String>,
    tags: BTreeMap<String, String>,
    secondary_ips: Vec<Ipv4Addr>,
    ipv6: Vec<std::net::Ipv6Addr>,
    source_dest_check: bool,
    /// AssociatePublicIpAddress is on: its instance has a public IP (EC2's pool).
    public_ip: bool,
    attachment: Option<Attachment>,
    /// EC2 picked its address (none was asked for).
    picked: bool,
}

impl Eni {
    /// Its `tether:device-index` tag (an extra ENI's), as the adapter reads it.
    fn device_index(&self) -> Option<u8> {
        self.tags.get(TAG_DEVICE_INDEX).and_then(|i| i.parse().ok()).filter(|i| *i > 0)
    }

    fn record(&self) -> EniRecord {
        EniRecord { id: self.id.clone(), private_ip: self.private_ip, mac_address: self.mac.clone(), availability_zone: self.az.clone(), secondary_private_ips: self.secondary_ips.clone(), ipv6_addresses: self.ipv6.clone() }
    }
}

#[derive(Clone, Debug)]
struct Instance {
    life: Life,
    instance_type: String,
    market: Market,
    image_id: String,
    key_name: Option<String>,
    iam_instance_profile: Option<String>,
    metadata_options: Option<crate::model::MetadataOptions>,
    tags: BTreeMap<String, String>,
    subnet_id: String,
    az: String,
    /// The ENI at device index 0 while attached (until the instance has terminated).
    primary_eni: Option<String>,
    /// The ENIs at device indexes 1 and up, while attached.
    extra_enis: Vec<String>,
    private_ip: Ipv4Addr,
    client_token: Option<String>,
}

#[derive(Clone, Debug)]
struct Eip {
    public_ip: String,
    eni: Option<String>,
    association_id: Option<String>,
    tags: BTreeMap<String, String>,
}

/// Everything a RunInstances request carries but its ClientToken: what a repeated token is
/// compared on (AWS: every parameter but the Region or Availability Zone).
#[derive(Clone, Debug, PartialEq, Eq)]
struct LaunchParams {
    image_id: String,
    instance_type: String,
    market: Market,
    eni_id: String,
    /// (device index, ENI id) of each extra ENI.
    extra_enis: Vec<(u8, String)>,
    key_name: Option<String>,
    iam_instance_profile: Option<String>,
    user_data: Option<String>,
    metadata_options: Option<crate::model::MetadataOptions>,
    block_devices: Vec<crate::volumes::BlockDevice>,
    tags: BTreeMap<String, String>,
    /// The rest of RunInstances' settings, as sent (spot price on spot only, the capacity
    /// reservation on on-demand only: `LaunchRequest`'s rule).
    ebs_optimized: Option<bool>,
    detailed_monitoring: Option<bool>,
    cpu_credits: Option<crate::model::CpuCredits>,
    placement: Option<crate::model::Placement>,
    spot_max_price: Option<String>,
    capacity_reservation: Option<crate::model::CapacityReservation>,
    volume_tags: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    capacity: u64,
    refill_per_second: u64,
    /// Thousandths of a token.
    milli_tokens: u64,
    at_ms: u64,
}

impl Bucket {
    fn full((capacity, refill_per_second): (u64, u64)) -> Self {
        Bucket { capacity, refill_per_second, milli_tokens: capacity * 1000, at_ms: 0 }
    }

    fn take(&mut self, now_ms: u64) -> bool {
        let refill = now_ms.saturating_sub(self.at_ms).saturating_mul(self.refill_per_second);
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(self.capacity * 1000);
        self.at_ms = now_ms;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

struct State {
    subnets: BTreeMap<String, Subnet>,
    enis: BTreeMap<String, Eni>,
    instances: BTreeMap<String, Instance>,
    eips: BTreeMap<String, Eip>,
    /// The Elastic IP on each ENI (at most one: its primary private IP's), by ENI id.
    eip_of_eni: HashMap<String, String>,
    launch_tokens: HashMap<String, (LaunchParams, String)>,
    eni_tokens: HashMap<String, (EniRequest, EniRecord)>,
    out_of_capacity: HashSet<(String, &'static str)>,
    extra_types: BTreeSet<String>,
    /// Launch templates by id: (name, default version, versions from 1).
    templates: BTreeMap<String, (String, i64, Vec<crate::launch_options::TemplateSettings>)>,
    /// AMIs set by a test (`None`: deregistered). Any other `ami-…` exists, its root
    /// `/dev/xvda` from an 8 GiB snapshot (Amazon Linux's): tests name AMIs freely.
    images: BTreeMap<String, Option<crate::ports::ImageInfo>>,
    eip_limit: Option<usize>,
    rng: fastrand::Rng,
    counter: u64,
    public_ips: u32,
    clock_ms: u64,
    throttling: bool,
    /// Per operation (and `<operation>.instances` for a resource bucket), made full on first use.
    buckets: HashMap<String, Bucket>,
    /// Subnet CIDR reservations by id: (subnet id, range, description).
    subnet_reservations: BTreeMap<String, (String, Ipv4Net, String)>,
    volumes: BTreeMap<String, volumes::Volume>,
    /// Failed status checks by (instance id, `instance status` | `system status`): since when.
    impaired: BTreeMap<(String, String), Option<chrono::DateTime<chrono::Utc>>>,
    volume_tokens: HashMap<String, String>,
    snapshots: BTreeMap<String, volumes::Snapshot>,
    faults: Faults,
    calls: BTreeMap<&'static str, u64>,
    events: Vec<InstanceEvent>,
    /// The benchmark's clock and when it started: the buckets' time, when set.
    sim_clock: Option<(chrono::DateTime<chrono::Utc>, Arc<dyn Clock>)>,
}

/// An in-memory EC2 implementing `Network` and `Instances`. `Send + Sync`; share it as an
/// `Arc` between the `Ports` and the test.
pub struct FakeEc2 {
    state: Mutex<State>,
    timing: Timing,
}

/// An instance as the invariants see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
    pub state: String,
    pub instance_type: String,
    pub market: Market,
    /// The ENI at device index 0 (none once terminated).
    pub primary_eni_id: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
    /// The Elastic IP on its primary ENI, else one from Amazon's pool.
    pub public_ip: Option<String>,
    pub node_id: Option<String>,
    pub generation: Option<u64>,
    pub client_token: Option<String>,
}

impl InstanceView {
    /// Not shutting down or terminated (a stopped instance keeps its ENI and comes back).
    pub fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "shutting-down" | "terminated")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub subnet_id: String,
    pub private_ip: Ipv4Addr,
    pub mac_address: String,
    pub availability_zone: String,
    /// The instance it is attached to, and at which device index.
    pub instance_id: Option<String>,
    pub device_index: Option<u8>,
    pub delete_on_termination: Option<bool>,
    pub node_id: Option<String>,
    pub secondary_private_ips: Vec<Ipv4Addr>,
    pub ipv6_addresses: Vec<std::net::Ipv6Addr>,
    pub source_dest_check: bool,
    /// AssociatePublicIpAddress is on.
    pub public_ip: bool,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EipView {
    pub info: ElasticIpInfo,
    pub node_id: Option<String>,
}

fn not_found_eni(operation: &'static str, eni_id: &str) -> AwsError {
    aws(EC2, operation, "InvalidNetworkInterfaceID.NotFound", format!("The networkInterface ID '{eni_id}' does not exist"))
}

fn not_found_allocation(operation: &'static str, allocation_id: &str) -> AwsError {
    aws(EC2, operation, "InvalidAllocationID.NotFound", format!("The allocation ID '{allocation_id}' does not exist"))
}

/// The adapters' reading of a lookup: absent (not found, malformed) is `None`.
fn absent_if_unknown<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.class == ErrorClass::NotFound || e.code.as_deref().is_some_and(|c| c.ends_with(".Malformed")) => Ok(None),
        Err(e) => Err(e),
    }
}

fn gone_is_done(result: Result<(), AwsError>) -> Result<(), AwsError> {
    absent_if_unknown(result).map(drop)
}


fn idempotent_mismatch(operation: &'static str) -> AwsError {
    aws(EC2, operation, "IdempotentParameterMismatch", "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
}

fn launch_params(request: &LaunchRequest<'_>) -> LaunchParams {
    let spec: &NodeSpec = request.spec;
    let mut tags = spec.tags.clone();
    tags.insert(TAG_NODE_ID.to_owned(), request.node_id.to_string());
    tags.insert(TAG_GENERATION.to_owned(), request.generation.to_string());
    tags.insert(TAG_MANAGED.to_owned(), "true".to_owned());
    LaunchParams {
        image_id: spec.image_id.clone(),
        instance_type: request.instance_type.to_owned(),
        market: request.market,
        eni_id: request.eni_id.to_owned(),
        extra_enis: request.extra_enis.iter().map(|e| (e.device_index, e.id.clone())).collect(),
        key_name: spec.key_name.clone(),
        iam_instance_profile: spec.iam_instance_profile.clone(),
        user_data: spec.user_data.clone(),
        metadata_options: spec.metadata_options,
        block_devices: spec.block_devices.clone(),
        tags,
        ebs_optimized: spec.ebs_optimized,
        detailed_monitoring: spec.detailed_monitoring,
        cpu_credits: spec.cpu_credits,
        placement: spec.placement.clone(),
        spot_max_price: request.spot_max_price().map(str::to_owned),
        capacity_reservation: request.capacity_reservation().cloned(),
        volume_tags: spec.volume_tags.clone(),
    }
}

impl FakeEc2 {
    /// An empty Region whose random picks (private IPs) follow `seed`. Throttling is on.
    pub fn new(seed: u64) -> Self {
        FakeEc2 {
            state: Mutex::new(State {
                subnets: BTreeMap::new(),
                enis: BTreeMap::new(),
                instances: BTreeMap::new(),
                eips: BTreeMap::new(),
                eip_of_eni: HashMap::new(),
                launch_tokens: HashMap::new(),
                eni_tokens: HashMap::new(),
                out_of_capacity: HashSet::new(),
                extra_types: BTreeSet::new(),
                templates: BTreeMap::new(),
                images: BTreeMap::new(),
                eip_limit: None,
                rng: fastrand::Rng::with_seed(seed),
                counter: 0,
                public_ips: 0,
                clock_ms: 0,
                throttling: true,
                buckets: HashMap::new(),
                subnet_reservations: BTreeMap::new(),
                volumes: BTreeMap::new(),
                impaired: BTreeMap::new(),
                volume_tokens: HashMap::new(),
                snapshots: BTreeMap::new(),
                faults: Faults::default(),
                calls: BTreeMap::new(),
                events: Vec::new(),
                sim_clock: None,
            }),
            timing: Timing::default(),
        }
    }

    /// Calls take time as `timing` says, and the throttling buckets refill on `clock`
    /// (the benchmark's virtual clock) instead of `advance_clock`.
    pub fn with_timing(self, timing: Arc<dyn CallTiming>, clock: Arc<dyn Clock>) -> Self {
        self.timing.set(timing);
        self.lock().sim_clock = Some((clock.now(), clock));
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One AWS call: a point where the caller's executor may run another invocation, then
    /// counted; an injected fault first; then throttling; then the call. The caller hears
    /// the answer after the fake's timing (at once by default).
    async fn call<T>(&self, operation: &'static str, f: impl FnOnce(&mut State) -> Result<T, AwsError>) -> Result<T, AwsError> {
        self.call_about(operation, "", f).await
    }

    /// `call`, telling the timing what the call was about (a launch: its instance type and market).
    async fn call_about<T>(&self, operation: &'static str, about: &str, f: impl FnOnce(&mut State) -> Result<T, AwsError>) -> Result<T, AwsError> {
        yield_now().await;
        let result = self.call_now(operation, f);
        self.timing.answered(EC2, operation, about, &result).await;
        result
    }

    /// The calls after the first for a listing of `found` items in EC2's pages of 1,000
    /// (the adapter's `PAGE_SIZE`): each counted, throttled and timed as a call. The fake
    /// answers the whole listing with the first.
    async fn further_pages(&self, operation: &'static str, found: usize) -> Result<(), AwsError> {
        for _ in 1..found.div_ceil(1000).max(1) {
            self.call(operation, |_| Ok(())).await?;
        }
        Ok(())
    }

    fn call_now<T>(&self, operation: &'static str, f: impl FnOnce(&mut State) -> Result<T, AwsError>) -> Result<T, AwsError> {
        let mut state = self.lock();
        *state.calls.entry(operation).or_default() += 1;
        let fault = state.faults.take(operation);
        if let Some(f) = fault.as_ref().filter(|f| f.when == When::Before) {
            return Err(f.error(EC2, operation));
        }
        state.throttle(operation)?;
        let result = f(&mut state);
        match fault {
            Some(f) => result.and_then(|_| Err(f.error(EC2, operation))),
            None => result,
        }
    }

    // ---- set-up ----

    /// Adds a subnet (VPC `vpc-fake`).
    pub fn add_subnet(&self, subnet_id: &str, cidr: Ipv4Net, availability_zone: &str) {
        self.add_subnet_in("vpc-fake", subnet_id, cidr, availability_zone);
    }

    /// `add_subnet`, in VPC `vpc_id`.
    pub fn add_subnet_in(&self, vpc_id: &str, subnet_id: &str, cidr: Ipv4Net, availability_zone: &str) {
        let subnet = Subnet { cidr, az: availability_zone.to_owned(), vpc_id: vpc_id.to_owned(), ipv6: None, map_public_ip_on_launch: false };
        self.lock().subnets.insert(subnet_id.to_owned(), subnet);
    }

    /// Gives the subnet an IPv6 CIDR block.
    pub fn add_ipv6_cidr(&self, subnet_id: &str, cidr: ipnet::Ipv6Net) {
        if let Some(subnet) = self.lock().subnets.get_mut(subnet_id) {
            subnet.ipv6 = Some(cidr);
        }
    }


    /// A launch template `id` named `name` with `versions` (1, 2, …; the first is the default).
    pub fn add_launch_template(&self, id: &str, name: &str, versions: Vec<crate::launch_options::TemplateSettings>) {
        let versions = versions.into_iter().enumerate().map(|(i, v)| crate::launch_options::TemplateSettings { version: i as i64 + 1, ..v }).collect();
        self.lock().templates.insert(id.to_owned(), (name.to_owned(), 1, versions));
    }

    /// Makes the Region offer `instance_type` too.
    /// Sets an AMI's root device and snapshot size, or (`None`) deregisters it.
    pub fn set_image(&self, image_id: &str, image: Option<crate::ports::ImageInfo>) {
        self.lock().images.insert(image_id.to_owned(), image);
    }

    pub fn add_instance_type(&self, instance_type: &str) {
        self.lock().extra_types.insert(instance_type.to_owned());
    }

    /// Launches of `instance_type` on `market` fail with `InsufficientInstanceCapacity`
    /// (`out = true`) or succeed again (`out = false`).
    pub fn set_out_of_capacity(&self, instance_type: &str, market: Market, out: bool) {
        let key = (instance_type.to_owned(), market.as_str());
        let mut state = self.lock();
        if out {
            state.out_of_capacity.insert(key);
        } else {
            state.out_of_capacity.remove(&key);
        }
    }

    /// At most `limit` Elastic IPs in the Region (`AddressLimitExceeded`); default: none.
    pub fn set_eip_limit(&self, limit: Option<usize>) {
        self.lock().eip_limit = limit;
    }

    /// Turns throttling on (the default) or off.
    pub fn set_throttling(&self, on: bool) {
        self.lock().throttling = on;
    }

    /// Every subnet CIDR reservation: (id, subnet id, range) (not counted, no faults).
    pub fn subnet_reservations(&self) -> Vec<(String, String, Ipv4Net)> {
        self.lock().subnet_reservations.iter().map(|(id, (subnet, range, _))| (id.clone(), subnet.clone(), *range)).collect()
    }

    /// The subnet CIDR reservations this deployment made at `since` or later (their
    /// description says when).
    pub fn subnet_reservations_made_since(&self, since: chrono::DateTime<chrono::Utc>) -> BTreeSet<String> {
        let state = self.lock();
        let made = |d: &String| described_by(FAKE_DEPLOYMENT, d).then(|| crate::ports::made_at(d)).flatten();
        state.subnet_reservations.iter().filter(|(_, (_, _, d))| made(d).is_some_and(|at| at >= since)).map(|(id, _)| id.clone()).collect()
    }

    /// A subnet CIDR reservation made outside this deployment (by the user, or by another
    /// Tether stack sharing the subnet), described with `description`.
    pub fn reserve_outside(&self, subnet_id: &str, range: Ipv4Net, description: &str) -> Result<String, AwsError> {
        self.lock().create_subnet_cidr_reservation(subnet_id, range, description.to_owned())
    }

    /// Moves the virtual clock on; the throttling buckets refill by it.
    pub fn advance_clock(&self, by: Duration) {
        let mut state = self.lock();
        state.clock_ms = state.clock_ms.saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX));
    }

    /// The virtual clock, from 0.
    pub fn now(&self) -> Duration {
        Duration::from_millis(self.lock().clock_ms)
    }

    // ---- faults ----

    /// Faults queued and not yet taken.
    pub fn pending_faults(&self) -> usize {
        self.lock().faults.pending()
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    // ---- time passing in EC2 ----

    /// One virtual step: every pending instance runs, every shutting-down one terminates
    /// (its ENIs and volumes detached: kept with DeleteOnTermination=false, else deleted),
    /// every pending snapshot completes. Returns how many things changed.
    pub fn advance(&self) -> usize {
        let mut state = self.lock();
        let ids: Vec<String> = state.instances.iter().filter(|(_, i)| i.life != Life::Terminated).map(|(id, _)| id.clone()).collect();
        ids.iter().filter(|id| state.step(id)).count() + state.complete_snapshots()
    }

    /// One step of one instance only; whether it changed state.
    pub fn advance_instance(&self, instance_id: &str) -> bool {
        self.lock().step(instance_id)
    }

    /// EC2 reports the instance's `check` (`instance status` or `system status`) impaired
    /// since `since` (`None`: EC2 does not say since when); `passes` undoes it.
    pub fn impair(&self, instance_id: &str, check: &str, since: Option<chrono::DateTime<chrono::Utc>>) {
        self.lock().impaired.insert((instance_id.to_owned(), check.to_owned()), since);
    }

    /// Every failed status check: (instance id, check, since when).
    pub fn impairments(&self) -> Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)> {
        self.lock().impaired.iter().map(|((id, check), since)| (id.clone(), check.clone(), *since)).collect()
    }

    /// The instance's checks pass again.
    pub fn passes(&self, instance_id: &str) {
        self.lock().impaired.retain(|(id, _), _| id != instance_id);
    }

    /// EC2's 2-minute spot interruption warning (an event only; the instance still runs).
    pub fn warn_interruption(&self, instance_id: &str, action: InterruptionAction) {
        self.lock().events.push(InstanceEvent::InterruptionWarning { instance_id: instance_id.to_owned(), action });
    }

    /// EC2 reclaims (or a person terminates) an instance: it starts shutting down, outside
    /// any API call of Tether's (not throttled, no faults).
    pub fn reclaim(&self, instance_id: &str) {
        let mut state = self.lock();
        if state.instances.get(instance_id).is_some_and(|i| i.life.can_terminate()) {
            state.set_life(instance_id, Life::ShuttingDown);
        }
    }

    /// EC2 stops a spot instance whose interruption behaviour is `stop` (or a person stops
    /// it): stopping, then stopped with its ENIs kept; `advance` later starts it again, as
    /// EC2 does when capacity returns.
    pub fn stop(&self, instance_id: &str) {
        let mut state = self.lock();
        if state.instances.get(instance_id).is_some_and(|i| i.life == Life::Running) {
            state.set_life(instance_id, Life::Stopping);
        }
    }

    /// The EventBridge events EC2 emitted since the last call, in order.
    pub fn take_events(&self) -> Vec<InstanceEvent> {
        std::mem::take(&mut self.lock().events)
    }

    // ---- drift made by hand (no throttling, no faults) ----

    /// Someone disassociates an Elastic IP.
    pub fn hand_disassociate_eip(&self, allocation_id: &str) {
        let mut state = self.lock();
        if let Some(eni_id) = state.eips.get_mut(allocation_id).and_then(|eip| {
            eip.association_id = None;
            eip.eni.take()
        }) {
            state.eip_of_eni.remove(&eni_id);
        }
    }

    /// Someone moves an Elastic IP to another ENI (AllowReassociation).
    pub fn hand_associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError> {
        self.lock().associate_address(allocation_id, eni_id, true)
    }

    /// Someone deletes an ENI (refused while attached, as for anyone).
    pub fn hand_delete_eni(&self, eni_id: &str) -> Result<(), AwsError> {
        self.lock().delete_network_interface(eni_id)
    }

    /// Someone creates an untagged ENI (for a foreign holder of an Elastic IP).
    pub fn hand_create_eni(&self, subnet_id: &str) -> Result<String, AwsError> {
        self.hand_create_eni_at(subnet_id, None)
    }

    /// `hand_create_eni` on `private_ip` (`None`: EC2 picks).
    pub fn hand_create_eni_at(&self, subnet_id: &str, private_ip: Option<Ipv4Addr>) -> Result<String, AwsError> {
        let mut state = self.lock();
        let cidr = state.describe_subnet(subnet_id)?.cidr;
        let ip = state.private_ip_for("CreateNetworkInterface", subnet_id, cidr, private_ip)?;
        Ok(state.new_eni(subnet_id, ip, true, Vec::new(), BTreeMap::new()).id)
    }

    /// Someone allocates an Elastic IP of their own (untagged).
    pub fn hand_allocate_eip(&self) -> Result<(String, String), AwsError> {
        self.lock().allocate_address(None)
    }

    /// Someone launches a running, untagged instance the usual way (EC2 creates its primary
    /// ENI, DeleteOnTermination=true): something to import.
    pub fn hand_run_instance(&self, subnet_id: &str, instance_type: &str, image_id: &str) -> Result<String, AwsError> {
        let mut state = self.lock();
        let cidr = state.describe_subnet(subnet_id)?.cidr;
        let ip = state.private_ip_for("RunInstances", subnet_id, cidr, None)?;
        let eni = state.new_eni(subnet_id, ip, true, vec!["sg-default".to_owned()], BTreeMap::new());
        let instance_id = state.next_id("i");
        let attachment_id = state.next_id("eni-attach");
        state.enis.get_mut(&eni.id).expect("just made").attachment =
            Some(Attachment { id: attachment_id, instance_id: instance_id.clone(), delete_on_termination: true, device_index: 0 });
        let instance = Instance {
            life: Life::Running,
            instance_type: instance_type.to_owned(),
            market: Market::OnDemand,
            image_id: image_id.to_owned(),
            key_name: None,
            iam_instance_profile: None,
            // What EC2 gives an instance launched without metadata options (and an AMI
            // that asks for none): IMDSv1 allowed, one hop.
            metadata_options: Some(crate::model::MetadataOptions {
                http_tokens: crate::model::HttpTokens::Optional,
                http_put_response_hop_limit: 1,
                ..crate::model::MetadataOptions::default()
            }),
            tags: BTreeMap::new(),
            subnet_id: subnet_id.to_owned(),
            az: eni.availability_zone,
            primary_eni: Some(eni.id),
            extra_enis: Vec::new(),
            private_ip: ip,
            client_token: None,
        };
        state.instances.insert(instance_id.clone(), instance);
        Ok(instance_id)
    }

    // ---- inspection ----

    /// Every instance EC2 knows, terminated ones included, by id.
    pub fn instances(&self) -> Vec<InstanceView> {
        let state = self.lock();
        state.instances.iter().map(|(id, i)| state.view(id, i)).collect()
    }

    pub fn enis(&self) -> Vec<EniView> {
        let state = self.lock();
        state
            .enis
            .values()
            .map(|e| EniView {
                id: e.id.clone(),
                subnet_id: e.subnet_id.clone(),
                private_ip: e.private_ip,
                mac_address: e.mac.clone(),
                availability_zone: e.az.clone(),
                instance_id: e.attachment.as_ref().map(|a| a.instance_id.clone()),
                device_index: e.attachment.as_ref().map(|a| a.device_index),
                delete_on_termination: e.attachment.as_ref().map(|a| a.delete_on_termination),
                node_id: e.tags.get(TAG_NODE_ID).cloned(),
                secondary_private_ips: e.secondary_ips.clone(),
                ipv6_addresses: e.ipv6.clone(),
                source_dest_check: e.source_dest_check,
                public_ip: e.public_ip,
                tags: e.tags.clone(),
            })
            .collect()
    }

    /// The ENIs whose private IP EC2 picked (their creator asked for none).
    pub fn enis_with_picked_ips(&self) -> BTreeSet<String> {
        self.lock().enis.values().filter(|e| e.picked).map(|e| e.id.clone()).collect()
    }

    pub fn eips(&self) -> Vec<EipView> {
        let state = self.lock();
        state.eips.iter().map(|(id, e)| EipView { info: state.eip_info(id, e), node_id: e.tags.get(TAG_NODE_ID).cloned() }).collect()
    }

    /// How many times each EC2 operation was called (throttled and failed calls included).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    pub fn call_count(&self, operation: &str) -> u64 {
        self.lock().calls.get(operation).copied().unwrap_or(0)
    }
}

/// Faults by EC2 API name: `RunInstances`, `AssociateAddress`, `DescribeAddresses`, ...
impl FaultInjection for FakeEc2 {
    fn inject(&self, operation: &str, fault: Fault) {
        self.lock().faults.push(operation, fault);
    }
}
