//! One target's cycle (docs/contract.md "The cycle"): fetch, compare with the live file on
//! disk, skip quarantined content, validate, record `pending`, swap, restart, verify, and roll
//! back to `.prev` on failure. The same code serves `once`, `push`, `rollback` and the daemon.
//! It returns a [`Report`] and knows nothing of Prometheus, HTTP, sd-notify or tasks.
//!
//! The rooms follow the cycle's diagram: [`run`] here (lock, state in, state out), `poll`
//! (fetch and the exits that leave the live file alone), `apply` (validate, gate, pending,
//! swap, restart + verify), `rollback` (back to `.prev`), `recover` (an interrupted apply
//! found at the start of a cycle).
//!
//! Invariants kept here:
//! - the managed service is restarted only for new content, drift, an interrupted apply that
//!   must be verified, or an operator's command;
//! - a hash that failed validation or verification is quarantined and not applied again
//!   while upstream serves it;
//! - `pending` is persisted before the swap and cleared only with the outcome.

mod apply;
pub mod commit_status;
mod poll;
mod powersync;
mod recover;
pub mod report;
mod rollback;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::config::Target;
use crate::cycle::report::{Asked, Live, Report, Verdict};
use crate::model::ids::{Revision, Sha256};
use crate::model::labels::{Outcome, Phase};
use crate::model::reason::Reason;
use crate::service::validate;
use crate::source::Source;
use crate::store::install;
use crate::store::lock::{LockGuard, Wait};
use crate::store::state::{self, StateError, Store, TargetState};

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
    /// An operator's request that cannot be carried out (nothing to roll back to, ...).
    #[error("{0}")]
    Refused(String),
    /// rulekeeper itself failed (a lock task panicked, a target without a source).
    #[error("{0}")]
    Internal(String),
}

impl CycleError {
    /// The stage a failure that is an outcome (`failed`) happened in; None for refusals,
    /// shutdown and boot deferral, which are not outcomes.
    fn stage(&self) -> Option<&'static str> {
        match self {
            CycleError::State(_) => Some("state"),
            CycleError::Install(_) => Some("install"),
            CycleError::Internal(_) => Some("internal"),
            CycleError::Aborted | CycleError::Deferred | CycleError::Refused(_) => None,
        }
    }
}

/// What a cycle is asked to do, with what it needs (the pushed bytes, the version to go back
/// to). Who asked is its [`Asked`] (kept in the report); where applied content comes from is
/// the cycle's own [`Origin`].
#[derive(Debug, Clone)]
pub enum Request {
    /// Poll upstream (timer, webhook, `once`).
    Poll,
    /// Apply this content (operator's `push`).
    Push(Vec<u8>),
    /// Restore `.prev` (operator's `rollback`).
    Rollback,
    /// Go back to a version from the history (operator's `rollback --to`): a unique prefix of
    /// its sha256 or revision.
    RollbackTo(String),
}

