//! Applying content: the operator's `push` and `rollback` entry points, then the common path
//! of every apply: stage a candidate beside the live file, validate it (rejected →
//! quarantine), ask the fleet gate, record `pending`, swap, restart + verify, and commit
//! `applied` or hand over to `rollback`.

use std::time::Instant;

use chrono::Utc;

use super::report::{Live, Verdict};
use super::{CycleError, Origin, Runner};
use crate::config::RestartKind;
use crate::model::ids::{Revision, Sha256};
use crate::model::labels::{Outcome, Phase};
use crate::model::reason::Reason;
use crate::service::activate::{self, RestartError, Restarted, WasRunning};
use crate::service::gate;
use crate::service::powersync::DeployError;
use crate::service::validate;
use crate::service::verify::{self, VerifyError};
use crate::store::install::{self, Candidate};
use crate::store::lock;
use crate::store::state::{self, Applied, GateWait, Pending, PendingStage, Quarantine};
use crate::util::digest::short;

/// A restart + verify that did not fail.
#[derive(Debug)]
pub(super) enum Checked {
    Verified,
    /// Deployed through PowerSync's API and clean, but still in its initial replication:
    /// followed by later cycles until it is active.
    Deploying,
    /// Nothing restarted, nothing verified: the unit was not running and not ours to
    /// start, or PowerSync's API did not answer.
    Skipped {
        why: String,
    },
}

impl Checked {
    /// What a good outcome still wants said.
    pub(super) fn note(&self) -> Option<String> {
        match self {
            Checked::Verified => None,
            Checked::Deploying => Some(
                "PowerSync is deploying it (initial replication); followed until it is active"
                    .into(),
            ),
            Checked::Skipped { why } => Some(why.clone()),
        }
    }
}

/// Why a restart + verify failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CheckFailed {
    #[error("restart failed: {0}")]
    Restart(#[from] RestartError),
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
}

/// Content to apply and where it comes from.
struct Apply {
    body: Vec<u8>,
    sha: Sha256,
    revision: Option<Revision>,
    live: Option<Vec<u8>>,
    mode: Origin,
}

impl Runner<'_, '_> {
    pub(super) async fn push(&mut self, body: Vec<u8>) -> Result<(), CycleError> {
        let live = self.read_live()?;
        let sha = Sha256::of(&body);
        if live.as_deref().map(Sha256::of).as_deref() == Some(sha.as_str()) {
            self.rep.end(Verdict::success(
                Outcome::Unchanged,
                Some(Reason::Note(
                    "the live file already has this content".into(),
                )),
                Live::good(sha, None),
            ));
            return Ok(());
        }
        self.apply(body, sha, Some(Revision::from("push")), live, Origin::Push)
            .await
    }

    pub(super) async fn manual_rollback(&mut self) -> Result<(), CycleError> {
        let live = self.read_live()?;
        let prev_path = install::prev_path(&self.t().path);
        let prev = install::read_live(&prev_path, &self.t().file)?.ok_or_else(|| {
            CycleError::Refused(format!(
                "nothing to roll back to: {} does not exist",
                prev_path.display()
            ))
        })?;
        let prev_sha = Sha256::of(&prev);
        let live_sha = live.as_deref().map(Sha256::of);
        if live_sha.as_deref() == Some(prev_sha.as_str()) {
            return Err(CycleError::Refused(format!(
                "nothing to roll back to: {} equals the live file",
                prev_path.display()
            )));
        }
        validate::builtin(&self.t().validate, &prev).map_err(|e| {
            CycleError::Refused(format!("{} is not usable: {e}", prev_path.display()))
        })?;
        if let Some(l) = &live_sha {
            self.quarantine(l, "rolled back by an operator");
        }
        self.rep.rolled_back_from = live_sha.as_deref().and_then(|l| self.st.revision_of(l));
        let revision = self.st.applied.as_ref().map(|_| Revision::from("rollback"));
        self.apply(prev, prev_sha, revision, live, Origin::ManualRollback)
            .await
    }

