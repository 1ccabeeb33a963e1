//! One target's cycle (DESIGN.md "The cycle"): fetch, compare with the live file on disk,
//! skip quarantined content, validate, record `pending`, swap, restart, verify, and roll
//! back to `.prev` on failure. The same code serves `once`, `push`, `rollback` and the
//! daemon. It returns a [`Report`] and knows nothing of Prometheus, HTTP, sd-notify or tasks.
//!
//! Invariants kept here:
//! - the managed service is restarted only for new content, drift, an interrupted apply that
//!   must be verified, or an operator's command;
//! - a hash that failed validation or verification is quarantined and not applied again
//!   while upstream serves it;
//! - `pending` is persisted before the swap and cleared only with the outcome.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::config::{RestartKind, Target};
use crate::gate;
use crate::install;
use crate::restart::{self, Restarted, WasRunning};
use crate::source::{FetchError, Fetched, Source};
use crate::state::{
    self, Applied, GateWait, Pending, PendingStage, Quarantine, SourceMemo, StateError, Store,
    TargetState,
};
use crate::validate;
use crate::verify;

/// Hex sha256 of some bytes.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// What a cycle ended with. The names are the `outcome` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Unchanged,
    Applied,
    Rejected,
    Quarantined,
    RolledBack,
    RollbackFailed,
    FetchFailed,
    Held,
    /// New content waits on its gate (fleets: staged rollout).
    Gated,
    /// The target's state file cannot be read or parsed; the target is left alone.
    StateError,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Unchanged,
        Outcome::Applied,
        Outcome::Rejected,
        Outcome::Quarantined,
        Outcome::RolledBack,
        Outcome::RollbackFailed,
        Outcome::FetchFailed,
        Outcome::Held,
        Outcome::Gated,
        Outcome::StateError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::Quarantined => "quarantined",
            Outcome::RolledBack => "rolled_back",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::FetchFailed => "fetch_failed",
            Outcome::Held => "held",
            Outcome::Gated => "gated",
            Outcome::StateError => "state_error",
        }
    }
}

/// The stages timed in `rulekeeper_cycle_duration_seconds{phase}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Fetch,
    Validate,
    Install,
    Restart,
    Verify,
    Total,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch",
            Phase::Validate => "validate",
            Phase::Install => "install",
            Phase::Restart => "restart",
            Phase::Verify => "verify",
            Phase::Total => "total",
        }
    }
}

/// Everything the caller needs to record a cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub outcome: Outcome,
    /// Why (an error or a note such as "verification skipped").
    pub reason: Option<String>,
    /// `rulekeeper_fetch_failures_total{reason}` label when the fetch failed.
    pub fetch_reason: Option<&'static str>,
    /// The live file exists and passes validation.
    pub usable: bool,
    /// The live file is usable and equal to upstream (or to what an operator pushed).
    pub success: bool,
    pub live_sha256: Option<String>,
    pub revision: Option<String>,
    /// How many times the managed service was restarted.
    pub restarts: u32,
    pub drift_corrected: bool,
    /// Upstream now serves quarantined content.
    pub quarantined: bool,
    pub held: bool,
    #[serde(skip)]
    pub phases: Vec<(Phase, Duration)>,
    /// The target's persisted state after the cycle (for gauges).
    #[serde(skip)]
    pub state: TargetState,
}

impl Report {
    fn new(target: &str) -> Self {
        Report {
            target: target.to_string(),
            outcome: Outcome::Unchanged,
            reason: None,
            fetch_reason: None,
            usable: false,
            success: false,
            live_sha256: None,
            revision: None,
            restarts: 0,
            drift_corrected: false,
            quarantined: false,
            held: false,
            phases: Vec::new(),
            state: TargetState::default(),
        }
    }