impl Request {
    fn asked(&self) -> Asked {
        match self {
            Request::Poll => Asked::Poll,
            Request::Push(_) => Asked::Push,
            Request::Rollback | Request::RollbackTo(_) => Asked::Rollback,
        }
    }
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

/// Who runs the cycle hears of what it decides while it runs. The cycle knows no tasks, no
/// metrics and no HTTP: its caller does what these mean.
pub trait Observer: Sync {
    /// A quarantine, as soon as it is decided, before the rollback's restart and
    /// verification. The daemon publishes it on `/metrics` then: the rollback counter moves
    /// only at the end of the cycle, so an alert it fires finds the quarantined content's
    /// series already stored (a series first seen in the same scrape as the counter's
    /// increase may not be searchable yet when the alert's annotation is rendered).
    fn quarantined(&self, _target: &Target, _q: &state::Quarantine) {}
    /// A commit status the cycle wants posted (`pending` as content enters the pipeline, the
    /// verdict at the end): the caller's poster delivers it.
    fn post(&self, _target: &Target, _post: crate::cycle::commit_status::Post) {}
    /// The cycle has waited over a second for its target's lock; `what` says for what.
    fn waiting(&self, _target: &Target, _what: &str) {}
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
    /// The state the daemon's previous cycle of this target could not save: it is what
    /// happened (a verified apply), and the file on disk is older. Used instead of loading,
    /// so a failed final save does not cost a second restart.
    pub carry: Option<TargetState>,
    pub observer: &'a dyn Observer,
    /// This process's queue for the live file's directory (the daemon's): targets sharing a
    /// directory take turns here, waiting as tasks, before the directory's `flock`, which
    /// then only a command can be holding. None: the `flock` alone.
    pub turn: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl<'a> Ctx<'a> {
    /// A cycle of `target` as a one-shot command runs it: not at boot, tidying, nothing
    /// carried over.
    pub fn new(
        target: &'a Target,
        source: &'a Source,
        state_dir: &std::path::Path,
        observer: &'a dyn Observer,
    ) -> Ctx<'a> {
        Ctx {
            target,
            source,
            store: Store::new(state_dir, &target.name),
            state_dir: state_dir.to_path_buf(),
            stop: Stop::default(),
            boot: false,
            tidy: true,
            carry: None,
            observer,
            turn: None,
        }
    }
}

/// Runs one cycle under the target's lock.
pub async fn run(ctx: &Ctx<'_>, trigger: Request) -> Result<Report, CycleError> {
    let started = Instant::now();
    let _lock = match target_lock(ctx).await? {
        Ok(l) => l,
        // No lock, no state: nothing may run, but the failure is an outcome all the same
        // (a read-only or vanished state directory), so monitoring sees it.
        Err(e) => return Ok(unlocked(ctx, trigger.asked(), &e, started)),
    };
    // The state lock lives in a directory an operator may remove; the live file's directory
    // stays. Holding it too means a cycle started on a fresh state directory waits for one
    // still restarting on the old, instead of running beside it and adopting its unverified
    // file (targets whose live files share a directory take turns).
    let _turn = match &ctx.turn {
        Some(t) => Some(t.lock().await),
        None => None,
    };
    let _dir_lock = match live_dir_lock(ctx).await? {
        Ok(l) => l,
        Err(e) => return Ok(unlocked(ctx, trigger.asked(), &e, started)),
    };
    if ctx.tidy {
        install::remove_stale_temps(&ctx.target.path);
    }
    let mut rep = Report::new(&ctx.target.name, trigger.asked());
    let (mut st, loaded) = match starting_state(ctx) {
        Ok(s) => s,
        Err(e) => {
            state_error(ctx.target, &mut rep, &e);
            rep.phases.push((Phase::Total, started.elapsed()));
            return Ok(rep);
        }
    };
    let res = Runner {
        ctx,
        st: &mut st,
        rep: &mut rep,
    }
    .go(trigger)
    .await;
    rep.phases.push((Phase::Total, started.elapsed()));
    finish(ctx, st, loaded.as_ref(), rep, res)
}

/// The state a cycle starts from, and what is on disk to compare it with at the end (None
/// for a state carried from a cycle that could not save it: the save is then a full one).
fn starting_state(ctx: &Ctx<'_>) -> Result<(TargetState, Option<TargetState>), StateError> {
    match ctx.carry.clone() {
        Some(st) => {
            tracing::warn!(target_name = %ctx.target.name, "using the state the previous cycle could not save");
            Ok((st, None))
        }
        None => {
            let st = ctx.store.load()?;
            Ok((st.clone(), Some(st)))
        }
    }
}

/// After the cycle's work: the outcome into state and report, the commit status, the save
/// (a failed one is an outcome too), and the history.
fn finish(
    ctx: &Ctx<'_>,
    mut st: TargetState,
    loaded: Option<&TargetState>,
    mut rep: Report,
    res: Result<(), CycleError>,
) -> Result<Report, CycleError> {
    rep.held = st.hold;
    rep.quarantined = st.upstream_quarantined();
    if rep.live.sha256.is_none() {
        rep.live.sha256 = st.applied.as_ref().map(|a| a.sha256.clone());
    }
    // An I/O failure (or our own) is a cycle that ran and failed: an outcome, counted and
    // shown like any other, naming the stage. Refusals, shutdown and boot deferral are not.
    let res = match res {
        Err(e) => match e.stage() {
            Some(stage) => {
                tracing::error!(target_name = %ctx.target.name, stage, error = %e, "cycle failed");
                rep.end(Verdict::new(
                    Outcome::Failed,
                    Some(Reason::Failed {
                        stage,
                        error: e.to_string(),
                    }),
                    describe_live(ctx.target),
                ));
                Ok(())
            }
            None => Err(e),
        },
        ok => ok,
    };
    note_outcome(&mut st, &rep, &res);
    if res.is_ok() {
        if let Some(p) = crate::cycle::commit_status::finished(ctx.target, &rep, &mut st) {
            ctx.observer.post(ctx.target, p);
        }
    }
    let tried = st.quarantine.as_ref().map(|q| q.sha256.clone());
    let saved = match loaded {
        Some(l) => ctx.store.save_after(&st, l),
        None => ctx.store.save(&st),
    };
    if let Err(e) = saved {
        if res.is_err() {
            return Err(e.into());
        }
        // The cycle's work stands (a verified swap is not undone for a state file), but it
        // is not on disk: say so as a failure, so the next cycle's restart is not a surprise.
        tracing::error!(target_name = %ctx.target.name, error = %e, "cannot save state");
        rep.unsaved = Some(e.to_string());
        // A lost lock means the directory is no longer ours: what this cycle knew is not
        // carried into the next one.
        rep.state_unknown = matches!(e, StateError::LockLost { .. });
        // The live file is what the cycle left; only the outcome and reason change.
        let error = match rep.reason.take() {
            Some(r) => format!("{e} (after: {r})"),
            None => e.to_string(),
        };
        let live = rep.live.clone();
        rep.end(Verdict::new(
            Outcome::Failed,
            Some(Reason::Failed {
                stage: "state",
                error,
            }),
            live,
        ));
    }
    if res.is_ok() && rep.unsaved.is_none() && rep.outcome.changes_live() {
        record_history(ctx, &rep, tried.as_ref());
    }
    rep.state = st;
    res.map(|()| rep)
}

/// Adds a cycle that changed the live file to the target's history (best effort: a history
/// that cannot be written is logged, and the cycle stands).
fn record_history(ctx: &Ctx<'_>, rep: &Report, tried: Option<&crate::model::ids::Sha256>) {
    let live = install::read_live(&ctx.target.path, &ctx.target.file)
        .ok()
        .flatten();
    let done = crate::store::history::Done {
        outcome: rep.outcome,
        revision: rep.live.revision.clone(),
        restarts: rep.restarts,
        duration: rep.total(),
    };
    let recorded = crate::util::offload::blocking(|| {
        crate::store::history::History::new(ctx.store.dir()).record(
            &done,
            live.as_deref(),
            tried.map(|t| t.as_str()),
            &ctx.target.history,
        )
    });
    if let Err(e) = recorded {
        tracing::warn!(target_name = %ctx.target.name, error = %e, "cannot record the history");
    }
}

/// What `status` shows of the cycle's end: its outcome, or the error that ended it.
fn note_outcome(st: &mut TargetState, rep: &Report, res: &Result<(), CycleError>) {
    if let Err(e) = res {
        st.last_error = Some(e.to_string());
        return;
    }
    st.last_outcome = Some(rep.outcome);
    st.last_outcome_at = Some(Utc::now());
    let (note, error) = match &rep.reason {
        Some(r) if r.is_note() => (Some(r.to_string()), None),
        Some(r) => (None, Some(r.to_string())),
        None => (None, None),
    };
    st.last_error = error;
    // What a good outcome still wants said, such as "verification skipped".
    st.last_note = note;
    if rep.success {
        st.last_success = Some(Utc::now());
    }
}

/// The report of a cycle that could not take the target's lock (I/O on the state directory).
fn unlocked(ctx: &Ctx<'_>, asked: Asked, e: &StateError, started: Instant) -> Report {
    tracing::error!(target_name = %ctx.target.name, error = %e, "cannot take the target's lock");
    let mut rep = Report::new(&ctx.target.name, asked);
    rep.end(Verdict::new(
        Outcome::Failed,
        Some(Reason::Failed {
            stage: "state",
            error: e.to_string(),
        }),
        describe_live(ctx.target),
    ));
    rep.unsaved = Some(e.to_string());
    rep.state_unknown = true;
    rep.phases.push((Phase::Total, started.elapsed()));
    rep
}

/// The live file of a cycle that ended without a verdict on it: whether it is usable and
/// which content it holds, as the disk says now.
fn describe_live(t: &Target) -> Live {
    let live = install::read_live(&t.path, &t.file).ok().flatten();
    Live {
        sha256: live.as_deref().map(Sha256::of),
        usable: validate::usable_builtin(&t.validate, live.as_deref()),
        revision: None,
    }
}

/// How long a cycle waits for its target's lock before it says it is waiting.
const SAY_WAITING: std::time::Duration = std::time::Duration::from_secs(1);

/// The target's lock, taken off the async threads; a wait of over a second is told to the
/// observer (an operator's command prints it) with what the holder is doing.
async fn target_lock(ctx: &Ctx<'_>) -> Result<Result<LockGuard, StateError>, CycleError> {
    // Free, as it is for nearly every poll: taken here, without a thread hand-off.
    match ctx.store.try_lock() {
        Err(StateError::Held { .. }) => {}
        r => return Ok(r),
    }
    let store = ctx.store.clone();
    let mut task = tokio::task::spawn_blocking(move || store.lock());
    let taken = tokio::select! {
        r = &mut task => Some(r),
        _ = tokio::time::sleep(SAY_WAITING) => None,
    };
    let r = match taken {
        Some(r) => r,
        None => {
            ctx.observer.waiting(ctx.target, &ctx.store.holder());
            task.await
        }
    };
    r.map_err(|e| CycleError::Internal(format!("lock task failed: {e}")))
}

/// The lock on the live file's directory (see [`run`]), tried first without waiting, then
/// waited for off the async threads.
async fn live_dir_lock(ctx: &Ctx<'_>) -> Result<Result<LockGuard, StateError>, CycleError> {
    let dir = install::live_dir(&ctx.target.path).to_path_buf();
    match ctx.store.lock_live_dir(&dir, Wait::Try) {
        Err(StateError::Held { .. }) => {}
        r => return Ok(r),
    }
    let store = ctx.store.clone();
    blocking_lock(move || store.lock_live_dir(&dir, Wait::Block)).await
}

/// Takes a lock (which blocks) off the async threads.
pub(super) async fn blocking_lock<T: Send + 'static>(
    take: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CycleError> {
    tokio::task::spawn_blocking(take)
        .await
        .map_err(|e| CycleError::Internal(format!("lock task failed: {e}")))
}

/// The state file holds the quarantine and any pending apply: never reset it silently, and
/// touch nothing of this target until an operator has looked.
fn state_error(t: &Target, rep: &mut Report, e: &StateError) {
    rep.state_newer = matches!(e, StateError::Newer { .. });
    rep.end(Verdict::new(
        Outcome::StateError,
        Some(Reason::Stopped(format!(
            "{e}; nothing is applied to this target until the file is fixed or moved aside (its quarantine and pending records are then lost)"
        ))),
        describe_live(t),
    ));
}

/// One cycle in progress: the context, the state as it will be saved, the report so far.
struct Runner<'a, 'b> {
    ctx: &'a Ctx<'b>,
    st: &'a mut TargetState,
    rep: &'a mut Report,
}

/// Where content a cycle applies comes from (upstream, a push, last-good, the history); it
/// decides what validation, the gate, a failure and success mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// New upstream content (`drift`: the live file had been edited by hand).
    Upstream { drift: bool },
    /// An operator's `push`.
    Push,
    /// An operator's `rollback`: last-good goes back in.
    ManualRollback,
    /// An operator's `rollback --to`: a version from the history goes back in, through the
    /// whole pipeline (it may predate the validators), and the target is held there.
    RollbackTo,
}

