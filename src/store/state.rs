//! What rulekeeper persists per target (applied content, pending apply, quarantine, hold,
//! the source's conditional-fetch memo, last outcome) and the lock files that keep the
//! daemon and CLI commands from interleaving. State files are replaced atomically, so a
//! crash leaves either the old or the new record.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ids::{Revision, Sha256};
use crate::model::labels::Outcome;
use crate::util::stamp::{Seen, Stamp};

use super::lock::{self, FileId, LockGuard, Slot, Wait};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// Written by a newer rulekeeper: never read as if it were ours, never rewritten.
    #[error(
        "state file {path} has format {found}; this rulekeeper knows formats up to {known} (it was written by a newer rulekeeper: upgrade, or restore the state directory of this version)"
    )]
    Newer {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    /// The lock file this cycle holds is no longer the one at its path: the state directory
    /// was removed or replaced under it, and another cycle may be running on a fresh one.
    #[error(
        "lock {path} was removed or replaced while this cycle held it (the state directory was removed?); nothing more is saved by this cycle, the next one takes over"
    )]
    LockLost { path: PathBuf },
    /// A lock tried without waiting is held by another holder.
    #[error("lock {path} is held by another cycle or command")]
    Held { path: PathBuf },
}

/// Whose trouble a state error is: the host's (a directory, lock or file rulekeeper cannot
/// read or write) or the target's own (a corrupt file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateTrouble {
    Host,
    Corrupt,
    /// Written by a newer rulekeeper than this one.
    Newer,
}

impl StateError {
    pub fn trouble(&self) -> StateTrouble {
        match self {
            StateError::Corrupt { .. } => StateTrouble::Corrupt,
            StateError::Newer { .. } => StateTrouble::Newer,
            StateError::Io { .. } | StateError::LockLost { .. } | StateError::Held { .. } => {
                StateTrouble::Host
            }
        }
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The content that was last applied and verified (or found already in place).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub sha256: Sha256,
    #[serde(default)]
    pub revision: Option<Revision>,
    pub at: DateTime<Utc>,
}

/// Written before the swap, cleared once the outcome is committed. Its presence at start
/// means the previous run died mid-cycle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// sha256 of the content being installed.
    pub new_sha256: Sha256,
    /// sha256 of the live file before the swap (None: there was no live file).
    pub prev_sha256: Option<Sha256>,
    #[serde(default)]
    pub revision: Option<Revision>,
    pub stage: PendingStage,
    pub started_at: DateTime<Utc>,
    /// Whether the managed systemd unit was running before the swap (None: not a systemd
    /// restarter, or systemd could not tell). A rollback brings a unit that ran back up.
    #[serde(default)]
    pub unit_running: Option<bool>,
    /// The host's boot id when the apply started: after a reboot, `unit_running` no longer
    /// says anything about the unit.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel tells.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PendingStage {
    /// New content is being installed, restarted and verified.
    Applying,
    /// Verification failed; `.prev` is being restored.
    RollingBack,
}

/// A content hash that must not be applied again while upstream still serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantine {
    pub sha256: Sha256,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// New upstream content waiting on the target's gate (fleets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GateWait {
    pub sha256: Sha256,
    /// When this content started waiting.
    pub since: DateTime<Utc>,
    /// Why the gate is closed, as of the last time it was asked.
    pub reason: String,
}