    /// Logs the cycle as one entry (DESIGN.md "journald": TARGET_NAME, OUTCOME, SHA256,
    /// REVISION, DURATION_MS, RESTARTS, REASON), at a level that says how much it matters.
    /// Unchanged cycles are debug: a poll that changes nothing is not news.
    pub fn log(&self) {
        let duration_ms = self
            .phases
            .iter()
            .find(|(p, _)| *p == Phase::Total)
            .map(|(_, d)| d.as_millis() as u64)
            .unwrap_or(0);
        let reason = self.reason.as_deref().unwrap_or("");
        let sha256 = self.live_sha256.as_deref().unwrap_or("");
        let revision = self.revision.as_deref().unwrap_or("");
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
            Outcome::RollbackFailed | Outcome::StateError => entry!(tracing::Level::ERROR),
            _ => entry!(tracing::Level::WARN),
        }
    }

    /// Exit code for `once`/`push`/`rollback` (DESIGN.md "CLI").
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::RollbackFailed => 4,
            _ if !self.usable => 3,
            Outcome::Rejected
            | Outcome::RolledBack
            | Outcome::Quarantined
            | Outcome::StateError => 1,
            _ => 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Install(#[from] install::InstallError),
    #[error("shutting down: cycle stopped before the swap")]
    Aborted,
    /// At boot, applying would restart an active systemd unit: left for after READY=1.
    #[error("a restart of an active unit is deferred until start-up is over")]
    Deferred,
    #[error("{0}")]
    Refused(String),
}

/// What triggered the cycle.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Poll upstream (timer, webhook, `once`).
    Poll,
    /// Apply this content (operator's `push`).
    Push(Vec<u8>),
    /// Restore `.prev` (operator's `rollback`).
    Rollback,
}

/// Set when the process is shutting down: a cycle stops before its point of no return.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one target's cycle needs.
pub struct Ctx<'a> {
    pub target: &'a Target,
    pub source: &'a Source,
    pub store: Store,
    pub state_dir: PathBuf,
    pub stop: Stop,
    /// The daemon has not sent READY=1 yet. A systemd restart job now would wait for our
    /// own start job (the managed unit is ordered After= rulekeeper), so such applies are
    /// deferred; the live file is left as it is.
    pub boot: bool,
    /// The first cycles of this target in this process: a killed predecessor may have left
    /// temp files beside the live file, so they are removed even if nothing is applied.
    pub tidy: bool,
}

/// Runs one cycle under the target's lock.
pub async fn run(ctx: &Ctx<'_>, trigger: Trigger) -> Result<Report, CycleError> {
    let started = Instant::now();
    let store = ctx.store.clone();
    let _lock = tokio::task::spawn_blocking(move || store.lock())
        .await
        .map_err(|e| CycleError::Refused(format!("lock task failed: {e}")))??;
    if ctx.tidy {
        install::remove_stale_temps(&ctx.target.path);
    }
    let mut rep = Report::new(&ctx.target.name);
    let mut st = match ctx.store.load() {
        Ok(st) => st,
        Err(e) => {
            // The file holds the quarantine and any pending apply: never reset it silently,
            // and touch nothing of this target until an operator has looked.
            let live = install::read(&ctx.target.path).ok().flatten();
            rep.outcome = Outcome::StateError;
            rep.reason = Some(format!(
                "{e}; nothing is applied to this target until the file is fixed or moved aside (its quarantine and pending records are then lost)"
            ));
            rep.live_sha256 = live.as_deref().map(sha256_hex);
            rep.usable = live
                .as_deref()
                .is_some_and(|b| validate::builtin(&ctx.target.validate, b).is_ok());
            rep.phases.push((Phase::Total, started.elapsed()));
            return Ok(rep);
        }
    };
    let loaded = st.clone();
    let res = Runner {
        ctx,
        st: &mut st,
        rep: &mut rep,
    }
    .go(trigger)
    .await;
    rep.phases.push((Phase::Total, started.elapsed()));
    rep.held = st.hold;
    rep.quarantined = match (&st.quarantine, &st.upstream_sha256) {
        (Some(q), Some(up)) => &q.sha256 == up,
        _ => false,
    };
    if rep.live_sha256.is_none() {
        rep.live_sha256 = st.applied.as_ref().map(|a| a.sha256.clone());
    }
    if let Err(e) = &res {
        st.last_error = Some(e.to_string());
    } else {
        st.last_outcome = Some(rep.outcome.as_str().to_string());
        st.last_outcome_at = Some(Utc::now());
        let ok = matches!(rep.outcome, Outcome::Unchanged | Outcome::Applied);
        st.last_error = rep.reason.clone().filter(|_| !ok);
        // What a good outcome still wants said, such as "verification skipped".
        st.last_note = rep.reason.clone().filter(|_| ok);
        if rep.success {
            st.last_success = Some(Utc::now());
        }
    }
    if st.volatile_eq(&loaded) {
        ctx.store.save_volatile(&st)?;
    } else {
        ctx.store.save(&st)?;
    }
    rep.state = st;
    res.map(|()| rep)
}

