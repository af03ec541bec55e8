//! Instance calls: launches on the node's ENI, termination, description, import.

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, MarketType,
    ResourceType, SpotInstanceType, SpotMarketOptions, Tag, VolumeType, CapacityReservationPreference,
    CapacityReservationSpecification, CapacityReservationTarget, CreditSpecificationRequest, RunInstancesMonitoringEnabled, TagSpecification, Tenancy,
};
use aws_smithy_types::base64;
use aws_smithy_types::retry::RetryConfig;

use super::{tag_value, absent_if_unknown, gone_is_done, market_of, missing, tag, tags_for, Ec2Cloud, TAG_GENERATION, TAG_MANAGED, TAG_NODE_ID};
use crate::aws::aws_error;
use crate::error::AwsError;
use crate::model::{CapacityReservation, Market, NodeId};
use crate::volumes::BlockDevice;
use crate::ports::{Tagged, ImportableInstance, InstanceSummary, Instances, LaunchRequest, LaunchedInstance};

/// The states of an instance that still exists (or will run again).
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

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

/// An instance with Tether's tags; `None` for one without a node id (not Tether's).
fn tagged(instance: &Instance) -> Option<Tagged<InstanceSummary>> {
    let node_id = tag_value(instance.tags(), TAG_NODE_ID).and_then(NodeId::parse)?;
    let generation = tag_value(instance.tags(), TAG_GENERATION).and_then(|g| g.parse().ok());
    Some(Tagged { node_id, generation, device_index: None, attached: true, resource: summary(instance.instance_id()?, instance) })
}

pub(super) fn summary(instance_id: &str, instance: &Instance) -> InstanceSummary {
    let primary_eni_id = instance
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
        .and_then(|n| n.network_interface_id())
        .map(str::to_owned);
    InstanceSummary {
        id: instance_id.to_owned(),
        state: instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
        instance_type: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        market: market_of(instance),
        private_ip: instance.private_ip_address().map(str::to_owned),
        public_ip: instance.public_ip_address().map(str::to_owned),
        primary_eni_id,
    }
}

impl Ec2Cloud {
    async fn instance(&self, instance_id: &str) -> Result<Option<Instance>, AwsError> {
        let described = self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeInstances", e));
        Ok(absent_if_unknown(described)?.and_then(|out| out.reservations().iter().flat_map(|r| r.instances()).next().cloned()))
    }
}

#[async_trait]
impl Instances for Ec2Cloud {
    async fn instance_on_eni(&self, eni_id: &str) -> Result<Option<Tagged<InstanceSummary>>, AwsError> {
        let described = self
            .client
            .describe_network_interfaces()
            .network_interface_ids(eni_id)
            .send()
            .await
            .map_err(|e| aws_error("EC2", "DescribeNetworkInterfaces", e));
        let holder_id = absent_if_unknown(described)?
            .and_then(|out| out.network_interfaces().first().and_then(|n| n.attachment()).and_then(|a| a.instance_id()).map(str::to_owned));
        let Some(holder_id) = holder_id else { return Ok(None) };
        Ok(self.instance(&holder_id).await?.as_ref().and_then(tagged))
    }

