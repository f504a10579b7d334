//! `converse completions SHELL`: the shell completion script, generated from the command line.

use crate::cli::CompletionsArgs;
use crate::exit_codes::ExitCode;

pub fn run(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::cli::command();
    clap_complete::generate(a.shell, &mut cmd, "converse", &mut std::io::stdout());
    Ok(ExitCode::Success)
}
