//! The EC2 adapter: the node's ENI, its Elastic IP, and instances launched on the ENI.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior, InstanceLifecycleType,
    InstanceMarketOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, MarketType,
    NetworkInterface, ResourceType, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use aws_smithy_types::retry::RetryConfig;
use aws_sdk_ec2::Client;
use aws_smithy_types::base64;

use crate::aws::aws_error;
use crate::error::{AwsError, ErrorClass};
use crate::model::{EniRecord, Market, NodeId};
use crate::ports::{Cloud, EniRequest, InstanceSummary, LaunchRequest, LaunchedInstance};

/// Tag keys Tether sets on what it creates (the deploy's IAM policy keys on `tether:managed`).
pub const TAG_NODE_ID: &str = "tether:node-id";
pub const TAG_GENERATION: &str = "tether:generation";
pub const TAG_MANAGED: &str = "tether:managed";

#[derive(Clone, Debug)]
pub struct Ec2Cloud {
    client: Client,
}

impl Ec2Cloud {
    pub fn new(client: Client) -> Self {
        Ec2Cloud { client }
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tags_for(resource: ResourceType, tags: impl IntoIterator<Item = Tag>) -> TagSpecification {
    TagSpecification::builder().resource_type(resource).set_tags(Some(tags.into_iter().collect())).build()
}

/// An answer that lacks a field EC2 always sends.
fn missing(operation: &'static str, what: &str) -> AwsError {
    AwsError {
        service: "EC2",
        operation,
        code: None,
        message: format!("response has no {what}"),
        class: ErrorClass::Transient,
    }
}

fn eni_record(operation: &'static str, eni: &NetworkInterface) -> Result<EniRecord, AwsError> {
    let private_ip = eni
        .private_ip_address()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| missing(operation, "private IPv4 address"))?;
    let field = |value: Option<&str>, what| value.map(str::to_owned).ok_or_else(|| missing(operation, what));
    Ok(EniRecord {
        id: field(eni.network_interface_id(), "network interface id")?,
        private_ip,
        mac_address: field(eni.mac_address(), "MAC address")?,
        availability_zone: field(eni.availability_zone(), "availability zone")?,
    })
}

fn market_of(instance: &Instance) -> Market {
    match instance.instance_lifecycle() {
        Some(InstanceLifecycleType::Spot) => Market::Spot,
        _ => Market::OnDemand,
    }
}

fn launched_instance(operation: &'static str, instance: &Instance) -> Result<LaunchedInstance, AwsError> {
    Ok(LaunchedInstance {
        id: instance.instance_id().ok_or_else(|| missing(operation, "instance id"))?.to_owned(),
        instance_type: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        market: market_of(instance),
        gone: matches!(
            instance.state().and_then(|s| s.name()),
            Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
        ),
    })
}

#[async_trait]
impl Cloud for Ec2Cloud {
    async fn find_node_eni(&self, node_id: &NodeId) -> Result<Option<EniRecord>, AwsError> {
        let out = self
            .client
            .describe_network_interfaces()
            .filters(Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node_id.as_str()).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeNetworkInterfaces", e))?;
        out.network_interfaces()
            .first()
            .map(|eni| eni_record("DescribeNetworkInterfaces", eni))
            .transpose()
    }

