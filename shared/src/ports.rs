//! The narrow interfaces the domain needs from AWS. Adapters in `aws/` implement them.

use std::net::Ipv4Addr;

use async_trait::async_trait;

use crate::error::AwsError;
use crate::model::{EniRecord, Market, Node, NodeId, NodeSpec};

/// Where nodes live. Every write is conditional on the version the caller read.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Stores a new node; fails with `ErrorClass::Conflict` if the id exists.
    async fn create(&self, node: &Node) -> Result<(), AwsError>;
    /// A consistent read by id.
    async fn get(&self, id: &NodeId) -> Result<Option<Node>, AwsError>;
    /// The node whose current instance (or instance being replaced) is `instance_id`,
    /// from the instance-id index (eventually consistent: writes are conditional anyway).
    async fn find_by_instance(&self, instance_id: &str) -> Result<Option<Node>, AwsError>;
    /// Replaces the node if its stored version is still `node.version`; on success the
    /// stored (and returned) version is one higher. `ErrorClass::Conflict` otherwise.
    async fn save(&self, node: &Node) -> Result<Node, AwsError>;
}

/// What the ENI of a node is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniRequest {
    pub node_id: NodeId,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    /// `None`: EC2 picks a free address.
    pub private_ip: Option<Ipv4Addr>,
}

/// One launch attempt: one instance on the node's ENI at device index 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchRequest<'a> {
    pub node_id: &'a NodeId,
    pub generation: u64,
    pub spec: &'a NodeSpec,
    pub eni_id: &'a str,
    pub instance_type: &'a str,
    pub market: Market,
    pub client_token: String,
}

/// An instance as EC2 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSummary {
    pub id: String,
    /// EC2's state name: `pending`, `running`, `shutting-down`, `terminated`, ...
    pub state: String,
    pub instance_type: String,
    pub market: Market,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    /// The ENI at device index 0.
    pub primary_eni_id: Option<String>,
}

/// The instance a launch (or an earlier launch with the same ClientToken) started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchedInstance {
    pub id: String,
    pub instance_type: String,
    pub market: Market,
    /// Already shutting down or terminated: a repeated ClientToken returns the generation's
    /// instance whatever became of it since.
    pub gone: bool,
}


/// The EC2 calls Tether makes.
#[async_trait]
pub trait Cloud: Send + Sync {
    /// The ENI Tether created for this node earlier (found by its `tether:node-id` tag).
    async fn find_node_eni(&self, node_id: &NodeId) -> Result<Option<EniRecord>, AwsError>;
    /// Creates the node's ENI, tagged with the node id.
    async fn create_eni(&self, request: &EniRequest) -> Result<EniRecord, AwsError>;
    /// Associates the Elastic IP with the ENI's primary private IP. An EIP already on
    /// this ENI is fine; one held by anything else is an error naming the holder.
    async fn associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError>;
    /// Launches one instance (or returns the one this ClientToken launched before).
    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<LaunchedInstance, AwsError>;
    /// The instance an earlier, successful RunInstances launched with this ClientToken.
    async fn find_launched(&self, client_token: &str) -> Result<Option<LaunchedInstance>, AwsError>;
    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError>;
    /// What EC2 reports about an instance now; `None` if EC2 does not know it.
    async fn describe_instance(&self, instance_id: &str) -> Result<Option<InstanceSummary>, AwsError>;
}
