//! The emulator harness: starts the pinned, patched moto server on a free loopback
//! port (once per process), and builds per-test fixtures (a VPC, a subnet, an AMI,
//! an Elastic IP, a DynamoDB table) plus a `Tether` wired to them.

pub mod bench;
pub mod demo;
pub mod event_source;
pub mod events;
pub mod local_api;
pub mod queues;
pub mod table;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use tether::aws::dynamo::DynamoNodeStore;
use tether::aws::ec2::Ec2Cloud;
use tether::service::Settings;
use tether::ports::Instances;
use tether::{Ports, Tether};

/// The Region every fixture lives in; AZs are `<REGION>a`, `<REGION>b`, ...
pub const REGION: &str = "us-east-1";

/// Python and launcher are found relative to the workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running moto server. Killed when this process exits: the launcher exits as
/// soon as its stdin (held here) closes.
pub struct Emulator {
    pub endpoint: String,
    _child: Mutex<Child>,
}

static EMULATOR: OnceLock<Result<Emulator, String>> = OnceLock::new();

impl Emulator {
    /// The process-wide emulator, started on first use.
    pub fn shared() -> &'static Emulator {
        match Emulator::try_shared() {
            Ok(emulator) => emulator,
            Err(why) => panic!("{why}"),
        }
    }

    /// [`Emulator::shared`], or why it could not start.
    pub fn try_shared() -> Result<&'static Emulator, String> {
        EMULATOR.get_or_init(Emulator::start).as_ref().map_err(|why| format!("cannot start the AWS emulator: {why}"))
    }

    fn start() -> Result<Emulator, String> {
        let root = workspace_root();
        let python = std::env::var_os("TETHER_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv/bin/python"));
        if !python.exists() {
            return Err(format!(
                "{} not found: run `make test` or `make demo`, which install the pinned emulator into .venv",
                python.display()
            ));
        }
        let log_dir = root.join("target");
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        let log_path = log_dir.join(format!("tether-moto-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let mut child = Command::new(&python)
            .arg(root.join("tests/emulator/tether_moto.py"))
            .args(["--port", "0"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", REGION)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", python.display()))?;
        let stdout = child.stdout.take().ok_or("emulator stdout not captured")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(port) = line.strip_prefix("TETHER_MOTO_READY port=") {
                        break port.trim().parse::<u16>().map_err(|e| format!("bad port in `{line}`: {e}"))?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    return Err(format!("emulator exited before it was ready; see {}", log_path.display()));
                }
            }
        };
        Ok(Emulator { endpoint: format!("http://127.0.0.1:{port}"), _child: Mutex::new(child) })
    }

    /// SDK settings pointing at the emulator, with fake credentials.
    pub async fn sdk_config(&self) -> SdkConfig {
        emulator_sdk_config(&self.endpoint).await
    }
}

/// SDK settings for an AWS emulator at `endpoint`, with its fake credentials, in [`REGION`].
pub async fn emulator_sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tether-tests"))
        .load()
        .await
}

/// One test's private corner of the emulator.
pub struct Fixture {
    /// Every AWS request Tether's own clients sent (not the fixture's set-up calls).
    pub calls: CallLog,
    pub ec2: aws_sdk_ec2::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The emulator's SQS, for the local queues (`queues::LocalQueues`); uncounted.
    pub sqs: aws_sdk_sqs::Client,
    /// Where the event functions put a waiting event back (counted, as Tether's own calls).
    pub requeue: tether::aws::queue::SqsEventQueue,
    /// The node table, for tests that stage a state (its calls are not counted).
    pub store: DynamoNodeStore,
    /// Tether's EC2 adapter on an uncounted client: how tests and the demo interrupt and observe.
    pub cloud: Ec2Cloud,
    pub tether: Tether,
    /// The management API on the same service, as the `api` function runs it.
    pub api: Arc<tether_api::Api>,
    pub vpc_id: String,
    /// A /24 in `<REGION>a`: 10.<n>.1.0/24.
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub availability_zone: String,
    pub security_group_id: String,
    pub image_id: String,
    pub table_name: String,
}

