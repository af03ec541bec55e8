//! The node table on the emulator, as the deploy templates define it (on-demand, the
//! `by-instance`, `by-group` and `by-kind` indexes). Deployments create it with SAM or CDK; no
//! function does.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use tether::aws::dynamo::{GROUP_ATTRIBUTE, GROUP_INDEX, INSTANCE_ATTRIBUTE, INSTANCE_INDEX, KIND_ATTRIBUTE, KIND_INDEX, PARTITION_KEY};

use crate::SetupError;

/// Whether [`ensure`] made the table or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Created,
    Existing,
}

/// Creates the table `name`, or checks that the one already there has Tether's key and index.
pub async fn ensure(dynamodb: &Client, name: &str) -> Result<Table, SetupError> {
    let attribute = |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
    let hash_key = |name: &str| KeySchemaElement::builder().attribute_name(name).key_type(KeyType::Hash).build();
    let index = |name: &str, attribute: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(hash_key(attribute)?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
    };
    // Every node in one partition, in id order: listing reads only nodes.
    let by_kind = GlobalSecondaryIndex::builder()
        .index_name(KIND_INDEX)
        .key_schema(hash_key(KIND_ATTRIBUTE)?)
        .key_schema(KeySchemaElement::builder().attribute_name(PARTITION_KEY).key_type(KeyType::Range).build()?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()?;
    let created = dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(PARTITION_KEY)?)
        .attribute_definitions(attribute(INSTANCE_ATTRIBUTE)?)
        .attribute_definitions(attribute(GROUP_ATTRIBUTE)?)
        .attribute_definitions(attribute(KIND_ATTRIBUTE)?)
        .key_schema(hash_key(PARTITION_KEY)?)
        .global_secondary_indexes(index(INSTANCE_INDEX, INSTANCE_ATTRIBUTE)?)
        .global_secondary_indexes(index(GROUP_INDEX, GROUP_ATTRIBUTE)?)
        .global_secondary_indexes(by_kind)
        .send()
        .await;
    match created {
        Ok(_) => Ok(Table::Created),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {
            check_existing(dynamodb, name).await?;
            Ok(Table::Existing)
        }
        Err(e) => Err(format!("creating table {name}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)).into()),
    }
}

/// An existing table must be keyed on `pk` and have the `by-instance`, `by-group` and `by-kind` indexes.
async fn check_existing(dynamodb: &Client, name: &str) -> Result<(), SetupError> {
    let described = dynamodb.describe_table().table_name(name).send().await?;
    let table = described.table().ok_or_else(|| format!("DescribeTable {name} answered no table"))?;
    let keyed_on = |schema: &[KeySchemaElement], attribute: &str| {
        schema.iter().any(|k| k.attribute_name() == attribute && *k.key_type() == KeyType::Hash)
    };
    if !keyed_on(table.key_schema(), PARTITION_KEY) {
        return Err(format!("table {name} exists but its partition key is not `{PARTITION_KEY}`: choose another --table").into());
    }
    for (index, attribute) in [(INSTANCE_INDEX, INSTANCE_ATTRIBUTE), (GROUP_INDEX, GROUP_ATTRIBUTE), (KIND_INDEX, KIND_ATTRIBUTE)] {
        let indexed = table.global_secondary_indexes().iter().any(|i| i.index_name() == Some(index) && keyed_on(i.key_schema(), attribute));
        if !indexed {
            return Err(format!("table {name} exists but has no `{index}` index on `{attribute}`: choose another --table").into());
        }
    }
    Ok(())
}
