//! The chaos test: seeded scenarios of many nodes on the fakes, with interruptions,
//! duplicated / reordered / dropped events, crashes between any two AWS calls (the handler
//! re-run as Lambda would), faults and throttling, capacity outages, hand-made drift, and
//! user actions in the middle of recoveries. Half the scenarios also have a stateful group
//! (pools of private IPs and Elastic IPs, one or two subnets) that users scale, edit, pause,
//! resume, recycle and deallocate, whose members they act on through the node API, and
//! whose controller runs at any time. After each scenario settles (reconciler runs, and so
//! the groups' controllers, included) the invariants of `check` (nodes, members included)
//! and `check_groups` (groups and address reservations) must hold.
//!
//! `make test` runs `CHAOS_SCENARIOS` scenarios (default 10,000) and prints
//! `chaos: scenarios=N violations=V`. A failing seed is printed with the command that
//! replays it alone, with its full log: `make chaos SEED=<seed>`.

mod check;
mod check_groups;
mod check_volumes;
pub use check::violations;
mod executor;
mod world;

pub use executor::{Delivery, Finished, GroupMove, UserAction};

use world::World;

/// How big a scenario is.
#[derive(Clone, Copy, Debug)]
pub struct ChaosConfig {
    pub max_nodes: usize,
    /// Random moves before the world is left to settle.
    pub max_steps: usize,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig { max_nodes: 5, max_steps: 250 }
    }
}

/// A scenario whose world broke an invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    pub seed: u64,
    pub problems: Vec<String>,
    /// The scenario's moves, for the replay.
    pub log: Vec<String>,
}

/// Runs the scenario of `seed`: set-up, chaos, settling, checks.
pub fn run_scenario(seed: u64, config: ChaosConfig) -> Result<(), Violation> {
    let mut sizes = fastrand::Rng::with_seed(seed.rotate_left(17));
    let mut world = World::new(seed, sizes.usize(1..=config.max_nodes));
    let steps = sizes.usize(config.max_steps / 4..=config.max_steps);
    let mut problems = Vec::new();
    for _ in 0..steps {
        world.chaos_step();
        if let Err(problem) = world.after_move() {
            problems.push(problem);
            break;
        }
    }
    if problems.is_empty() {
        if let Err(problem) = world.settle() {
            problems.push(problem);
        }
    }
    let nodes = world.store.nodes();
    let enis = world.ec2.enis();
    let mut records = world.created.clone();
    records.extend(world.members_seen.iter().cloned());
    problems.extend(check::violations(&records, &nodes, &world.ec2.instances(), &enis, &world.ec2.eips(), &world.drifted, &world.warnings_sent, &world.terminate_warned));
    problems.extend(check_volumes::violations(&nodes, &world.ec2.instances(), &world.ec2.volumes(), &world.ec2.impairments(), &world.health_events, &world.drifted, world.now()));
    let seen = check_groups::Seen {
        groups: &world.store.groups_now(),
        nodes: &nodes,
        reservations: &world.store.reservations_now(),
        enis: &enis,
        picked: &world.ec2.enis_with_picked_ips(),
        subnet_reservations: &world.ec2.subnet_reservations(),
        young_subnet_reservations: &world.ec2.subnet_reservations_made_since(world.now() - crate::ports::SUBNET_RESERVATION_GRACE),
    };
    problems.extend(check_groups::violations(&seen));
    if problems.is_empty() {
        return Ok(());
    }
    world.note_final_state(&seen);
    Err(Violation { seed, problems, log: world.log })
}

/// Runs `count` scenarios from `first_seed` on every core; returns how many ran and the
/// violations found.
pub fn run_many(first_seed: u64, count: u64, config: ChaosConfig) -> (u64, Vec<Violation>) {
    let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1) as u64;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut ran = 0;
                    let mut found = Vec::new();
                    for seed in (first_seed + t..first_seed + count).step_by(threads as usize) {
                        ran += 1;
                        found.extend(run_scenario(seed, config).err());
                    }
                    (ran, found)
                })
            })
            .collect();
        let mut total = (0, Vec::new());
        for worker in workers {
            // A worker that panicked ran nothing that counts.
            if let Ok((ran, found)) = worker.join() {
                total.0 += ran;
                total.1.extend(found);
            }
        }
        total
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_number(name: &str) -> Option<u64> {
        std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
    }

    /// `CHAOS_SEED=<n>` replays one scenario with its log; `CHAOS_SCENARIOS=<n>` sets how
    /// many run (default 10,000), from `CHAOS_FIRST_SEED` (default 1).
    #[test]
    fn chaos() {
        if let Some(seed) = env_number("CHAOS_SEED") {
            let _ = tracing_subscriber::fmt().with_test_writer().with_target(false).try_init();
            match run_scenario(seed, ChaosConfig::default()) {
                Ok(()) => println!("chaos: seed {seed} holds every invariant"),
                Err(v) => {
                    for line in &v.log {
                        println!("  {line}");
                    }
                    panic!("seed {seed}: {:#?}", v.problems);
                }
            }
            return;
        }
        let count = env_number("CHAOS_SCENARIOS").unwrap_or(10_000);
        let first = env_number("CHAOS_FIRST_SEED").unwrap_or(1);
        let (ran, violations) = run_many(first, count, ChaosConfig::default());
        println!("chaos: scenarios={ran} violations={}", violations.len());
        for v in violations.iter().take(40) {
            println!("seed {}: {:?}\n  replay: make chaos SEED={}", v.seed, v.problems, v.seed);
        }
        assert_eq!(ran, count, "every scenario asked for ran");
        assert!(violations.is_empty(), "{} of {ran} scenarios broke an invariant (seeds above)", violations.len());
    }
}
