//! The `hopper` binary: parses the command line, sets up logging, runs the command, and turns
//! its error into a message on stderr and an exit code (see `hopper::exit::exit_code`).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use hopper::cli::{self, Cli};
use hopper::config::Config;

/// mimalloc instead of glibc's malloc: the API allocates and frees a few dozen small buffers a
/// request (headers, bodies, JSON, futures), from every runtime thread; glibc's arenas and
/// their locks were ~13% of the CPU samples of `serve` under `wrk` (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Exits 2 with clap's usage message on bad flags.
    let cli = Cli::parse();
    // The log format is the config's; a config that cannot be read gets the default here, and
    // the command then reports why it cannot be read.
    let format = Config::load(cli.config.as_deref())
        .map(|l| l.config.log.format)
        .unwrap_or_default();
    hopper::logging::init(format, cli.command.default_log_level());

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
