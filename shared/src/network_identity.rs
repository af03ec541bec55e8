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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExtraEniRecord {
    pub device_index: u8,
    pub id: String,
    pub subnet_id: String,
    pub private_ip: Ipv4Addr,
    pub mac_address: String,
}

/// What an ENI's addresses must change to match what the spec asks: addresses to assign
/// (named), how many more EC2 is to pick, and addresses to unassign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressChanges<A> {
    pub assign: Vec<A>,
    pub assign_count: u8,
    pub unassign: Vec<A>,
}

impl<A> AddressChanges<A> {
    pub fn is_empty(&self) -> bool {
        self.assign.is_empty() && self.assign_count == 0 && self.unassign.is_empty()
    }
}

/// The changes that take `on_eni` (the ENI's addresses beyond the primary, oldest first) to
/// `wanted`. Absent (or `{}`): none. A count keeps the addresses the ENI has, adding or
/// removing the newest; explicit addresses are exactly those.
pub fn address_changes<A: Copy + PartialEq>(wanted: Option<&AddressRequest<A>>, on_eni: &[A]) -> AddressChanges<A> {
    let mut changes = AddressChanges { assign: Vec::new(), assign_count: 0, unassign: Vec::new() };
    match wanted.and_then(|w| w.count.map(usize::from)) {
        Some(count) => {
            changes.assign_count = u8::try_from(count.saturating_sub(on_eni.len())).unwrap_or(u8::MAX);
            changes.unassign = on_eni.iter().skip(count).copied().collect();
        }
        None => {
            let listed: &[A] = wanted.map(|w| w.addresses.as_slice()).unwrap_or_default();
            changes.assign = listed.iter().filter(|a| !on_eni.contains(a)).copied().collect();
            changes.unassign = on_eni.iter().filter(|a| !listed.contains(a)).copied().collect();
        }
    }
    changes
}

/// What EC2 would refuse in an address request, before anything is sent: a count and
/// addresses together, too many, the same address twice, one that `check` refuses (outside
/// the subnet, reserved). The error is (field relative to the request, reason).
pub fn check_address_request<A: Copy + PartialEq + std::fmt::Display>(
    request: &AddressRequest<A>,
    check: impl Fn(A) -> Result<(), String>,
) -> Result<(), (String, String)> {
    if request.count.is_some() && !request.addresses.is_empty() {
        return Err(("count".into(), "give count (EC2 picks the addresses) or addresses, not both".into()));
    }
    if request.wanted() > usize::from(MAX_EXTRA_ADDRESSES) {
        let field = if request.count.is_some() { "count" } else { "addresses" };
        return Err((field.into(), format!("at most {MAX_EXTRA_ADDRESSES} per ENI (the largest instance types' limit; smaller types allow fewer)")));
    }
    for (i, address) in request.addresses.iter().enumerate() {
        if request.addresses[..i].contains(address) {
            return Err((format!("addresses[{i}]"), format!("{address} is listed twice")));
        }
        check(*address).map_err(|reason| (format!("addresses[{i}]"), reason))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|ip| ip.parse().expect("ip")).collect()
    }

    #[test]
    fn a_count_keeps_the_addresses_it_has_and_adds_or_drops_the_newest() {
        let on_eni = ips(&["10.0.1.20", "10.0.1.21", "10.0.1.22"]);
        let two = SecondaryIps { count: Some(2), addresses: Vec::new() };
        assert_eq!(address_changes(Some(&two), &on_eni), AddressChanges { assign: vec![], assign_count: 0, unassign: ips(&["10.0.1.22"]) });
        let five = SecondaryIps { count: Some(5), addresses: Vec::new() };
        assert_eq!(address_changes(Some(&five), &on_eni), AddressChanges { assign: vec![], assign_count: 2, unassign: vec![] });
        assert!(address_changes(Some(&SecondaryIps { count: Some(3), addresses: Vec::new() }), &on_eni).is_empty());
    }

    #[test]
    fn explicit_addresses_are_exactly_those_and_absent_is_none() {
        let on_eni = ips(&["10.0.1.20", "10.0.1.21"]);
        let wanted = SecondaryIps { count: None, addresses: ips(&["10.0.1.21", "10.0.1.30"]) };
        assert_eq!(address_changes(Some(&wanted), &on_eni), AddressChanges { assign: ips(&["10.0.1.30"]), assign_count: 0, unassign: ips(&["10.0.1.20"]) });
        assert_eq!(address_changes(None, &on_eni).unassign, on_eni);
        assert!(address_changes::<Ipv4Addr>(None, &[]).is_empty());
    }

    #[test]
    fn requests_ec2_would_refuse_are_refused_naming_the_field() {
        let ok = |_: Ipv4Addr| Ok(());
        let both = SecondaryIps { count: Some(1), addresses: ips(&["10.0.1.20"]) };
        assert_eq!(check_address_request(&both, ok).map_err(|e| e.0), Err("count".to_owned()));
        let many = SecondaryIps { count: Some(50), addresses: Vec::new() };
        assert_eq!(check_address_request(&many, ok).map_err(|e| e.0), Err("count".to_owned()));
        let twice = SecondaryIps { count: None, addresses: ips(&["10.0.1.20", "10.0.1.20"]) };
        assert_eq!(check_address_request(&twice, ok).map_err(|e| e.0), Err("addresses[1]".to_owned()));
        let outside = SecondaryIps { count: None, addresses: ips(&["10.0.1.20", "10.9.0.1"]) };
        let in_subnet = |ip: Ipv4Addr| if ip.octets()[1] == 0 { Ok(()) } else { Err(format!("{ip} is outside")) };
        assert_eq!(check_address_request(&outside, in_subnet), Err(("addresses[1]".to_owned(), "10.9.0.1 is outside".to_owned())));
    }
}
