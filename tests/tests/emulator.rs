//! Tests against the AWS emulator (moto, patched to hold AWS's rules; see tests/emulator/).
//! One test binary: the emulator starts once and every test gets its own VPC and table.

mod emulator {
    pub mod rules;
    pub mod volume_rules;
    pub mod api;
    pub mod cli;
    pub mod cli_groups;
    pub mod groups;
    pub mod iam;
    pub mod local_api;
    pub mod scenarios;
    pub mod launch;
    pub mod identity;
    pub mod extra_enis;
    pub mod templates;
    pub mod queued;
    pub mod reconciler;
    pub mod data_volumes;
    pub mod healing;
    pub mod chaos;
}
