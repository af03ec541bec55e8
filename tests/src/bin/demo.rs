//! `make demo`: Tether's main job against the local AWS emulator, driven the way users
//! drive it. The operator creates a node with a chosen private IP and an Elastic IP with
//! the `tether` CLI (SigV4-signed, through the local API front to the `api` function);
//! three spot interruptions then arrive as EventBridge events at the real handlers; the
//! table and summary are computed from what the emulator reports about every generation.

use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use tether::ports::Instances;
use tether_cli::Environment;
use tether_tests::events::{interruption_warning, invocation, state_change};
use tether_tests::local_api::{LocalApi, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use tether_tests::{Fixture, SetupError, REGION};

const INTERRUPTIONS: u64 = 3;
const BUDGET: Duration = Duration::from_secs(60);

/// One generation as the emulator reported it while the instance ran.
struct Observed {
    generation: u64,
    instance_id: String,
    private_ip: String,
    public_ip: String,
    instance_type: String,
    market: String,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

/// Runs one `tether` command line, echoing it and its output; returns its stdout.
async fn tether(env: &Environment, args: &[&str], echo: bool) -> Result<String, SetupError> {
    if echo {
        println!("$ tether {}", args.join(" "));
    }
    let result = tether_cli::run_captured(std::iter::once("tether").chain(args.iter().copied()), env).await;
    if echo {
        print!("{}", result.stdout);
        eprint!("{}", result.stderr);
    }
    if result.code != 0 {
        return Err(format!("`tether {}` exited with {}: {}", args.join(" "), result.code, result.stderr).into());
    }
    Ok(result.stdout)
}

async fn run() -> Result<(), SetupError> {
    tether_tests::init_quiet_tracing();
    let fx = Fixture::new().await?;
    let api = LocalApi::start(fx.api.clone()).await?;
    println!("emulator: {} (moto, patched to AWS's EC2 rules; see tests/emulator/README.md)", tether_tests::Emulator::shared().endpoint);
    println!("API: {} (SigV4-checking front for the api function)\n", api.url);
    let env = Environment {
        api_url: Some(api.url.clone()),
        region: Some(REGION.to_owned()),
        credentials: Some(Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "demo")),
        poll_interval: Duration::from_millis(100),
        ..Environment::default()
    };
    let (allocation_id, _) = fx.allocate_eip().await?;
    let chosen_ip = fx.subnet_ip(50).to_string();
    let created = tether(
        &env,
        &[
            "--json", "nodes", "create", "--subnet", &fx.subnet_id, "--image", &fx.image_id,
            "--instance-type", "m5.large", "--instance-type", "m6i.large",
            "--security-group", &fx.security_group_id, "--private-ip", &chosen_ip,
            "--elastic-ip", &allocation_id, "--resume", "--wait",
        ],
        false,
    )
    .await?;
    let created: serde_json::Value = serde_json::from_str(&created)?;
    let id = created["id"].as_str().ok_or("the API answered no node id")?.to_owned();
    let node_id = tether::NodeId::parse(&id).ok_or("the API answered a malformed node id")?;
    println!("$ tether nodes create --subnet {} --image {} --instance-type m5.large --instance-type m6i.large --private-ip {chosen_ip} --elastic-ip {allocation_id} --resume --wait", fx.subnet_id, fx.image_id);
    tether(&env, &["nodes", "show", &id], false).await.map(|out| print!("{out}"))?;
    println!();

    let mut observed = vec![observe(&fx, &node_id).await?];
    for round in 1..=INTERRUPTIONS {
        let old = fx.tether.node(&node_id).await?.instance_id().ok_or("node has no instance")?.to_owned();
        let warned = tether_interruption::handler(&fx.tether, invocation(interruption_warning(&old, "terminate"), BUDGET)).await?;
        fx.interrupt(&old).await?;
        fx.calls.take();
        let started = Instant::now();
        let replaced = tether_state_change::handler(&fx.tether, invocation(state_change(&old, "terminated"), BUDGET)).await?;
        let elapsed = started.elapsed();
        let calls = fx.calls.take();
        println!(
            "interruption {round}/{INTERRUPTIONS}: warning for {old} -> {}; terminated -> {} {} in {elapsed:?}, {} AWS calls ({})",
            warned["outcome"].as_str().unwrap_or("?"),
            replaced["outcome"].as_str().unwrap_or("?"),
            replaced["instance_id"].as_str().unwrap_or(""),
            calls.len(),
            calls.join(", ")
        );
        observed.push(observe(&fx, &node_id).await?);
    }
    println!();
    tether(&env, &["nodes", "history", &id], true).await?;

    println!();
    println!("{:<10}  {:<21}  {:<12}  {:<15}  {:<9}  type", "generation", "instance id", "private IP", "public IP", "market");
    for o in &observed {
        println!(
            "{:<10}  {:<21}  {:<12}  {:<15}  {:<9}  {}",
            o.generation, o.instance_id, o.private_ip, o.public_ip, o.market, o.instance_type
        );
    }
    println!();

    // Every figure below comes from what the emulator reported, not from Tether's records.
    let launched = fx.node_instances(&node_id).await?.len();
    let replacements = launched.saturating_sub(1);
    let first_ip = observed.first().map(|o| o.private_ip.clone()).unwrap_or_default();
    let same_private_ip = first_ip == chosen_ip && observed.iter().all(|o| o.private_ip == first_ip);
    let eip_now = fx.ec2.describe_addresses().allocation_ids(&allocation_id).send().await?;
    let eip_public = eip_now.addresses().first().and_then(|a| a.public_ip()).unwrap_or_default().to_owned();
    let same_eip = !eip_public.is_empty() && observed.iter().all(|o| o.public_ip == eip_public);
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("summary: replacements={replacements} same_private_ip={} same_eip={}", yes(same_private_ip), yes(same_eip));
    if !(same_private_ip && same_eip && replacements as u64 == INTERRUPTIONS) {
        return Err("the node did not keep its identity".into());
    }
    Ok(())
}

async fn observe(fx: &Fixture, node_id: &tether::NodeId) -> Result<Observed, SetupError> {
    let node = fx.tether.node(node_id).await?;
    let id = node.instance_id().ok_or("node has no instance")?;
    let instance = fx.cloud.describe_instance(id).await?.ok_or("the emulator does not know the instance")?;
    Ok(Observed {
        generation: node.generation,
        instance_id: instance.id,
        private_ip: instance.private_ip.unwrap_or_else(|| "-".into()),
        public_ip: instance.public_ip.unwrap_or_else(|| "-".into()),
        instance_type: instance.instance_type,
        market: instance.market.as_str().to_owned(),
    })
}
