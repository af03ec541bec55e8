//! `tether`: see the crate's library for the commands.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let env = tether_cli::Environment::from_process();
    let code = tether_cli::run(std::env::args_os(), &env, &mut std::io::stdout(), &mut std::io::stderr()).await;
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
