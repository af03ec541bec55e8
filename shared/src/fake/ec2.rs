//! `FakeEc2`: subnets, ENIs, instances and Elastic IPs held in memory, with EC2's rules
//! (tests/emulator/README.md), its error codes, token-bucket throttling on a virtual clock,
//! capacity outages and injected faults.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use super::clock::yield_now;
use super::faults::{aws, Fault, FaultInjection, Faults, When};
use crate::aws::ec2::{TAG_GENERATION, TAG_MANAGED, TAG_NODE_ID};
use crate::error::{AwsError, ErrorClass};
use crate::events::{InstanceEvent, InstanceState};
use crate::model::{EniRecord, InterruptionAction, Market, NodeId, NodeSpec};
use crate::ports::{eip_not_found, Tagged, ElasticIpInfo, EniRequest, ImportableInstance, InstanceSummary, Instances, LaunchRequest, LaunchedInstance, Network,
    SubnetInfo,};

const EC2: &str = "EC2";

/// Instance types every `FakeEc2` offers; `add_instance_type` adds more.
pub const KNOWN_INSTANCE_TYPES: &[&str] = &[
    "t3.micro", "t3.small", "t3.medium", "t3.large", "m5.large", "m5.xlarge", "m6i.large", "m6i.xlarge", "m7i.large",
    "c5.large", "c6i.large", "c7i.large", "r5.large", "r6i.large", "p5.48xlarge", "u-6tb1.112xlarge",
];

/// EC2's published throttling figures, (bucket capacity, refill per second), per class.
const RUN_INSTANCES_BUCKET: (u64, u64) = (5, 2);
const MUTATING_BUCKET: (u64, u64) = (50, 5);
const NON_MUTATING_BUCKET: (u64, u64) = (100, 20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
}

