//! `tether-local-api`: the management API on 127.0.0.1 against the local AWS emulator,
//! for the CLI, the fuzzer and the demo. Builds a VPC, a subnet, a security group and
//! two Elastic IPs, prints one line
//! `TETHER_API_READY url=… subnet=… security_group=… image=… elastic_ips=…,…`,
//! and serves until its stdin closes (or Ctrl-C with --ignore-stdin).

use std::io::Read;
use std::net::SocketAddr;

use tether_tests::local_api::LocalApi;
use tether_tests::{Fixture, SetupError};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("tether-local-api: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), SetupError> {
    let args: Vec<String> = std::env::args().collect();
    let port = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a number")?.parse::<u16>()?,
        None => 0,
    };
    let watch_stdin = !args.iter().any(|a| a == "--ignore-stdin");
    tether_tests::init_quiet_tracing();
    let fx = Fixture::new().await?;
    let (first, _) = fx.allocate_eip().await?;
    let (second, _) = fx.allocate_eip().await?;
    let server = LocalApi::start_on(fx.api.clone(), SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!(
        "TETHER_API_READY url={} subnet={} security_group={} image={} elastic_ips={first},{second}",
        server.url, fx.subnet_id, fx.security_group_id, fx.image_id
    );
    if watch_stdin {
        // Serve until whoever started us closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
    } else {
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