impl Origin {
    /// Last-good was validated when it was applied, and must go back in even if a validator
    /// changed its mind since.
    fn validates(self) -> bool {
        self != Origin::ManualRollback
    }

    /// A rejected candidate is quarantined unless an operator pushed it: the operator sees
    /// the rejection, and upstream's content is not the pushed one.
    fn quarantines_rejects(self) -> bool {
        !matches!(self, Origin::Push | Origin::RollbackTo)
    }

    /// Only upstream content waits on a fleet gate; operators bypass it.
    fn gated(self) -> bool {
        matches!(self, Origin::Upstream { .. })
    }

    /// What the restart of the new content may assume about the unit: new content never
    /// starts a unit that is not running; putting last-good back by hand brings back one
    /// the bad content killed.
    fn forward(self) -> crate::service::activate::WasRunning {
        if matches!(self, Origin::ManualRollback | Origin::RollbackTo) {
            crate::service::activate::WasRunning::Unknown
        } else {
            crate::service::activate::WasRunning::No
        }
    }

    /// Success means "equal to upstream": a push or a manual rollback is not.
    fn success(self) -> bool {
        self.gated()
    }

    fn drift(self) -> bool {
        matches!(self, Origin::Upstream { drift: true })
    }

    /// The outcome of a verified apply.
    fn verified(self) -> Outcome {
        if matches!(self, Origin::ManualRollback | Origin::RollbackTo) {
            Outcome::RolledBack
        } else {
            Outcome::Applied
        }
    }
}