/// What the source said last time, so the next fetch can be conditional.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceMemo {
    /// What the next fetch sends back to be answered "not modified".
    pub token: crate::model::conditional::Conditional,
    /// sha256 of the content the token stands for.
    pub sha256: Sha256,
    #[serde(default)]
    pub revision: Option<Revision>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetState {
    #[serde(default)]
    pub applied: Option<Applied>,
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub quarantine: Option<Quarantine>,
    #[serde(default)]
    pub hold: bool,
    #[serde(default)]
    pub source: Option<SourceMemo>,
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    /// An outcome this version does not know (a newer version wrote it) reads as none,
    /// rather than making the whole file a `state_error`.
    #[serde(default, deserialize_with = "lenient_outcome")]
    pub last_outcome: Option<Outcome>,
    #[serde(default)]
    pub last_outcome_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// A note on the last good outcome (e.g. verification skipped: the unit was stopped).
    #[serde(default)]
    pub last_note: Option<String>,
    /// The revision upstream reported last (may differ from applied when held/quarantined).
    #[serde(default)]
    pub upstream_revision: Option<Revision>,
    /// sha256 of the content upstream served last time it was asked.
    #[serde(default)]
    pub upstream_sha256: Option<Sha256>,
    /// New upstream content waiting on the gate.
    #[serde(default)]
    pub gate: Option<GateWait>,
    /// Live content PowerSync is still deploying (initial replication), followed each cycle
    /// until it is active (`restart.powersync_deploy`).
    #[serde(default)]
    pub deploying: Option<Deploying>,
    /// The last commit status posted (`commit_status:`).
    #[serde(default)]
    pub commit_status: Option<PostedStatus>,
    /// The upstream revision refused for its signature (`require_signature`), and why: keyed
    /// by revision, not content, so the same bytes in a signed commit are applied.
    #[serde(default)]
    pub unsigned: Option<Unsigned>,
}

/// A revision refused because no allowed key signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsigned {
    pub revision: Revision,
    pub reason: String,
}

/// A commit status's state (`commit_status:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
}

/// The last commit status posted for a target: each (commit, state) is posted once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedStatus {
    pub sha: Revision,
    pub state: CommitState,
}

/// Content deployed through PowerSync's API whose initial replication is not done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deploying {
    pub sha256: Sha256,
    /// When it was deployed.
    pub since: DateTime<Utc>,
}

fn lenient_outcome<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Outcome>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(s.as_deref().and_then(Outcome::parse))
}

impl TargetState {
    /// The revision recorded for content `sha`, if it is the applied content.
    pub fn revision_of(&self, sha: &str) -> Option<Revision> {
        self.applied
            .as_ref()
            .filter(|a| a.sha256 == sha)
            .and_then(|a| a.revision.clone())
    }

    /// Upstream serves the content that is quarantined now.
    pub fn upstream_quarantined(&self) -> bool {
        let content = match (&self.quarantine, &self.upstream_sha256) {
            (Some(q), Some(up)) => q.sha256 == *up,
            _ => false,
        };
        content || self.upstream_unsigned().is_some()
    }

    /// The refusal standing for upstream's current revision (`require_signature`).
    pub fn upstream_unsigned(&self) -> Option<&Unsigned> {
        self.unsigned
            .as_ref()
            .filter(|u| self.upstream_revision.as_ref() == Some(&u.revision))
    }

    /// Equal in everything but the times of routine cycles (when the last outcome was, the
    /// last success): what an unchanged poll moves.
    pub fn times_eq(&self, other: &TargetState) -> bool {
        self.volatile_eq(other)
            && self.last_outcome == other.last_outcome
            && self.last_error == other.last_error
            && self.last_note == other.last_note
    }

    /// Equal in everything but the bookkeeping of routine cycles (last outcome, its time,
    /// last success, last error, last note). Compared field by field, without copies: it
    /// runs on every cycle. The destructuring names every field, so a new one must be
    /// placed here or below by whoever adds it.
    pub fn volatile_eq(&self, other: &TargetState) -> bool {
        let TargetState {
            applied,
            pending,
            quarantine,
            hold,
            source,
            last_success: _,
            last_outcome: _,
            last_outcome_at: _,
            last_error: _,
            last_note: _,
            upstream_revision,
            upstream_sha256,
            gate,
            deploying,
            commit_status,
            unsigned,
        } = self;
        *applied == other.applied
            && *pending == other.pending
            && *quarantine == other.quarantine
            && *hold == other.hold
            && *source == other.source
            && *upstream_revision == other.upstream_revision
            && *upstream_sha256 == other.upstream_sha256
            && *gate == other.gate
            && *deploying == other.deploying
            && *commit_status == other.commit_status
            && *unsigned == other.unsigned
    }
}

/// The format of `state.json` this binary writes. Format 1 is the first: files written
/// before the field existed have the same shape and read as 1. A new format gets the next
/// number, and every binary reads each format up to its own.
pub const STATE_FORMAT: u64 = 1;

