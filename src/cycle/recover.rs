//! An apply a previous run died in (a `pending` record found at the start of a cycle), and
//! the boot rule that goes with it: before READY=1 the daemon never asks systemd to restart
//! or start a unit (its job would wait behind our own start job), so such work is deferred.

use super::report::Verdict;
use super::{CycleError, Runner};
use crate::model::ids::Sha256;
use crate::model::labels::Outcome;
use crate::model::reason::Reason;
use crate::service::activate::{self, WasRunning};
use crate::store::install;
use crate::store::state::{self, Pending, PendingStage};

impl Runner<'_, '_> {
    /// Finishes an apply a previous run died in. Returns true when that was the cycle.
    pub(super) async fn recover(&mut self, p: Pending) -> Result<bool, CycleError> {
        let t = self.ctx.target;
        let live = self.read_live()?;
        let live_sha = live.as_deref().map(Sha256::of);
        let is_new = live_sha.as_deref() == Some(p.new_sha256.as_str());
        tracing::warn!(target_name = %t.name, stage = ?p.stage, live_is_new = is_new, "found an interrupted apply");
        match p.stage {
            PendingStage::Applying if !is_new => {
                // Died before the swap: nothing was touched.
                self.st.pending = None;
                self.ctx.store.save(self.st)?;
                Ok(false)
            }
            PendingStage::Applying => {
                // The swap happened, but its directory fsync may have failed (EIO) or never
                // run: the new name is not durable until it has, so it is redone before the
                // apply can be called applied.
                install::sync_live_dir(&t.path)?;
                let was = was_running(&p);
                self.defer_at_boot(was).await?;
                let _unit = self.unit_lock().await?;
                let body = live.unwrap_or_default();
                match self.restart_and_verify(&body, was).await {
                    Ok(checked) => {
                        let live = self.commit_applied(&p.new_sha256, p.revision.clone());
                        let note = match checked.note() {
                            Some(n) => format!("interrupted apply completed; {n}"),
                            None => "interrupted apply verified".into(),
                        };
                        self.rep.end(Verdict::success(
                            Outcome::Applied,
                            Some(Reason::Note(note)),
                            live,
                        ));
                    }
                    Err(e) => {
                        self.roll_back(
                            &p.new_sha256,
                            Reason::Unhealthy(format!("interrupted apply: {e}")),
                            was,
                        )
                        .await?;
                    }
                }
                Ok(true)
            }
            PendingStage::RollingBack => {
                let was = was_running(&p);
                self.defer_at_boot(was).await?;
                let _unit = self.unit_lock().await?;
                let why = self
                    .st
                    .quarantine
                    .as_ref()
                    .map(|q| q.reason.clone())
                    .unwrap_or_else(|| "interrupted rollback".into());
                self.restore_prev(&p.new_sha256, Reason::Unhealthy(why), was)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Err(Deferred) when, during boot, this would restart or start a systemd unit (its
    /// job would wait behind our own start job).
    pub(super) async fn defer_at_boot(&self, was: WasRunning) -> Result<(), CycleError> {
        if !self.ctx.boot {
            return Ok(());
        }
        match activate::would_touch(&self.t().restart, was).await {
            Ok(false) => Ok(()),
            _ => Err(CycleError::Deferred),
        }
    }
}

/// What an interrupted apply knew about its unit, if it still holds: after a reboot the
/// unit's state before the apply says nothing about now.
fn was_running(p: &Pending) -> WasRunning {
    if p.boot_id.is_none() || p.boot_id != state::boot_id() {
        return WasRunning::Unknown;
    }
    WasRunning::from(p.unit_running)
}