impl Runner<'_, '_> {
    fn t(&self) -> &Target {
        self.ctx.target
    }

    fn timed(&mut self, phase: Phase, since: Instant) {
        self.rep.phases.push((phase, since.elapsed()));
    }

    async fn go(&mut self, trigger: Request) -> Result<(), CycleError> {
        let mut recovered = None;
        if let Some(p) = self.st.pending.clone() {
            if self.recover(p).await? {
                if matches!(trigger, Request::Poll) {
                    return Ok(());
                }
                // An operator's command waited behind an apply another process died in. That
                // apply is finished now, but it is not what the operator asked for: go on and
                // do the command, unless the recovery left no service to do it on.
                let what = self.rep.summary();
                if self.rep.outcome == Outcome::RollbackFailed {
                    let not_done = format!("the {} was not done", trigger.asked().noun());
                    self.rep.reason = Some(match self.rep.reason.take() {
                        Some(r) => r.and(&not_done),
                        None => Reason::Stopped(not_done),
                    });
                    return Ok(());
                }
                *self.rep = self.rep.restarted();
                recovered = Some(what);
            }
        }
        let res = match trigger {
            Request::Poll => self.poll().await,
            Request::Push(body) => self.push(body).await,
            Request::Rollback => self.manual_rollback().await,
            Request::RollbackTo(key) => self.rollback_to(&key).await,
        };
        let Some(first) = recovered else {
            return res;
        };
        let first = format!("an interrupted apply was finished first ({first})");
        match res {
            Err(CycleError::Refused(why)) => Err(CycleError::Refused(format!("{why}; {first}"))),
            Ok(()) => {
                self.rep.reason = Some(match self.rep.reason.take() {
                    Some(r) => r.and(&first),
                    None => Reason::Note(first),
                });
                Ok(())
            }
            other => other,
        }
    }

