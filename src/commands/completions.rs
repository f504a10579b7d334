//! `converse completions SHELL`: the shell completion script, generated from the command line.

use crate::cli::CompletionsArgs;
use crate::exit_codes::ExitCode;

pub fn run(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut script = vec![];
    clap_complete::generate(a.shell, &mut crate::cli::command(), "converse", &mut script);
    super::print_out(&script)?;
    Ok(ExitCode::Success)
}