struct Runner<'a, 'b> {
    ctx: &'a Ctx<'b>,
    st: &'a mut TargetState,
    rep: &'a mut Report,
}

/// Upstream as one fetch saw it.
struct Upstream {
    sha: String,
    body: Option<Vec<u8>>,
    revision: Option<String>,
}

impl Runner<'_, '_> {
    fn t(&self) -> &Target {
        self.ctx.target
    }

    fn timed(&mut self, phase: Phase, since: Instant) {
        self.rep.phases.push((phase, since.elapsed()));
    }

    async fn go(&mut self, trigger: Trigger) -> Result<(), CycleError> {
        if let Some(p) = self.st.pending.clone() {
            if self.recover(p).await? {
                return Ok(());
            }
        }
        match trigger {
            Trigger::Poll => self.poll().await,
            Trigger::Push(body) => self.push(body).await,
            Trigger::Rollback => self.manual_rollback().await,
        }
    }

    fn read_live(&self) -> Result<Option<Vec<u8>>, CycleError> {
        Ok(install::read(&self.t().path)?)
    }

    /// The live file exists and passes the built-in checks and the validate command.
    async fn usable(&self, live: Option<&[u8]>) -> bool {
        let Some(bytes) = live else { return false };
        if let Err(e) = validate::builtin(&self.t().validate, bytes) {
            tracing::warn!(target_name = %self.t().name, error = %e, "live file is not usable");
            return false;
        }
        if let Some(argv) = &self.t().validate.command {
            if let Err(e) = validate::command(argv, self.t().validate.timeout, &self.t().path).await
            {
                tracing::warn!(target_name = %self.t().name, error = %e, "live file is not usable");
                return false;
            }
        }
        true
    }