/// A failure while building a fixture: the test cannot run.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

impl Fixture {
    /// Builds a fresh VPC, subnet, security group and table.
    pub async fn new() -> Result<Fixture, SetupError> {
        Self::with_settings(fast_settings()).await
    }

    pub async fn with_settings(settings: Settings) -> Result<Fixture, SetupError> {
        let sdk = Emulator::shared().sdk_config().await;
        Self::on(&sdk, None, settings).await
    }

    /// A fixture on the AWS emulator `sdk` points at. `table`: the node table to use
    /// (created if missing); `None`: a new one.
    pub async fn on(sdk: &SdkConfig, table: Option<&str>, settings: Settings) -> Result<Fixture, SetupError> {
        let sdk = sdk.clone();
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let unique = uuid_fragment();

        let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await?;
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).ok_or("CreateVpc returned no id")?.to_owned();
        let availability_zone = format!("{REGION}a");
        let subnet_cidr = "10.0.1.0/24".to_owned();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(&subnet_cidr)
            .availability_zone(&availability_zone)
            .send()
            .await?;
        let subnet_id = subnet.subnet().and_then(|s| s.subnet_id()).ok_or("CreateSubnet returned no id")?.to_owned();
        let group = ec2
            .create_security_group()
            .group_name(format!("tether-{unique}"))
            .description("tether test")
            .vpc_id(&vpc_id)
            .send()
            .await?;
        let security_group_id = group.group_id().ok_or("CreateSecurityGroup returned no id")?.to_owned();
        let images = ec2.describe_images().owners("amazon").send().await?;
        let image_id = images
            .images()
            .iter()
            .find_map(|i| i.image_id())
            .ok_or("the emulator lists no AMI")?
            .to_owned();