/// Why a `state.json` cannot be read.
#[derive(Debug)]
pub enum ParseError {
    Json(serde_json::Error),
    Newer(u64),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Json(e) => e.fmt(f),
            ParseError::Newer(v) => write!(f, "format {v} is newer than {STATE_FORMAT}"),
        }
    }
}

/// A state file's format, read before anything else in it.
#[derive(Deserialize)]
struct Format {
    #[serde(default)]
    format: Option<u64>,
}

/// What is written: the format, then the state.
#[derive(Serialize)]
struct Versioned<'a> {
    format: u64,
    #[serde(flatten)]
    state: &'a TargetState,
}

/// Parses the bytes of a `state.json`, of any format up to [`STATE_FORMAT`].
pub fn parse(bytes: &[u8]) -> Result<TargetState, ParseError> {
    let f: Format = serde_json::from_slice(bytes).map_err(ParseError::Json)?;
    match f.format.unwrap_or(1) {
        v if v > STATE_FORMAT => Err(ParseError::Newer(v)),
        _ => serde_json::from_slice(bytes).map_err(ParseError::Json),
    }
}

/// How long the times of routine cycles (see [`TargetState::times_eq`]) may stay in memory
/// only: a daemon writes them with the next real change, after this long, or when it stops.
/// Until then `status` shows the times on disk; `/metrics` has them live.
pub const TIMES_EVERY: Duration = Duration::from_secs(300);

/// A target's directory under `state_dir`, and what this process keeps of it between cycles.
/// Clones share what is kept: the daemon keeps one store per target for its whole life; a
/// command makes its own, which starts knowing nothing.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// (device, inode) of the lock this store handed out, shared by its clones: every save
    /// checks the lock file is still the one locked, so a cycle whose state directory was
    /// removed under it never writes into the next cycle's.
    locked: Arc<Mutex<Option<FileId>>>,
    kept: Arc<Mutex<Kept>>,
    lock_slot: Slot,
    live_dir_slot: Slot,
    /// Whether times-only saves wait (a daemon); a command writes what it did at once.
    defer_times: bool,
}

/// What a store knows of its files without reading them again.
#[derive(Debug, Default)]
struct Kept {
    /// `state.json` as this process last read or wrote it.
    disk: Option<Seen<TargetState>>,
    /// Times newer than `disk`'s (the rest is `disk`'s), not written yet, and since when.
    times: Option<(Times, Instant)>,
    /// The live file as last read: its hash and (once judged) usability. A store serves one
    /// target, so one live path; the stamp says the file at it is still the one read.
    live: Option<Seen<LiveMemo>>,
}

/// The times a routine cycle moves (see [`TargetState::times_eq`]).
#[derive(Debug, Clone, Copy)]
struct Times {
    last_success: Option<DateTime<Utc>>,
    last_outcome_at: Option<DateTime<Utc>>,
}

/// What a read of the live file told: its hash, and whether it passed the built-in checks
/// (None until a cycle asked). Both follow from the bytes alone, so they hold as long as the
/// file's stamp does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMemo {
    pub sha256: Sha256,
    pub usable: Option<bool>,
}

impl Store {
    pub fn new(state_dir: &Path, target: &str) -> Self {
        Store {
            dir: state_dir.join("targets").join(target),
            locked: Default::default(),
            kept: Default::default(),
            lock_slot: Slot::default(),
            live_dir_slot: Slot::default(),
            defer_times: false,
        }
    }

