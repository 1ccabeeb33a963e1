//! What the daemon's parts share while it runs: the config, the metrics registry, and one
//! `LoopHandle` per target (its trigger, liveness deadline and in-sync flag). The supervisor
//! writes it; the HTTP server and the webhook only read it and ask for cycles. It sits below
//! both, so neither imports the other.
//!
//! Liveness is decided here, in one place: a target loop only says what it is doing
//! ([`Shared::loop_cycling`], [`Shared::loop_waiting`], [`Shared::loop_parked`]), and the
//! loop counts as alive until that should be over plus its [`cycle_budget`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Config, Target};
use crate::daemon::poster::Poster;
use crate::model::labels::Outcome;
use crate::observe::metrics::Metrics;
use crate::store::state::Store;
use crate::util::mutex;

/// The longest a healthy cycle of `t` can take: every stage at its time limit, a refetch
/// and a rollback, doubled for waiting on a lock held by another cycle (CLI or a target of
/// the same unit). A loop past this is stuck, and the watchdog stops pinging.
pub fn cycle_budget(t: &Target) -> Duration {
    let psync =
        |p: &Option<crate::config::PowerSyncApi>| p.as_ref().map(|p| p.timeout).unwrap_or_default();
    let one = t.source.timeout * 2
        + t.validate.timeout * 2
        + psync(&t.validate.powersync_api)
        + (t.restart.timeout + t.verify.timeout + psync(&t.verify.powersync_api)) * 2
        + Duration::from_secs(5);
    one * 2 + Duration::from_secs(5)
}

/// A parked loop (the process is shutting down) counts as alive this long.
const PARKED: Duration = Duration::from_secs(3600);

/// One target's loop, as the rest of the daemon sees it.
pub struct LoopHandle {
    pub trigger: Notify,
    /// A trigger arrived that no cycle has started to serve yet.
    pub pending: AtomicBool,
    /// Milliseconds since `Shared::epoch` until which the loop counts as alive.
    deadline_ms: AtomicU64,
    /// [`cycle_budget`] of the target.
    budget: Duration,
    in_sync: AtomicBool,
}

/// State shared by the loops, the HTTP server and the watchdog.
pub struct Shared {
    pub cfg: Config,
    pub metrics: Metrics,
    /// Delivers the cycles' commit statuses; flushed before the daemon exits.
    pub poster: Poster,
    loops: BTreeMap<String, LoopHandle>,
    /// Each target's store for the daemon's whole life (what it knows of the target's files,
    /// its kept locks, the times of routine cycles not written yet).
    stores: BTreeMap<String, Store>,
    /// One queue per live directory (see `cycle::Ctx::turn`).
    turns: BTreeMap<std::path::PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>,
    ready: AtomicBool,
    epoch: Instant,
    last_cycle: Mutex<Option<LastCycle>>,
    /// When `STATUS=` was last sent (see [`Shared::note_cycle`]).
    status_sent: Mutex<Option<Instant>>,
    /// Targets whose last cycle could not save its state, and why: what `/status` reads from
    /// disk is older than what happened.
    unsaved: Mutex<BTreeMap<String, Unsaved>>,
}

/// The grid timed polls are put on (see [`Shared::on_grid`]): well under the ±10 % jitter of
/// the shortest interval (1 s).
pub const COALESCE: Duration = Duration::from_millis(100);

/// How often an unchanged cycle may update `STATUS=`.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The last cycle, as `STATUS=` tells it.
struct LastCycle {
    at: chrono::DateTime<chrono::Utc>,
    target: String,
    outcome: Outcome,
}

/// A target's cycle whose state could not be saved.
pub struct Unsaved {
    pub error: String,
    /// What the cycle would have saved, when it is still the target's (not after a lost
    /// lock): the next cycle starts from it rather than the older file.
    pub state: Option<crate::store::state::TargetState>,
}

