//! The `hopper` binary: parses the command line, sets up logging, runs the command, and turns
//! its error into a message on stderr and an exit code (see `hopper::exit::exit_code`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use hopper::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Exits 2 with clap's usage message on bad flags.
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.command.default_log_level()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the whole error chain and picks the exit code.
fn fail(err: &anyhow::Error) -> ExitCode {
    let _ = writeln!(
        std::io::stderr().lock(),
        "hopper: {}",
        hopper::exit::message(err)
    );
    ExitCode::from(hopper::exit::exit_code(err))
}
