//! Going back to last-good after new content failed: quarantine the bad hash, move `pending`
//! to `rolling_back`, put `.prev` back, restart and verify. A unit that ran before the apply
//! is brought back even if the bad content killed it, and is always verified: healthy is
//! `rolled_back`, anything else `rollback_failed`.

use chrono::Utc;

use super::report::{Live, Verdict};
use super::{CycleError, Runner};
use crate::model::ids::Sha256;
use crate::model::labels::Outcome;
use crate::model::reason::Reason;
use crate::service::activate::WasRunning;
use crate::service::validate;
use crate::store::install;
use crate::store::state::{Applied, PendingStage};

/// What going back to `.prev` found.
enum PrevBack {
    /// Last-good, now the live file.
    Restored(Vec<u8>),
    /// No usable `.prev`: the live file (its sha256) stays as it is.
    Nothing { live_sha: Option<Sha256> },
}

impl Runner<'_, '_> {
    /// Restores `.prev` after `bad_sha` failed; quarantines it.
    pub(super) async fn roll_back(
        &mut self,
        bad_sha: &str,
        why: Reason,
        was: WasRunning,
    ) -> Result<(), CycleError> {
        self.quarantine(bad_sha, &why.to_string());
        if let Some(p) = self.st.pending.as_mut() {
            p.stage = PendingStage::RollingBack;
        }
        // The record is for crash safety; the service needs last-good back either way. A
        // state that cannot be saved (a full disk, the state directory removed) does not stop
        // the rollback; the cycle's final save reports it.
        if let Err(e) = self.ctx.store.save(self.st) {
            tracing::error!(target_name = %self.t().name, error = %e, "cannot record the rollback; rolling back all the same");
        }
        self.restore_prev(bad_sha, why, was).await
    }

    /// The service did not take `bad_sha` in (PowerSync's deploy API answered 422, or a
    /// reload could not be sent): `.prev` goes back in place of the live file, and nothing is
    /// restarted or reloaded, since the service still runs what `.prev` holds.
    pub(super) fn undo_refused(
        &mut self,
        bad_sha: &str,
        why: Reason,
        quarantine: bool,
    ) -> Result<(), CycleError> {
        let t = self.ctx.target;
        tracing::warn!(target_name = %t.name, sha256 = %bad_sha, error = %why, "the service refused the new content; putting the last-good file back");
        if quarantine {
            self.quarantine(bad_sha, &format!("validation failed: {why}"));
        }
        self.st.pending = None;
        let revision = self.applied_revision();
        let live = match self.put_prev_back(bad_sha)? {
            PrevBack::Restored(prev) => Live::good(Sha256::of(&prev), revision),
            // A first apply: there is no last-good, and the service runs none of ours.
            PrevBack::Nothing { live_sha } => Live {
                sha256: live_sha,
                usable: false,
                revision,
            },
        };
        self.rep
            .end(Verdict::new(Outcome::Rejected, Some(why), live));
        Ok(())
    }

    /// Puts a usable `.prev` in place of the live file if that is still `bad_sha`.
    fn put_prev_back(&self, bad_sha: &str) -> Result<PrevBack, CycleError> {
        let t = self.ctx.target;
        let prev = install::read_live(&install::prev_path(&t.path), &t.file)?;
        let live_sha = self.read_live()?.as_deref().map(Sha256::of);
        let Some(prev) = prev.filter(|p| validate::usable_builtin(&t.validate, Some(p))) else {
            return Ok(PrevBack::Nothing { live_sha });
        };
        if live_sha.as_deref() == Some(bad_sha) {
            let c = install::stage(&t.path, &prev, &t.file)?;
            install::install(c, &t.path, None, &t.file)?;
            tracing::warn!(target_name = %t.name, sha256 = %Sha256::of(&prev), "restored .prev");
        }
        Ok(PrevBack::Restored(prev))
    }

    /// Puts `.prev` back (if the live file is still `bad_sha`), restarts and verifies. A unit
    /// that ran before the apply (`was`) is brought back up even if the bad content killed
    /// it, and is always verified.
    pub(super) async fn restore_prev(
        &mut self,
        bad_sha: &str,
        why: Reason,
        was: WasRunning,
    ) -> Result<(), CycleError> {
        let t = self.ctx.target;
        let revision = self.applied_revision();
        let prev = match self.put_prev_back(bad_sha)? {
            PrevBack::Restored(prev) => prev,
            PrevBack::Nothing { live_sha } => {
                self.st.pending = None;
                let after = format!(
                    "and there is no usable {} to roll back to",
                    install::prev_path(&t.path).display()
                );
                self.rep.end(Verdict::new(
                    Outcome::RollbackFailed,
                    Some(Reason::RollbackFailed {
                        cause: Box::new(why),
                        after,
                    }),
                    Live {
                        sha256: live_sha,
                        usable: false,
                        revision,
                    },
                ));
                return Ok(());
            }
        };
        let prev_sha = Sha256::of(&prev);
        let checked = self.restart_and_verify(&prev, was).await;
        self.st.pending = None;
        let live = Live::good(prev_sha.clone(), revision);
        if self
            .st
            .applied
            .as_ref()
            .is_none_or(|a| a.sha256 != prev_sha)
        {
            self.st.applied = Some(Applied {
                sha256: prev_sha,
                revision: None,
                at: Utc::now(),
            });
        }
        self.rep.end(match checked {
            Ok(_) => Verdict::new(
                Outcome::RolledBack,
                Some(Reason::RolledBack(Box::new(why))),
                live,
            ),
            Err(e) => {
                tracing::error!(target_name = %t.name, error = %e, "service unhealthy on the last-good file too");
                Verdict::new(
                    Outcome::RollbackFailed,
                    Some(Reason::RollbackFailed {
                        cause: Box::new(why),
                        after: format!("after rolling back: {e}"),
                    }),
                    live,
                )
            }
        });
        Ok(())
    }
}
