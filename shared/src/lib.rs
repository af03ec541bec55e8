//! Tether: keeps a spot node's ENI, private IP and Elastic IP across interruptions.
//!
//! The domain decides (`lifecycle`, a pure state machine, and `service`), the adapters
//! talk to AWS (`aws`), and the functions translate Lambda events (`lambda`).

pub mod aws;
pub mod conditions;
pub mod config;
pub mod data_volumes;
pub mod deallocation;
pub mod error;
pub mod events;
#[cfg(feature = "fakes")]
pub mod fake;
pub mod group;
pub mod health;
pub mod intake;
pub mod lambda;
pub mod launch_options;
pub mod lifecycle;
pub mod model;
pub mod network_identity;
pub mod ports;
pub mod schedules;
pub mod service;
pub mod views;
pub mod volumes;

pub use error::{AwsError, ErrorClass};
pub use model::{Market, Node, NodeId, NodeSpec, NodeState, Persistence};
pub use service::{ImportRequest, Outcome, Ports, Settings, Tether, TetherError};