    /// The live file's bytes, read now; its stamp and hash are kept, so the next poll can
    /// know it without reading it (see `poll`).
    fn read_live(&self) -> Result<Option<Vec<u8>>, CycleError> {
        Ok(self.read_live_hashed()?.0)
    }

    /// [`Runner::read_live`], with the hash it computed for the store.
    fn read_live_hashed(&self) -> Result<(Option<Vec<u8>>, Option<Sha256>), CycleError> {
        let t = self.t();
        let (bytes, stamp) = match install::read_live_stamped(&t.path, &t.file)? {
            Some(r) => (Some(r.bytes), r.stamp),
            None => (None, None),
        };
        let sha = bytes.as_deref().map(Sha256::of);
        self.ctx.store.remember_live(stamp, sha.as_ref());
        Ok((bytes, sha))
    }

    /// The revision of the content last applied (what the live file is, as far as we know).
    fn applied_revision(&self) -> Option<Revision> {
        self.st.applied.as_ref().and_then(|a| a.revision.clone())
    }

    /// A new outcome and reason for a cycle whose live file is already described (PowerSync's
    /// follow-up of an in-sync file): the live file, and whether that is success, stay.
    fn rerule(&mut self, outcome: Outcome, reason: Option<Reason>) {
        let v = Verdict {
            outcome,
            reason,
            live: self.rep.live.clone(),
            success: self.rep.success,
        };
        self.rep.end(v);
    }

    /// Ends the cycle with `outcome`, leaving the live file as it is: the report describes
    /// the live file (usable? which content, which revision) and says why.
    async fn leave(
        &mut self,
        outcome: Outcome,
        reason: Option<Reason>,
        live: Option<&[u8]>,
    ) -> Result<(), CycleError> {
        let described = Live {
            sha256: live.map(Sha256::of),
            usable: validate::usable_full(self.t(), live).await,
            revision: self.applied_revision(),
        };
        self.rep.end(Verdict::new(outcome, reason, described));
        Ok(())
    }
}
