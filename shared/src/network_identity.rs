//! The network identity a node keeps for life beyond its primary private IP: secondary
//! private IPs and IPv6 addresses on its ENI, extra ENIs at device indexes 1 and up, the
//! source/destination check, and whether its instance gets a public IP. Everything here
//! lives on the kept ENIs, so a replacement finds it as it was; a PATCH changes it in place.

use std::net::{Ipv4Addr, Ipv6Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most secondary private IPs (or IPv6 addresses) a spec may ask for on one ENI: the
/// largest instance types allow 49 secondary addresses per ENI (50 in all); the instance
/// type decides the real limit, and EC2 refuses beyond it (`PrivateIpAddressLimitExceeded`).
pub const MAX_EXTRA_ADDRESSES: u8 = 49;

/// The most extra ENIs a spec may ask for (device indexes 1 to 14: 15 ENIs in all is the
/// most any instance type allows; each type's own limit is checked against EC2's figures).
pub const MAX_EXTRA_ENIS: usize = 14;

/// Addresses on an ENI beyond its primary one: how many (EC2 picks them in the subnet) or
/// which. Whichever is given, the addresses EC2 assigned are recorded on the node and kept
/// for its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, bound(deserialize = "A: Deserialize<'de>"))]
pub struct AddressRequest<A> {
    /// How many; EC2 picks free addresses.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::views::count::some_small")]
    #[schemars(range(min = 1, max = 49))]
    pub count: Option<u8>,
    /// Exactly these (in the ENI's subnet, free).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<A>,
}

impl<A> AddressRequest<A> {
    /// How many addresses it asks for.
    pub fn wanted(&self) -> usize {
        self.count.map(usize::from).unwrap_or(self.addresses.len())
    }
}

pub type SecondaryIps = AddressRequest<Ipv4Addr>;
pub type Ipv6Request = AddressRequest<Ipv6Addr>;

/// Whether the node's instance gets a public IPv4 address (not kept: a new one with each
/// instance; a public IP that must not change is an Elastic IP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublicIpAssignment {
    /// No public IP (the default, as before this setting existed). With an Elastic IP the
    /// node has that public address.
    #[default]
    None,
    /// A public IP from Amazon's pool on the primary ENI.
    Assign,
    /// As the subnet's "auto-assign public IPv4 address" setting says, read when the ENI is made.
    SubnetDefault,
}

/// An ENI beyond the primary, at `device_index`, created at the first resume and kept for
/// the node's life like the primary (its private IP and MAC never change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtraEni {
    /// 1 to 14, unique in the node.
    #[serde(deserialize_with = "crate::views::count::small")]
    #[schemars(range(min = 1, max = 14))]
    pub device_index: u8,
    /// A subnet in the primary subnet's Availability Zone (an instance and its ENIs are in one AZ).
    pub subnet_id: String,
    /// Empty: the VPC's default security group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// `None`: EC2 picks a free address in the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    /// An Elastic IP of yours kept on this ENI (disassociated, never released, at deallocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_allocation_id: Option<String>,
}

/// A kept ENI beyond the primary, as created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraEniRecord {
    pub device_index: u8,
    pub id: String,
    pub subnet_id: String,
    pub private_ip: Ipv4Addr,
    pub mac_address: String,
}
