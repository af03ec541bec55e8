//! The AWS operations Tether's code calls, per function: read from the adapters' source and
//! compared with the committed inventory `infra/aws-operations.json`, which the CDK app's
//! `test/iam.test.ts` checks against both stacks' policies (moto enforces no IAM, so this is
//! what keeps the stacks honest). `TETHER_UPDATE_AWS_OPERATIONS=1 cargo test -p tether-tests
//! iam` rewrites the inventory after an intended change; then add the permission to both
//! stacks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tether_tests::SetupError;

/// The functions, by the logical ids both stacks give them.
const EVERY_FUNCTION: &[&str] = &["InterruptionFunction", "StateChangeFunction", "ReconcilerFunction", "ApiFunction"];

/// Where each adapter lives, the AWS service its client talks to, and which functions run it.
struct Adapter {
    /// A file, or a module (`x.rs` and the files under `x/`).
    path: &'static str,
    service: &'static str,
    functions: &'static [&'static str],
}

const ADAPTERS: &[Adapter] = &[
    // `tether::lambda::tether_from_sdk` wires these into every function's service.
    Adapter { path: "shared/src/aws/ec2", service: "ec2", functions: EVERY_FUNCTION },
    Adapter { path: "shared/src/aws/dynamo.rs", service: "dynamodb", functions: EVERY_FUNCTION },
    Adapter { path: "shared/src/aws/event_claims.rs", service: "dynamodb", functions: EVERY_FUNCTION },
    Adapter { path: "shared/src/aws/registry.rs", service: "dynamodb", functions: EVERY_FUNCTION },
    Adapter { path: "shared/src/aws/pace.rs", service: "dynamodb", functions: EVERY_FUNCTION },
    // The event functions put a waiting event back on their own queue.
    Adapter { path: "shared/src/aws/queue.rs", service: "sqs", functions: &["InterruptionFunction", "StateChangeFunction"] },
    // `tether::lambda::idempotency_from_sdk`: the API's Idempotency-Key store.
    Adapter { path: "shared/src/aws/idempotency.rs", service: "dynamodb", functions: &["ApiFunction"] },
];

/// Calls AWS authorizes as other actions: a transaction's items as the item actions it may
/// hold (`dynamodb:TransactWriteItems` is no IAM action; Tether's transactions hold Puts,
/// Deletes and ConditionChecks).
const AUTHORIZED_AS: &[(&str, &[&str])] = &[("dynamodb:TransactWriteItems", &["dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"])];

/// IAM actions a call needs besides its own (AWS's authorization rules for these operations).
const IMPLIED: &[(&str, &str)] = &[
    // Tagging at creation (TagSpecifications) is authorized as ec2:CreateTags.
    ("ec2:RunInstances", "ec2:CreateTags"),
    ("ec2:CreateNetworkInterface", "ec2:CreateTags"),
    ("ec2:AllocateAddress", "ec2:CreateTags"),
    // A launch with the node's instance profile passes its role to EC2.
    ("ec2:RunInstances", "iam:PassRole"),
];

/// Where the inventory is committed, from the workspace root.
const INVENTORY: &str = "infra/aws-operations.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The SDK operations a Rust source calls on a client: `client.run_instances()` (whatever
/// the line breaks) is `RunInstances`. Paginators and waiters start from the same call.
fn operations_in(source: &str) -> BTreeSet<String> {
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    compact
        .match_indices("client.")
        .filter_map(|(at, found)| {
            let rest = &compact[at + found.len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let called = rest[name.len()..].starts_with('(');
            (called && !name.is_empty() && name != "clone").then(|| pascal_case(&name))
        })
        .collect()
}

fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), SetupError> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    Ok(())
}

/// The inventory as the code has it now.
fn inventory_from_source() -> Result<Value, SetupError> {
    let root = root();
    let mut files = Vec::new();
    for dir in ["shared/src", "functions", "cli/src"] {
        rust_files(&root.join(dir), &mut files)?;
    }
    let mut per_function: BTreeMap<&str, BTreeSet<String>> = EVERY_FUNCTION.iter().map(|f| (*f, BTreeSet::new())).collect();
    let mut called_in: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let source = std::fs::read_to_string(&file)?;
        let relative = file.strip_prefix(&root)?.to_string_lossy().replace('\\', "/");
        let operations = if source.contains("aws_sdk_") { operations_in(&source) } else { BTreeSet::new() };
        if operations.is_empty() {
            continue;
        }
        let adapter = ADAPTERS
            .iter()
            .find(|a| relative == a.path || relative == format!("{}.rs", a.path) || relative.starts_with(&format!("{}/", a.path)))
            .ok_or_else(|| {
                format!("{relative} calls AWS ({operations:?}) but is no adapter this test knows: add it to ADAPTERS with the functions that run it")
            })?;
        for operation in operations {
            let action = format!("{}:{operation}", adapter.service);
            let implied = IMPLIED.iter().filter(|(by, _)| *by == action).map(|(_, needs)| needs.to_string());
            let own: Vec<String> = match AUTHORIZED_AS.iter().find(|(call, _)| *call == action) {
                Some((_, actions)) => actions.iter().map(|a| a.to_string()).collect(),
                None => vec![action.clone()],
            };
            let actions: Vec<String> = own.into_iter().chain(implied).collect();
            for function in adapter.functions {
                per_function.entry(function).or_default().extend(actions.iter().cloned());
            }
            called_in.entry(action).or_default().insert(relative.clone());
        }
    }
    Ok(json!({
        "about": "The IAM actions each function's code needs: generated from the adapters' source by tests/tests/emulator/iam.rs (TETHER_UPDATE_AWS_OPERATIONS=1 cargo test -p tether-tests iam); infra/cdk/test/iam.test.ts checks that the SAM template and the CDK app allow each of them to that function, and no mutating action beyond them.",
        "functions": per_function,
        "called_in": called_in,
    }))
}

#[test]
fn the_scanner_reads_calls_across_line_breaks() {
    let source = "let out = self\n    .client\n    .describe_instance_types()\n    .into_paginator();\nself.client.put_item().send(); let c = self.client.clone();";
    assert_eq!(operations_in(source), BTreeSet::from(["DescribeInstanceTypes".to_owned(), "PutItem".to_owned()]));
}

/// The committed inventory is the code's: every AWS operation an adapter calls, for every
/// function that runs the adapter.
#[test]
fn the_committed_aws_operations_are_those_the_adapters_call() -> Result<(), SetupError> {
    let generated = inventory_from_source()?;
    let path = root().join(INVENTORY);
    if std::env::var_os("TETHER_UPDATE_AWS_OPERATIONS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&generated)? + "\n")?;
    }
    // The scan must see the calls everything else rests on, or it would pass on nothing.
    let api = &generated["functions"]["ApiFunction"];
    for action in ["ec2:RunInstances", "ec2:CreateTags", "dynamodb:PutItem", "dynamodb:Query"] {
        assert!(api.as_array().is_some_and(|a| a.contains(&json!(action))), "the scan misses {action}: {api}");
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert_eq!(
        committed["functions"], generated["functions"],
        "{INVENTORY} differs from what the adapters call; run TETHER_UPDATE_AWS_OPERATIONS=1 cargo test -p tether-tests iam, then allow the new actions in infra/template.yaml and infra/cdk/lib/policies.ts"
    );
    assert_eq!(committed["called_in"], generated["called_in"], "{INVENTORY}: rewrite it as above");
    Ok(())
}