    /// The daemon's store for a target: times-only saves wait (see [`TIMES_EVERY`]).
    pub fn for_daemon(state_dir: &Path, target: &str) -> Self {
        Store {
            defer_times: true,
            ..Store::new(state_dir, target)
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn ensure_dir(&self) -> Result<(), StateError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        // A new directory's name lives in its parent: without this fsync, a power loss can
        // take the directory, and the state saved in it, away again.
        for d in [self.dir.parent(), self.dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            fsync_dir(d).map_err(io_err(d))?;
        }
        Ok(())
    }

    /// Loads the state; a missing file is the empty state. A file this store wrote or read
    /// and whose stamp has not moved since is not read again; times kept in memory only
    /// (a daemon's routine cycles) come with it. A file changed behind our back is read, and
    /// wins over any times kept.
    pub fn load(&self) -> Result<TargetState, StateError> {
        let path = self.file();
        let meta = match fs::metadata(&path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut kept = crate::util::mutex::lock(&self.kept);
        if let (Some(m), Some(disk)) = (&meta, &kept.disk) {
            if disk.trusted(&Stamp::of(m)) {
                return Ok(kept.newest());
            }
        }
        let Some((stamp, st)) = self.read()? else {
            kept.disk = None;
            kept.times = None;
            return Ok(TargetState::default());
        };
        match kept.disk.as_mut() {
            // What we knew, under a stamp that had not settled: now it has been read again.
            Some(disk) if disk.value == st => {
                disk.stamp = stamp;
                disk.confirm();
            }
            _ => {
                kept.disk = Some(Seen::now(stamp, st));
                kept.times = None;
            }
        }
        Ok(kept.newest())
    }

    /// The state file's stamp and content, None when there is none.
    fn read(&self) -> Result<Option<(Stamp, TargetState)>, StateError> {
        let path = self.file();
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Stamped before the read: a write after it moves the stamp.
        let stamp = Stamp::of(&f.metadata().map_err(io_err(&path))?);
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io_err(&path))?;
        let st = parse(&bytes).map_err(|e| match e {
            ParseError::Newer(found) => StateError::Newer {
                path: path.clone(),
                found,
                known: STATE_FORMAT,
            },
            ParseError::Json(e) => StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            },
        })?;
        Ok(Some((stamp, st)))
    }

    /// Replaces the state file atomically (temp, fsync, rename, fsync dir).
    pub fn save(&self, st: &TargetState) -> Result<(), StateError> {
        self.write(st, true)
    }

    /// Saves a state that differs from the one on disk only in [`TargetState::volatile_eq`]
    /// fields (times and last outcome of a routine cycle): still atomic, but without the
    /// fsyncs, which dominate the cost of an unchanged cycle. A crash may lose those times.
    pub fn save_volatile(&self, st: &TargetState) -> Result<(), StateError> {
        self.write(st, false)
    }

    /// Saves the state a cycle ends with, `loaded` being the one it started from: durably
    /// when something that matters changed, without fsyncs when only the routine outcome
    /// did, and, in a daemon, not at all when only times moved (they wait in memory, at
    /// most [`TIMES_EVERY`]).
    pub fn save_after(&self, st: &TargetState, loaded: &TargetState) -> Result<(), StateError> {
        if self.defer_times && st.times_eq(loaded) {
            let mut kept = crate::util::mutex::lock(&self.kept);
            // Only a state that is on disk as this store knows it can wait.
            if kept.disk.is_some() {
                let since = kept.times.as_ref().map_or_else(Instant::now, |t| t.1);
                if since.elapsed() < TIMES_EVERY {
                    let times = Times {
                        last_success: st.last_success,
                        last_outcome_at: st.last_outcome_at,
                    };
                    kept.times = Some((times, since));
                    return Ok(());
                }
            }
        }
        if st.volatile_eq(loaded) {
            self.save_volatile(st)
        } else {
            self.save(st)
        }
    }

    /// Writes times kept in memory (a daemon stopping), under the target's lock, unless
    /// the file changed behind our back meanwhile.
    pub fn flush_times(&self) -> Result<(), StateError> {
        if crate::util::mutex::lock(&self.kept).times.is_none() {
            return Ok(());
        }
        let _g = self.lock()?;
        let st = self.load()?;
        if crate::util::mutex::lock(&self.kept).times.is_some() {
            self.save_volatile(&st)?;
        }
        Ok(())
    }

    fn write(&self, st: &TargetState, durable: bool) -> Result<(), StateError> {
        if durable {
            crate::util::offload::blocking(|| self.write_now(st, durable))
        } else {
            self.write_now(st, durable)
        }
    }