impl Life {
    fn as_str(self) -> &'static str {
        match self {
            Life::Pending => "pending",
            Life::Running => "running",
            Life::ShuttingDown => "shutting-down",
            Life::Terminated => "terminated",
        }
    }

    fn event_state(self) -> InstanceState {
        match self {
            Life::Pending => InstanceState::Pending,
            Life::Running => InstanceState::Running,
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
}

#[derive(Clone, Debug)]
struct Attachment {
    id: String,
    instance_id: String,
    delete_on_termination: bool,
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
    /// Always at device index 0: Tether only ever attaches ENIs as the primary.
    attachment: Option<Attachment>,
}

impl Eni {
    fn record(&self) -> EniRecord {
        EniRecord { id: self.id.clone(), private_ip: self.private_ip, mac_address: self.mac.clone(), availability_zone: self.az.clone() }
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
    tags: BTreeMap<String, String>,
    subnet_id: String,
    az: String,
    /// The ENI at device index 0 while attached (until the instance has terminated).
    primary_eni: Option<String>,
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
    key_name: Option<String>,
    iam_instance_profile: Option<String>,
    user_data: Option<String>,
    tags: BTreeMap<String, String>,
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
    launch_tokens: HashMap<String, (LaunchParams, String)>,
    eni_tokens: HashMap<String, (EniRequest, EniRecord)>,
    out_of_capacity: HashSet<(String, &'static str)>,
    extra_types: BTreeSet<String>,
    eip_limit: Option<usize>,
    rng: fastrand::Rng,
    counter: u64,
    public_ips: u32,
    clock_ms: u64,
    throttling: bool,
    buckets: [Bucket; 3],
    faults: Faults,
    calls: BTreeMap<&'static str, u64>,
    events: Vec<InstanceEvent>,
}

/// An in-memory EC2 implementing `Network` and `Instances`. `Send + Sync`; share it as an
/// `Arc` between the `Ports` and the test.
pub struct FakeEc2 {
    state: Mutex<State>,
}

/// An instance as the invariants see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub id: String,
    /// `pending`, `running`, `shutting-down` or `terminated`.
    pub state: String,
    pub instance_type: String,
    pub market: Market,
    /// The ENI at device index 0 (none once terminated).
    pub primary_eni_id: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
    /// The Elastic IP on its primary ENI.
    pub public_ip: Option<String>,
    pub node_id: Option<String>,
    pub generation: Option<u64>,
    pub client_token: Option<String>,
}

impl InstanceView {
    /// Not shutting down or terminated.
    pub fn is_live(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub subnet_id: String,
    pub private_ip: Ipv4Addr,
    pub mac_address: String,
    pub availability_zone: String,
    /// The instance it is attached to at device index 0.
    pub instance_id: Option<String>,
    pub delete_on_termination: Option<bool>,
    pub node_id: Option<String>,
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

impl State {
    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{:017x}", self.counter)
    }

    fn throttle(&mut self, operation: &'static str) -> Result<(), AwsError> {
        if !self.throttling {
            return Ok(());
        }
        let class = match operation {
            "RunInstances" => 0,
            op if op.starts_with("Describe") => 2,
            _ => 1,
        };
        if self.buckets[class].take(self.clock_ms) {
            Ok(())
        } else {
            Err(aws(EC2, operation, "RequestLimitExceeded", "Request limit exceeded."))
        }
    }

    fn is_known_type(&self, instance_type: &str) -> bool {
        KNOWN_INSTANCE_TYPES.contains(&instance_type) || self.extra_types.contains(instance_type)
    }

    fn eip_info(&self, allocation_id: &str, eip: &Eip) -> ElasticIpInfo {
        let instance_id = eip
            .eni
            .as_ref()
            .and_then(|e| self.enis.get(e))
            .and_then(|e| e.attachment.as_ref())
            .map(|a| a.instance_id.clone());
        ElasticIpInfo {
            allocation_id: allocation_id.to_owned(),
            public_ip: eip.public_ip.clone(),
            network_interface_id: eip.eni.clone(),
            association_id: eip.association_id.clone(),
            instance_id,
        }
    }

    fn eip_on(&self, eni_id: &str) -> Option<(&String, &Eip)> {
        self.eips.iter().find(|(_, e)| e.eni.as_deref() == Some(eni_id))
    }

    fn ip_taken(&self, subnet_id: &str, ip: Ipv4Addr) -> bool {
        self.enis.values().any(|e| e.subnet_id == subnet_id && e.private_ip == ip)
    }

    /// The private IP a new ENI gets: the requested one if the rules allow it, else a
    /// random free one that is never one of the 5 reserved.
    fn private_ip_for(&mut self, operation: &'static str, subnet_id: &str, cidr: Ipv4Net, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, AwsError> {
        let network = u32::from(cidr.network());
        let broadcast = u32::from(cidr.broadcast());
        if let Some(ip) = wanted {
            if !cidr.contains(&ip) {
                return Err(aws(EC2, operation, "InvalidParameterValue", "Address does not fall within the subnet's address range"));
            }
            let n = u32::from(ip);
            if n - network <= 3 || n == broadcast {
                return Err(aws(EC2, operation, "InvalidParameterValue", "Address is in subnet's reserved address range"));
            }
            if self.ip_taken(subnet_id, ip) {
                return Err(aws(EC2, operation, "InvalidIPAddress.InUse", "The specified address is already in use."));
            }
            return Ok(ip);
        }
        let full = || {
            aws(EC2, operation, "InsufficientFreeAddressesInSubnet", "The specified subnet does not have enough free addresses to satisfy the request.")
        };
        // Usable: network+4 ..= broadcast-1.
        let (first, last) = (network + 4, broadcast.checked_sub(1).ok_or_else(full)?);
        if first > last {
            return Err(full());
        }
        let start = self.rng.u32(first..=last);
        let size = last - first + 1;
        (0..size)
            .map(|i| Ipv4Addr::from(first + (start - first + i) % size))
            .find(|ip| !self.ip_taken(subnet_id, *ip))
            .ok_or_else(full)
    }

    fn new_eni(&mut self, subnet_id: &str, private_ip: Ipv4Addr, security_groups: Vec<String>, tags: BTreeMap<String, String>) -> EniRecord {
        let id = self.next_id("eni");
        let c = self.counter;
        let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (c >> 24) & 0xff, (c >> 16) & 0xff, (c >> 8) & 0xff, c & 0xff);
        let az = self.subnets[subnet_id].az.clone();
        let eni = Eni { id: id.clone(), subnet_id: subnet_id.to_owned(), private_ip, mac, az, security_groups, tags, attachment: None };
        let record = eni.record();
        self.enis.insert(id, eni);
        record
    }

    fn set_life(&mut self, instance_id: &str, life: Life) {
        if let Some(instance) = self.instances.get_mut(instance_id) {
            instance.life = life;
            self.events.push(InstanceEvent::StateChange { instance_id: instance_id.to_owned(), state: life.event_state() });
        }
    }

    // ---- the AWS calls ----

    fn describe_subnet(&self, subnet_id: &str) -> Result<SubnetInfo, AwsError> {
        let s = self.subnets.get(subnet_id).ok_or_else(|| {
            aws(EC2, "DescribeSubnets", "InvalidSubnetID.NotFound", format!("The subnet ID '{subnet_id}' does not exist"))
        })?;
        Ok(SubnetInfo { cidr: s.cidr, availability_zone: s.az.clone(), vpc_id: s.vpc_id.clone() })
    }

    fn create_network_interface(&mut self, request: &EniRequest) -> Result<EniRecord, AwsError> {
        let op = "CreateNetworkInterface";
        let token = format!("{}-eni", request.node_id);
        if let Some((earlier, record)) = self.eni_tokens.get(&token) {
            if earlier != request {
                return Err(idempotent_mismatch(op));
            }
            return Ok(record.clone());
        }
        let subnet = self.subnets.get(&request.subnet_id).cloned().ok_or_else(|| {
            aws(EC2, op, "InvalidSubnetID.NotFound", format!("The subnet ID '{}' does not exist", request.subnet_id))
        })?;
        let ip = self.private_ip_for(op, &request.subnet_id, subnet.cidr, request.private_ip)?;
        let tags = BTreeMap::from([(TAG_NODE_ID.to_owned(), request.node_id.to_string()), (TAG_MANAGED.to_owned(), "true".to_owned())]);
        let record = self.new_eni(&request.subnet_id, ip, request.security_group_ids.clone(), tags);
        self.eni_tokens.insert(token, (request.clone(), record.clone()));
        Ok(record)
    }

    fn delete_network_interface(&mut self, eni_id: &str) -> Result<(), AwsError> {
        let op = "DeleteNetworkInterface";
        let eni = self.enis.get(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
        if eni.attachment.is_some() {
            return Err(aws(EC2, op, "InvalidNetworkInterface.InUse", format!("The network interface '{eni_id}' is currently in use.")));
        }
        self.remove_eni(eni_id);
        Ok(())
    }

    /// Deletes the ENI; an Elastic IP on it is disassociated (and kept).
    fn remove_eni(&mut self, eni_id: &str) {
        self.enis.remove(eni_id);
        for eip in self.eips.values_mut().filter(|e| e.eni.as_deref() == Some(eni_id)) {
            eip.eni = None;
            eip.association_id = None;
        }
    }

    fn describe_address(&self, allocation_id: &str) -> Result<ElasticIpInfo, AwsError> {
        let eip = self.eips.get(allocation_id).ok_or_else(|| not_found_allocation("DescribeAddresses", allocation_id))?;
        Ok(self.eip_info(allocation_id, eip))
    }

    fn associate_address(&mut self, allocation_id: &str, eni_id: &str, allow_reassociation: bool) -> Result<(), AwsError> {
        let op = "AssociateAddress";
        let eip = self.eips.get(allocation_id).ok_or_else(|| not_found_allocation(op, allocation_id))?;
        if !self.enis.contains_key(eni_id) {
            return Err(not_found_eni(op, eni_id));
        }
        if eip.eni.as_deref() == Some(eni_id) {
            return Ok(());
        }
        if !allow_reassociation {
            if let Some(association) = &eip.association_id {
                return Err(aws(EC2, op, "Resource.AlreadyAssociated", format!("resource {allocation_id} is already associated with associate-id {association}")));
            }
            if let Some((other, _)) = self.eip_on(eni_id) {
                return Err(aws(EC2, op, "Resource.AlreadyAssociated", format!("the private IP of {eni_id} is already associated with {other}")));
            }
        }
        // Reassociation moves it; an ENI's primary private IP holds one Elastic IP.
        for other in self.eips.values_mut().filter(|e| e.eni.as_deref() == Some(eni_id)) {
            other.eni = None;
            other.association_id = None;
        }
        let association_id = self.next_id("eipassoc");
        let eip = self.eips.get_mut(allocation_id).expect("checked above");
        eip.eni = Some(eni_id.to_owned());
        eip.association_id = Some(association_id);
        Ok(())
    }

    fn allocate_address(&mut self, node_id: Option<&NodeId>) -> Result<(String, String), AwsError> {
        if self.eip_limit.is_some_and(|limit| self.eips.len() >= limit) {
            return Err(aws(EC2, "AllocateAddress", "AddressLimitExceeded", "The maximum number of addresses has been reached."));
        }
        let allocation_id = self.next_id("eipalloc");
        self.public_ips += 1;
        let public_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + self.public_ips).to_string();
        let tags = match node_id {
            Some(id) => BTreeMap::from([(TAG_NODE_ID.to_owned(), id.to_string()), (TAG_MANAGED.to_owned(), "true".to_owned())]),
            None => BTreeMap::new(),
        };
        self.eips.insert(allocation_id.clone(), Eip { public_ip: public_ip.clone(), eni: None, association_id: None, tags });
        Ok((allocation_id, public_ip))
    }

    fn disassociate_address(&mut self, association_id: &str) -> Result<(), AwsError> {
        let eip = self.eips.values_mut().find(|e| e.association_id.as_deref() == Some(association_id)).ok_or_else(|| {
            aws(EC2, "DisassociateAddress", "InvalidAssociationID.NotFound", format!("The association ID '{association_id}' does not exist"))
        })?;
        eip.eni = None;
        eip.association_id = None;
        Ok(())
    }

    fn release_address(&mut self, allocation_id: &str) -> Result<(), AwsError> {
        let op = "ReleaseAddress";
        let eip = self.eips.get(allocation_id).ok_or_else(|| not_found_allocation(op, allocation_id))?;
        // In a VPC an associated address must be disassociated first.
        if eip.association_id.is_some() {
            return Err(aws(EC2, op, "InvalidIPAddress.InUse", format!("Address {} is in use.", eip.public_ip)));
        }
        self.eips.remove(allocation_id);
        Ok(())
    }

    fn run_instances(&mut self, params: LaunchParams, client_token: &str) -> Result<LaunchedInstance, AwsError> {
        let op = "RunInstances";
        if client_token.len() > 64 || !client_token.is_ascii() {
            return Err(aws(EC2, op, "InvalidParameterValue", "Client token must be at most 64 ASCII characters."));
        }
        // A known token is answered first, before any other check (even an ENI now in use).
        if let Some((earlier, instance_id)) = self.launch_tokens.get(client_token) {
            if *earlier != params {
                return Err(idempotent_mismatch(op));
            }
            return Ok(self.launched(instance_id));
        }
        let eni = self.enis.get(&params.eni_id).ok_or_else(|| not_found_eni(op, &params.eni_id))?;
        if eni.attachment.is_some() {
            return Err(aws(EC2, op, "InvalidNetworkInterface.InUse", format!("Interface: [{}] in use.", params.eni_id)));
        }
        if !self.is_known_type(&params.instance_type) {
            return Err(aws(EC2, op, "InvalidParameterValue", format!("Invalid value '{}' for InstanceType.", params.instance_type)));
        }
        if self.out_of_capacity.contains(&(params.instance_type.clone(), params.market.as_str())) {
            return Err(aws(
                EC2,
                op,
                "InsufficientInstanceCapacity",
                format!(
                    "We currently do not have sufficient {} capacity in the Availability Zone you requested ({}). Our system will be working on provisioning additional capacity.",
                    params.instance_type, eni.az
                ),
            ));
        }
        let (subnet_id, az, private_ip) = (eni.subnet_id.clone(), eni.az.clone(), eni.private_ip);
        let instance_id = self.next_id("i");
        let attachment_id = self.next_id("eni-attach");
        let eni = self.enis.get_mut(&params.eni_id).expect("checked above");
        eni.attachment = Some(Attachment { id: attachment_id, instance_id: instance_id.clone(), delete_on_termination: false });
        self.instances.insert(
            instance_id.clone(),
            Instance {
                life: Life::Pending,
                instance_type: params.instance_type.clone(),
                market: params.market,
                image_id: params.image_id.clone(),
                key_name: params.key_name.clone(),
                iam_instance_profile: params.iam_instance_profile.clone(),
                tags: params.tags.clone(),
                subnet_id,
                az,
                primary_eni: Some(params.eni_id.clone()),
                private_ip,
                client_token: Some(client_token.to_owned()),
            },
        );
        self.events.push(InstanceEvent::StateChange { instance_id: instance_id.clone(), state: InstanceState::Pending });
        self.launch_tokens.insert(client_token.to_owned(), (params, instance_id.clone()));
        Ok(self.launched(&instance_id))
    }

    fn launched(&self, instance_id: &str) -> LaunchedInstance {
        let instance = &self.instances[instance_id];
        LaunchedInstance {
            id: instance_id.to_owned(),
            instance_type: instance.instance_type.clone(),
            market: instance.market,
            gone: matches!(instance.life, Life::ShuttingDown | Life::Terminated),
        }
    }

    fn terminate_instances(&mut self, instance_id: &str) -> Result<(), AwsError> {
        let instance = self.instances.get(instance_id).ok_or_else(|| {
            aws(EC2, "TerminateInstances", "InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        if matches!(instance.life, Life::Pending | Life::Running) {
            self.set_life(instance_id, Life::ShuttingDown);
        }
        Ok(())
    }

    /// One step of one instance's own progress: pending → running, shutting-down →
    /// terminated (its ENIs released). Returns whether anything changed.
    fn step(&mut self, instance_id: &str) -> bool {
        let Some(instance) = self.instances.get(instance_id) else { return false };
        match instance.life {
            Life::Pending => self.set_life(instance_id, Life::Running),
            Life::ShuttingDown => {
                let eni_id = instance.primary_eni.clone();
                if let Some(eni_id) = eni_id {
                    let delete = self.enis.get_mut(&eni_id).and_then(|e| e.attachment.take()).is_some_and(|a| a.delete_on_termination);
                    if delete {
                        self.remove_eni(&eni_id);
                    }
                }
                if let Some(instance) = self.instances.get_mut(instance_id) {
                    instance.primary_eni = None;
                }
                self.set_life(instance_id, Life::Terminated);
            }
            Life::Running | Life::Terminated => return false,
        }
        true
    }

    fn summary(&self, instance_id: &str) -> Result<InstanceSummary, AwsError> {
        let instance = self.instances.get(instance_id).ok_or_else(|| {
            aws(EC2, "DescribeInstances", "InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        let view = self.view(instance_id, instance);
        Ok(InstanceSummary {
            id: view.id,
            state: view.state,
            instance_type: view.instance_type,
            market: view.market,
            private_ip: view.private_ip.map(|ip| ip.to_string()),
            public_ip: view.public_ip,
            primary_eni_id: view.primary_eni_id,
        })
    }

    fn view(&self, id: &str, instance: &Instance) -> InstanceView {
        let attached = instance.life != Life::Terminated;
        InstanceView {
            id: id.to_owned(),
            state: instance.life.as_str().to_owned(),
            instance_type: instance.instance_type.clone(),
            market: instance.market,
            primary_eni_id: instance.primary_eni.clone(),
            private_ip: attached.then_some(instance.private_ip),
            public_ip: instance.primary_eni.as_deref().and_then(|e| self.eip_on(e)).map(|(_, eip)| eip.public_ip.clone()),
            node_id: instance.tags.get(TAG_NODE_ID).cloned(),
            generation: instance.tags.get(TAG_GENERATION).and_then(|g| g.parse().ok()),
            client_token: instance.client_token.clone(),
        }
    }
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
        key_name: spec.key_name.clone(),
        iam_instance_profile: spec.iam_instance_profile.clone(),
        user_data: spec.user_data.clone(),
        tags,
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
                launch_tokens: HashMap::new(),
                eni_tokens: HashMap::new(),
                out_of_capacity: HashSet::new(),
                extra_types: BTreeSet::new(),
                eip_limit: None,
                rng: fastrand::Rng::with_seed(seed),
                counter: 0,
                public_ips: 0,
                clock_ms: 0,
                throttling: true,
                buckets: [Bucket::full(RUN_INSTANCES_BUCKET), Bucket::full(MUTATING_BUCKET), Bucket::full(NON_MUTATING_BUCKET)],
                faults: Faults::default(),
                calls: BTreeMap::new(),
                events: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One AWS call: counted; an injected fault first; then throttling; then the call.
    fn call<T>(&self, operation: &'static str, f: impl FnOnce(&mut State) -> Result<T, AwsError>) -> Result<T, AwsError> {
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
        let subnet = Subnet { cidr, az: availability_zone.to_owned(), vpc_id: "vpc-fake".to_owned() };
        self.lock().subnets.insert(subnet_id.to_owned(), subnet);
    }

    /// Makes the Region offer `instance_type` too.
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
    /// (its ENIs detached: kept `available` with DeleteOnTermination=false, else deleted).
    /// Returns how many instances changed state.
    pub fn advance(&self) -> usize {
        let mut state = self.lock();
        let ids: Vec<String> = state.instances.keys().cloned().collect();
        ids.iter().filter(|id| state.step(id)).count()
    }

    /// One step of one instance only; whether it changed state.
    pub fn advance_instance(&self, instance_id: &str) -> bool {
        self.lock().step(instance_id)
    }

    /// EC2's 2-minute spot interruption warning (an event only; the instance still runs).
    pub fn warn_interruption(&self, instance_id: &str) {
        self.lock().events.push(InstanceEvent::InterruptionWarning { instance_id: instance_id.to_owned(), action: InterruptionAction::Terminate });
    }

    /// EC2 reclaims (or a person terminates) an instance: it starts shutting down, outside
    /// any API call of Tether's (not throttled, no faults).
    pub fn reclaim(&self, instance_id: &str) {
        let mut state = self.lock();
        if state.instances.get(instance_id).is_some_and(|i| matches!(i.life, Life::Pending | Life::Running)) {
            state.set_life(instance_id, Life::ShuttingDown);
        }
    }

    /// The EventBridge events EC2 emitted since the last call, in order.
    pub fn take_events(&self) -> Vec<InstanceEvent> {
        std::mem::take(&mut self.lock().events)
    }

    // ---- drift made by hand (no throttling, no faults) ----

    /// Someone disassociates an Elastic IP.
    pub fn hand_disassociate_eip(&self, allocation_id: &str) {
        if let Some(eip) = self.lock().eips.get_mut(allocation_id) {
            eip.eni = None;
            eip.association_id = None;
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
        let mut state = self.lock();
        let cidr = state.describe_subnet(subnet_id)?.cidr;
        let ip = state.private_ip_for("CreateNetworkInterface", subnet_id, cidr, None)?;
        Ok(state.new_eni(subnet_id, ip, Vec::new(), BTreeMap::new()).id)
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
        let eni = state.new_eni(subnet_id, ip, vec!["sg-default".to_owned()], BTreeMap::new());
        let instance_id = state.next_id("i");
        let attachment_id = state.next_id("eni-attach");
        state.enis.get_mut(&eni.id).expect("just made").attachment =
            Some(Attachment { id: attachment_id, instance_id: instance_id.clone(), delete_on_termination: true });
        let instance = Instance {
            life: Life::Running,
            instance_type: instance_type.to_owned(),
            market: Market::OnDemand,
            image_id: image_id.to_owned(),
            key_name: None,
            iam_instance_profile: None,
            tags: BTreeMap::new(),
            subnet_id: subnet_id.to_owned(),
            az: eni.availability_zone,
            primary_eni: Some(eni.id),
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
                delete_on_termination: e.attachment.as_ref().map(|a| a.delete_on_termination),
                node_id: e.tags.get(TAG_NODE_ID).cloned(),
            })
            .collect()
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

#[async_trait]
impl Network for FakeEc2 {
    async fn node_enis(&self) -> Result<Vec<Tagged<EniRecord>>, AwsError> {
        yield_now().await;
        self.call("DescribeNetworkInterfaces", |s| {
            Ok(s.enis
                .values()
                .filter_map(|e| {
                    let node_id = e.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
                    Some(Tagged { node_id, generation: None, attached: e.attachment.is_some(), resource: e.record() })
                })
                .collect())
        })
    }

    async fn node_eips(&self) -> Result<Vec<Tagged<ElasticIpInfo>>, AwsError> {
        yield_now().await;
        self.call("DescribeAddresses", |s| {
            Ok(s.eips
                .iter()
                .filter_map(|(id, e)| {
                    let node_id = e.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
                    Some(Tagged { node_id, generation: None, attached: e.association_id.is_some(), resource: s.eip_info(id, e) })
                })
                .collect())
        })
    }

    async fn find_node_eni(&self, node_id: &NodeId) -> Result<Option<EniRecord>, AwsError> {
        yield_now().await;
        self.call("DescribeNetworkInterfaces", |s| {
            Ok(s.enis.values().find(|e| e.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str())).map(Eni::record))
        })
    }

    async fn create_eni(&self, request: &EniRequest) -> Result<EniRecord, AwsError> {
        yield_now().await;
        self.call("CreateNetworkInterface", |s| s.create_network_interface(request))
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), AwsError> {
        yield_now().await;
        gone_is_done(self.call("DeleteNetworkInterface", |s| s.delete_network_interface(eni_id)))
    }

    async fn associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<String, AwsError> {
        yield_now().await;
        let address = self.describe_eip(allocation_id).await?.ok_or_else(|| eip_not_found(allocation_id))?;
        if !address.needs_association(eni_id)? {
            return Ok(address.public_ip);
        }
        self.call("AssociateAddress", |s| s.associate_address(allocation_id, eni_id, false))?;
        Ok(address.public_ip)
    }

    async fn allocate_eip(&self, node_id: &NodeId) -> Result<(String, String), AwsError> {
        yield_now().await;
        let earlier = self.call("DescribeAddresses", |s| {
            Ok(s.eips
                .iter()
                .find(|(_, e)| e.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str()))
                .map(|(id, e)| (id.clone(), e.public_ip.clone())))
        })?;
        if let Some(earlier) = earlier {
            return Ok(earlier);
        }
        self.call("AllocateAddress", |s| s.allocate_address(Some(node_id)))
    }

    async fn disassociate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError> {
        yield_now().await;
        let on_this_eni = self.describe_eip(allocation_id).await?.filter(|a| a.network_interface_id.as_deref() == Some(eni_id));
        let Some(association_id) = on_this_eni.and_then(|a| a.association_id) else { return Ok(()) };
        gone_is_done(self.call("DisassociateAddress", |s| s.disassociate_address(&association_id)))
    }

    async fn release_eip(&self, allocation_id: &str) -> Result<(), AwsError> {
        yield_now().await;
        gone_is_done(self.call("ReleaseAddress", |s| s.release_address(allocation_id)))
    }

    async fn describe_eip(&self, allocation_id: &str) -> Result<Option<ElasticIpInfo>, AwsError> {
        yield_now().await;
        absent_if_unknown(self.call("DescribeAddresses", |s| s.describe_address(allocation_id)))
    }

    async fn eip_on_eni(&self, eni_id: &str) -> Result<Option<ElasticIpInfo>, AwsError> {
        yield_now().await;
        self.call("DescribeAddresses", |s| Ok(s.eip_on(eni_id).map(|(id, e)| s.eip_info(id, e))))
    }

    async fn describe_subnet(&self, subnet_id: &str) -> Result<Option<SubnetInfo>, AwsError> {
        yield_now().await;
        absent_if_unknown(self.call("DescribeSubnets", |s| s.describe_subnet(subnet_id)))
    }

    async fn private_ip_in_use(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<bool, AwsError> {
        yield_now().await;
        self.call("DescribeNetworkInterfaces", |s| Ok(s.ip_taken(subnet_id, ip)))
    }
}

#[async_trait]
impl Instances for FakeEc2 {
    async fn instance_on_eni(&self, eni_id: &str) -> Result<Option<Tagged<InstanceSummary>>, AwsError> {
        yield_now().await;
        // As the adapter: the ENI's attachment, then that instance.
        let holder = absent_if_unknown(self.call("DescribeNetworkInterfaces", |s| {
            let eni = s.enis.get(eni_id).ok_or_else(|| not_found_eni("DescribeNetworkInterfaces", eni_id))?;
            Ok(eni.attachment.as_ref().map(|a| a.instance_id.clone()))
        }))?
        .flatten();
        let Some(holder) = holder else { return Ok(None) };
        self.call("DescribeInstances", |s| {
            let Some(i) = s.instances.get(&holder) else { return Ok(None) };
            let Some(node_id) = i.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t)) else { return Ok(None) };
            let generation = i.tags.get(TAG_GENERATION).and_then(|g| g.parse().ok());
            Ok(Some(Tagged { node_id, generation, attached: true, resource: s.summary(&holder)? }))
        })
    }

    async fn node_instances(&self) -> Result<Vec<Tagged<InstanceSummary>>, AwsError> {
        yield_now().await;
        self.call("DescribeInstances", |s| {
            let live = s.instances.iter().filter(|(_, i)| matches!(i.life, Life::Pending | Life::Running));
            Ok(live
                .filter_map(|(id, i)| {
                    let node_id = i.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
                    let generation = i.tags.get(TAG_GENERATION).and_then(|g| g.parse().ok());
                    Some(Tagged { node_id, generation, attached: true, resource: s.summary(id).ok()? })
                })
                .collect())
        })
    }

    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<LaunchedInstance, AwsError> {
        yield_now().await;
        let params = launch_params(request);
        self.call("RunInstances", |s| s.run_instances(params, &request.client_token))
    }

    async fn find_launched(&self, client_token: &str) -> Result<Option<LaunchedInstance>, AwsError> {
        yield_now().await;
        self.call("DescribeInstances", |s| Ok(s.launch_tokens.get(client_token).map(|(_, id)| s.launched(id))))
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError> {
        yield_now().await;
        gone_is_done(self.call("TerminateInstances", |s| s.terminate_instances(instance_id)))
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<InstanceSummary>, AwsError> {
        yield_now().await;
        absent_if_unknown(self.call("DescribeInstances", |s| s.summary(instance_id)))
    }

    async fn unknown_instance_types(&self, instance_types: &[String]) -> Result<Vec<String>, AwsError> {
        yield_now().await;
        let mut unknown = Vec::new();
        for instance_type in instance_types {
            // One DescribeInstanceTypes per type, as the adapter does; an unknown type is an
            // `InvalidInstanceType` error there, which the adapter counts as unknown.
            let known = self.call("DescribeInstanceTypes", |s| Ok(s.is_known_type(instance_type)));
            match known {
                Ok(true) => {}
                Ok(false) => unknown.push(instance_type.clone()),
                Err(e) if e.is_retryable() => return Err(e),
                Err(_) => unknown.push(instance_type.clone()),
            }
        }
        Ok(unknown)
    }

    async fn importable(&self, instance_id: &str) -> Result<Option<ImportableInstance>, AwsError> {
        yield_now().await;
        let found = absent_if_unknown(self.call("DescribeInstances", |s| {
            let summary = s.summary(instance_id)?;
            let instance = &s.instances[instance_id];
            let Some(eni) = instance.primary_eni.as_ref().and_then(|e| s.enis.get(e)) else { return Ok(None) };
            let attachment_id = eni.attachment.as_ref().map(|a| a.id.clone()).unwrap_or_default();
            let spec = NodeSpec {
                subnet_id: instance.subnet_id.clone(),
                image_id: instance.image_id.clone(),
                instance_types: vec![instance.instance_type.clone()],
                security_group_ids: eni.security_groups.clone(),
                key_name: instance.key_name.clone(),
                iam_instance_profile: instance.iam_instance_profile.clone(),
                user_data: None,
                tags: instance.tags.iter().filter(|(k, _)| !k.starts_with("aws:") && !k.starts_with("tether:")).map(|(k, v)| (k.clone(), v.clone())).collect(),
                fallback_to_on_demand: true,
            };
            let mut record = eni.record();
            record.availability_zone = instance.az.clone();
            Ok(Some(ImportableInstance { summary, spec, eni: record, attachment_id, node_tag: instance.tags.get(TAG_NODE_ID).cloned() }))
        }))?;
        Ok(found.flatten())
    }

    async fn adopt(&self, node_id: &NodeId, instance: &ImportableInstance) -> Result<(), AwsError> {
        yield_now().await;
        self.call("ModifyNetworkInterfaceAttribute", |s| {
            let op = "ModifyNetworkInterfaceAttribute";
            let eni = s.enis.get_mut(&instance.eni.id).ok_or_else(|| not_found_eni(op, &instance.eni.id))?;
            match eni.attachment.as_mut().filter(|a| a.id == instance.attachment_id) {
                Some(attachment) => {
                    attachment.delete_on_termination = false;
                    Ok(())
                }
                None => Err(aws(EC2, op, "InvalidAttachmentID.NotFound", format!("The attachment ID '{}' does not exist", instance.attachment_id))),
            }
        })?;
        self.call("CreateTags", |s| {
            let tags = [(TAG_NODE_ID, node_id.to_string()), (TAG_MANAGED, "true".to_owned())];
            // CreateTags checks every resource before tagging any.
            if !s.instances.contains_key(&instance.summary.id) {
                return Err(aws(EC2, "CreateTags", "InvalidInstanceID.NotFound", format!("The instance ID '{}' does not exist", instance.summary.id)));
            }
            if !s.enis.contains_key(&instance.eni.id) {
                return Err(not_found_eni("CreateTags", &instance.eni.id));
            }
            for (k, v) in &tags {
                s.instances.get_mut(&instance.summary.id).expect("checked").tags.insert((*k).to_owned(), v.clone());
                s.enis.get_mut(&instance.eni.id).expect("checked").tags.insert((*k).to_owned(), v.clone());
            }
            Ok(())
        })
    }
}
