//! ENI, Elastic IP and subnet calls.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Address, AttributeBooleanValue, DomainType, Filter, ResourceType, Tag};

use super::{tag_value, absent_if_unknown, eni_record, gone_is_done, missing, tag, tags_for, Ec2Cloud, TAG_DEVICE_INDEX, TAG_MANAGED, TAG_NODE_ID};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::model::{EniRecord, NodeId};
use crate::ports::{eip_not_found, not_assigned_is_done, ElasticIpInfo, EniRequest, Network, SubnetCidr, SubnetInfo, SubnetReservation, Tagged};

fn eip_info(address: &Address) -> Option<ElasticIpInfo> {
    Some(ElasticIpInfo {
        allocation_id: address.allocation_id()?.to_owned(),
        public_ip: address.public_ip()?.to_owned(),
        network_interface_id: address.network_interface_id().map(str::to_owned),
        association_id: address.association_id().map(str::to_owned),
        instance_id: address.instance_id().filter(|i| !i.is_empty()).map(str::to_owned),
    })
}

impl Ec2Cloud {
    async fn addresses(&self, filter: Filter) -> Result<Vec<ElasticIpInfo>, AwsError> {
        let out = self
            .client
            .describe_addresses()
            .filters(filter)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeAddresses", e))?;
        Ok(out.addresses().iter().filter_map(eip_info).collect())
    }
}