    async fn fetch(&mut self, conditional: bool) -> Result<Upstream, FetchError> {
        let t0 = Instant::now();
        let memo = self.st.source.clone().filter(|_| conditional);
        let r = self
            .ctx
            .source
            .fetch(memo.as_ref().map(|m| m.token.as_str()))
            .await;
        self.timed(Phase::Fetch, t0);
        match r? {
            Fetched::NotModified => {
                let m = memo.ok_or_else(|| {
                    FetchError::new("protocol", "304 without a remembered validator")
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
                let sha = sha256_hex(&body);
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
        self.rep.outcome = Outcome::FetchFailed;
        self.rep.fetch_reason = Some(e.reason);
        self.rep.reason = Some(e.message);
        self.rep.usable = self.usable(live).await;
        self.rep.live_sha256 = live.map(sha256_hex);
        self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
        Ok(())
    }

    async fn poll(&mut self) -> Result<(), CycleError> {
        let live = self.read_live()?;
        let live_sha = live.as_deref().map(sha256_hex);
        let mut up = match self.fetch(true).await {
            Ok(u) => u,
            Err(e) => return self.fetch_failed(e, live.as_deref()).await,
        };
        loop {
            self.st.upstream_revision = up.revision.clone();
            self.st.upstream_sha256 = Some(up.sha.clone());
            // A wait is for one sha: new upstream content starts over.
            if self.st.gate.as_ref().is_some_and(|g| g.sha256 != up.sha) {
                self.st.gate = None;
            }
            if live_sha.as_deref() == Some(up.sha.as_str()) {
                return self.in_sync(&up, live.as_deref()).await;
            }
            if self
                .st
                .quarantine
                .as_ref()
                .map(|q| q.sha256 == up.sha)
                .unwrap_or(false)
            {
                self.rep.outcome = Outcome::Quarantined;
                self.rep.reason =
                    self.st.quarantine.as_ref().map(|q| {
                        format!("upstream {} is quarantined: {}", short(&q.sha256), q.reason)
                    });
                self.rep.usable = self.usable(live.as_deref()).await;
                self.rep.live_sha256 = live_sha;
                self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
                return Ok(());
            }
            if self.st.quarantine.take().is_some() {
                tracing::info!(target_name = %self.t().name, sha256 = %up.sha, "new upstream content clears the quarantine");
            }
            if self.st.hold {
                self.rep.outcome = Outcome::Held;
                self.rep.reason = Some(format!(
                    "held: upstream {} not applied (run `rulekeeper release`)",
                    short(&up.sha)
                ));
                self.rep.usable = self.usable(live.as_deref()).await;
                self.rep.live_sha256 = live_sha;
                self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
                return Ok(());
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
        let drift = match (&self.st.applied, &live_sha) {
            (Some(a), Some(l)) => &a.sha256 != l,
            _ => false,
        };
        self.apply(body, up.sha, up.revision, live, Mode::Upstream { drift })
            .await
    }

    async fn in_sync(&mut self, up: &Upstream, live: Option<&[u8]>) -> Result<(), CycleError> {
        if let Some(q) = self.st.quarantine.clone().filter(|q| q.sha256 == up.sha) {
            // The live file is content that failed: a first apply with nothing to roll back
            // to, or a hand edit that restored it. Never adopt it as good, never clear it.
            self.rep.outcome = Outcome::Quarantined;
            self.rep.reason = Some(format!(
                "the live file is quarantined content {} ({}); waiting for new upstream content or an operator (`push`, `rollback`)",
                short(&q.sha256),
                q.reason
            ));
            self.rep.usable = self.usable(live).await;
            self.rep.live_sha256 = Some(up.sha.clone());
            self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
            return Ok(());
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
        // In sync there is nothing left to keep out, whatever the hash.
        self.st.quarantine = None;
        self.st.gate = None;
        self.rep.outcome = Outcome::Unchanged;
        // Content we applied was validated then; this also covers a file found in place.
        self.rep.usable = live
            .map(|b| validate::builtin(&self.t().validate, b).is_ok())
            .unwrap_or(false);
        self.rep.success = self.rep.usable;
        self.rep.live_sha256 = Some(up.sha.clone());
        self.rep.revision = up.revision.clone();
        Ok(())
    }

    async fn push(&mut self, body: Vec<u8>) -> Result<(), CycleError> {
        let live = self.read_live()?;
        let sha = sha256_hex(&body);
        if live.as_deref().map(sha256_hex).as_deref() == Some(sha.as_str()) {
            self.rep.outcome = Outcome::Unchanged;
            self.rep.usable = true;
            self.rep.success = true;
            self.rep.live_sha256 = Some(sha);
            self.rep.reason = Some("the live file already has this content".into());
            return Ok(());
        }
        self.apply(body, sha, Some("push".into()), live, Mode::Push)
            .await
    }

    async fn manual_rollback(&mut self) -> Result<(), CycleError> {
        let live = self.read_live()?;
        let prev_path = install::prev_path(&self.t().path);
        let prev = install::read(&prev_path)?.ok_or_else(|| {
            CycleError::Refused(format!(
                "nothing to roll back to: {} does not exist",
                prev_path.display()
            ))
        })?;
        let prev_sha = sha256_hex(&prev);
        let live_sha = live.as_deref().map(sha256_hex);
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
        let revision = self.st.applied.as_ref().map(|_| "rollback".to_string());
        self.apply(prev, prev_sha, revision, live, Mode::ManualRollback)
            .await
    }

    fn quarantine(&mut self, sha: &str, reason: &str) {
        tracing::warn!(target_name = %self.t().name, sha256 = %sha, reason, "quarantining content");
        self.st.quarantine = Some(Quarantine {
            sha256: sha.to_string(),
            reason: reason.to_string(),
            at: Utc::now(),
        });
    }

    /// Validate (unless a manual rollback), swap, restart, verify; roll back on failure.
    async fn apply(
        &mut self,
        body: Vec<u8>,
        sha: String,
        revision: Option<String>,
        live: Option<Vec<u8>>,
        mode: Mode,
    ) -> Result<(), CycleError> {
        let t = self.ctx.target;
        let live_sha = live.as_deref().map(sha256_hex);
        let t0 = Instant::now();
        // Only an interrupted run leaves temp files, and only applying creates them.
        if !self.ctx.tidy {
            install::remove_stale_temps(&t.path);
        }
        let candidate = install::stage(&t.path, &body, t.mode_bits)?;
        let checked = if mode == Mode::ManualRollback {
            Ok(())
        } else {
            validate::full(&t.validate, candidate.path(), &body).await
        };
        self.timed(Phase::Validate, t0);
        if let Err(e) = checked {
            drop(candidate);
            tracing::warn!(target_name = %t.name, sha256 = %sha, error = %e, "candidate rejected");
            if mode != Mode::Push {
                self.quarantine(&sha, &format!("validation failed: {e}"));
            }
            self.rep.outcome = Outcome::Rejected;
            self.rep.reason = Some(e.to_string());
            self.rep.usable = self.usable(live.as_deref()).await;
            self.rep.live_sha256 = live_sha;
            self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
            return Ok(());
        }
        if let Mode::Upstream { .. } = mode {
            if let Some(why) = self.gate_closed(&sha, revision.as_deref()).await {
                drop(candidate);
                self.rep.outcome = Outcome::Gated;
                self.rep.reason = Some(why);
                self.rep.usable = self.usable(live.as_deref()).await;
                self.rep.live_sha256 = live_sha;
                self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
                return Ok(());
            }
        }
        if self.ctx.stop.requested() {
            return Err(CycleError::Aborted);
        }
        // New content never starts a unit that is not running; putting last-good back by
        // hand brings back one the bad content killed.
        let forward = if mode == Mode::ManualRollback {
            WasRunning::Unknown
        } else {
            WasRunning::No
        };
        self.defer_at_boot(forward).await?;
        let _unit = self.unit_lock().await?;
        let unit_running = match restart::running_now(&t.restart).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target_name = %t.name, error = %e, "cannot tell whether the unit runs");
                None
            }
        };
        self.st.pending = Some(Pending {
            new_sha256: sha.clone(),
            prev_sha256: live_sha.clone(),
            revision: revision.clone(),
            stage: PendingStage::Applying,
            started_at: Utc::now(),
            unit_running,
            boot_id: state::boot_id(),
        });
        self.ctx.store.save(self.st)?;
        let t0 = Instant::now();
        install::install(candidate, &t.path, live.as_deref(), t.mode_bits)?;
        self.timed(Phase::Install, t0);
        tracing::info!(target_name = %t.name, sha256 = %sha, revision = revision.as_deref().unwrap_or(""), "installed new content");
        let checked = self.restart_and_verify(&body, forward).await;
        match checked {
            Ok(note) => {
                self.commit_applied(&sha, revision);
                self.rep.outcome = if mode == Mode::ManualRollback {
                    Outcome::RolledBack
                } else {
                    Outcome::Applied
                };
                self.rep.reason = note;
                self.rep.drift_corrected = matches!(mode, Mode::Upstream { drift: true });
                // Success means "equal to upstream": a push or a manual rollback is not.
                self.rep.success = matches!(mode, Mode::Upstream { .. });
                Ok(())
            }
            Err(e) if mode == Mode::ManualRollback => {
                self.st.pending = None;
                self.commit_applied(&sha, revision);
                self.rep.outcome = Outcome::RollbackFailed;
                self.rep.reason = Some(format!("unhealthy after rolling back: {e}"));
                self.rep.usable = true;
                Ok(())
            }
            Err(e) => {
                tracing::error!(target_name = %t.name, sha256 = %sha, error = %e, "new content failed; rolling back");
                self.roll_back(&sha, &e, WasRunning::from(unit_running))
                    .await
            }
        }
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
                    sha256: sha.to_string(),
                    since,
                    reason,
                });
                Some(why)
            }
        }
    }

