//! `tether-bench` (`make bench`): mass interruptions and the reconciler's cost, simulated
//! on a virtual clock; one line per scenario and design, and a chart per burst
//! (tests/bench/<scenario>-<nodes>.svg). `BENCH_ONLY=burst-1000` runs one scenario
//! (`reconciler` the reconciler's), `BENCH_DESIGN=queued` one design; `BENCH_SEED`
//! changes the seed (default 1).

use std::path::Path;
use std::time::{Duration, Instant};

use tether_tests::bench::burst::{self, Burst, Design};
use tether_tests::bench::{aws, chart, reconciler};

/// The reconciler's cost at two sizes: it should not grow with the fleet.
const RECONCILER_NODES: [usize; 2] = [1000, 10_000];

/// The designs each scenario runs: today's (the baseline) and the queued one with its pace;
/// the pace switched off only where it shows what the pace does (the 1,000-node burst).
fn designs(scenario: &Burst) -> Vec<Design> {
    let mut designs = vec![Design::Baseline, Design::Queued];
    if scenario.name == "burst" && scenario.nodes == 1000 {
        designs.push(Design::QueuedPaceOff);
    }
    let only = std::env::var("BENCH_DESIGN").ok();
    designs.retain(|d| only.as_deref().is_none_or(|o| o == d.name()));
    designs
}

fn main() {
    aws::install_event_keys();
    let seed = std::env::var("BENCH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |key: &str| only.as_deref().is_none_or(|o| o == key);
    println!("bench: model {} seed={seed}", aws::describe_model());
    let bursts = [
        Burst { name: "burst", nodes: 100, spread: Duration::ZERO, first_type_out: false },
        Burst { name: "burst", nodes: 1000, spread: Duration::ZERO, first_type_out: false },
        Burst { name: "spread", nodes: 1000, spread: Duration::from_secs(120), first_type_out: false },
        Burst { name: "capacity", nodes: 1000, spread: Duration::ZERO, first_type_out: true },
        Burst { name: "burst", nodes: 10_000, spread: Duration::ZERO, first_type_out: false },
    ];
    for scenario in bursts.iter().filter(|s| wanted(&format!("{}-{}", s.name, s.nodes))) {
        let mut results = Vec::new();
        for design in designs(scenario) {
            let started = Instant::now();
            let result = burst::run(scenario, design, seed);
            println!("{}", burst::line(scenario, design, &result, started.elapsed()));
            results.push((design, result));
        }
        let curves: Vec<chart::Curve<'_>> = results.iter().map(|(d, r)| chart::Curve { design: d.name(), colour: d.colour(), back_at: &r.back_at }).collect();
        let path = format!("tests/bench/{}-{}.svg", scenario.name, scenario.nodes);
        let title = format!("{} nodes reclaimed ({})", scenario.nodes, scenario.name);
        if let Err(e) = chart::draw(Path::new(&path), &title, scenario.nodes, &curves) {
            eprintln!("bench: chart {path} not drawn: {e}");
        }
    }
    if wanted("reconciler") {
        for nodes in RECONCILER_NODES {
            let result = reconciler::run(nodes, seed);
            println!("{}", reconciler::line(&result, "bulk"));
        }
    }
}
