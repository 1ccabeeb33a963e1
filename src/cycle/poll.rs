//! A poll: fetch upstream (conditionally), then the exits that leave the live file as it is
//! (fetch failed, in sync, quarantined, held), and the hand-over of new content (or drift)
//! to `apply`. A 304 with a drifted live file fetches again unconditionally.

use std::time::Instant;

use chrono::Utc;

use super::report::{Live, Verdict};
use super::{CycleError, Origin, Runner};
use crate::model::ids::{Revision, Sha256};
use crate::model::labels::{Outcome, Phase};
use crate::model::reason::Reason;
use crate::service::validate;
use crate::source::signature::Refusal;
use crate::source::{FetchError, Fetched};
use crate::store::state::{Applied, LiveMemo, SourceMemo, Unsigned};
use crate::util::digest::short;

/// Upstream as one fetch saw it.
pub(super) struct Upstream {
    sha: Sha256,
    body: Option<Vec<u8>>,
    revision: Option<Revision>,
}

impl Runner<'_, '_> {
    async fn fetch(&mut self, conditional: bool) -> Result<Upstream, FetchError> {
        let t0 = Instant::now();
        let memo = self.st.source.clone().filter(|_| conditional);
        let r = self.ctx.source.fetch(memo.as_ref().map(|m| &m.token)).await;
        self.timed(Phase::Fetch, t0);
        match r? {
            Fetched::NotModified => {
                let m = memo.ok_or_else(|| {
                    FetchError::new(
                        crate::model::labels::FetchReason::Protocol,
                        "304 without a remembered validator",
                    )
                })?;
                Ok(Upstream {
                    sha: m.sha256,
                    body: None,
                    revision: m.revision,
                })
            }
            Fetched::Content {
                body,
                token,
                revision,
            } => {
                let revision = revision.map(Revision::from);
                let sha = Sha256::of(&body);
                self.st.source = token.map(|token| SourceMemo {
                    token,
                    sha256: sha.clone(),
                    revision: revision.clone(),
                });
                Ok(Upstream {
                    sha,
                    body: Some(body),
                    revision,
                })
            }
        }
    }

    async fn fetch_failed(&mut self, e: FetchError, live: Option<&[u8]>) -> Result<(), CycleError> {
        self.rep.fetch_reason = Some(e.reason);
        self.rep.retry_at = e.retry_at;
        self.leave(Outcome::FetchFailed, Some(Reason::Stopped(e.message)), live)
            .await?;
        // Upstream being down is no reason for PowerSync not to run the live file.
        self.converge_service(live).await
    }

    pub(super) async fn poll(&mut self) -> Result<(), CycleError> {
        let first = self.live_now()?;
        let up = match self.fetch(true).await {
            Ok(u) => u,
            Err(e) => {
                let live = self.load(first)?;
                return self.fetch_failed(e, live.as_deref()).await;
            }
        };
        // Most polls end here: upstream unchanged, the live file known by its stamp to
        // hold it. Nothing is read.
        if let LiveNow::Known(m) = &first {
            if m.sha256 == up.sha {
                self.note_upstream(&up);
                return self.in_sync(&up, first).await;
            }
        }
        let (live, live_sha) = self.load_hashed(first)?;
        self.compare(up, live, live_sha).await
    }

    /// What upstream serves, as the state records it; a gate wait is for one sha, so new
    /// upstream content starts it over.
    fn note_upstream(&mut self, up: &Upstream) {
        self.st.upstream_revision = up.revision.clone();
        self.st.upstream_sha256 = Some(up.sha.clone());
        if self.st.gate.as_ref().is_some_and(|g| g.sha256 != up.sha) {
            self.st.gate = None;
        }
    }

    /// The live file as this poll starts: known by its stamp, or read.
    fn live_now(&self) -> Result<LiveNow, CycleError> {
        let t = self.t();
        if t.file.tree.is_none() {
            if let Some(m) = self.ctx.store.live_known(&t.path) {
                return Ok(LiveNow::Known(m));
            }
        }
        let (bytes, sha) = self.read_live_hashed()?;
        Ok(LiveNow::Read(bytes, sha))
    }

    /// The live file's bytes, read now if they were only known.
    fn load(&self, live: LiveNow) -> Result<Option<Vec<u8>>, CycleError> {
        Ok(self.load_hashed(live)?.0)
    }

    /// [`Self::load`], with the bytes' hash (computed once, when they were read).
    fn load_hashed(&self, live: LiveNow) -> Result<(Option<Vec<u8>>, Option<Sha256>), CycleError> {
        match live {
            LiveNow::Read(b, sha) => Ok((b, sha)),
            LiveNow::Known(_) => self.read_live_hashed(),
        }
    }

    /// Upstream against the live file's bytes: in sync, quarantined, held, unsigned, or new
    /// content (or drift) for `apply`.
    async fn compare(
        &mut self,
        mut up: Upstream,
        live: Option<Vec<u8>>,
        live_sha: Option<Sha256>,
    ) -> Result<(), CycleError> {
        loop {
            self.note_upstream(&up);
            if live_sha.as_deref() == Some(up.sha.as_str()) {
                return self.in_sync(&up, LiveNow::Read(live, live_sha)).await;
            }
            if let Some(q) = self.st.quarantine.as_ref().filter(|q| q.sha256 == up.sha) {
                let why = Reason::Quarantined {
                    sha256: q.sha256.clone(),
                    why: q.reason.clone(),
                };
                return self
                    .leave(Outcome::Quarantined, Some(why), live.as_deref())
                    .await;
            }
            if self.st.quarantine.take().is_some() {
                tracing::info!(target_name = %self.t().name, sha256 = %up.sha, "new upstream content clears the quarantine");
            }
            if self.st.hold {
                let why = format!(
                    "held: upstream {} not applied (run `rulekeeper release`)",
                    short(&up.sha)
                );
                return self
                    .leave(Outcome::Held, Some(Reason::Stopped(why)), live.as_deref())
                    .await;
            }
            if up.body.is_some() {
                break;
            }
            // A 304 says upstream did not move, not that the live file is intact: the live
            // file drifted, so get the body again unconditionally.
            tracing::info!(target_name = %self.t().name, "live file differs from upstream; fetching upstream again");
            up = match self.fetch(false).await {
                Ok(u) => u,
                Err(e) => return self.fetch_failed(e, live.as_deref()).await,
            };
        }
        let body = up.body.take().unwrap_or_default();
        if self.unsigned(&up, &body, live.as_deref()).await? {
            return Ok(());
        }
        let drift = match (&self.st.applied, &live_sha) {
            (Some(a), Some(l)) => a.sha256 != *l,
            _ => false,
        };
        self.apply(body, up.sha, up.revision, live, Origin::Upstream { drift })
            .await
    }