        let table_name = table.map_or_else(|| format!("tether-{unique}"), str::to_owned);
        table::ensure(&dynamodb, &table_name).await?;
        let store = DynamoNodeStore::new(dynamodb.clone(), table_name.clone());
        let calls = CallLog::default();
        let counted_ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk).interceptor(calls.clone()).build(),
        );
        let counted_dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(calls.clone()).build(),
        );
        let requeue = tether::aws::queue::SqsEventQueue::new(aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&sdk).interceptor(calls.clone()).build(),
        ));
        let counted_cloud = Arc::new(Ec2Cloud::new(counted_ec2, table_name.clone()));
        let counted_store = Arc::new(DynamoNodeStore::new(counted_dynamodb.clone(), table_name.clone()));
        let ports = Ports {
            store: counted_store.clone(),
            registry: counted_store.clone(),
            bookmark: counted_store,
            events: Arc::new(tether::aws::event_claims::DynamoEventClaims::new(counted_dynamodb.clone(), table_name.clone())),
            pace: Arc::new(tether::aws::pace::DynamoLaunchPace::new(counted_dynamodb, table_name.clone())),
            network: counted_cloud.clone(),
            volumes: counted_cloud.clone(),
            instances: counted_cloud,
        };
        let tether = Tether::new(ports, settings);
        let idempotency = tether::aws::idempotency::DynamoIdempotencyStore::new(dynamodb.clone(), table_name.clone());
        let api = Arc::new(tether_api::Api::new(tether.clone(), Arc::new(idempotency), API_ACTION_BUDGET));
        let cloud = Ec2Cloud::new(ec2.clone(), table_name.clone());
        Ok(Fixture {
            calls,
            ec2,
            dynamodb,
            sqs: aws_sdk_sqs::Client::new(&sdk),
            requeue,
            store,
            cloud,
            tether,
            api,
            vpc_id,
            subnet_id,
            subnet_cidr,
            availability_zone,
            security_group_id,
            image_id,
            table_name,
        })
    }

    /// A node spec for this fixture's subnet.
    pub fn spec(&self, instance_types: &[&str]) -> tether::NodeSpec {
        tether::NodeSpec {
            subnet_id: self.subnet_id.clone(),
            image_id: self.image_id.clone(),
            instance_types: instance_types.iter().map(|t| t.to_string()).collect(),
            security_group_ids: vec![self.security_group_id.clone()],
            user_data: Some("#!/bin/sh\necho tether\n".into()),
            tags: [("team".to_owned(), "data".to_owned())].into_iter().collect(),
            ..tether::NodeSpec::default()
        }
    }

    /// Allocates an Elastic IP; returns (allocation id, public IP).
    pub async fn allocate_eip(&self) -> Result<(String, String), SetupError> {
        let out = self
            .ec2
            .allocate_address()
            .domain(aws_sdk_ec2::types::DomainType::Vpc)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::ElasticIp)
                    .tags(Tag::builder().key("fixture").value(&self.vpc_id).build())
                    .build(),
            )
            .send()
            .await?;
        Ok((
            out.allocation_id().ok_or("no allocation id")?.to_owned(),
            out.public_ip().ok_or("no public ip")?.to_owned(),
        ))
    }

    /// Another subnet of the fixture's VPC in its AZ (`cidr` inside 10.0.0.0/16, not 10.0.1.0/24).
    pub async fn subnet(&self, cidr: &str) -> Result<String, SetupError> {
        let subnet = self.ec2.create_subnet().vpc_id(&self.vpc_id).cidr_block(cidr).availability_zone(&self.availability_zone).send().await?;
        Ok(subnet.subnet().and_then(|s| s.subnet_id()).ok_or("CreateSubnet returned no id")?.to_owned())
    }

    /// `count` running nodes on `spec` (each with its ENI, and an Elastic IP on it if
    /// `elastic_ips`), made straight through EC2 and the table, a few at a time: the service's
    /// own first launch looks its ENI up by tag, which the emulator answers in time linear in
    /// the ENIs (thousands would take an hour). Their ids, in the order made.
    pub async fn stage_running_nodes(&self, spec: &tether::NodeSpec, count: usize, elastic_ips: bool) -> Result<Vec<tether::NodeId>, SetupError> {
        use futures_util::StreamExt;
        let started = std::time::Instant::now();
        let staged: Vec<Result<tether::NodeId, SetupError>> = futures_util::stream::iter(0..count)
            .map(|_| self.stage_running_node(spec, elastic_ips))
            .buffered(8)
            .enumerate()
            .map(|(n, staged)| {
                if n % 500 == 499 {
                    println!("set up {} of {count} nodes in {:.0} s", n + 1, started.elapsed().as_secs_f64());
                }
                staged
            })
            .collect()
            .await;
        staged.into_iter().collect()
    }

    async fn stage_running_node(&self, spec: &tether::NodeSpec, elastic_ip: bool) -> Result<tether::NodeId, SetupError> {
        use tether::aws::ec2::{TAG_GENERATION, TAG_MANAGED, TAG_NODE_ID};
        let mut node = tether::Node::new(spec.clone(), tether::Persistence { allocate_elastic_ip: elastic_ip, ..tether::Persistence::default() }, chrono::Utc::now() - chrono::Duration::minutes(10));
        let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
        let tags = |kind| {
            TagSpecification::builder()
                .resource_type(kind)
                .tags(tag(TAG_NODE_ID, node.id.as_str()))
                .tags(tag(TAG_GENERATION, "1"))
                .tags(tag(TAG_MANAGED, "true"))
                .build()
        };
        let eni = self.ec2.create_network_interface().subnet_id(&spec.subnet_id).groups(&self.security_group_id).tag_specifications(tags(ResourceType::NetworkInterface)).send().await?;
        let eni = eni.network_interface().ok_or("CreateNetworkInterface returned no ENI")?;
        let eni_id = eni.network_interface_id().ok_or("no ENI id")?.to_owned();
        let private_ip = eni.private_ip_address().ok_or("no private IP")?.parse().map_err(|e| format!("{e}"))?;
        let mac_address = eni.mac_address().unwrap_or_default().to_owned();
        let run = self.run_one().network_interfaces(on_eni(&eni_id)).tag_specifications(tags(ResourceType::Instance)).send().await?;
        let instance_id = run.instances().first().and_then(|i| i.instance_id()).ok_or("RunInstances returned no instance")?.to_owned();
        if elastic_ip {
            let address = self.ec2.allocate_address().domain(aws_sdk_ec2::types::DomainType::Vpc).tag_specifications(tags(ResourceType::ElasticIp)).send().await?;
            let allocation_id = address.allocation_id().ok_or("no allocation id")?.to_owned();
            self.ec2.associate_address().allocation_id(&allocation_id).network_interface_id(&eni_id).send().await?;
            let public_ip = address.public_ip().ok_or("no public IP")?.to_owned();
            node.elastic_ip = Some(tether::model::ElasticIpRecord { allocation_id, public_ip, allocated_by_tether: true });
        }
        node.eni = Some(tether::model::EniRecord { id: eni_id, private_ip, mac_address, availability_zone: self.availability_zone.clone(), secondary_private_ips: Vec::new(), ipv6_addresses: Vec::new() });
        node.instance = Some(tether::model::InstanceRecord { id: instance_id, generation: 1, instance_type: "t3.micro".into(), market: tether::Market::Spot, launched_at: node.created_at });
        node.generation = 1;
        node.state = tether::NodeState::Running;
        tether::ports::NodeStore::create(&self.store, &node).await?;
        Ok(node.id)
    }

    /// What EC2 says about one instance.
    pub async fn instance(&self, instance_id: &str) -> Result<aws_sdk_ec2::types::Instance, SetupError> {
        let out = self.ec2.describe_instances().instance_ids(instance_id).send().await?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()
            .ok_or_else(|| format!("instance {instance_id} not found").into())
    }

    /// RunInstances of one small instance with the fixture's AMI; callers add the network.
    pub fn run_one(&self) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
        self.ec2
            .run_instances()
            .image_id(&self.image_id)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
    }

    /// Ids of the instances in the fixture's VPC (terminated ones have left it).
    pub async fn instances_in_vpc(&self) -> Result<Vec<String>, SetupError> {
        let out = self
            .ec2
            .describe_instances()
            .filters(Filter::builder().name("vpc-id").values(&self.vpc_id).build())
            .send()
            .await?;
        Ok(out.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.instance_id()).map(str::to_owned).collect())
    }

    /// Every instance Tether launched for the node (tagged with its id), terminated ones included.
    pub async fn node_instances(&self, node_id: &tether::NodeId) -> Result<Vec<aws_sdk_ec2::types::Instance>, SetupError> {
        event_source::node_instances(&self.ec2, std::slice::from_ref(node_id)).await
    }

    /// The node's instances that are not terminated.
    pub async fn live_instances(&self, node_id: &tether::NodeId) -> Result<Vec<aws_sdk_ec2::types::Instance>, SetupError> {
        Ok(self
            .node_instances(node_id)
            .await?
            .into_iter()
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(aws_sdk_ec2::types::InstanceStateName::Terminated | aws_sdk_ec2::types::InstanceStateName::ShuttingDown)
                )
            })
            .collect())
    }

    pub async fn eni(&self, eni_id: &str) -> Result<aws_sdk_ec2::types::NetworkInterface, SetupError> {
        let out = self.ec2.describe_network_interfaces().network_interface_ids(eni_id).send().await?;
        out.network_interfaces().first().cloned().ok_or_else(|| format!("ENI {eni_id} not found").into())
    }

    /// Terminates an instance the way a spot interruption does (from outside Tether).
    pub async fn interrupt(&self, instance_id: &str) -> Result<(), SetupError> {
        Ok(self.cloud.terminate(instance_id).await?)
    }

    /// Interrupts the node's current instance from outside Tether and delivers its
    /// `terminated` event through the state-change handler, within `budget`: the node's
    /// next generation must be launched.
    pub async fn interrupt_node(&self, node_id: &tether::NodeId, budget: std::time::Duration) -> Result<(), SetupError> {
        let instance_id = self.tether.node(node_id).await?.instance_id().ok_or("no instance")?.to_owned();
        self.interrupt(&instance_id).await?;
        let answer = event_source::invoke_target(&self.tether, &self.requeue, events::state_change(&instance_id, "terminated"), budget).await?;
        assert_eq!(answer["outcome"], "launched", "{answer}");
        Ok(())
    }

    /// Where EC2 has a volume: (state, instance it is attached to, device); `None`: gone.
    pub async fn volume_state(&self, volume_id: &str) -> Result<Option<(String, Option<String>, Option<String>)>, SetupError> {
        let filter = aws_sdk_ec2::types::Filter::builder().name("volume-id").values(volume_id).build();
        let out = self.ec2.describe_volumes().filters(filter).send().await?;
        Ok(out.volumes().first().map(|v| {
            let attachment = v.attachments().first();
            (
                v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                attachment.and_then(|a| a.instance_id()).map(str::to_owned),
                attachment.and_then(|a| a.device()).map(str::to_owned),
            )
        }))
    }

    /// What EC2 says about one Elastic IP.
    pub async fn cloud_eip(&self, allocation_id: &str) -> Result<aws_sdk_ec2::types::Address, SetupError> {
        let out = self.ec2.describe_addresses().allocation_ids(allocation_id).send().await?;
        out.addresses().first().cloned().ok_or_else(|| format!("Elastic IP {allocation_id} not found").into())
    }

    pub fn subnet_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, host)
    }
}