    fn write_now(&self, st: &TargetState, durable: bool) -> Result<(), StateError> {
        self.check_lock()?;
        self.ensure_dir()?;
        let path = self.file();
        let v = Versioned {
            format: STATE_FORMAT,
            state: st,
        };
        let json = serde_json::to_vec_pretty(&v).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".state.json.")
            .tempfile_in(&self.dir)
            .map_err(io_err(&path))?;
        tmp.write_all(&json).map_err(io_err(&path))?;
        if durable {
            tmp.as_file().sync_all().map_err(io_err(&path))?;
        }
        let file = tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        if durable {
            fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        // Stamped after the rename, which moves the file's ctime.
        let mut kept = crate::util::mutex::lock(&self.kept);
        kept.times = None;
        kept.disk = file
            .metadata()
            .ok()
            .map(|m| Seen::now(Stamp::of(&m), st.clone()));
        Ok(())
    }

    /// The live file at `path` as last read, if its stamp says it still holds that (a plain
    /// file; a tree's directory stamp says nothing of its files).
    pub fn live_known(&self, path: &Path) -> Option<LiveMemo> {
        let m = fs::symlink_metadata(path).ok()?;
        let kept = crate::util::mutex::lock(&self.kept);
        let seen = kept.live.as_ref()?;
        (m.is_file() && seen.trusted(&Stamp::of(&m))).then(|| seen.value.clone())
    }

    /// What a read of the live file found (None: no stamp to keep it by).
    pub fn remember_live(&self, stamp: Option<Stamp>, sha256: Option<&Sha256>) {
        let mut kept = crate::util::mutex::lock(&self.kept);
        kept.live = match (stamp, sha256) {
            (Some(stamp), Some(sha)) => {
                let usable = kept
                    .live
                    .as_ref()
                    .filter(|s| s.value.sha256 == *sha)
                    .and_then(|s| s.value.usable);
                Some(Seen::now(
                    stamp,
                    LiveMemo {
                        sha256: sha.clone(),
                        usable,
                    },
                ))
            }
            _ => None,
        };
    }

    /// Whether the live content `sha256` passed the built-in checks, for the next poll.
    pub fn remember_usable(&self, sha256: &Sha256, usable: bool) {
        let mut kept = crate::util::mutex::lock(&self.kept);
        if let Some(seen) = kept.live.as_mut().filter(|s| s.value.sha256 == *sha256) {
            seen.value.usable = Some(usable);
        }
    }

    /// Where the git source keeps its cache.
    pub fn git_cache(&self) -> PathBuf {
        self.dir.join("git")
    }

    /// Whether someone holds this target's lock now (without waiting or creating it).
    pub fn is_locked(&self) -> bool {
        lock::is_locked(&self.dir.join("lock"))
    }

    /// Takes this target's lock, waiting for another holder (daemon or CLI) to finish.
    pub fn lock(&self) -> Result<LockGuard, StateError> {
        self.take_lock(Wait::Block)
    }

    /// Takes this target's lock if it is free now: `Err(Held)` otherwise. It does not block,
    /// so a cycle can try it without leaving its thread.
    pub fn try_lock(&self) -> Result<LockGuard, StateError> {
        self.take_lock(Wait::Try)
    }

