//! What the daemon's parts share while it runs: the config, the metrics registry, and one
//! `LoopHandle` per target (its trigger, liveness deadline and in-sync flag). The supervisor
//! writes it; the HTTP server and the webhook only read it and ask for cycles. It sits below
//! both, so neither imports the other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::Store;

/// One target's loop, as the rest of the daemon sees it.
pub struct LoopHandle {
    pub trigger: Notify,
    /// A trigger arrived that no cycle has started to serve yet.
    pub pending: AtomicBool,
    /// Milliseconds since `Shared::epoch` until which the loop counts as alive.
    deadline_ms: AtomicU64,
    in_sync: AtomicBool,
}

/// State shared by the loops, the HTTP server and the watchdog.
pub struct Shared {
    pub cfg: Config,
    pub metrics: Metrics,
    loops: BTreeMap<String, LoopHandle>,
    ready: AtomicBool,
    epoch: Instant,
    last_cycle: Mutex<String>,
}

impl Shared {
    /// One loop handle per configured target; not ready, every loop alive until told.
    pub fn new(cfg: Config, metrics: Metrics) -> Shared {
        let loops = cfg
            .targets
            .keys()
            .map(|name| {
                (
                    name.clone(),
                    LoopHandle {
                        trigger: Notify::new(),
                        pending: AtomicBool::new(false),
                        deadline_ms: AtomicU64::new(u64::MAX),
                        in_sync: AtomicBool::new(false),
                    },
                )
            })
            .collect();
        Shared {
            cfg,
            metrics,
            loops,
            ready: AtomicBool::new(false),
            epoch: Instant::now(),
            last_cycle: Mutex::new(String::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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
    pub fn trigger(&self, target: &str) {
        if let Some(l) = self.loops.get(target) {
            l.pending.store(true, Ordering::SeqCst);
            l.trigger.notify_one();
        }
    }

    /// The revision of the content applied to `target`, from its persisted state.
    pub fn applied_revision(&self, target: &str) -> Option<String> {
        Store::new(&self.cfg.state_dir, target)
            .load()
            .ok()
            .and_then(|s| s.applied)
            .and_then(|a| a.revision)
    }

    /// The loop of `target` counts as alive for `within` from now.
    pub fn set_deadline(&self, target: &str, within: Duration) {
        if let Some(l) = self.loops.get(target) {
            let d = self.now_ms() + within.as_millis() as u64;
            l.deadline_ms.store(d, Ordering::SeqCst);
        }
    }

    /// Notes a finished cycle for `STATUS=`.
    pub fn note_cycle(&self, target: &str, in_sync: bool, line: String) {
        if let Some(l) = self.loops.get(target) {
            l.in_sync.store(in_sync, Ordering::SeqCst);
        }
        if let Ok(mut l) = self.last_cycle.lock() {
            *l = line;
        }
    }

    /// The text for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        let n = self.loops.len();
        let ok = self
            .loops
            .values()
            .filter(|l| l.in_sync.load(Ordering::SeqCst))
            .count();
        let last = self
            .last_cycle
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        if last.is_empty() {
            format!("{ok} of {n} targets in sync")
        } else {
            format!("{ok} of {n} targets in sync; last cycle {last}")
        }
    }
}
