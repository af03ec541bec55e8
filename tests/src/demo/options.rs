//! The demo's knobs, from the environment (`make demo DEMO_NODES=5` puts them there:
//! make exports variables set on its command line to the recipe).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Options {
    /// `DEMO_NODES`: stateful nodes created through the CLI.
    pub nodes: usize,
    /// `DEMO_SECONDS`: how long the spot market sends interruptions (wall-clock time).
    pub market_time: Duration,
    /// `DEMO_RATE`: interruptions per node per minute, on average.
    pub rate_per_node_minute: f64,
    /// `DEMO_SEED`: seeds which node is interrupted when.
    pub seed: u64,
}

/// Nodes with a chosen private IP take 10.0.1.50 upwards in the fixture's /24.
pub const MAX_NODES: usize = 50;

impl Options {
    pub const DEFAULT_NODES: usize = 3;
    pub const DEFAULT_SECONDS: u64 = 45;
    pub const DEFAULT_RATE: f64 = 4.0;
    pub const DEFAULT_SEED: u64 = 5;

    /// Reads the `DEMO_*` variables; unset or empty means the default, anything else must parse.
    pub fn from_env() -> Result<Options, String> {
        let nodes: usize = read("DEMO_NODES", Self::DEFAULT_NODES)?;
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(format!("DEMO_NODES must be 1 to {MAX_NODES}, not {nodes}"));
        }
        let seconds: u64 = read("DEMO_SECONDS", Self::DEFAULT_SECONDS)?;
        if !(1..=3600).contains(&seconds) {
            return Err(format!("DEMO_SECONDS must be 1 to 3600, not {seconds}"));
        }
        let rate: f64 = read("DEMO_RATE", Self::DEFAULT_RATE)?;
        if !(0.0..=120.0).contains(&rate) {
            return Err(format!("DEMO_RATE must be 0 to 120 interruptions per node per minute, not {rate}"));
        }
        let seed = read("DEMO_SEED", Self::DEFAULT_SEED)?;
        Ok(Options { nodes, market_time: Duration::from_secs(seconds), rate_per_node_minute: rate, seed })
    }
}

fn read<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw.trim().parse().map_err(|_| format!("{name}=`{raw}` is not a valid number")),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid Unicode")),
    }
}