    async fn create_eni(&self, request: &EniRequest) -> Result<EniRecord, AwsError> {
        let out = self
            .client
            .create_network_interface()
            .subnet_id(&request.subnet_id)
            .set_groups(Some(request.security_group_ids.clone()).filter(|g| !g.is_empty()))
            .set_private_ip_address(request.private_ip.map(|ip| ip.to_string()))
            .description(format!("Tether node {}", request.node_id))
            // A retried create (timeout, concurrent resume) returns the same ENI, never a second one.
            .client_token(format!("{}-eni", request.node_id))
            .tag_specifications(tags_for(
                ResourceType::NetworkInterface,
                [tag(TAG_NODE_ID, request.node_id.as_str()), tag(TAG_MANAGED, "true")],
            ))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "CreateNetworkInterface", e))?;
        let eni = out.network_interface().ok_or_else(|| missing("CreateNetworkInterface", "network interface"))?;
        eni_record("CreateNetworkInterface", eni)
    }

    async fn associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError> {
        let described = self
            .client
            .describe_addresses()
            .allocation_ids(allocation_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeAddresses", e))?;
        let address = described
            .addresses()
            .first()
            .ok_or_else(|| missing("DescribeAddresses", "address for the allocation"))?;
        match address.network_interface_id() {
            Some(current) if current == eni_id => return Ok(()),
            Some(_) | None if address.association_id().is_some() => {
                let holder = address
                    .instance_id()
                    .or(address.network_interface_id())
                    .unwrap_or("another resource");
                return Err(AwsError {
                    service: "EC2",
                    operation: "AssociateAddress",
                    code: Some("Resource.AlreadyAssociated".into()),
                    message: format!(
                        "Elastic IP {allocation_id} is associated with {holder}; disassociate it or choose another"
                    ),
                    class: ErrorClass::Permanent,
                });
            }
            _ => {}
        }
        self.client
            .associate_address()
            .allocation_id(allocation_id)
            .network_interface_id(eni_id)
            .allow_reassociation(false)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "AssociateAddress", e))?;
        Ok(())
    }

    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<LaunchedInstance, AwsError> {
        let spec = request.spec;
        let mut instance_tags: Vec<Tag> = spec.tags.iter().map(|(k, v)| tag(k, v)).collect();
        instance_tags.push(tag(TAG_NODE_ID, request.node_id.as_str()));
        instance_tags.push(tag(TAG_GENERATION, &request.generation.to_string()));
        instance_tags.push(tag(TAG_MANAGED, "true"));
        let market = match request.market {
            Market::OnDemand => None,
            Market::Spot => Some(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            ),
        };
        let profile = spec.iam_instance_profile.as_deref().map(|p| {
            let builder = IamInstanceProfileSpecification::builder();
            if p.starts_with("arn:") { builder.arn(p) } else { builder.name(p) }.build()
        });
        let out = self
            .client
            .run_instances()
            .image_id(&spec.image_id)
            .instance_type(InstanceType::from(request.instance_type))
            .min_count(1)
            .max_count(1)
            .client_token(&request.client_token)
            // Subnet, security groups and private IP come from the ENI, never from here.
            .network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .network_interface_id(request.eni_id)
                    .delete_on_termination(false)
                    .build(),
            )
            .set_instance_market_options(market)
            .set_key_name(spec.key_name.clone())
            .set_iam_instance_profile(profile)
            .set_user_data(spec.user_data.as_deref().map(|u| base64::encode(u.as_bytes())))
            .tag_specifications(tags_for(ResourceType::Instance, instance_tags))
            .customize()
            // No SDK retries here: EC2 answers InsufficientInstanceCapacity with HTTP 500, which the
            // SDK would retry 3 times against the 5/2 RunInstances bucket before Tether could fall
            // back. The service retries what is worth retrying, with its own jittered backoff.
            .config_override(aws_sdk_ec2::config::Builder::default().retry_config(RetryConfig::disabled()))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "RunInstances", e))?;
        let instance = out.instances().first().ok_or_else(|| missing("RunInstances", "instance"))?;
        launched_instance("RunInstances", instance)
    }

    async fn find_launched(&self, client_token: &str) -> Result<Option<LaunchedInstance>, AwsError> {
        let out = self
            .client
            .describe_instances()
            .filters(Filter::builder().name("client-token").values(client_token).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeInstances", e))?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .map(|i| launched_instance("DescribeInstances", i))
            .transpose()
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError> {
        self.client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "TerminateInstances", e))?;
        Ok(())
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<InstanceSummary>, AwsError> {
        let out = match self.client.describe_instances().instance_ids(instance_id).send().await {
            Ok(out) => out,
            Err(e) => {
                let e = aws_error("EC2", "DescribeInstances", e);
                return if e.class == ErrorClass::NotFound { Ok(None) } else { Err(e) };
            }
        };
        let Some(instance) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
            return Ok(None);
        };
        let primary_eni_id = instance
            .network_interfaces()
            .iter()
            .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            .and_then(|n| n.network_interface_id())
            .map(str::to_owned);
        Ok(Some(InstanceSummary {
            id: instance_id.to_owned(),
            state: instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
            instance_type: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            market: market_of(instance),
            private_ip: instance.private_ip_address().map(str::to_owned),
            public_ip: instance.public_ip_address().map(str::to_owned),
            primary_eni_id,
        }))
    }
}