#[async_trait]
impl Network for Ec2Cloud {
    async fn node_enis(&self) -> Result<Vec<Tagged<EniRecord>>, AwsError> {
        let mut pages = self
            .client
            .describe_network_interfaces()
            .filters(Filter::builder().name("tag-key").values(TAG_NODE_ID).build())
            // Filtered and paged: the larger of EC2's two buckets for this action.
            .max_results(super::PAGE_SIZE)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("EC2", "DescribeNetworkInterfaces", e))?;
            for eni in page.network_interfaces() {
                let Some(node_id) = tag_value(eni.tag_set(), TAG_NODE_ID).and_then(NodeId::parse) else { continue };
                let attached = eni.attachment().and_then(|a| a.instance_id()).is_some();
                let device_index = device_index_of(eni);
                found.push(Tagged { node_id, generation: None, device_index, attached, resource: eni_record("DescribeNetworkInterfaces", eni)? });
            }
        }
        Ok(found)
    }

    async fn node_eips(&self) -> Result<Vec<Tagged<ElasticIpInfo>>, AwsError> {
        let out = self
            .client
            .describe_addresses()
            .filters(Filter::builder().name("tag-key").values(TAG_NODE_ID).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeAddresses", e))?;
        Ok(out
            .addresses()
            .iter()
            .filter_map(|a| {
                let node_id = tag_value(a.tags(), TAG_NODE_ID).and_then(NodeId::parse)?;
                Some(Tagged { node_id, generation: None, device_index: None, attached: a.association_id().is_some(), resource: eip_info(a)? })
            })
            .collect())
    }

    async fn elastic_ips(&self) -> Result<Vec<ElasticIpInfo>, AwsError> {
        // DescribeAddresses does not page: one call answers for the whole Region.
        let out = self.client.describe_addresses().send().await.map_err(|e| aws_error("EC2", "DescribeAddresses", e))?;
        Ok(out.addresses().iter().filter_map(eip_info).collect())
    }

    async fn find_node_eni(&self, node_id: &NodeId) -> Result<Option<EniRecord>, AwsError> {
        // The node's extra ENIs carry its id too: the primary is the one without an index.
        let enis = self.enis_of(node_id, None).await?;
        enis.iter().find(|eni| device_index_of(eni).is_none()).map(|eni| eni_record("DescribeNetworkInterfaces", eni)).transpose()
    }

    async fn find_extra_eni(&self, node_id: &NodeId, device_index: u8) -> Result<Option<EniRecord>, AwsError> {
        let enis = self.enis_of(node_id, Some(device_index)).await?;
        enis.first().map(|eni| eni_record("DescribeNetworkInterfaces", eni)).transpose()
    }

    async fn create_eni(&self, request: &EniRequest) -> Result<EniRecord, AwsError> {
        let out = self
            .client
            .create_network_interface()
            .subnet_id(&request.subnet_id)
            .set_groups(Some(request.security_group_ids.clone()).filter(|g| !g.is_empty()))
            .set_private_ip_address(request.private_ip.map(|ip| ip.to_string()))
            .set_secondary_private_ip_address_count(Some(i32::from(request.secondary_ip_count)).filter(|n| *n > 0))
            .set_ipv6_address_count(Some(i32::from(request.ipv6_count)).filter(|n| *n > 0))
            .description(match request.device_index {
                0 => format!("Tether node {}", request.node_id),
                index => format!("Tether node {} (device index {index})", request.node_id),
            })
            // A retried create (timeout, concurrent resume) returns the same ENI, never a second one.
            .client_token(request.client_token())
            .tag_specifications(tags_for(
                ResourceType::NetworkInterface,
                request
                    .tags
                    .iter()
                    .map(|(k, v)| tag(k, v))
                    .chain([tag(TAG_NODE_ID, request.node_id.as_str()), tag(TAG_MANAGED, "true")])
                    .chain((request.device_index > 0).then(|| tag(TAG_DEVICE_INDEX, &request.device_index.to_string()))),
            ))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "CreateNetworkInterface", e))?;
        let eni = out.network_interface().ok_or_else(|| missing("CreateNetworkInterface", "network interface"))?;
        eni_record("CreateNetworkInterface", eni)
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), AwsError> {
        let deleted = self
            .client
            .delete_network_interface()
            .network_interface_id(eni_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error("EC2", "DeleteNetworkInterface", e));
        gone_is_done(deleted)
    }

    async fn associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<String, AwsError> {
        let address = self.describe_eip(allocation_id).await?.ok_or_else(|| eip_not_found(allocation_id))?;
        if !address.needs_association(eni_id)? {
            return Ok(address.public_ip);
        }
        self.client
            .associate_address()
            .allocation_id(allocation_id)
            .network_interface_id(eni_id)
            .allow_reassociation(false)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "AssociateAddress", e))?;
        Ok(address.public_ip)
    }

    async fn allocate_eip(&self, node_id: &NodeId) -> Result<(String, String), AwsError> {
        let tagged = Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node_id.as_str()).build();
        if let Some(earlier) = self.addresses(tagged).await?.into_iter().next() {
            return Ok((earlier.allocation_id, earlier.public_ip));
        }
        let out = self
            .client
            .allocate_address()
            .domain(DomainType::Vpc)
            .tag_specifications(tags_for(
                ResourceType::ElasticIp,
                [tag(TAG_NODE_ID, node_id.as_str()), tag(TAG_MANAGED, "true")],
            ))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "AllocateAddress", e))?;
        Ok((
            out.allocation_id().ok_or_else(|| missing("AllocateAddress", "allocation id"))?.to_owned(),
            out.public_ip().ok_or_else(|| missing("AllocateAddress", "public IP"))?.to_owned(),
        ))
    }

    async fn disassociate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError> {
        let on_this_eni = self.describe_eip(allocation_id).await?.filter(|a| a.network_interface_id.as_deref() == Some(eni_id));
        let Some(association_id) = on_this_eni.and_then(|a| a.association_id) else {
            return Ok(());
        };
        let disassociated = self
            .client
            .disassociate_address()
            .association_id(association_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error("EC2", "DisassociateAddress", e));
        gone_is_done(disassociated)
    }

    async fn release_eip(&self, allocation_id: &str) -> Result<(), AwsError> {
        let released = self
            .client
            .release_address()
            .allocation_id(allocation_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error("EC2", "ReleaseAddress", e));
        gone_is_done(released)
    }

    async fn describe_eip(&self, allocation_id: &str) -> Result<Option<ElasticIpInfo>, AwsError> {
        let described = self
            .client
            .describe_addresses()
            .allocation_ids(allocation_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeAddresses", e));
        Ok(absent_if_unknown(described)?.and_then(|out| out.addresses().first().and_then(eip_info)))
    }

    async fn eip_on_eni(&self, eni_id: &str) -> Result<Option<ElasticIpInfo>, AwsError> {
        let filter = Filter::builder().name("network-interface-id").values(eni_id).build();
        Ok(self.addresses(filter).await?.into_iter().next())
    }

    async fn describe_subnet(&self, subnet_id: &str) -> Result<Option<SubnetInfo>, AwsError> {
        let described = self
            .client
            .describe_subnets()
            .subnet_ids(subnet_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeSubnets", e));
        let Some(out) = absent_if_unknown(described)? else { return Ok(None) };
        let Some(subnet) = out.subnets().first() else { return Ok(None) };
        let cidr = subnet
            .cidr_block()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| missing("DescribeSubnets", "IPv4 CIDR block"))?;
        Ok(Some(SubnetInfo {
            cidr,
            ipv6_cidrs: subnet
                .ipv6_cidr_block_association_set()
                .iter()
                // Blocks on their way out (or that failed) are not the subnet's.
                .filter(|a| !matches!(a.ipv6_cidr_block_state().and_then(|s| s.state()).map(|s| s.as_str()), Some("disassociating" | "disassociated" | "failing" | "failed")))
                .filter_map(|a| a.ipv6_cidr_block()?.parse().ok())
                .collect(),
            map_public_ip_on_launch: subnet.map_public_ip_on_launch().unwrap_or(false),
            availability_zone: subnet.availability_zone().ok_or_else(|| missing("DescribeSubnets", "availability zone"))?.to_owned(),
            vpc_id: subnet.vpc_id().unwrap_or_default().to_owned(),
        }))
    }

    async fn private_ip_in_use(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<bool, AwsError> {
        let out = self
            .client
            .describe_network_interfaces()
            .filters(Filter::builder().name("subnet-id").values(subnet_id).build())
            .filters(Filter::builder().name("addresses.private-ip-address").values(ip.to_string()).build())
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeNetworkInterfaces", e))?;
        Ok(!out.network_interfaces().is_empty())
    }

    async fn reserve_in_subnet(&self, subnet_id: &str, ip: Ipv4Addr, owner: &str, at: chrono::DateTime<chrono::Utc>) -> Result<SubnetReservation, AwsError> {
        self.create_subnet_reservation(subnet_id, ip, owner, at).await
    }

    async fn unreserve_in_subnet(&self, reservation_id: &str) -> Result<(), AwsError> {
        self.delete_subnet_reservation(reservation_id).await
    }

    async fn subnet_reservations(&self, subnet_id: &str) -> Result<Vec<SubnetCidr>, AwsError> {
        self.list_subnet_reservations(subnet_id).await
    }

    async fn assign_private_ips(&self, eni_id: &str, addresses: &[Ipv4Addr], count: u8) -> Result<EniRecord, AwsError> {
        self.client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(addresses.iter().map(Ipv4Addr::to_string).collect()).filter(|a: &Vec<_>| !a.is_empty()))
            .set_secondary_private_ip_address_count(Some(i32::from(count)).filter(|n| *n > 0))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "AssignPrivateIpAddresses", e))?;
        self.eni(eni_id).await
    }

    async fn unassign_private_ips(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), AwsError> {
        let unassigned = self
            .client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(addresses.iter().map(Ipv4Addr::to_string).collect()))
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("EC2", "UnassignPrivateIpAddresses", e));
        not_assigned_is_done(unassigned)
    }

    async fn assign_ipv6(&self, eni_id: &str, addresses: &[std::net::Ipv6Addr], count: u8) -> Result<EniRecord, AwsError> {
        self.client
            .assign_ipv6_addresses()
            .network_interface_id(eni_id)
            .set_ipv6_addresses(Some(addresses.iter().map(ToString::to_string).collect()).filter(|a: &Vec<_>| !a.is_empty()))
            .set_ipv6_address_count(Some(i32::from(count)).filter(|n| *n > 0))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "AssignIpv6Addresses", e))?;
        self.eni(eni_id).await
    }

    async fn unassign_ipv6(&self, eni_id: &str, addresses: &[std::net::Ipv6Addr]) -> Result<(), AwsError> {
        let unassigned = self
            .client
            .unassign_ipv6_addresses()
            .network_interface_id(eni_id)
            .set_ipv6_addresses(Some(addresses.iter().map(ToString::to_string).collect()))
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("EC2", "UnassignIpv6Addresses", e));
        not_assigned_is_done(unassigned)
    }

    async fn set_public_ip(&self, eni_id: &str, assign: bool) -> Result<(), AwsError> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .associate_public_ip_address(assign)
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("EC2", "ModifyNetworkInterfaceAttribute", e))
    }

    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), AwsError> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .set_groups(Some(groups.to_vec()))
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("EC2", "ModifyNetworkInterfaceAttribute", e))
    }

    async fn set_source_dest_check(&self, eni_id: &str, enabled: bool) -> Result<(), AwsError> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .source_dest_check(AttributeBooleanValue::builder().value(enabled).build())
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("EC2", "ModifyNetworkInterfaceAttribute", e))
    }

    async fn retag_eni(&self, eni_id: &str, tags: &BTreeMap<String, String>, removed: &[String]) -> Result<(), AwsError> {
        if !tags.is_empty() {
            self.client
                .create_tags()
                .resources(eni_id)
                .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
                .send()
                .await
                .map_err(|e| aws_error("EC2", "CreateTags", e))?;
        }
        let removed: Vec<_> = removed.iter().filter(|k| !k.starts_with("tether:")).map(|k| Tag::builder().key(k).build()).collect();
        if !removed.is_empty() {
            self.client
                .delete_tags()
                .resources(eni_id)
                .set_tags(Some(removed))
                .send()
                .await
                .map_err(|e| aws_error("EC2", "DeleteTags", e))?;
        }
        Ok(())
    }
}