    fn take_lock(&self, wait: Wait) -> Result<LockGuard, StateError> {
        let path = self.dir.join("lock");
        let g = match lock::lock_file(&path, wait, Some(&self.lock_slot)) {
            Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // No directory yet (or removed): made, then locked.
                self.ensure_dir()?;
                lock::lock_file(&path, wait, Some(&self.lock_slot))?
            }
            r => r?,
        };
        *crate::util::mutex::lock(&self.locked) = Some(g.id);
        Ok(g)
    }

    /// The lock on the live file's directory `dir`, kept open by this store between cycles.
    pub fn lock_live_dir(&self, dir: &Path, wait: Wait) -> Result<LockGuard, StateError> {
        lock::lock_dir(dir, wait, Some(&self.live_dir_slot))
    }
    /// [`Store::lock`], and when another holder keeps it longer than `after`, `note` is called
    /// once (from another thread) with what that holder is doing, as the state says: an
    /// operator whose command waits is told so instead of looking at a silent terminal.
    pub fn lock_noting(
        &self,
        after: std::time::Duration,
        note: impl FnOnce(String) + Send,
    ) -> Result<LockGuard, StateError> {
        if !self.is_locked() {
            return self.lock();
        }
        let (taken, wake) = (std::sync::Mutex::new(false), std::sync::Condvar::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                let g = crate::util::mutex::lock(&taken);
                let (_g, waited) = wake
                    .wait_timeout_while(g, after, |taken| !*taken)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if waited.timed_out() {
                    note(self.holder());
                }
            });
            let r = self.lock();
            *crate::util::mutex::lock(&taken) = true;
            wake.notify_all();
            r
        })
    }

    /// What the holder of this target's lock is doing, as its state file says (read without
    /// the lock: the file is only ever replaced whole).
    pub fn holder(&self) -> String {
        let pending = fs::read(self.file())
            .ok()
            .and_then(|b| parse(&b).ok())
            .and_then(|st| st.pending);
        match pending {
            Some(p) => format!(
                "waiting for the apply in progress (started {}, {}s ago)",
                p.started_at.format("%H:%M:%S UTC"),
                (Utc::now() - p.started_at).num_seconds().max(0)
            ),
            None => "waiting for the cycle or command in progress on this target".into(),
        }
    }

    /// Err(LockLost) when this store's lock file is no longer at its path.
    fn check_lock(&self) -> Result<(), StateError> {
        let Some(id) = *crate::util::mutex::lock(&self.locked) else {
            return Ok(());
        };
        let path = self.dir.join("lock");
        match lock::file_id(&path) {
            Ok(now) if now == id => Ok(()),
            _ => Err(StateError::LockLost { path }),
        }
    }
}

impl Kept {
    /// The newest state this process knows: times kept in memory, else the file's.
    fn newest(&self) -> TargetState {
        let mut st = self
            .disk
            .as_ref()
            .map(|d| d.value.clone())
            .unwrap_or_default();
        if let Some((t, _)) = &self.times {
            st.last_success = t.last_success;
            st.last_outcome_at = t.last_outcome_at;
        }
        st
    }
}

/// fsyncs a directory so a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_missing_is_default() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path(), "t");
        assert_eq!(s.load().unwrap(), TargetState::default());
        let st = TargetState {
            hold: true,
            ..Default::default()
        };
        s.save(&st).unwrap();
        assert_eq!(s.load().unwrap(), st);
    }

    #[test]
    fn times_and_bookkeeping_are_told_apart_from_what_matters() {
        let a = TargetState::default();
        let times = TargetState {
            last_outcome_at: Some(Utc::now()),
            last_success: Some(Utc::now()),
            ..a.clone()
        };
        assert!(times.times_eq(&a) && times.volatile_eq(&a));
        let error = TargetState {
            last_error: Some("x".into()),
            ..a.clone()
        };
        assert!(!error.times_eq(&a) && error.volatile_eq(&a));
        let held = TargetState {
            hold: true,
            ..a.clone()
        };
        assert!(!held.times_eq(&a) && !held.volatile_eq(&a));
    }

    #[test]
    fn a_daemon_keeps_times_in_memory_and_reads_a_changed_file_again() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::for_daemon(d.path(), "t");
        let _g = s.lock().unwrap();
        let st = TargetState {
            last_outcome: Some(Outcome::Unchanged),
            ..Default::default()
        };
        s.save(&st).unwrap();
        let loaded = s.load().unwrap();
        let later = TargetState {
            last_outcome_at: Some(Utc::now()),
            ..loaded.clone()
        };
        s.save_after(&later, &loaded).unwrap();
        // Not written, but what this store loads.
        assert_eq!(Store::new(d.path(), "t").load().unwrap(), st);
        assert_eq!(s.load().unwrap(), later);
        // Another writer's file wins over the times kept.
        let other = TargetState {
            hold: true,
            ..Default::default()
        };
        Store::new(d.path(), "t").save(&other).unwrap();
        assert_eq!(s.load().unwrap(), other);
    }

    #[test]
    fn corrupt_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path(), "t");
        s.ensure_dir().unwrap();
        fs::write(s.dir().join("state.json"), b"{nope").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }
}
