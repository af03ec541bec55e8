//! `tether-local-api` as a user starts it: its options, and serving on an emulator and a
//! table of the user's choosing (shared with functions run by hand).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tether::aws::dynamo::DynamoNodeStore;
use tether::ports::NodeStore;
use tether_tests::{emulator_sdk_config, Emulator, SetupError};

const BINARY: &str = env!("CARGO_BIN_EXE_tether-local-api");

#[test]
fn help_names_every_option_and_starts_nothing() -> Result<(), SetupError> {
    let out = Command::new(BINARY).arg("--help").stdin(Stdio::null()).output()?;
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout)?;
    for option in ["--endpoint <URL>", "--table <NAME>", "--port <PORT>", "--ignore-stdin", "--reconcile-every <SECONDS>", "TETHER_PYTHON"] {
        assert!(help.contains(option), "--help does not mention {option}:\n{help}");
    }
    assert!(!help.contains("TETHER_API_READY url=http"), "--help must not start serving:\n{help}");
    Ok(())
}

/// A running `tether-local-api`; stopped (stdin closed) when dropped.
struct Served {
    child: Child,
    ready: std::collections::HashMap<String, String>,
}

impl Served {
    fn start(args: &[&str]) -> Result<Served, SetupError> {
        let mut child = Command::new(BINARY).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let line = BufReader::new(stdout).lines().next().transpose()?.unwrap_or_default();
        let Some(fields) = line.strip_prefix("TETHER_API_READY ") else {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            return Err(format!("not ready: `{line}`; stderr: {}", String::from_utf8_lossy(&output.stderr)).into());
        };
        let ready = fields.split_whitespace().filter_map(|f| f.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Ok(Served { child, ready })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn it_serves_on_the_emulator_and_table_it_is_given_and_says_which() -> Result<(), SetupError> {
    let endpoint = Emulator::shared().endpoint.clone();
    let table = format!("tether-local-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);

    // The table is missing: created, and named in the ready line with the endpoint.
    let served = Served::start(&["--endpoint", &endpoint, "--table", &table])?;
    assert_eq!(served.ready.get("endpoint"), Some(&endpoint), "{:?}", served.ready);
    assert_eq!(served.ready.get("table"), Some(&table), "{:?}", served.ready);
    let url = served.ready.get("url").ok_or("no url")?.clone();
    let subnet = served.ready.get("subnet").ok_or("no subnet")?.clone();
    let image = served.ready.get("image").ok_or("no image")?.clone();
    let env = tether_cli::Environment {
        api_url: Some(url),
        region: Some("us-east-1".into()),
        credentials: Some(aws_credential_types::Credentials::new("testing", "testing", None, None, "local-api-test")),
        ..tether_cli::Environment::default()
    };
    let args = ["tether", "nodes", "create", "--subnet", &subnet, "--image", &image, "--instance-type", "m5.large", "--json"];
    let created = tether_cli::run_captured(args, &env).await;
    assert_eq!(created.code, 0, "{created:?}");
    let id = serde_json::from_str::<serde_json::Value>(&created.stdout)?["id"].as_str().ok_or("no id")?.to_owned();

    // The node is in that table, where functions run by hand on the same emulator find it.
    let sdk = emulator_sdk_config(&endpoint).await;
    let store = DynamoNodeStore::new(aws_sdk_dynamodb::Client::new(&sdk), table.clone());
    let node_id = tether::NodeId::parse(&id).ok_or("bad id")?;
    assert!(store.get(&node_id).await?.is_some(), "node {id} is not in table {table}");
    drop(served);

    // Started again on the same table: it is used as it is, the node still there.
    let again = Served::start(&["--endpoint", &endpoint, "--table", &table])?;
    let env = tether_cli::Environment { api_url: again.ready.get("url").cloned(), ..env };
    let shown = tether_cli::run_captured(["tether", "nodes", "show", &id, "--json"], &env).await;
    assert_eq!(shown.code, 0, "the second server serves the first one's node: {shown:?}");
    drop(again);

    // A table that is not Tether's is refused, naming the option.
    let foreign = format!("{table}-foreign");
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    dynamodb
        .create_table()
        .table_name(&foreign)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(AttributeDefinition::builder().attribute_name("id").attribute_type(ScalarAttributeType::S).build()?)
        .key_schema(KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build()?)
        .send()
        .await?;
    let refused = Command::new(BINARY).args(["--endpoint", &endpoint, "--table", &foreign]).stdin(Stdio::null()).output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&foreign) && stderr.contains("--table"), "{stderr}");
    Ok(())
}
