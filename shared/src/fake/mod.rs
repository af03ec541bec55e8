//! In-memory fakes of the ports that behave like AWS: the rules of DESIGN.md and the
//! emulator's README (tests/emulator/README.md), with the same error codes, classified by
//! `AwsError::from_code` exactly as the adapters' errors are. They are deterministic: no
//! wall clock (a virtual clock the test advances), no randomness but a seeded generator.
//!
//! Each port method performs the same AWS calls, in the same order, as its adapter (for
//! example `associate_eip` is DescribeAddresses then AssociateAddress), and each of those
//! calls is counted, throttled and can be made to fail by name (`fail_next`), with the
//! effect withheld or applied (`fail_next_after`: "the call succeeded but the caller never
//! heard", as when Lambda dies right after it).
//!
//! Built only with the `fakes` feature: `cargo test -p tether --features fakes`.

pub mod chaos;
mod clock;
mod ec2;
mod faults;
mod metrics;
mod store;

pub use clock::{CallTiming, FakeClock};
pub use ec2::{EniView, EipView, FakeEc2, InstanceView, VolumeView, EC2_BUCKETS, KNOWN_INSTANCE_TYPES};
pub use faults::{Fault, FaultInjection, When};
pub use metrics::RecordedMetrics;
pub use store::{FakeIdempotency, FakeStore};

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod observability_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod volume_tests;
