//! The `visa-proxy` binary: parses the command line and runs the chosen subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    visa_proxy::cli::run(visa_proxy::cli::Cli::parse())
}
