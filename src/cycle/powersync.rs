//! What the service runs, for targets that deploy through PowerSync's API
//! (`restart.powersync_deploy`): PowerSync keeps its rules in its own storage, so the live
//! file being right is not enough. Each cycle that finds the live file in sync asks
//! PowerSync's diagnostics and
//! - follows a deploy still in its initial replication until it is active, rolling back only
//!   when that version reports a fatal error (never for being slow: redeploying during an
//!   initial replication only delays it, powersync-service #421);
//! - converges drift: PowerSync runs something else (a hand deploy, the `powersync` CLI, a
//!   reset bucket storage) or nothing (a fresh instance, boot): the live file goes through
//!   validate, deploy and verify.

use chrono::Utc;

use super::{CycleError, Runner};
use crate::model::ids::Sha256;
use crate::model::labels::Outcome;
use crate::model::reason::Reason;
use crate::service::activate::{RestartError, WasRunning};
use crate::service::powersync::{self, Deployed, Endpoint};
use crate::service::validate;
use crate::store::install;
use crate::store::state::Deploying;
use crate::util::digest::short;

impl Runner<'_, '_> {
    /// Called when the cycle leaves the live file as it is (in sync with upstream, or
    /// upstream unreachable): a usable live file of a target that is not held is what
    /// PowerSync must run.
    pub(super) async fn converge_service(&mut self, live: Option<&[u8]>) -> Result<(), CycleError> {
        let t = self.ctx.target;
        let Some(api) = t.restart.deploy() else {
            return Ok(());
        };
        let Some(live) = live.filter(|_| self.rep.live.usable && !self.st.hold) else {
            return Ok(());
        };
        let ep = Endpoint::deploy(api, t.restart.timeout);
        let d = match powersync::diagnostics(&ep).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(target_name = %t.name, error = %e, "cannot ask PowerSync what it runs");
                self.add_note(format!(
                    "PowerSync's API: {e}; what it runs was not checked"
                ));
                return Ok(());
            }
        };
        let sha = Sha256::of(live);
        match d.holding(live) {
            Deployed::Active => {
                if self.st.deploying.take().is_some() {
                    tracing::info!(target_name = %t.name, sha256 = %sha, "PowerSync finished deploying the live file; it is active");
                    self.add_note("PowerSync finished deploying it; active".into());
                }
                Ok(())
            }
            Deployed::Deploying => {
                let since = match &self.st.deploying {
                    Some(w) if w.sha256 == sha => w.since,
                    _ => Utc::now(),
                };
                self.st.deploying = Some(Deploying {
                    sha256: sha.clone(),
                    since,
                });
                self.add_note(format!(
                    "PowerSync is deploying it since {} (initial replication); followed until it is active",
                    since.format("%Y-%m-%d %H:%M:%S UTC")
                ));
                Ok(())
            }
            Deployed::Fatal(errors) => {
                self.st.deploying = None;
                let text = String::from_utf8_lossy(live);
                let why = format!(
                    "PowerSync reports fatal errors deploying it: {}",
                    powersync::summarize(
                        &errors.iter().collect::<Vec<_>>(),
                        &t.path.display().to_string(),
                        &text,
                        crate::model::reason::REASON_LINES
                    )
                );
                tracing::error!(target_name = %t.name, sha256 = %sha, error = %why, "deployed content failed; rolling back");
                let prev = install::read(&install::prev_path(&t.path))?;
                if prev.as_deref().is_none_or(|p| Sha256::of(p) == sha) {
                    // Last-good itself fails: nothing to go back to.
                    self.rerule(
                        Outcome::RollbackFailed,
                        Some(Reason::RollbackFailed {
                            cause: Box::new(Reason::Rejected(why)),
                            after: "and there is nothing else to roll back to".into(),
                        }),
                    );
                    return Ok(());
                }
                self.roll_back(&sha, Reason::Rejected(why), WasRunning::Unknown)
                    .await
            }
            Deployed::Absent => self.redeploy(live, &sha, &d).await,
        }
    }

    /// PowerSync does not run the live file: deploy it through the pipeline.
    async fn redeploy(
        &mut self,
        live: &[u8],
        sha: &str,
        d: &powersync::Diagnostics,
    ) -> Result<(), CycleError> {
        let t = self.ctx.target;
        let runs = match &d.active {
            Some(v) => match &v.content {
                Some(c) => format!("other rules (sha256 {})", short(&Sha256::of(c.as_bytes()))),
                None => "other rules".into(),
            },
            None => "no rules".into(),
        };
        tracing::warn!(target_name = %t.name, sha256 = %sha, "PowerSync runs {runs}; deploying the live file");
        let drift = format!("PowerSync ran {runs}");
        if let Err(e) = validate::full(&t.validate, &t.path, &t.path, live).await {
            self.rerule(
                Outcome::Rejected,
                Some(Reason::Rejected(format!(
                    "{drift}, and the live file does not validate: {e}"
                ))),
            );
            return Ok(());
        }
        self.st.deploying = None;
        match self.restart_and_verify(live, WasRunning::Unknown).await {
            Ok(checked) => {
                let mut why = format!("{drift}; deployed the live file");
                if let Some(n) = checked.note() {
                    why = format!("{why}; {n}");
                }
                self.rerule(Outcome::Applied, Some(Reason::Note(why)));
                self.rep.drift_corrected = true;
            }
            Err(super::apply::CheckFailed::Restart(RestartError::Deploy(e))) => {
                self.rerule(
                    Outcome::Rejected,
                    Some(Reason::Rejected(format!(
                        "{drift}, and deploying the live file failed: {e}"
                    ))),
                );
            }
            Err(e) => {
                // The live file is last-good: there is nothing better to go back to.
                self.rerule(
                    Outcome::RollbackFailed,
                    Some(Reason::Unhealthy(format!(
                        "{drift}, and the live file failed once deployed: {e}"
                    ))),
                );
            }
        }
        Ok(())
    }

    fn add_note(&mut self, note: String) {
        self.rep.reason = Some(match self.rep.reason.take() {
            Some(r) => r.and(&note),
            None => Reason::Note(note),
        });
    }
}