    async fn node_instances(&self) -> Result<Vec<Tagged<InstanceSummary>>, AwsError> {
        let mut pages = self
            .client
            .describe_instances()
            .filters(Filter::builder().name("tag-key").values(TAG_NODE_ID).build())
            .filters(Filter::builder().name("instance-state-name").set_values(Some(LIVE_STATES.map(String::from).to_vec())).build())
            // Filtered and paged: the larger of EC2's two buckets for this action.
            .max_results(super::PAGE_SIZE)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("EC2", "DescribeInstances", e))?;
            found.extend(page.reservations().iter().flat_map(|r| r.instances()).filter_map(tagged));
        }
        Ok(found)
    }

    async fn impaired_instances(&self) -> Result<std::collections::HashMap<String, crate::health::Impaired>, AwsError> {
        super::status::impaired_instances(&self.client).await
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
                            .set_max_price(request.spot_max_price().map(str::to_owned))
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
            // Subnet, security groups and private IPs come from the ENIs, never from here.
            .set_network_interfaces(Some(
                [(0, request.eni_id)]
                    .into_iter()
                    .chain(request.extra_enis.iter().map(|e| (e.device_index, e.id.as_str())))
                    .map(|(index, eni_id)| {
                        InstanceNetworkInterfaceSpecification::builder()
                            .device_index(i32::from(index))
                            .network_interface_id(eni_id)
                            .delete_on_termination(false)
                            .build()
                    })
                    .collect(),
            ))
            .set_instance_market_options(market)
            .set_key_name(spec.key_name.clone())
            .set_iam_instance_profile(profile)
            .set_user_data(spec.user_data.as_deref().map(|u| base64::encode(u.as_bytes())))
            .set_block_device_mappings(Some(spec.block_devices.iter().map(block_device_mapping).collect()).filter(|m: &Vec<_>| !m.is_empty()))
            .set_metadata_options(spec.metadata_options.map(|m| {
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::from(m.http_tokens.as_str()))
                    .http_put_response_hop_limit(i32::from(m.http_put_response_hop_limit))
                    .http_endpoint(InstanceMetadataEndpointState::from(m.http_endpoint.as_str()))
                    .instance_metadata_tags(InstanceMetadataTagsState::from(m.instance_metadata_tags.as_str()))
                    .build()
            }))
            .set_ebs_optimized(spec.ebs_optimized)
            .set_monitoring(spec.detailed_monitoring.map(|on| RunInstancesMonitoringEnabled::builder().enabled(on).build()))
            .set_credit_specification(spec.cpu_credits.map(|c| CreditSpecificationRequest::builder().cpu_credits(c.as_str()).build()))
            .set_placement(spec.placement.as_ref().map(|p| {
                aws_sdk_ec2::types::Placement::builder().set_group_name(p.group_name.clone()).tenancy(Tenancy::from(p.tenancy.as_str())).build()
            }))
            .set_capacity_reservation_specification(request.capacity_reservation().map(capacity_reservation))
            .set_tag_specifications(Some([tags_for(ResourceType::Instance, instance_tags)].into_iter().chain(volume_tags(request)).collect()))
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
        let terminated = self
            .client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_error("EC2", "TerminateInstances", e));
        gone_is_done(terminated)
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Option<InstanceSummary>, AwsError> {
        Ok(self.instance(instance_id).await?.map(|i| summary(instance_id, &i)))
    }

    async fn launch_template(&self, template: &crate::launch_options::LaunchTemplateRef) -> Result<Option<crate::launch_options::TemplateSettings>, AwsError> {
        self.template_version(template).await
    }

    async fn image(&self, image_id: &str) -> Result<Option<crate::ports::ImageInfo>, AwsError> {
        self.describe_image(image_id).await
    }

    async fn interface_limits(&self, instance_types: &[String]) -> Result<Vec<(String, Option<u8>)>, AwsError> {
        let mut limits = Vec::new();
        for instance_type in instance_types {
            let described = self
                .client
                .describe_instance_types()
                .instance_types(InstanceType::from(instance_type.as_str()))
                .send()
                .await;
            let limit = match described {
                // A type EC2 describes without the figure takes at least its primary ENI.
                Ok(out) => out.instance_types().first().map(|t| {
                    let most = t.network_info().and_then(|n| n.maximum_network_interfaces()).unwrap_or(1);
                    u8::try_from(most).unwrap_or(u8::MAX)
                }),
                Err(e) => {
                    let e = aws_error("EC2", "DescribeInstanceTypes", e);
                    if e.is_retryable() {
                        return Err(e);
                    }
                    // EC2 refuses a name it does not know (InvalidInstanceType).
                    None
                }
            };
            limits.push((instance_type.clone(), limit));
        }
        Ok(limits)
    }

    async fn importable(&self, instance_id: &str) -> Result<Option<ImportableInstance>, AwsError> {
        let Some(instance) = self.instance(instance_id).await? else { return Ok(None) };
        self.read_importable(instance_id, &instance).await
    }

    async fn adopt(&self, node_id: &NodeId, instance: &ImportableInstance) -> Result<(), AwsError> {
        self.adopt_imported(node_id, instance).await
    }

    async fn keep_volumes(&self, node_id: &NodeId, instance_id: &str, volumes: &[crate::volumes::ImportedVolume]) -> Result<(), AwsError> {
        self.keep_imported_volumes(node_id, instance_id, volumes).await
    }
}

/// The capacity reservation setting as RunInstances takes it.
fn capacity_reservation(reservation: &CapacityReservation) -> CapacityReservationSpecification {
    let builder = CapacityReservationSpecification::builder();
    let target = |t: CapacityReservationTarget| builder.clone().capacity_reservation_target(t).build();
    match reservation {
        CapacityReservation::Open => builder.capacity_reservation_preference(CapacityReservationPreference::Open).build(),
        CapacityReservation::None => builder.capacity_reservation_preference(CapacityReservationPreference::None).build(),
        CapacityReservation::ReservationId(id) => target(CapacityReservationTarget::builder().capacity_reservation_id(id).build()),
        CapacityReservation::GroupArn(arn) => target(CapacityReservationTarget::builder().capacity_reservation_resource_group_arn(arn).build()),
    }
}

/// The volumes' tag specification (with the node id, so that a volume left over can be
/// traced), when the spec names any tags for them.
fn volume_tags(request: &LaunchRequest<'_>) -> Option<TagSpecification> {
    let tags = &request.spec.volume_tags;
    let with_node = tags.iter().map(|(k, v)| tag(k, v)).chain([tag(TAG_NODE_ID, request.node_id.as_str())]);
    (!tags.is_empty()).then(|| tags_for(ResourceType::Volume, with_node))
}

/// A block device of the spec as RunInstances takes it.
fn block_device_mapping(device: &BlockDevice) -> BlockDeviceMapping {
    let ebs = EbsBlockDevice::builder()
        .volume_size(i32::try_from(device.volume_size_gib).unwrap_or(i32::MAX))
        .volume_type(VolumeType::from(device.volume_type.as_str()))
        .set_iops(device.iops.and_then(|i| i32::try_from(i).ok()))
        .set_throughput(device.throughput_mibps.and_then(|t| i32::try_from(t).ok()))
        .set_encrypted(device.encrypted)
        .set_kms_key_id(device.kms_key_id.clone())
        .delete_on_termination(device.delete_on_termination)
        .build();
    BlockDeviceMapping::builder().device_name(&device.device_name).ebs(ebs).build()
}
