//! How a run ends: one exit code for every command, and panics turned into failures.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | everything was done (outputs that existed are skipped, with a note) |
//! | 1 | some items failed, each reported; the others were done |
//! | 2 | a usage or set-up error, found before any work: nothing was written |
//! | 130 | `finetune` stopped by Ctrl-C (or SIGTERM) after saving its checkpoint |
//!
//! A panic never ends a process with Rust's 101: inside one item it fails that item (1) and the
//! run goes on; anywhere else it ends the run with 1.

use std::sync::Mutex;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// Everything was done (0).
    Success,
    /// Some inputs failed, each reported; the others were done (1).
    SomeFailed,
    /// A usage or set-up error: nothing was done (2; clap uses it for bad arguments too).
    Error,
    /// Stopped by Ctrl-C or SIGTERM, with the work so far saved (130, the shell's code for
    /// SIGINT).
    Interrupted,
}

impl ExitCode {
    /// [`Self::Success`] with no failures, else [`Self::SomeFailed`].
    pub fn from_failures(failed: usize) -> Self {
        if failed == 0 {
            Self::Success
        } else {
            Self::SomeFailed
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        match code {
            ExitCode::Success => Self::SUCCESS,
            ExitCode::SomeFailed => Self::from(1),
            ExitCode::Error => Self::from(2),
            ExitCode::Interrupted => Self::from(130),
        }
    }
}

/// An error as one line of causes, outermost first, joined by `: ` (as `{:#}` does), each
/// cause left out when the text before it already ends with it (errors that print their
/// source and also return it).
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

/// Where the last panic happened and what it said, kept by the hook [`install_panic_hook`]
/// sets, for the error that [`catch_panic`] makes of it.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Panics print nothing themselves: [`catch_panic`] reports them as errors. With
/// `RUST_BACKTRACE` set, the default report (with its backtrace) is printed too.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    let verbose = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
        if verbose {
            default(info);
        }
    }));
}

/// A panic, caught: a bug, reported as an error.
#[derive(Debug)]
pub struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "internal error (a bug in converse, please report it): {}",
            self.0
        )
    }
}

impl std::error::Error for Panicked {}

/// Runs `f`, turning a panic into a [`Panicked`] error.
pub fn catch_panic<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        let what = LAST_PANIC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "a panic".into());
        Err(Panicked(what).into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_decide_the_code() {
        assert_eq!(ExitCode::from_failures(0), ExitCode::Success);
        assert_eq!(ExitCode::from_failures(3), ExitCode::SomeFailed);
        assert_eq!(
            std::process::ExitCode::from(ExitCode::Error),
            std::process::ExitCode::from(2)
        );
    }

    #[test]
    fn messages_name_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io).context("cannot write 'a.png': disk on fire");
        assert_eq!(message(&e), "cannot write 'a.png': disk on fire");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(message(&e), "outer: inner");
    }

    #[test]
    fn a_panic_becomes_an_error_naming_it() {
        install_panic_hook();
        let r: anyhow::Result<()> = catch_panic(|| panic!("boom {}", 7));
        let e = r.unwrap_err();
        assert!(e.is::<Panicked>());
        let e = e.to_string();
        assert!(
            e.starts_with("internal error (a bug in converse, please report it): boom 7 at src/"),
            "{e}"
        );
        assert_eq!(catch_panic(|| Ok(5)).unwrap(), 5);
    }
}