    fn commit_applied(&mut self, sha: &str, revision: Option<String>) {
        // Content that passed verification now is no longer known-bad (an operator pushed it
        // again after fixing what made it fail).
        if self.st.quarantine.as_ref().is_some_and(|q| q.sha256 == sha) {
            self.st.quarantine = None;
        }
        self.st.gate = None;
        self.st.applied = Some(Applied {
            sha256: sha.to_string(),
            revision: revision.clone(),
            at: Utc::now(),
        });
        self.st.pending = None;
        self.rep.usable = true;
        self.rep.live_sha256 = Some(sha.to_string());
        self.rep.revision = revision;
    }

    async fn unit_lock(&self) -> Result<Option<state::LockGuard>, CycleError> {
        let RestartKind::Systemd(unit) = self.t().restart.kind() else {
            return Ok(None);
        };
        let dir = self.ctx.state_dir.clone();
        let g = tokio::task::spawn_blocking(move || state::unit_lock(&dir, &unit))
            .await
            .map_err(|e| CycleError::Refused(format!("lock task failed: {e}")))??;
        Ok(Some(g))
    }

    /// Restarts and verifies. Ok(Some(note)) when verification was skipped because the unit
    /// is not running and `was` says it is not ours to start.
    async fn restart_and_verify(
        &mut self,
        content: &[u8],
        was: WasRunning,
    ) -> Result<Option<String>, String> {
        let t = self.ctx.target;
        let t0 = Instant::now();
        let r = restart::restart(&t.restart, was).await;
        self.timed(Phase::Restart, t0);
        let restarted = r.map_err(|e| format!("restart failed: {e}"))?;
        if let Restarted::NotActive { unit } = &restarted {
            let note =
                format!("{unit} is not active, so it was not restarted; verification skipped");
            tracing::info!(target_name = %t.name, "{note}");
            return Ok(Some(note));
        }
        if restarted != Restarted::Nothing {
            self.rep.restarts += 1;
        }
        let t0 = Instant::now();
        let v = verify::verify(&t.verify, &restarted, content).await;
        self.timed(Phase::Verify, t0);
        v.map(|()| None)
            .map_err(|e| format!("verification failed: {e}"))
    }

