//! The node table on the emulator, as the deploy templates define it (on-demand, the
//! `by-instance` index). Deployments create it with SAM or CDK; no function does.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use tether::aws::dynamo::{INSTANCE_ATTRIBUTE, INSTANCE_INDEX, PARTITION_KEY};

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
    let index = GlobalSecondaryIndex::builder()
        .index_name(INSTANCE_INDEX)
        .key_schema(hash_key(INSTANCE_ATTRIBUTE)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()?;
    let created = dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(PARTITION_KEY)?)
        .attribute_definitions(attribute(INSTANCE_ATTRIBUTE)?)
        .key_schema(hash_key(PARTITION_KEY)?)
        .global_secondary_indexes(index)
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

/// An existing table must be keyed on `pk` and have the `by-instance` index on `instance_id`.
async fn check_existing(dynamodb: &Client, name: &str) -> Result<(), SetupError> {
    let described = dynamodb.describe_table().table_name(name).send().await?;
    let table = described.table().ok_or_else(|| format!("DescribeTable {name} answered no table"))?;
    let keyed_on = |schema: &[KeySchemaElement], attribute: &str| {
        schema.iter().any(|k| k.attribute_name() == attribute && *k.key_type() == KeyType::Hash)
    };
    if !keyed_on(table.key_schema(), PARTITION_KEY) {
        return Err(format!("table {name} exists but its partition key is not `{PARTITION_KEY}`: choose another --table").into());
    }
    let indexed = table
        .global_secondary_indexes()
        .iter()
        .any(|i| i.index_name() == Some(INSTANCE_INDEX) && keyed_on(i.key_schema(), INSTANCE_ATTRIBUTE));
    if !indexed {
        return Err(format!("table {name} exists but has no `{INSTANCE_INDEX}` index on `{INSTANCE_ATTRIBUTE}`: choose another --table").into());
    }
    Ok(())
}
