//! What one cycle tells its caller: the [`Report`] (outcome, reason, whether the live file is
//! usable and current, restarts, phase timings, the state left behind) and the two ways it
//! leaves the process besides metrics: the journal entry ([`Report::log`]) and the CLI's
//! one-line summary. The cycle fills it in; the supervisor, the CLI and the metrics read it.

use std::time::Duration;

use crate::model::ids::{Revision, Sha256};
use crate::model::labels::{FetchReason, Outcome, Phase};
use crate::model::reason::Reason;
use crate::store::state::TargetState;
use crate::util::digest::short;

/// Who asked for the cycle: a poll, or an operator's push or rollback. The report keeps it
/// (exit codes and commit statuses depend on it); the `Request` it came with is the cycle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// A poll of upstream (timer, webhook, `once`, boot).
    Poll,
    /// An operator's `push`.
    Push,
    /// An operator's `rollback`.
    Rollback,
}

impl Asked {
    /// What the operator asked for, as a sentence names it.
    pub fn noun(self) -> &'static str {
        match self {
            Asked::Poll => "poll",
            Asked::Push => "push",
            Asked::Rollback => "rollback",
        }
    }
}

/// The live file as a cycle leaves it: which content, whether it is usable, and the revision
/// that content came from. One value, so the three cannot disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    pub sha256: Option<Sha256>,
    /// The live file exists and passes validation.
    pub usable: bool,
    pub revision: Option<Revision>,
}

impl Live {
    /// Content that was just verified (or found in place and usable).
    pub fn good(sha256: Sha256, revision: Option<Revision>) -> Live {
        Live {
            sha256: Some(sha256),
            usable: true,
            revision,
        }
    }
}

/// How a cycle ended: its outcome and why, the live file, and whether that is success (usable
/// and equal to upstream). Every way out of a cycle ends with one; the report takes its
/// outcome, reason, live file and success from it, in one place.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    pub live: Live,
    pub success: bool,
}

impl Verdict {
    /// Ended with `outcome`; not success.
    pub fn new(outcome: Outcome, reason: Option<Reason>, live: Live) -> Verdict {
        Verdict {
            outcome,
            reason,
            live,
            success: false,
        }
    }

    /// Ended with the live file usable and what upstream serves (or what was asked for).
    pub fn success(outcome: Outcome, reason: Option<Reason>, live: Live) -> Verdict {
        let success = live.usable;
        Verdict {
            outcome,
            reason,
            live,
            success,
        }
    }
}

/// Everything the caller needs to record a cycle.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub asked: Asked,
    pub outcome: Outcome,
    /// Why: an error, or a note such as "verification skipped" ([`Reason::is_note`]).
    pub reason: Option<Reason>,
    /// The live file at the end of the cycle: set with the outcome, from one [`Verdict`].
    pub live: Live,
    /// `rulekeeper_fetch_failures_total{reason}` when the fetch failed.
    pub fetch_reason: Option<FetchReason>,
    /// When upstream may be asked again, when it named a time (a forge's rate limit).
    pub retry_at: Option<std::time::SystemTime>,
    /// The live file is usable and equal to upstream (or to what an operator pushed).
    pub success: bool,
    /// How many times the managed service was restarted.
    pub restarts: u32,
    pub drift_corrected: bool,
    /// Nothing was restarted or verified (the unit was not active, PowerSync's API did not
    /// answer): content installed, not proven.
    pub unverified: bool,
    /// The state file could not be saved after the cycle (the error): `/status` shows it,
    /// since what is on disk is older.
    pub unsaved: Option<String>,
    /// The state could not be read at all (no lock): `state` is not the target's.
    pub state_unknown: bool,
    /// The state file was written by a newer rulekeeper (exit 2: the binary must change).
    pub state_newer: bool,
    /// Upstream now serves quarantined content.
    pub quarantined: bool,
    pub held: bool,
    /// An operator's rollback took this revision (the live content's) off the host.
    pub rolled_back_from: Option<Revision>,
    pub phases: Vec<(Phase, Duration)>,
    /// The target's persisted state after the cycle (for gauges).
    pub state: TargetState,
}

impl Report {
    pub fn new(target: &str, asked: Asked) -> Self {
        Report {
            target: target.to_string(),
            asked,
            outcome: Outcome::Unchanged,
            reason: None,
            state_newer: false,
            fetch_reason: None,
            retry_at: None,
            live: Live::default(),
            success: false,
            restarts: 0,
            drift_corrected: false,
            unverified: false,
            unsaved: None,
            state_unknown: false,
            quarantined: false,
            held: false,
            rolled_back_from: None,
            phases: Vec::new(),
            state: TargetState::default(),
        }
    }

    /// Takes the cycle's verdict: the one writer of outcome, reason, live file and success.
    pub fn end(&mut self, v: Verdict) {
        self.outcome = v.outcome;
        self.reason = v.reason;
        self.live = v.live;
        self.success = v.success;
    }

    /// A fresh report for a second piece of work in the same cycle (an operator's command
    /// after a recovery): the restarts and phase timings so far carry over, nothing else.
    pub fn restarted(&self) -> Report {
        let mut r = Report::new(&self.target, self.asked);
        r.restarts = self.restarts;
        r.phases = self.phases.clone();
        r
    }

    /// How long the whole cycle took (zero before it is over).
    pub fn total(&self) -> Duration {
        self.phases
            .iter()
            .find(|(p, _)| *p == Phase::Total)
            .map(|(_, d)| *d)
            .unwrap_or_default()
    }

    /// Logs the cycle as one entry (docs/contract.md "journald": TARGET_NAME, OUTCOME,
    /// SHA256, REVISION, DURATION_MS, RESTARTS, REASON), at a level that says how much it
    /// matters. Unchanged cycles are debug: a poll that changes nothing is not news.
    pub fn log(&self) {
        let duration_ms = self.total().as_millis() as u64;
        let reason = self
            .reason
            .as_ref()
            .map(Reason::to_string)
            .unwrap_or_default();
        let reason = reason.as_str();
        let sha256 = self.live.sha256.as_deref().unwrap_or("");
        let revision = self.live.revision.as_deref().unwrap_or("");
        let (target_name, outcome, restarts) =
            (self.target.as_str(), self.outcome.as_str(), self.restarts);
        macro_rules! entry {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    target_name,
                    outcome,
                    sha256,
                    revision,
                    duration_ms,
                    restarts,
                    reason,
                    "cycle"
                )
            };
        }
        match self.outcome {
            Outcome::Unchanged => entry!(tracing::Level::DEBUG),
            Outcome::Applied | Outcome::Held | Outcome::Quarantined | Outcome::Gated => {
                entry!(tracing::Level::INFO)
            }
            Outcome::RollbackFailed | Outcome::StateError | Outcome::Failed => {
                entry!(tracing::Level::ERROR)
            }
            _ => entry!(tracing::Level::WARN),
        }
    }

    /// The CLI's one line: `target: outcome (live SHA, revision R): reason`.
    pub fn summary(&self) -> String {
        let sha = self.live.sha256.as_deref().map(short).unwrap_or("-");
        let mut line = format!("{}: {} (live {sha}", self.target, self.outcome);
        if let Some(r) = &self.live.revision {
            line.push_str(&format!(", revision {r}"));
        }
        line.push(')');
        if let Some(r) = &self.reason {
            line.push_str(&format!(": {r}"));
        }
        if !self.live.usable {
            line.push_str(" [no usable live file]");
        }
        line
    }
}