    pub(super) async fn rollback_to(&mut self, key: &str) -> Result<(), CycleError> {
        let t = self.ctx.target;
        let (entry, body) = crate::store::history::History::new(self.ctx.store.dir())
            .find(key)
            .map_err(|e| CycleError::Refused(format!("cannot roll back to `{key}`: {e}")))?;
        let live = self.read_live()?;
        let live_sha = live.as_deref().map(Sha256::of);
        if live_sha.as_deref() == Some(entry.sha256.as_str()) {
            return Err(CycleError::Refused(format!(
                "nothing to roll back to: {} is the live file already",
                short(&entry.sha256)
            )));
        }
        if let Some(l) = &live_sha {
            self.quarantine(
                l,
                &format!("rolled back by an operator to {}", short(&entry.sha256)),
            );
        }
        self.rep.rolled_back_from = live_sha.as_deref().and_then(|l| self.st.revision_of(l));
        self.apply(
            body,
            entry.sha256.clone(),
            entry.revision.clone(),
            live,
            Origin::RollbackTo,
        )
        .await?;
        if self.rep.outcome == Outcome::RolledBack
            && self.rep.live.sha256.as_deref() == Some(entry.sha256.as_str())
        {
            // Held there: the next poll would otherwise bring upstream's content back.
            self.st.hold = true;
            let note = format!(
                "rolled back to {} (revision {}); held there until `rulekeeper release`",
                short(&entry.sha256),
                entry.revision.as_deref().unwrap_or("-")
            );
            tracing::warn!(target_name = %t.name, "{note}");
            self.rep.reason = Some(Reason::Note(note));
        }
        Ok(())
    }

    pub(super) fn quarantine(&mut self, sha: &str, reason: &str) {
        tracing::warn!(target_name = %self.t().name, sha256 = %sha, reason, "quarantining content");
        let q = Quarantine {
            sha256: sha.into(),
            reason: reason.to_string(),
            at: Utc::now(),
        };
        self.ctx.observer.quarantined(self.t(), &q);
        self.st.quarantine = Some(q);
    }

    /// Validate (unless a manual rollback), swap, restart, verify; roll back on failure.
    pub(super) async fn apply(
        &mut self,
        body: Vec<u8>,
        sha: Sha256,
        revision: Option<Revision>,
        live: Option<Vec<u8>>,
        mode: Origin,
    ) -> Result<(), CycleError> {
        let a = Apply {
            body,
            sha,
            revision,
            live,
            mode,
        };
        let Some(candidate) = self.admit(&a).await? else {
            return Ok(());
        };
        if mode.gated() {
            let t = self.ctx.target;
            if let Some(p) =
                crate::cycle::commit_status::entering(t, self.st, a.revision.as_deref())
            {
                self.ctx.observer.post(t, p);
            }
        }
        if self.ctx.stop.requested() {
            return Err(CycleError::Aborted);
        }
        self.defer_at_boot(mode.forward()).await?;
        let _unit = self.unit_lock().await?;
        let unit_running = self.swap(&a, candidate).await?;
        match self.restart_and_verify(&a.body, mode.forward()).await {
            Ok(checked) => {
                let live = self.commit_applied(&a.sha, a.revision);
                let note = checked.note().map(Reason::Note);
                self.rep.end(if mode.success() {
                    Verdict::success(mode.verified(), note, live)
                } else {
                    Verdict::new(mode.verified(), note, live)
                });
                self.rep.drift_corrected = mode.drift();
                Ok(())
            }
            Err(e) if mode == Origin::ManualRollback => {
                self.st.pending = None;
                let live = self.commit_applied(&a.sha, a.revision);
                self.rep.end(Verdict::new(
                    Outcome::RollbackFailed,
                    Some(Reason::Unhealthy(format!(
                        "unhealthy after rolling back: {e}"
                    ))),
                    live,
                ));
                Ok(())
            }
            Err(CheckFailed::Restart(RestartError::Deploy(e)))
                if matches!(e, DeployError::Rejected(_) | DeployError::Disabled) =>
            {
                // PowerSync took nothing in: the service is untouched, only the file goes
                // back. A parse error is the content's fault (quarantined); a disabled API is
                // PowerSync's config, and the reason names the fix.
                let quarantine =
                    matches!(e, DeployError::Rejected(_)) && mode.quarantines_rejects();
                self.undo_refused(&a.sha, Reason::Rejected(e.to_string()), quarantine)
            }
            Err(CheckFailed::Restart(e @ RestartError::NotSent(_))) => {
                // The reload never reached the service (a stale pid file): it still runs
                // last-good, so only the file goes back. Not the content's fault: nothing is
                // quarantined, and the reason names what to fix.
                self.undo_refused(&a.sha, Reason::Stopped(e.to_string()), false)
            }
            Err(e) => {
                tracing::error!(target_name = %self.t().name, sha256 = %a.sha, error = %e, "new content failed; rolling back");
                self.roll_back(
                    &a.sha,
                    Reason::Unhealthy(e.to_string()),
                    WasRunning::from(unit_running),
                )
                .await
            }
        }
    }