    /// Restores `.prev` after `bad_sha` failed; quarantines it.
    async fn roll_back(
        &mut self,
        bad_sha: &str,
        why: &str,
        was: WasRunning,
    ) -> Result<(), CycleError> {
        self.quarantine(bad_sha, why);
        if let Some(p) = self.st.pending.as_mut() {
            p.stage = PendingStage::RollingBack;
        }
        self.ctx.store.save(self.st)?;
        self.restore_prev(bad_sha, why, was).await
    }

    /// Puts `.prev` back (if the live file is still `bad_sha`), restarts and verifies. A unit
    /// that ran before the apply (`was`) is brought back up even if the bad content killed
    /// it, and is always verified.
    async fn restore_prev(
        &mut self,
        bad_sha: &str,
        why: &str,
        was: WasRunning,
    ) -> Result<(), CycleError> {
        let t = self.ctx.target;
        let prev_path = install::prev_path(&t.path);
        let prev = install::read(&prev_path)?;
        let live = self.read_live()?;
        let live_sha = live.as_deref().map(sha256_hex);
        self.rep.revision = self.st.applied.as_ref().and_then(|a| a.revision.clone());
        let Some(prev) = prev.filter(|p| validate::builtin(&t.validate, p).is_ok()) else {
            self.st.pending = None;
            self.rep.outcome = Outcome::RollbackFailed;
            self.rep.usable = false;
            self.rep.live_sha256 = live_sha;
            self.rep.reason = Some(format!(
                "{why}; and there is no usable {} to roll back to",
                prev_path.display()
            ));
            return Ok(());
        };
        let prev_sha = sha256_hex(&prev);
        if live_sha.as_deref() == Some(bad_sha) {
            let c = install::stage(&t.path, &prev, t.mode_bits)?;
            install::install(c, &t.path, None, t.mode_bits)?;
            tracing::warn!(target_name = %t.name, sha256 = %prev_sha, "restored .prev");
        }
        let checked = self.restart_and_verify(&prev, was).await;
        self.st.pending = None;
        self.rep.usable = true;
        self.rep.live_sha256 = Some(prev_sha.clone());
        if self
            .st
            .applied
            .as_ref()
            .map(|a| a.sha256 != prev_sha)
            .unwrap_or(true)
        {
            self.st.applied = Some(Applied {
                sha256: prev_sha,
                revision: None,
                at: Utc::now(),
            });
        }
        match checked {
            Ok(_) => {
                self.rep.outcome = Outcome::RolledBack;
                self.rep.reason = Some(format!("rolled back: {why}"));
            }
            Err(e) => {
                tracing::error!(target_name = %t.name, error = %e, "service unhealthy on the last-good file too");
                self.rep.outcome = Outcome::RollbackFailed;
                self.rep.reason = Some(format!("{why}; after rolling back: {e}"));
            }
        }
        Ok(())
    }

