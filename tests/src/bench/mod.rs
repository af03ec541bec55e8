//! `make bench`: a simulation of the deployed system on a virtual clock. Tether's
//! production code (the handlers, the service) runs unchanged on the AWS-faithful fakes,
//! with AWS's answers timed by a fixed model (`aws`), Lambda's delivery and concurrency
//! modelled as documented (`lambda`), and EC2's throttling by the fake's token buckets.

pub mod aws;
pub mod burst;
pub mod chart;
pub mod lambda;
pub mod queue;
pub mod reconciler;
pub mod sim;
pub mod world;