    /// Stages and validates the candidate and asks the gate. None when the cycle ends here
    /// (rejected, gated) with the live file left as it is.
    async fn admit(&mut self, a: &Apply) -> Result<Option<Candidate>, CycleError> {
        let t = self.ctx.target;
        let live = a.live.as_deref();
        let t0 = Instant::now();
        // Only an interrupted run leaves temp files, and only applying creates them.
        if !self.ctx.tidy {
            install::remove_stale_temps(&t.path);
        }
        let candidate = install::stage(&t.path, &a.body, &t.file)?;
        let checked = if a.mode.validates() {
            validate::full(&t.validate, candidate.path(), &t.path, &a.body).await
        } else {
            Ok(())
        };
        self.timed(Phase::Validate, t0);
        if let Err(e) = checked {
            drop(candidate);
            tracing::warn!(target_name = %t.name, sha256 = %a.sha, error = %e, "candidate rejected");
            if a.mode.quarantines_rejects() {
                self.quarantine(&a.sha, &format!("validation failed: {e}"));
            }
            self.leave(
                Outcome::Rejected,
                Some(Reason::Rejected(e.to_string())),
                live,
            )
            .await?;
            return Ok(None);
        }
        if a.mode.gated() {
            if let Some(why) = self.gate_closed(&a.sha, a.revision.as_deref()).await {
                drop(candidate);
                self.leave(Outcome::Gated, Some(Reason::Stopped(why)), live)
                    .await?;
                return Ok(None);
            }
        }
        Ok(Some(candidate))
    }

