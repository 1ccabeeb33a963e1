//! The process's exit status (docs/contract.md "CLI"): one enum with the documented codes,
//! the one mapping from a cycle's report (or its error) to it, and the rule that combines
//! several targets' codes. Every command reaches its code through these functions, so one
//! failure gives one code; `main` is the one place an `Exit` becomes the process status.

use crate::cycle::report::{Asked, Report};
use crate::cycle::CycleError;
use crate::model::labels::Outcome;
use crate::store::history::HistoryError;
use crate::store::state::{StateError, StateTrouble};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The live file is usable and current (applied, unchanged, or upstream unreachable
    /// while a usable file exists); a command did what was asked.
    Ok,
    /// Code 1: a candidate was rejected or rolled back, upstream's content is quarantined, a
    /// target's state file is corrupt, or an operator's request could not be carried out. (A
    /// cycle that *failed* on I/O is `Io`.)
    Rejected,
    /// Usage or configuration error.
    Usage,
    /// No usable live file exists.
    NoUsableFile,
    /// A rollback left the service unhealthy on last-good (the emergency case).
    RollbackFailed,
    /// The cycle failed on I/O (installing the file, saving state): the host needs an
    /// operator (disk full, read-only, permissions); the live file is usable.
    Io,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Rejected => 1,
            Exit::Usage => 2,
            Exit::NoUsableFile => 3,
            Exit::RollbackFailed => 4,
            Exit::Io => 5,
        }
    }

    /// How serious: the emergency first, then a host that cannot store what it does, then
    /// no usable file; codes 0-4 were numbered this way before 5 was added.
    fn seriousness(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Rejected => 1,
            Exit::Usage => 2,
            Exit::NoUsableFile => 3,
            Exit::Io => 4,
            Exit::RollbackFailed => 5,
        }
    }

    /// Of two targets' codes, the more serious (`once` over several targets).
    pub fn worse(self, other: Exit) -> Exit {
        if other.seriousness() > self.seriousness() {
            other
        } else {
            self
        }
    }

    /// What a finished cycle means for `once`, `push` and `rollback`.
    pub fn of(rep: &Report) -> Exit {
        match rep.outcome {
            Outcome::RollbackFailed => Exit::RollbackFailed,
            _ if !rep.live.usable => Exit::NoUsableFile,
            Outcome::Failed => Exit::Io,
            // A manual rollback that left the service healthy did what was asked.
            Outcome::RolledBack if rep.asked == Asked::Rollback => Exit::Ok,
            Outcome::StateError if rep.state_newer => Exit::Usage,
            Outcome::Rejected
            | Outcome::RolledBack
            | Outcome::Quarantined
            | Outcome::StateError => Exit::Rejected,
            _ => Exit::Ok,
        }
    }

    /// What a cycle that could not run means. An operator's request that cannot be carried
    /// out is `Rejected`; without a usable live file, `NoUsableFile` (as for a report); else the
    /// failure's own code, the one every command gives for it.
    pub fn of_cycle_error(e: &CycleError, live_file_usable: bool) -> Exit {
        match e {
            CycleError::Refused(_) | CycleError::Internal(_) => Exit::Rejected,
            _ if !live_file_usable => Exit::NoUsableFile,
            CycleError::State(s) => Exit::of_state(s),
            CycleError::Install(_) => Exit::Io,
            CycleError::Aborted | CycleError::Deferred => Exit::Rejected,
        }
    }

    /// A target's state that cannot be used: a corrupt file is the target's own trouble
    /// (`Rejected`, as the cycle's `state_error`); a directory or lock rulekeeper cannot read
    /// or write is the host's (`Io`).
    pub fn of_state(e: &StateError) -> Exit {
        Exit::of_trouble(e.trouble())
    }

    pub fn of_trouble(t: StateTrouble) -> Exit {
        match t {
            StateTrouble::Corrupt => Exit::Rejected,
            // Like a config this binary cannot run: the operator must change the binary.
            StateTrouble::Newer => Exit::Usage,
            StateTrouble::Host => Exit::Io,
        }
    }

    /// A target's history that cannot be used, by the same rule as [`Exit::of_state`].
    pub fn of_history(e: &HistoryError) -> Exit {
        match e {
            HistoryError::Io { .. } => Exit::Io,
            HistoryError::Corrupt { .. } | HistoryError::NotFound(_) => Exit::Rejected,
            HistoryError::Newer { .. } => Exit::Usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worse_ranks_rollback_failed_highest() {
        use Exit::*;
        assert_eq!(Ok.worse(Rejected), Rejected);
        assert_eq!(Rejected.worse(NoUsableFile), NoUsableFile);
        assert_eq!(RollbackFailed.worse(NoUsableFile), RollbackFailed);
        assert_eq!(Usage.worse(Rejected), Usage);
        assert_eq!(Rejected.worse(Usage), Usage);
        assert_eq!(Io.worse(RollbackFailed), RollbackFailed);
        assert_eq!(NoUsableFile.worse(Io), Io);
        assert_eq!(Io.code(), 5);
    }

    #[test]
    fn report_mapping() {
        let mut r = Report::new("t", Asked::Poll);
        r.live.usable = true;
        r.outcome = Outcome::RolledBack;
        assert_eq!(Exit::of(&r), Exit::Rejected);
        r.asked = Asked::Rollback;
        assert_eq!(Exit::of(&r), Exit::Ok);
        r.outcome = Outcome::RollbackFailed;
        assert_eq!(Exit::of(&r), Exit::RollbackFailed);
        r.outcome = Outcome::Applied;
        r.live.usable = false;
        assert_eq!(Exit::of(&r), Exit::NoUsableFile);
    }
}
