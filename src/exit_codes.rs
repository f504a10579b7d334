//! The exit status of a run.

/// How a run ended. The worse of two outcomes wins ([`ExitCode::merge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitCode {
    /// Everything was done (0).
    Success,
    /// Some inputs failed, each reported; the others were done (1).
    SomeFailed,
    /// A usage or set-up error: nothing was done (2; clap uses it for bad arguments too).
    Error,
}

impl ExitCode {
    /// The worse of the two.
    pub fn merge(self, other: Self) -> Self {
        self.max(other)
    }

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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worse_outcome_wins() {
        use ExitCode::*;
        assert_eq!(Success.merge(SomeFailed), SomeFailed);
        assert_eq!(Error.merge(SomeFailed), Error);
        assert_eq!(Success.merge(Success), Success);
        assert_eq!(ExitCode::from_failures(0), Success);
        assert_eq!(ExitCode::from_failures(3), SomeFailed);
    }
}