/// An extra ENI's `tether:device-index` tag; `None` for a primary ENI (or an unreadable tag).
fn device_index_of(eni: &aws_sdk_ec2::types::NetworkInterface) -> Option<u8> {
    tag_value(eni.tag_set(), TAG_DEVICE_INDEX).and_then(|i| i.parse().ok()).filter(|i| *i > 0)
}

impl Ec2Cloud {
    /// The ENIs tagged with the node's id (and with `device_index`, when given).
    async fn enis_of(&self, node_id: &NodeId, device_index: Option<u8>) -> Result<Vec<aws_sdk_ec2::types::NetworkInterface>, AwsError> {
        let mut filters = vec![Filter::builder().name(format!("tag:{TAG_NODE_ID}")).values(node_id.as_str()).build()];
        filters.extend(device_index.map(|i| Filter::builder().name(format!("tag:{TAG_DEVICE_INDEX}")).values(i.to_string()).build()));
        let out = self
            .client
            .describe_network_interfaces()
            .set_filters(Some(filters))
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeNetworkInterfaces", e))?;
        Ok(out.network_interfaces().to_vec())
    }

    /// One ENI as EC2 describes it now.
    async fn eni(&self, eni_id: &str) -> Result<EniRecord, AwsError> {
        let out = self
            .client
            .describe_network_interfaces()
            .network_interface_ids(eni_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeNetworkInterfaces", e))?;
        let eni = out.network_interfaces().first().ok_or_else(|| missing("DescribeNetworkInterfaces", "network interface"))?;
        eni_record("DescribeNetworkInterfaces", eni)
    }
}
