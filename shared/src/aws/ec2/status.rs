//! EC2's status checks, in bulk: the instances whose instance or system status check is
//! `impaired` now (DescribeInstanceStatus answers running instances only by default). Two
//! filtered, paged calls (the filters' values are ANDed across names): from the larger of the
//! action's two token buckets, whatever the number of instances.

use std::collections::HashMap;

use aws_sdk_ec2::types::{Filter, InstanceStatusSummary};
use aws_sdk_ec2::Client;
use chrono::{DateTime, Utc};

use crate::aws::aws_error;
use crate::error::AwsError;
use crate::health::Impaired;

/// The largest page DescribeInstanceStatus gives.
const STATUS_PAGE: i32 = 1000;

pub(super) async fn impaired_instances(client: &Client) -> Result<HashMap<String, Impaired>, AwsError> {
    let mut found: HashMap<String, Impaired> = HashMap::new();
    for (filter, check) in [("instance-status.status", "instance status"), ("system-status.status", "system status")] {
        let mut pages = client
            .describe_instance_status()
            .filters(Filter::builder().name(filter).values("impaired").build())
            .max_results(STATUS_PAGE)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("EC2", "DescribeInstanceStatus", e))?;
            for status in page.instance_statuses() {
                let Some(id) = status.instance_id() else { continue };
                let summary = if check == "instance status" { status.instance_status() } else { status.system_status() };
                let since = summary.and_then(impaired_since);
                found
                    .entry(id.to_owned())
                    .and_modify(|i| {
                        i.checks = format!("{} and {check}", i.checks);
                        i.since = match (i.since, since) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    })
                    .or_insert(Impaired { checks: check.to_owned(), since });
            }
        }
    }
    Ok(found)
}

/// The earliest `ImpairedSince` among a check's details.
fn impaired_since(summary: &InstanceStatusSummary) -> Option<DateTime<Utc>> {
    summary
        .details()
        .iter()
        .filter_map(|d| d.impaired_since())
        .filter_map(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .min()
}
