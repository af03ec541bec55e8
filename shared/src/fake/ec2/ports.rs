//! `Network` and `Instances` on the fake: each port method makes the same EC2 calls, in the
//! same order, as the AWS adapter.

use super::*;

#[async_trait]
impl Network for FakeEc2 {
    async fn node_enis(&self) -> Result<Vec<Tagged<EniRecord>>, AwsError> {
        let found: Vec<_> = self.call("DescribeNetworkInterfaces", |s| {
            Ok(s.enis
                .values()
                .filter_map(|e| {
                    let node_id = e.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
                    Some(Tagged { node_id, generation: None, device_index: e.device_index(), attached: e.attachment.is_some(), resource: e.record() })
                })
                .collect())
        }).await?;
        self.further_pages("DescribeNetworkInterfaces", found.len()).await?;
        Ok(found)
    }

    async fn elastic_ips(&self) -> Result<Vec<ElasticIpInfo>, AwsError> {
        self.call("DescribeAddresses", |s| Ok(s.eips.iter().map(|(id, e)| s.eip_info(id, e)).collect())).await
    }

    async fn node_eips(&self) -> Result<Vec<Tagged<ElasticIpInfo>>, AwsError> {
        self.call("DescribeAddresses", |s| {
            Ok(s.eips
                .iter()
                .filter_map(|(id, e)| {
                    let node_id = e.tags.get(TAG_NODE_ID).and_then(|t| NodeId::parse(t))?;
                    Some(Tagged { node_id, generation: None, device_index: None, attached: e.association_id.is_some(), resource: s.eip_info(id, e) })
                })
                .collect())
        }).await
    }

