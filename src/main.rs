//! The `converse` command line: arguments in [`cli`], one module per command in [`commands`].

mod cli;
mod commands;
mod exit_codes;

use clap::Parser;

use cli::{Cli, Command};
use exit_codes::ExitCode;

#[global_allocator]
static ALLOC: converse::alloc::Allocator = converse::alloc::Allocator;

fn main() -> std::process::ExitCode {
    // Errors are for users: keep library backtraces out of them (panics still honour
    // RUST_BACKTRACE).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    match run() {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::Error.into()
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    // Threads follow the CPUs the job may use (affinity, cgroup quota, SLURM_CPUS_PER_TASK).
    converse::resources::configure_threads();
    match Cli::parse().command {
        Command::Convert(a) => commands::convert::run(a),
        Command::Restore(a) => commands::restore::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Degrade(a) => commands::degrade::run(a),
    }
}