    /// Records `pending` durably, then puts the candidate in place (the old live file
    /// becomes `.prev`). Returns whether the unit was running before the swap.
    async fn swap(&mut self, a: &Apply, candidate: Candidate) -> Result<Option<bool>, CycleError> {
        let t = self.ctx.target;
        let unit_running = match activate::running_now(&t.restart).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target_name = %t.name, error = %e, "cannot tell whether the unit runs");
                None
            }
        };
        self.st.pending = Some(Pending {
            new_sha256: a.sha.clone(),
            prev_sha256: a.live.as_deref().map(Sha256::of),
            revision: a.revision.clone(),
            stage: PendingStage::Applying,
            started_at: Utc::now(),
            unit_running,
            boot_id: state::boot_id(),
        });
        self.ctx.store.save(self.st)?;
        let t0 = Instant::now();
        install::install(candidate, &t.path, a.live.as_deref(), &t.file)?;
        self.timed(Phase::Install, t0);
        tracing::info!(target_name = %t.name, sha256 = %a.sha, revision = a.revision.as_deref().unwrap_or(""), "installed new content");
        Ok(unit_running)
    }

    /// Asks the target's gate about new upstream content; Some(why) while it stays closed.
    /// Content already applied (a drift correction back to it) passed the gate before.
    async fn gate_closed(&mut self, sha: &str, revision: Option<&str>) -> Option<String> {
        let g = self.t().gate.as_ref()?;
        if self.st.applied.as_ref().is_some_and(|a| a.sha256 == sha) {
            return None;
        }
        match gate::ask(g, sha, revision).await {
            gate::Answer::Open => {
                tracing::info!(target_name = %self.t().name, sha256 = %sha, "gate open");
                self.st.gate = None;
                None
            }
            gate::Answer::Closed(reason) => {
                let since = match &self.st.gate {
                    Some(w) if w.sha256 == sha => w.since,
                    _ => Utc::now(),
                };
                let why = format!(
                    "gated since {}: {reason}; upstream {} waits (asked again every {})",
                    since.format("%Y-%m-%d %H:%M:%S UTC"),
                    short(sha),
                    humantime::format_duration(g.interval)
                );
                self.st.gate = Some(GateWait {
                    sha256: sha.into(),
                    since,
                    reason,
                });
                Some(why)
            }
        }
    }

    /// Records `sha` as applied (verified) and returns the live file it now is.
    pub(super) fn commit_applied(&mut self, sha: &Sha256, revision: Option<Revision>) -> Live {
        // Content that passed verification now is no longer known-bad (an operator pushed it
        // again after fixing what made it fail).
        if self
            .st
            .quarantine
            .as_ref()
            .is_some_and(|q| q.sha256 == *sha)
        {
            self.st.quarantine = None;
        }
        self.st.gate = None;
        self.st.applied = Some(Applied {
            sha256: sha.into(),
            revision: revision.clone(),
            at: Utc::now(),
        });
        self.st.pending = None;
        Live::good(sha.clone(), revision)
    }

    pub(super) async fn unit_lock(&self) -> Result<Option<lock::LockGuard>, CycleError> {
        // Restarts and reloads of one unit take turns across targets.
        let unit = match self.t().restart.kind() {
            RestartKind::Systemd(unit) | RestartKind::SystemdReload(unit) => unit,
            RestartKind::Signal(s) => match s.unit {
                Some(unit) => unit,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let dir = self.ctx.state_dir.clone();
        let g = super::blocking_lock(move || lock::unit_lock(&dir, &unit)).await??;
        Ok(Some(g))
    }

    /// Restarts and verifies `content`. `was` says whether the unit ran before the apply
    /// this belongs to (see `activate::restart`).
    pub(super) async fn restart_and_verify(
        &mut self,
        content: &[u8],
        was: WasRunning,
    ) -> Result<Checked, CheckFailed> {
        let t = self.ctx.target;
        let before = verify::before(&t.verify).await;
        let t0 = Instant::now();
        let r = activate::restart(&t.restart, was, content).await;
        self.timed(Phase::Restart, t0);
        let restarted = r?;
        let skipped = match &restarted {
            Restarted::NotActive { unit } => Some(format!(
                "{unit} is not active, so it was not restarted; verification skipped"
            )),
            Restarted::NotAnswering { detail } => Some(format!(
                "PowerSync's API does not answer ({detail}), so nothing was deployed; the live file is deployed once it answers"
            )),
            _ => None,
        };
        if let Some(why) = skipped {
            tracing::info!(target_name = %t.name, "{why}");
            self.rep.unverified = true;
            return Ok(Checked::Skipped { why });
        }
        // A reload keeps the process (and its clients): it is no restart.
        if restarted != Restarted::Nothing && !restarted.is_reload() {
            self.rep.restarts += 1;
        }
        let t0 = Instant::now();
        let v = verify::verify(&t.verify, &restarted, content, &before).await;
        self.timed(Phase::Verify, t0);
        // What the service runs now is settled: only a clean deploy still replicating is
        // followed.
        self.st.deploying = None;
        match v? {
            verify::Healthy::Yes => Ok(Checked::Verified),
            verify::Healthy::Deploying => {
                self.st.deploying = Some(state::Deploying {
                    sha256: Sha256::of(content),
                    since: Utc::now(),
                });
                Ok(Checked::Deploying)
            }
        }
    }
}