    /// Err(Deferred) when, during boot, this would restart or start a systemd unit (its
    /// job would wait behind our own start job).
    async fn defer_at_boot(&self, was: WasRunning) -> Result<(), CycleError> {
        if !self.ctx.boot {
            return Ok(());
        }
        match restart::would_touch(&self.t().restart, was).await {
            Ok(false) => Ok(()),
            _ => Err(CycleError::Deferred),
        }
    }

    /// Finishes an apply a previous run died in. Returns true when that was the cycle.
    async fn recover(&mut self, p: Pending) -> Result<bool, CycleError> {
        let t = self.ctx.target;
        let live = self.read_live()?;
        let live_sha = live.as_deref().map(sha256_hex);
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
                let was = was_running(&p);
                self.defer_at_boot(was).await?;
                let _unit = self.unit_lock().await?;
                let body = live.unwrap_or_default();
                match self.restart_and_verify(&body, was).await {
                    Ok(note) => {
                        self.commit_applied(&p.new_sha256, p.revision.clone());
                        self.rep.outcome = Outcome::Applied;
                        self.rep.success = true;
                        self.rep.reason = Some(match note {
                            Some(n) => format!("interrupted apply completed; {n}"),
                            None => "interrupted apply verified".into(),
                        });
                        Ok(true)
                    }
                    Err(e) => {
                        self.roll_back(&p.new_sha256, &format!("interrupted apply: {e}"), was)
                            .await?;
                        Ok(true)
                    }
                }
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
                self.restore_prev(&p.new_sha256, &why, was).await?;
                Ok(true)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Upstream { drift: bool },
    Push,
    ManualRollback,
}

/// What an interrupted apply knew about its unit, if it still holds: after a reboot the
/// unit's state before the apply says nothing about now.
fn was_running(p: &Pending) -> WasRunning {
    if p.boot_id.is_none() || p.boot_id != state::boot_id() {
        return WasRunning::Unknown;
    }
    WasRunning::from(p.unit_running)
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}
