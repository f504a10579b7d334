//! `converse man`: the man page converse(1) on stdout, or with `--dir DIR` one page per command
//! (`converse.1`, `converse-restore.1`, ...) written into DIR, replacing earlier pages.

use anyhow::Context;

use crate::cli::ManArgs;
use crate::exit_codes::ExitCode;

pub fn run(a: ManArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = a.dir else {
        super::print_out(&render(&cmd)?)?;
        return Ok(ExitCode::Success);
    };
    let pages = std::iter::once(&cmd).chain(cmd.get_subcommands().filter(|c| !c.is_hide_set()));
    let mut written = String::new();
    for c in pages {
        let name = c.get_display_name().unwrap_or(c.get_name());
        let path = dir.join(format!("{name}.1"));
        // The pages are this binary's own documentation: a newer one replaces an older one.
        converse::files::write_bytes(&path, converse::files::Existing::Replace, &render(c)?)
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        written.push_str(&format!("{}\n", path.display()));
    }
    super::print_out(written.as_bytes())?;
    Ok(ExitCode::Success)
}

/// The roff source of `cmd`'s page.
fn render(cmd: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut page = vec![];
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    Ok(page)
}
