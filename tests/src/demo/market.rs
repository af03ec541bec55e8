//! The spot market: when it takes each node's instance away. The times are drawn from
//! the seed before the run (a Poisson process per node: exponential gaps), so a seed
//! makes the same moves whatever the machine's speed; only an interruption that falls
//! due while its node is still recovering waits for the node's next instance.

use std::collections::BTreeSet;
use std::time::Duration;

use super::options::Options;

/// How long after its warning an interrupted instance is reclaimed. AWS gives two
/// minutes; the demo compresses it so that many interruptions fit in a short run.
pub const WARNING_LEAD: Duration = Duration::from_secs(2);

/// One interruption the market will send.
#[derive(Clone, Debug)]
struct Planned {
    at: Duration,
    node: usize,
}

/// An instance that got its warning and is reclaimed at `reclaim_at`.
#[derive(Clone, Debug)]
pub struct Warned {
    pub node: usize,
    pub instance_id: String,
    pub reclaim_at: Duration,
}

#[derive(Debug)]
pub struct Market {
    /// By time; removed when sent.
    planned: Vec<Planned>,
    planned_total: usize,
    awaiting_reclaim: Vec<Warned>,
    /// Every instance warned so far: the market warns an instance once.
    warned: BTreeSet<String>,
    closed: bool,
}

impl Market {
    /// The interruptions of `slots` nodes (the demo's nodes, then its group's members as
    /// they come).
    pub fn plan(options: &Options, slots: usize) -> Market {
        let mut rng = fastrand::Rng::with_seed(options.seed);
        let mut planned = Vec::new();
        if options.rate_per_node_minute > 0.0 {
            let mean_gap = 60.0 / options.rate_per_node_minute;
            let end = options.market_time.as_secs_f64();
            for node in 0..slots {
                let mut at = 0.0;
                loop {
                    // Inverse transform of a uniform draw in [0, 1): an exponential gap.
                    at += -(1.0 - rng.f64()).ln() * mean_gap;
                    if at >= end {
                        break;
                    }
                    planned.push(Planned { at: Duration::from_secs_f64(at), node });
                }
            }
        }
        planned.sort_by_key(|p| p.at);
        let planned_total = planned.len();
        Market { planned, planned_total, awaiting_reclaim: Vec::new(), warned: BTreeSet::new(), closed: false }
    }

    /// How many interruptions the seed planned.
    pub fn planned_total(&self) -> usize {
        self.planned_total
    }

    /// How many warnings were sent.
    pub fn sent(&self) -> usize {
        self.warned.len()
    }

    /// The interruptions to send at `now`, as (node, instance id). `running(node)` names
    /// the node's running instance, if it has one; a node without one (still recovering)
    /// keeps its due interruption for its next instance.
    pub fn warnings_due(&mut self, now: Duration, running: impl Fn(usize) -> Option<String>) -> Vec<(usize, String)> {
        if self.closed {
            return Vec::new();
        }
        let mut sent = Vec::new();
        let mut index = 0;
        while index < self.planned.len() && self.planned[index].at <= now {
            let node = self.planned[index].node;
            match running(node).filter(|id| !self.warned.contains(id)) {
                Some(instance_id) => {
                    self.planned.remove(index);
                    self.warned.insert(instance_id.clone());
                    self.awaiting_reclaim.push(Warned { node, instance_id: instance_id.clone(), reclaim_at: now + WARNING_LEAD });
                    sent.push((node, instance_id));
                }
                None => index += 1,
            }
        }
        sent
    }

    /// The warned instances whose time is up at `now`: the caller terminates them.
    pub fn reclaims_due(&mut self, now: Duration) -> Vec<Warned> {
        let (due, later) = std::mem::take(&mut self.awaiting_reclaim).into_iter().partition(|w| w.reclaim_at <= now);
        self.awaiting_reclaim = later;
        due
    }

    /// Whether a warned instance is still waiting to be reclaimed.
    pub fn reclaims_pending(&self) -> bool {
        !self.awaiting_reclaim.is_empty()
    }

    /// Stops sending warnings (the warned instances are still reclaimed, as on AWS);
    /// returns how many planned interruptions were never sent.
    pub fn close(&mut self) -> usize {
        self.closed = true;
        std::mem::take(&mut self.planned).len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
