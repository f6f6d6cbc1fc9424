//! The `visa-proxy` binary: parses the command line and runs the chosen subcommand.

use clap::Parser;

// mimalloc: allocation is a visible share of per-request cost with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    visa_proxy::cli::run(visa_proxy::cli::Cli::parse())
}