impl Shared {
    /// One loop handle per configured target; not ready, every loop alive until told.
    pub fn new(cfg: Config, metrics: Metrics) -> Shared {
        let loops = cfg
            .targets
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    LoopHandle {
                        trigger: Notify::new(),
                        pending: AtomicBool::new(false),
                        deadline_ms: AtomicU64::new(u64::MAX),
                        budget: cycle_budget(t),
                        in_sync: AtomicBool::new(false),
                    },
                )
            })
            .collect();
        let stores = cfg
            .targets
            .keys()
            .map(|name| (name.clone(), Store::for_daemon(&cfg.state_dir, name)))
            .collect();
        let turns = cfg
            .targets
            .values()
            .map(|t| {
                let dir = crate::store::install::live_dir(&t.path).to_path_buf();
                (dir, Default::default())
            })
            .collect();
        Shared {
            stores,
            turns,
            cfg,
            poster: Poster::new(metrics.commit_statuses()),
            metrics,
            loops,
            ready: AtomicBool::new(false),
            epoch: Instant::now(),
            last_cycle: Mutex::new(None),
            status_sent: Mutex::new(None),
            unsaved: Mutex::new(BTreeMap::new()),
        }
    }

    /// `at`, moved up to the next multiple of [`COALESCE`] since the daemon started: polls
    /// due within one slot start together, and one wake-up of the runtime serves them all
    /// (alone, each poll costs its own: the timer, the worker, the reactor).
    pub fn on_grid(&self, at: Instant) -> Instant {
        let slot = COALESCE.as_nanos();
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let up = since.div_ceil(slot) * slot;
        let ahead = Duration::from_nanos(u64::try_from(up - since).unwrap_or(0));
        at + ahead
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records what a target's cycle left unsaved: its error (None: the state is on disk)
    /// and, when it is the target's, the state itself, for the next cycle to start from.
    pub fn note_unsaved(&self, target: &str, unsaved: Option<Unsaved>) {
        let mut m = crate::util::mutex::lock(&self.unsaved);
        match unsaved {
            Some(u) => m.insert(target.to_string(), u),
            None => m.remove(target),
        };
    }

    /// The state to start a target's next cycle from, when the last one could not save it.
    /// Taken once: the error stays shown until a cycle saves.
    pub fn take_carry(&self, target: &str) -> Option<crate::store::state::TargetState> {
        crate::util::mutex::lock(&self.unsaved)
            .get_mut(target)
            .and_then(|u| u.state.take())
    }

    /// The state save error of a target's last cycle, if it had one.
    pub fn unsaved(&self, target: &str) -> Option<String> {
        crate::util::mutex::lock(&self.unsaved)
            .get(target)
            .map(|u| u.error.clone())
    }

    pub fn loop_handle(&self, target: &str) -> Option<&LoopHandle> {
        self.loops.get(target)
    }

    /// Every loop has made progress within its deadline (and boot is over).
    pub fn alive(&self) -> bool {
        if !self.is_ready() {
            return false;
        }
        let now = self.now_ms();
        self.loops
            .values()
            .all(|l| l.deadline_ms.load(Ordering::SeqCst) >= now)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Asks for an earlier cycle; triggers during a cycle coalesce into one more.
    /// Asks `target`'s loop for a cycle. Returns false when one was already asked for and
    /// not yet started: this trigger joins it (coalesced).
    pub fn trigger(&self, target: &str) -> bool {
        match self.loops.get(target) {
            Some(l) => {
                let was = l.pending.swap(true, Ordering::SeqCst);
                l.trigger.notify_one();
                !was
            }
            None => false,
        }
    }

    /// `t`'s store (a fresh one for a target this daemon does not run).
    pub fn store(&self, t: &Target) -> Store {
        self.stores
            .get(&t.name)
            .cloned()
            .unwrap_or_else(|| Store::new(&self.cfg.state_dir, &t.name))
    }

    /// Every target's store, by name.
    pub fn stores(&self) -> impl Iterator<Item = (&String, &Store)> {
        self.stores.iter()
    }

    /// The queue of `t`'s live directory.
    pub fn turn(&self, t: &Target) -> Option<std::sync::Arc<tokio::sync::Mutex<()>>> {
        self.turns
            .get(crate::store::install::live_dir(&t.path))
            .cloned()
    }

    /// The revision of the content applied to `target`, from its persisted state.
    pub fn applied_revision(&self, target: &str) -> Option<crate::model::ids::Revision> {
        Store::new(&self.cfg.state_dir, target)
            .load()
            .ok()
            .and_then(|s| s.applied)
            .and_then(|a| a.revision)
    }

    /// The loop of `target` starts a cycle now.
    pub fn loop_cycling(&self, target: &str) {
        self.loop_busy_until(target, Instant::now(), true);
    }

    /// The loop of `target` waits until `until` (its next poll) before its next cycle.
    pub fn loop_waiting(&self, target: &str, until: Instant) {
        self.loop_busy_until(target, until, true);
    }

    /// The loop of `target` has stopped (shutdown).
    pub fn loop_parked(&self, target: &str) {
        self.loop_busy_until(target, Instant::now() + PARKED, false);
    }

    /// The loop counts as alive until `until`, plus a cycle's budget when it will run one.
    fn loop_busy_until(&self, target: &str, until: Instant, then_cycles: bool) {
        if let Some(l) = self.loops.get(target) {
            let mut within = until.saturating_duration_since(Instant::now());
            if then_cycles {
                within += l.budget;
            }
            let d = self.now_ms() + within.as_millis() as u64;
            l.deadline_ms.store(d, Ordering::SeqCst);
        }
    }

    /// Notes a finished cycle for `STATUS=`.
    /// Notes a finished cycle; true when `STATUS=` is due: at once when a target's in-sync
    /// flag flipped or the outcome is news, else at most every [`STATUS_EVERY`] (a daemon
    /// of many targets would otherwise send systemd a message per unchanged poll).
    pub fn note_cycle(&self, target: &str, in_sync: bool, outcome: Outcome) -> bool {
        let flipped = self
            .loops
            .get(target)
            .is_some_and(|l| l.in_sync.swap(in_sync, Ordering::SeqCst) != in_sync);
        *mutex::lock(&self.last_cycle) = Some(LastCycle {
            at: chrono::Utc::now(),
            target: target.to_string(),
            outcome,
        });
        let mut sent = mutex::lock(&self.status_sent);
        let due = flipped
            || outcome != Outcome::Unchanged
            || sent.is_none_or(|t| t.elapsed() >= STATUS_EVERY);
        if due {
            *sent = Some(Instant::now());
        }
        due
    }

    /// The text for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        let n = self.loops.len();
        let ok = self
            .loops
            .values()
            .filter(|l| l.in_sync.load(Ordering::SeqCst))
            .count();
        match &*mutex::lock(&self.last_cycle) {
            None => format!("{ok} of {n} targets in sync"),
            Some(c) => format!(
                "{ok} of {n} targets in sync; last cycle {} ({} {})",
                c.at.with_timezone(&chrono::Local).format("%H:%M:%S"),
                c.target,
                c.outcome.as_str()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let text = "targets:\n  t:\n    source: { kind: file, path: /srv/up.yaml }\n    path: /srv/live/r.yaml\n    restart: { none: true }\n    verify: { none: true }\n";
        let cfg = crate::config::parse(text, std::path::Path::new("c.yaml")).unwrap();
        Shared::new(cfg, Metrics::new().unwrap())
    }

    #[test]
    fn not_alive_before_ready() {
        let s = shared();
        assert!(!s.alive());
        s.set_ready();
        assert!(s.alive());
    }

    #[test]
    fn a_loop_is_alive_until_its_wait_and_a_cycle_budget_are_over() {
        let s = shared();
        s.set_ready();
        // A wait that ended longer ago than a cycle may take: stuck.
        let budget = cycle_budget(&s.cfg.targets["t"]);
        let long_ago = Instant::now()
            .checked_sub(budget + Duration::from_secs(1))
            .unwrap();
        s.loop_waiting("t", long_ago);
        // loop_busy_until saturates a past `until` to now, so it still has one budget.
        assert!(s.alive());
        s.loop_cycling("t");
        assert!(s.alive());
        s.loops["t"].deadline_ms.store(0, Ordering::SeqCst);
        // Deadlines are in whole milliseconds since the epoch: wait for the first to pass.
        while s.now_ms() == 0 {
            std::hint::spin_loop();
        }
        assert!(!s.alive(), "a deadline in the past is a stuck loop");
        s.loop_parked("t");
        assert!(s.alive());
    }

    #[test]
    fn triggers_set_pending_and_status_counts_in_sync_targets() {
        let s = shared();
        s.trigger("t");
        assert!(s.loops["t"].pending.load(Ordering::SeqCst));
        s.trigger("nope");
        assert_eq!(s.status_line(), "0 of 1 targets in sync");
        // The first cycle's status is due, the next unchanged one's not (within a second),
        // a flip of the in-sync flag is.
        assert!(s.note_cycle("t", true, Outcome::Unchanged));
        let line = s.status_line();
        assert!(
            line.starts_with("1 of 1 targets in sync; last cycle ")
                && line.ends_with(" (t unchanged)"),
            "{line}"
        );
        assert!(!s.note_cycle("t", true, Outcome::Unchanged));
        assert!(s.note_cycle("t", false, Outcome::Unchanged));
    }

    #[test]
    fn polls_go_on_a_grid_never_earlier_and_less_than_a_slot_later() {
        let s = shared();
        for ms in [0, 1, 99, 100, 101, 12_345] {
            let at = s.epoch + Duration::from_millis(ms);
            let g = s.on_grid(at);
            assert!(g >= at && g - at < COALESCE, "{ms}: {:?}", g - at);
            assert_eq!((g - s.epoch).as_nanos() % COALESCE.as_nanos(), 0, "{ms}");
        }
    }
}
