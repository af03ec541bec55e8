//! `make demo`: a spot market against the local AWS emulator, every function local.
//!
//! - `options`: the `DEMO_*` knobs.
//! - `market`: when each node's instance gets its warning and is reclaimed (seeded).
//! - `simulation`: the loop that delivers the market's warnings and the local event
//!   source's state changes to the real handlers, and runs the reconciler.
//! - `observed`: what the emulator reported over the run.
//! - `view`: the live table, or one line per event when stdout is not a terminal.
//! - `summary`: the verdict, computed from the emulator.
//! - `group`: the stateful group, its scale steps and its verdict.
//! - `nodes`: the single nodes and the data volume every node and member asks for.

pub mod group;
pub mod market;
pub mod nodes;
pub mod observed;
pub mod options;
pub mod simulation;
pub mod summary;
pub mod view;
