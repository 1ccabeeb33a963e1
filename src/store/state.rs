//! What rulekeeper persists per target (applied content, pending apply, quarantine, hold,
//! the source's conditional-fetch memo, last outcome) and the lock files that keep the
//! daemon and CLI commands from interleaving. State files are replaced atomically, so a
//! crash leaves either the old or the new record.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ids::{Revision, Sha256};
use crate::model::labels::Outcome;

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
            StateError::Io { .. } | StateError::LockLost { .. } => StateTrouble::Host,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
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

    /// Equal in everything but the bookkeeping of routine cycles (last outcome, its time,
    /// last success, last error).
    pub fn volatile_eq(&self, other: &TargetState) -> bool {
        let strip = |s: &TargetState| TargetState {
            last_success: None,
            last_outcome: None,
            last_outcome_at: None,
            last_error: None,
            last_note: None,
            ..s.clone()
        };
        strip(self) == strip(other)
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

/// A target's directory under `state_dir`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// (device, inode) of the lock this store handed out, shared by its clones: every save
    /// checks the lock file is still the one locked, so a cycle whose state directory was
    /// removed under it never writes into the next cycle's.
    locked: std::sync::Arc<std::sync::Mutex<Option<(u64, u64)>>>,
}

impl Store {
    pub fn new(state_dir: &Path, target: &str) -> Self {
        Store {
            dir: state_dir.join("targets").join(target),
            locked: Default::default(),
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

    /// Loads the state; a missing file is the empty state.
    pub fn load(&self) -> Result<TargetState, StateError> {
        let path = self.file();
        match fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|e| match e {
                ParseError::Newer(found) => StateError::Newer {
                    path: path.clone(),
                    found,
                    known: STATE_FORMAT,
                },
                ParseError::Json(e) => StateError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                },
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TargetState::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
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

    fn write(&self, st: &TargetState, durable: bool) -> Result<(), StateError> {
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
        tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        if durable {
            fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// Where the git source keeps its cache.
    pub fn git_cache(&self) -> PathBuf {
        self.dir.join("git")
    }

    /// Whether someone holds this target's lock now (without waiting or creating it).
    pub fn is_locked(&self) -> bool {
        let Ok(f) = File::open(self.dir.join("lock")) else {
            return false;
        };
        matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    /// Takes this target's lock, waiting for another holder (daemon or CLI) to finish.
    pub fn lock(&self) -> Result<LockGuard, StateError> {
        self.ensure_dir()?;
        let g = lock_file(&self.dir.join("lock"))?;
        *crate::util::mutex::lock(&self.locked) = Some(g.id);
        Ok(g)
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
        match file_id(&path) {
            Ok(now) if now == id => Ok(()),
            _ => Err(StateError::LockLost { path }),
        }
    }
}

/// (device, inode): which file a path or an open file is, whatever its name.
fn id_of(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    Ok(id_of(&fs::metadata(path)?))
}

/// Holds an exclusive `flock` until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    id: (u64, u64),
}

/// Takes an exclusive lock on `path` (created if needed), blocking until it is free. A lock
/// is only a lock while the path still names the locked file: if it was removed or replaced
/// while we waited (a state directory removed), the lock is taken again on what is there now.
pub fn lock_file(path: &Path) -> Result<LockGuard, StateError> {
    for _ in 0..10 {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        file.lock().map_err(io_err(path))?;
        let id = id_of(&file.metadata().map_err(io_err(path))?);
        if file_id(path).ok() == Some(id) {
            return Ok(LockGuard { _file: file, id });
        }
    }
    Err(StateError::LockLost {
        path: path.to_path_buf(),
    })
}

/// An exclusive `flock` on a directory itself (its inode cannot be swapped under us by
/// removing a file), blocking until it is free. A missing directory is created.
pub fn lock_dir(dir: &Path) -> Result<LockGuard, StateError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file = File::open(dir).map_err(io_err(dir))?;
    file.lock().map_err(io_err(dir))?;
    let id = id_of(&file.metadata().map_err(io_err(dir))?);
    Ok(LockGuard { _file: file, id })
}

/// `state_dir/daemon.lock`, held by a running daemon for its whole life, so `status` can tell
/// a live daemon's state from a stopped one's. None when another process holds it already
/// (a second daemon on the same state directory; it is logged, not fatal).
pub fn daemon_lock(state_dir: &Path) -> Result<Option<LockGuard>, StateError> {
    fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let path = state_dir.join("daemon.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {
            let id = id_of(&file.metadata().map_err(io_err(&path))?);
            Ok(Some(LockGuard { _file: file, id }))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

/// Whether a daemon holds `state_dir/daemon.lock` now.
pub fn daemon_holds(state_dir: &Path) -> bool {
    let Ok(f) = File::open(state_dir.join("daemon.lock")) else {
        return false;
    };
    matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The lock that serialises restart + verify of one systemd unit across targets.
pub fn unit_lock(state_dir: &Path, unit: &str) -> Result<LockGuard, StateError> {
    let dir = state_dir.join("units");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let safe: String = unit
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    lock_file(&dir.join(format!("{safe}.lock")))
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
    fn corrupt_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path(), "t");
        s.ensure_dir().unwrap();
        fs::write(s.dir().join("state.json"), b"{nope").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
    }
}
