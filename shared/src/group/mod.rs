//! Stateful groups: the model (`model`) and the controller (`controller`), a pure function
//! from a group and its members to what must be done to keep the group as the user asked.

mod controller;
mod model;

pub use controller::{plan, GroupAction, GroupStatus, Plan};
pub use model::{Group, GroupHistoryEntry, GroupId, GroupState, GroupSubnet, MemberTemplate, Membership, Rollout};
