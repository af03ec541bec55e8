//! `make demo`: Tether's main job against the local AWS emulator. Creates a node with a
//! chosen private IP and an Elastic IP, interrupts it three times through the real
//! handlers, and reports what the emulator says about every generation.

use std::time::{Duration, Instant};

use tether::ports::Instances;
use tether::{Node, Persistence};
use tether_tests::events::{interruption_warning, invocation, state_change};
use tether_tests::{Fixture, SetupError};

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

async fn run() -> Result<(), SetupError> {
    tether_tests::init_quiet_tracing();
    let fx = Fixture::new().await?;
    println!("emulator: {} (moto, patched to AWS's EC2 rules; see tests/emulator/README.md)", tether_tests::Emulator::shared().endpoint);
    let (allocation_id, eip) = fx.allocate_eip().await?;
    let chosen_ip = fx.subnet_ip(50);
    let node = fx
        .tether
        .create_node(
            fx.spec(&["m5.large", "m6i.large"]),
            Persistence { private_ip: Some(chosen_ip), elastic_ip_allocation_id: Some(allocation_id.clone()), ..Persistence::default() },
            None,
        )
        .await?;
    println!("created node {} in {} ({}): private IP {chosen_ip}, Elastic IP {eip} ({allocation_id})", node.id, fx.subnet_id, fx.availability_zone);

    let started = Instant::now();
    let outcome = fx.tether.resume(&node.id, tokio::time::Instant::now() + BUDGET, None).await?;
    let mut node = fx.tether.node(&node.id).await?;
    println!("resumed in {:?}: {outcome:?}", started.elapsed());
    let mut observed = vec![observe(&fx, &node).await?];

    for round in 1..=INTERRUPTIONS {
        let old = node.instance_id().ok_or("node has no instance")?.to_owned();
        let warned = tether_interruption::handler(&fx.tether, invocation(interruption_warning(&old, "terminate"), BUDGET)).await?;
        fx.interrupt(&old).await?;
        fx.calls.take();
        let started = Instant::now();
        let replaced = tether_state_change::handler(&fx.tether, invocation(state_change(&old, "terminated"), BUDGET)).await?;
        let elapsed = started.elapsed();
        let calls = fx.calls.take();
        node = fx.tether.node(&node.id).await?;
        println!(
            "interruption {round}/{INTERRUPTIONS}: warning for {old} -> {}; terminated -> {} {} in {elapsed:?}, {} AWS calls ({})",
            warned["outcome"].as_str().unwrap_or("?"),
            replaced["outcome"].as_str().unwrap_or("?"),
            replaced["instance_id"].as_str().unwrap_or(""),
            calls.len(),
            calls.join(", ")
        );
        observed.push(observe(&fx, &node).await?);
    }

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
    let launched = fx.node_instances(&node.id).await?.len();
    let replacements = launched.saturating_sub(1);
    let first_ip = observed.first().map(|o| o.private_ip.clone()).unwrap_or_default();
    let same_private_ip = first_ip == chosen_ip.to_string() && observed.iter().all(|o| o.private_ip == first_ip);
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

async fn observe(fx: &Fixture, node: &Node) -> Result<Observed, SetupError> {
    let id = node.instance_id().ok_or("node has no instance")?;
    let instance = fx.cloud.describe_instance(id).await?.ok_or("the emulator does not know the instance")?;
    Ok(Observed {
        generation: node.generation,
        instance_id: instance.id,
        private_ip: instance.private_ip.unwrap_or_else(|| "-".into()),
        public_ip: instance.public_ip.unwrap_or_else(|| "-".into()),
        instance_type: instance.instance_type,
        market: match instance.market {
            tether::Market::Spot => "spot".into(),
            tether::Market::OnDemand => "on-demand".into(),
        },
    })
}
