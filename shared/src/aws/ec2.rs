//! The EC2 adapter: the node's ENI and Elastic IP (`network`), the instances launched on
//! the ENI (`instances`), and its data volumes (`volumes`).

mod images;
mod import;
mod instances;
mod network;
mod status;
mod subnet_reservations;
mod templates;
mod volumes;

pub use volumes::{TAG_DEVICE_NAME, TAG_VOLUME_ID};

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::{Instance, InstanceLifecycleType, NetworkInterface, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;

use crate::error::{AwsError, ErrorClass};
use crate::model::{EniRecord, Market};

/// Tag keys Tether sets on what it creates (the deploy's IAM policy keys on `tether:managed`).
/// The largest page DescribeInstances and DescribeNetworkInterfaces give.
pub(crate) const PAGE_SIZE: i32 = 1000;

pub const TAG_NODE_ID: &str = "tether:node-id";
pub const TAG_GENERATION: &str = "tether:generation";
pub const TAG_MANAGED: &str = "tether:managed";
/// On a node's extra ENI: its device index (1 and up); the primary ENI has none.
pub const TAG_DEVICE_INDEX: &str = "tether:device-index";

#[derive(Clone, Debug)]
pub struct Ec2Cloud {
    client: Client,
    /// The deployment's table name: what its subnet CIDR reservations are described with.
    deployment: String,
}

impl Ec2Cloud {
    pub fn new(client: Client, deployment: impl Into<String>) -> Self {
        Ec2Cloud { client, deployment: deployment.into() }
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tags_for(resource: ResourceType, tags: impl IntoIterator<Item = Tag>) -> TagSpecification {
    TagSpecification::builder().resource_type(resource).set_tags(Some(tags.into_iter().collect())).build()
}

/// The value of tag `key`, if the resource has it.
fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
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

/// A lookup's answer: `None` when EC2 says the thing does not exist, or that its id cannot
/// be one (`*.Malformed`), rather than an error.
fn absent_if_unknown<T>(result: Result<T, AwsError>) -> Result<Option<T>, AwsError> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(e) if e.class == ErrorClass::NotFound || e.code.as_deref().is_some_and(|c| c.ends_with(".Malformed")) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Treats "it is already gone" as done, for deletes that must be idempotent.
fn gone_is_done(result: Result<(), AwsError>) -> Result<(), AwsError> {
    absent_if_unknown(result).map(drop)
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
        secondary_private_ips: eni
            .private_ip_addresses()
            .iter()
            .filter(|a| a.primary() != Some(true))
            .filter_map(|a| a.private_ip_address()?.parse().ok())
            .collect(),
        ipv6_addresses: eni.ipv6_addresses().iter().filter_map(|a| a.ipv6_address()?.parse().ok()).collect(),
    })
}

fn market_of(instance: &Instance) -> Market {
    match instance.instance_lifecycle() {
        Some(InstanceLifecycleType::Spot) => Market::Spot,
        _ => Market::OnDemand,
    }
}