    async fn find_node_eni(&self, node_id: &NodeId) -> Result<Option<EniRecord>, AwsError> {
        self.call("DescribeNetworkInterfaces", |s| {
            Ok(s.enis.values().find(|e| e.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str()) && e.device_index().is_none()).map(Eni::record))
        }).await
    }

    async fn find_extra_eni(&self, node_id: &NodeId, device_index: u8) -> Result<Option<EniRecord>, AwsError> {
        self.call("DescribeNetworkInterfaces", |s| {
            Ok(s.enis.values().find(|e| e.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str()) && e.device_index() == Some(device_index)).map(Eni::record))
        }).await
    }

    async fn create_eni(&self, request: &EniRequest) -> Result<EniRecord, AwsError> {
        self.call("CreateNetworkInterface", |s| s.create_network_interface(request)).await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<(), AwsError> {
        gone_is_done(self.call("DeleteNetworkInterface", |s| s.delete_network_interface(eni_id)).await)
    }

    async fn associate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<String, AwsError> {
        let address = self.describe_eip(allocation_id).await?.ok_or_else(|| eip_not_found(allocation_id))?;
        if !address.needs_association(eni_id)? {
            return Ok(address.public_ip);
        }
        self.call("AssociateAddress", |s| s.associate_address(allocation_id, eni_id, false)).await?;
        Ok(address.public_ip)
    }

    async fn allocate_eip(&self, node_id: &NodeId) -> Result<(String, String), AwsError> {
        let earlier = self.call("DescribeAddresses", |s| {
            Ok(s.eips
                .iter()
                .find(|(_, e)| e.tags.get(TAG_NODE_ID).map(String::as_str) == Some(node_id.as_str()))
                .map(|(id, e)| (id.clone(), e.public_ip.clone())))
        }).await?;
        if let Some(earlier) = earlier {
            return Ok(earlier);
        }
        self.call("AllocateAddress", |s| s.allocate_address(Some(node_id))).await
    }

    async fn disassociate_eip(&self, allocation_id: &str, eni_id: &str) -> Result<(), AwsError> {
        let on_this_eni = self.describe_eip(allocation_id).await?.filter(|a| a.network_interface_id.as_deref() == Some(eni_id));
        let Some(association_id) = on_this_eni.and_then(|a| a.association_id) else { return Ok(()) };
        gone_is_done(self.call("DisassociateAddress", |s| s.disassociate_address(&association_id)).await)
    }

    async fn release_eip(&self, allocation_id: &str) -> Result<(), AwsError> {
        gone_is_done(self.call("ReleaseAddress", |s| s.release_address(allocation_id)).await)
    }

    async fn describe_eip(&self, allocation_id: &str) -> Result<Option<ElasticIpInfo>, AwsError> {
        absent_if_unknown(self.call("DescribeAddresses", |s| s.describe_address(allocation_id)).await)
    }

    async fn eip_on_eni(&self, eni_id: &str) -> Result<Option<ElasticIpInfo>, AwsError> {
        self.call("DescribeAddresses", |s| Ok(s.eip_on(eni_id).map(|(id, e)| s.eip_info(id, e)))).await
    }

    async fn describe_subnet(&self, subnet_id: &str) -> Result<Option<SubnetInfo>, AwsError> {
        absent_if_unknown(self.call("DescribeSubnets", |s| s.describe_subnet(subnet_id)).await)
    }

    async fn assign_private_ips(&self, eni_id: &str, addresses: &[Ipv4Addr], count: u8) -> Result<EniRecord, AwsError> {
        self.call("AssignPrivateIpAddresses", |s| s.assign_private_ip_addresses(eni_id, addresses, count)).await
    }

    async fn unassign_private_ips(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), AwsError> {
        not_assigned_is_done(self.call("UnassignPrivateIpAddresses", |s| s.unassign_private_ip_addresses(eni_id, addresses)).await)
    }

    async fn assign_ipv6(&self, eni_id: &str, addresses: &[std::net::Ipv6Addr], count: u8) -> Result<EniRecord, AwsError> {
        self.call("AssignIpv6Addresses", |s| s.assign_ipv6_addresses(eni_id, addresses, count)).await
    }

    async fn unassign_ipv6(&self, eni_id: &str, addresses: &[std::net::Ipv6Addr]) -> Result<(), AwsError> {
        not_assigned_is_done(self.call("UnassignIpv6Addresses", |s| s.unassign_ipv6_addresses(eni_id, addresses)).await)
    }

    async fn set_public_ip(&self, eni_id: &str, assign: bool) -> Result<(), AwsError> {
        self.call("ModifyNetworkInterfaceAttribute", |s| {
            let eni = s.enis.get_mut(eni_id).ok_or_else(|| not_found_eni("ModifyNetworkInterfaceAttribute", eni_id))?;
            eni.public_ip = assign;
            Ok(())
        }).await
    }

    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), AwsError> {
        self.call("ModifyNetworkInterfaceAttribute", |s| {
            let eni = s.enis.get_mut(eni_id).ok_or_else(|| not_found_eni("ModifyNetworkInterfaceAttribute", eni_id))?;
            eni.security_groups = groups.to_vec();
            Ok(())
        }).await
    }

    async fn set_source_dest_check(&self, eni_id: &str, enabled: bool) -> Result<(), AwsError> {
        self.call("ModifyNetworkInterfaceAttribute", |s| {
            let eni = s.enis.get_mut(eni_id).ok_or_else(|| not_found_eni("ModifyNetworkInterfaceAttribute", eni_id))?;
            eni.source_dest_check = enabled;
            Ok(())
        }).await
    }

    async fn retag_eni(&self, eni_id: &str, tags: &BTreeMap<String, String>, removed: &[String]) -> Result<(), AwsError> {
        self.call("CreateTags", |s| {
            let eni = s.enis.get_mut(eni_id).ok_or_else(|| not_found_eni("CreateTags", eni_id))?;
            eni.tags.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
            eni.tags.retain(|k, _| k.starts_with("tether:") || !removed.contains(k));
            Ok(())
        }).await
    }

    async fn private_ip_in_use(&self, subnet_id: &str, ip: Ipv4Addr) -> Result<bool, AwsError> {
        self.call("DescribeNetworkInterfaces", |s| Ok(s.ip_taken(subnet_id, ip))).await
    }

    async fn reserve_in_subnet(&self, subnet_id: &str, ip: Ipv4Addr, owner: &str, at: chrono::DateTime<chrono::Utc>) -> Result<SubnetReservation, AwsError> {
        let range = Ipv4Net::from(ip);
        match self.call("CreateSubnetCidrReservation", |s| s.create_subnet_cidr_reservation(subnet_id, range, tether_description(FAKE_DEPLOYMENT, ip, owner, at))).await {
            Ok(id) => Ok(SubnetReservation { id, tethers: true }),
            // As the adapter: the reservation that covers it already is looked up; Tether's
            // own by its description.
            Err(e) if e.code_is("InvalidParameterValue") && e.message.contains("overlap") => {
                let covering = Network::subnet_reservations(self, subnet_id).await?.into_iter().find(|r| r.cidr.contains(&ip));
                covering.map(|r| SubnetReservation { id: r.id, tethers: r.tethers }).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn unreserve_in_subnet(&self, reservation_id: &str) -> Result<(), AwsError> {
        let deleted = self.call("DeleteSubnetCidrReservation", |s| s.delete_subnet_cidr_reservation(reservation_id)).await;
        absent_if_unknown(deleted).map(drop)
    }

    async fn subnet_reservations(&self, subnet_id: &str) -> Result<Vec<SubnetCidr>, AwsError> {
        self.call("GetSubnetCidrReservations", |s| {
            Ok(s.subnet_reservations
                .iter()
                .filter(|(_, (subnet, _, _))| subnet == subnet_id)
                .map(|(id, (_, cidr, description))| {
                    let tethers = described_by(FAKE_DEPLOYMENT, description);
                    SubnetCidr { id: id.clone(), cidr: *cidr, tethers, made_at: Some(description.as_str()).filter(|_| tethers).and_then(crate::ports::made_at) }
                })
                .collect())
        }).await
    }
}

#[async_trait]
impl Instances for FakeEc2 {
    async fn instance_on_eni(&self, eni_id: &str) -> Result<Option<Tagged<InstanceSummary>>, AwsError> {
        // As the adapter: the ENI's attachment, then that instance.
        let holder = absent_if_unknown(self.call("DescribeNetworkInterfaces", |s| {
            let eni = s.enis.get(eni_id).ok_or_else(|| not_found_eni("DescribeNetworkInterfaces", eni_id))?;
            Ok(eni.attachment.as_ref().map(|a| a.instance_id.clone()))
        }).await)?
        .flatten();
        let Some(holder) = holder else { return Ok(None) };
        self.call("DescribeInstances", |s| Ok(s.tagged(&holder))).await
    }

    async fn node_instances(&self) -> Result<Vec<Tagged<InstanceSummary>>, AwsError> {
        let found: Vec<_> = self.call("DescribeInstances", |s| {
            // As the adapter: pending, running, stopping and stopped.
            let live = s.instances.iter().filter(|(_, i)| i.life.can_terminate());
            Ok(live.filter_map(|(id, _)| s.tagged(id)).collect())
        }).await?;
        self.further_pages("DescribeInstances", found.len()).await?;
        Ok(found)
    }

    async fn impaired_instances(&self) -> Result<HashMap<String, crate::health::Impaired>, AwsError> {
        // As the adapter: one filtered call per check (running instances only).
        let mut found: HashMap<String, crate::health::Impaired> = HashMap::new();
        for check in ["instance status", "system status"] {
            let impaired: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> = self.call("DescribeInstanceStatus", |s| {
                Ok(s.impaired.iter().filter(|((_, c), _)| c == check).filter(|((id, _), _)| s.instances.get(id).is_some_and(|i| i.life == Life::Running)).map(|((id, _), since)| (id.clone(), *since)).collect())
            }).await?;
            for (id, since) in impaired {
                found
                    .entry(id)
                    .and_modify(|i| {
                        i.checks = format!("{} and {check}", i.checks);
                        i.since = i.since.min(since).or(i.since).or(since);
                    })
                    .or_insert(crate::health::Impaired { checks: check.to_owned(), since });
            }
        }
        Ok(found)
    }

    async fn launch(&self, request: &LaunchRequest<'_>) -> Result<LaunchedInstance, AwsError> {
        let params = launch_params(request);
        let pool = format!("{}/{}", request.instance_type, request.market.as_str());
        self.call_about("RunInstances", &pool, |s| s.run_instances(params, &request.client_token)).await
    }

    async fn find_launched(&self, client_token: &str) -> Result<Option<LaunchedInstance>, AwsError> {
        self.call("DescribeInstances", |s| Ok(s.launch_tokens.get(client_token).map(|(_, id)| s.launched(id)))).await
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), AwsError> {
        gone_is_done(self.call("TerminateInstances", |s| s.terminate_instances(instance_id)).await)
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<InstanceSummary>, AwsError> {
        absent_if_unknown(self.call("DescribeInstances", |s| s.summary(instance_id)).await)
    }

    async fn launch_template(&self, template: &crate::launch_options::LaunchTemplateRef) -> Result<Option<crate::launch_options::TemplateSettings>, AwsError> {
        self.call("DescribeLaunchTemplateVersions", |s| {
            let found = s.templates.iter().find(|(id, (name, _, _))| template.id.as_deref() == Some(id.as_str()) || template.name.as_deref() == Some(name.as_str()));
            let Some((_, (_, default, versions))) = found else { return Ok(None) };
            let number = match template.version.as_str() {
                "$Default" => *default,
                "$Latest" => versions.len() as i64,
                n => n.parse().unwrap_or(0),
            };
            Ok(usize::try_from(number - 1).ok().and_then(|i| versions.get(i)).cloned())
        }).await
    }

    async fn image(&self, image_id: &str) -> Result<Option<crate::ports::ImageInfo>, AwsError> {
        self.call("DescribeImages", |s| {
            let default = crate::ports::ImageInfo { root_device_name: "/dev/xvda".into(), root_snapshot_gib: Some(8) };
            Ok(match s.images.get(image_id) {
                Some(set) => set.clone(),
                None => image_id.starts_with("ami-").then_some(default),
            })
        }).await
    }

    async fn interface_limits(&self, instance_types: &[String]) -> Result<Vec<(String, Option<u8>)>, AwsError> {
        let mut limits = Vec::new();
        for instance_type in instance_types {
            // One DescribeInstanceTypes per type, as the adapter does; an unknown type is an
            // `InvalidInstanceType` error there, which the adapter counts as unknown.
            let limit = match self.call("DescribeInstanceTypes", |s| Ok(s.interface_limit(instance_type))).await {
                Ok(limit) => limit,
                Err(e) if e.is_retryable() => return Err(e),
                Err(_) => None,
            };
            limits.push((instance_type.clone(), limit));
        }
        Ok(limits)
    }

    async fn importable(&self, instance_id: &str) -> Result<Option<ImportableInstance>, AwsError> {
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
                revert_to_spot: crate::model::RevertToSpot::Never,
                metadata_options: instance.metadata_options,
                ..NodeSpec::default()
            };
            let mut record = eni.record();
            record.availability_zone = instance.az.clone();
            let extra_enis = instance
                .extra_enis
                .iter()
                .filter_map(|id| s.enis.get(id))
                .filter_map(|e| {
                    let attachment = e.attachment.as_ref()?;
                    let record = crate::model::ExtraEniRecord { device_index: attachment.device_index, id: e.id.clone(), subnet_id: e.subnet_id.clone(), private_ip: e.private_ip, mac_address: e.mac.clone() };
                    Some(ImportedEni { record, security_group_ids: e.security_groups.clone(), attachment_id: attachment.id.clone() })
                })
                .collect();
            // The fake keeps no volumes: an imported instance shows none.
            Ok(Some(ImportableInstance { summary, spec, eni: record, attachment_id, node_tag: instance.tags.get(TAG_NODE_ID).cloned(), extra_enis, volumes: Vec::new() }))
        }).await)?;
        Ok(found.flatten())
    }

    async fn keep_volumes(&self, node_id: &NodeId, _instance_id: &str, volumes: &[crate::volumes::ImportedVolume]) -> Result<(), AwsError> {
        self.keep_imported_volumes(node_id, volumes).await
    }

    async fn adopt(&self, node_id: &NodeId, instance: &ImportableInstance) -> Result<(), AwsError> {
        // Tagged first, as the adapter does: the node's keys on all, then each extra ENI's index.
        let enis: Vec<&String> = std::iter::once(&instance.eni.id).chain(instance.extra_enis.iter().map(|e| &e.record.id)).collect();
        self.call("CreateTags", |s| {
            let tags = [(TAG_NODE_ID, node_id.to_string()), (TAG_MANAGED, "true".to_owned())];
            // CreateTags checks every resource before tagging any.
            if !s.instances.contains_key(&instance.summary.id) {
                return Err(aws(EC2, "CreateTags", "InvalidInstanceID.NotFound", format!("The instance ID '{}' does not exist", instance.summary.id)));
            }
            if let Some(missing) = enis.iter().find(|e| !s.enis.contains_key(e.as_str())) {
                return Err(not_found_eni("CreateTags", missing));
            }
            for (k, v) in &tags {
                s.instances.get_mut(&instance.summary.id).expect("checked").tags.insert((*k).to_owned(), v.clone());
                for eni in &enis {
                    s.enis.get_mut(eni.as_str()).expect("checked").tags.insert((*k).to_owned(), v.clone());
                }
            }
            Ok(())
        }).await?;
        for extra in &instance.extra_enis {
            self.call("CreateTags", |s| {
                let eni = s.enis.get_mut(&extra.record.id).ok_or_else(|| not_found_eni("CreateTags", &extra.record.id))?;
                eni.tags.insert(TAG_DEVICE_INDEX.to_owned(), extra.record.device_index.to_string());
                Ok(())
            }).await?;
        }
        let attachments = std::iter::once((&instance.eni.id, &instance.attachment_id)).chain(instance.extra_enis.iter().map(|e| (&e.record.id, &e.attachment_id)));
        for (eni_id, attachment_id) in attachments {
            self.call("ModifyNetworkInterfaceAttribute", |s| {
                let op = "ModifyNetworkInterfaceAttribute";
                let eni = s.enis.get_mut(eni_id).ok_or_else(|| not_found_eni(op, eni_id))?;
                match eni.attachment.as_mut().filter(|a| a.id == *attachment_id) {
                    Some(attachment) => {
                        attachment.delete_on_termination = false;
                        Ok(())
                    }
                    None => Err(aws(EC2, op, "InvalidAttachmentID.NotFound", format!("The attachment ID '{attachment_id}' does not exist"))),
                }
            }).await?;
        }
        Ok(())
    }
}
