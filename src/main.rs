//! The `converse` command line: arguments in [`cli`], one module per command in [`commands`].

mod cli;
mod commands;
mod exit_codes;

use std::io::Write;

use cli::Command;
use exit_codes::ExitCode;

#[global_allocator]
static ALLOC: converse::alloc::Allocator = converse::alloc::Allocator;

fn main() -> std::process::ExitCode {
    // Errors are for users: keep library backtraces out of them (panics still honour
    // RUST_BACKTRACE).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    exit_codes::install_panic_hook();
    match exit_codes::catch_panic(run) {
        Ok(code) => code.into(),
        Err(e) => {
            // Not eprintln!: a closed stderr must not panic here.
            let _ = writeln!(std::io::stderr(), "error: {}", exit_codes::message(&e));
            if e.is::<exit_codes::Panicked>() {
                ExitCode::SomeFailed.into()
            } else {
                ExitCode::Error.into()
            }
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    converse::alloc::reuse_large_blocks();
    // Threads follow the CPUs the job may use (affinity, cgroup quota, SLURM_CPUS_PER_TASK).
    converse::resources::configure_threads();
    match cli::parse().command {
        Command::Convert(a) => commands::convert::run(a),
        Command::Restore(a) => commands::restore::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Degrade(a) => commands::degrade::run(a),
        Command::Finetune(a) => commands::finetune::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Completions(a) => commands::completions::run(a),
        Command::Man(a) => commands::man::run(a),
    }
}
