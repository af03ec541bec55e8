//! `tether-local-api`: the management API on 127.0.0.1 against an AWS emulator, for the
//! CLI, the fuzzer, the demo and trying Tether by hand. See `--help`.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tether_tests::local_api::{LocalApi, ScheduledReconciler};
use tether_tests::{emulator_sdk_config, fast_settings, Emulator, Fixture, SetupError};

/// Serves Tether's management API on 127.0.0.1 behind a stand-in for API Gateway that checks
/// SigV4 signatures (access key `testing`, secret `testing`, Region us-east-1).
///
/// It builds a VPC, a subnet, a security group and two Elastic IPs in the emulator, then
/// prints one line `TETHER_API_READY url=… endpoint=… table=… subnet=… security_group=…
/// image=… elastic_ips=…,…` and serves until its stdin closes (or Ctrl-C with
/// --ignore-stdin).
#[derive(Debug, Parser)]
#[command(name = "tether-local-api", version)]
struct Options {
    /// The port to serve on (0: a free one)
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    port: u16,
    /// An AWS emulator already running (e.g. http://127.0.0.1:5000). Default: start the
    /// pinned, patched moto server from .venv (its Python: TETHER_PYTHON, default
    /// .venv/bin/python) on a free port, and stop it on exit
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The DynamoDB table of nodes: an existing one (it must have Tether's key and index) or
    /// one to create. Default: a new table named tether-<random>
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// Serve until Ctrl-C instead of until stdin closes (for running in the background)
    #[arg(long)]
    ignore_stdin: bool,
    /// Run the reconciler every SECONDS, as the deployed stack's schedule does every minute
    /// (it carries on a group's rolling recycle and deallocation between API calls). Default: never
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    reconcile_every: Option<u64>,
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    if let Err(e) = run(options).await {
        eprintln!("tether-local-api: {e}");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> Result<(), SetupError> {
    tether_tests::init_quiet_tracing();
    let endpoint = match options.endpoint {
        Some(url) => url,
        None => Emulator::try_shared()?.endpoint.clone(),
    };
    let sdk = emulator_sdk_config(&endpoint).await;
    let fx = Fixture::on(&sdk, options.table.as_deref(), fast_settings())
        .await
        .map_err(|e| format!("setting up in the emulator at {endpoint}: {e}"))?;
    let (first, _) = fx.allocate_eip().await?;
    let (second, _) = fx.allocate_eip().await?;
    let server = LocalApi::start_on(fx.api.clone(), SocketAddr::from(([127, 0, 0, 1], options.port))).await?;
    let _reconciler = options.reconcile_every.map(|seconds| ScheduledReconciler::every(fx.tether.clone(), Duration::from_secs(seconds)));
    println!(
        "TETHER_API_READY url={} endpoint={endpoint} table={} subnet={} security_group={} image={} elastic_ips={first},{second}",
        server.url, fx.table_name, fx.subnet_id, fx.security_group_id, fx.image_id
    );
    if options.ignore_stdin {
        tokio::signal::ctrl_c().await?;
    } else {
        // Serve until whoever started us closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
    }
    Ok(())
}