    /// `require_signature`: true when the cycle ended here, the content refused because its
    /// revision is not signed by an allowed key (keyed by revision: the same bytes in a signed
    /// commit pass), or the forge not answering. Checked again on every poll, so a key added
    /// to the file lets a refused revision through without a restart.
    async fn unsigned(
        &mut self,
        up: &Upstream,
        body: &[u8],
        live: Option<&[u8]>,
    ) -> Result<bool, CycleError> {
        let Some(cfg) = self.t().source.require_signature.clone() else {
            return Ok(false);
        };
        let Some(rev) = up.revision.clone() else {
            let e = FetchError::new(
                crate::model::labels::FetchReason::Protocol,
                "require_signature: the commit that last touched the file is unknown (the commits API did not answer)",
            );
            self.fetch_failed(e, live).await?;
            return Ok(true);
        };
        let why = match self
            .ctx
            .source
            .verify_signature(&cfg, rev.as_str(), body)
            .await
        {
            Ok(()) => {
                if self.st.unsigned.take().is_some() {
                    tracing::info!(target_name = %self.t().name, revision = %rev.as_str(), "a signed revision replaces the refused one");
                }
                return Ok(false);
            }
            Err(Refusal::Fetch(e)) => {
                self.fetch_failed(e, live).await?;
                return Ok(true);
            }
            Err(Refusal::Unsigned(why)) => why,
        };
        let reason = format!(
            "commit {} is not signed by an allowed key: {why}",
            rev.short()
        );
        // Told once as a rejection; the same refusal again is the standing state, not news.
        let again = self
            .st
            .unsigned
            .as_ref()
            .is_some_and(|u| u.revision == rev && u.reason == reason);
        tracing::warn!(target_name = %self.t().name, revision = %rev.as_str(), reason = %reason, "unsigned revision refused");
        self.st.unsigned = Some(Unsigned {
            revision: rev,
            reason: reason.clone(),
        });
        let outcome = if again {
            Outcome::Quarantined
        } else {
            Outcome::Rejected
        };
        self.leave(outcome, Some(Reason::Rejected(reason)), live)
            .await?;
        Ok(true)
    }

    async fn in_sync(&mut self, up: &Upstream, live: LiveNow) -> Result<(), CycleError> {
        if let Some(q) = self.st.quarantine.clone().filter(|q| q.sha256 == up.sha) {
            let live = self.load(live)?;
            // The live file is content that failed: a first apply with nothing to roll back
            // to, or a hand edit that restored it. Never adopt it as good, never clear it.
            let why = format!(
                "the live file is quarantined content {} ({}); waiting for new upstream content or an operator (`push`, `rollback`)",
                short(&q.sha256),
                q.reason
            );
            return self
                .leave(
                    Outcome::Quarantined,
                    Some(Reason::Stopped(why)),
                    live.as_deref(),
                )
                .await;
        }
        let adopt = match &self.st.applied {
            Some(a) => a.sha256 != up.sha || (a.revision.is_none() && up.revision.is_some()),
            None => true,
        };
        if adopt {
            self.st.applied = Some(Applied {
                sha256: up.sha.clone(),
                revision: up.revision.clone(),
                at: self
                    .st
                    .applied
                    .as_ref()
                    .filter(|a| a.sha256 == up.sha)
                    .map(|a| a.at)
                    .unwrap_or_else(Utc::now),
            });
        }
        // In sync there is nothing left to keep out, whatever the hash or the revision.
        self.st.quarantine = None;
        self.st.unsigned = None;
        self.st.gate = None;
        // Content we applied was validated then; this also covers a file found in place.
        // The verdict follows from the bytes alone, so it is kept with the live file's stamp.
        let (usable, live) = match live {
            LiveNow::Known(
                m @ LiveMemo {
                    usable: Some(u), ..
                },
            ) => (u, LiveNow::Known(m)),
            other => {
                let (bytes, sha) = self.load_hashed(other)?;
                let u = validate::usable_builtin(&self.t().validate, bytes.as_deref());
                self.ctx.store.remember_usable(&up.sha, u);
                (u, LiveNow::Read(bytes, sha))
            }
        };
        self.rep.end(Verdict::success(
            Outcome::Unchanged,
            None,
            Live {
                sha256: Some(up.sha.clone()),
                usable,
                revision: up.revision.clone(),
            },
        ));
        if self.t().restart.deploy().is_none() {
            return Ok(());
        }
        let live = self.load(live)?;
        self.converge_service(live.as_deref()).await
    }
}

/// The live file as a poll has it: read (with its hash), or known by its stamp without
/// reading it.
enum LiveNow {
    Read(Option<Vec<u8>>, Option<Sha256>),
    Known(LiveMemo),
}