/// Records "Service.Operation" for every HTTP request a client sends (retries included).
#[derive(Clone, Debug, Default)]
pub struct CallLog(Arc<Mutex<Vec<(String, std::time::Instant)>>>);

impl CallLog {
    /// The calls recorded since the last `take`.
    pub fn take(&self) -> Vec<String> {
        self.take_timed().into_iter().map(|(name, _)| name).collect()
    }

    /// The same, each with when it was sent.
    pub fn take_timed(&self) -> Vec<(String, std::time::Instant)> {
        self.0.lock().map(|mut calls| std::mem::take(&mut *calls)).unwrap_or_default()
    }
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "tether-call-log"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let name = cfg
            .load::<Metadata>()
            .map(|m| format!("{}.{}", m.service(), m.name()))
            .unwrap_or_else(|| "unknown".into());
        if let Ok(mut calls) = self.0.lock() {
            calls.push((name, std::time::Instant::now()));
        }
        Ok(())
    }
}

/// An existing ENI as the primary interface (device 0) of a launch, kept on termination.
pub fn on_eni(eni_id: &str) -> aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification {
    aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder()
        .device_index(0)
        .network_interface_id(eni_id)
        .delete_on_termination(false)
        .build()
}

/// How long the API's long actions may work before answering 202, in tests and locally.
pub const API_ACTION_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// Short retry delays: tests wait for the emulator, not for AWS.
pub fn fast_settings() -> Settings {
    Settings {
        retry_min_delay: std::time::Duration::from_millis(50),
        retry_max_delay: std::time::Duration::from_millis(400),
        deadline_margin: std::time::Duration::from_millis(200),
        ..Settings::default()
    }
}

fn uuid_fragment() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// Logs at `warn` unless `RUST_LOG` says otherwise, so the demo's own output stays readable.
pub fn init_quiet_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).compact().try_init();
}
