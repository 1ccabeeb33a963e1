//! What `rulekeeper status` and `GET /status` show per target: read from the persisted
//! state and the live file on disk. Never includes a token, secret or file content.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Target};
use crate::model::ids::{Revision, Sha256};
use crate::model::labels::Outcome;
use crate::store::state::{StateError, StateTrouble, Store, TargetState};
use crate::util::digest::short;

#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub path: String,
    pub live_sha256: Option<Sha256>,
    pub applied_sha256: Option<Sha256>,
    pub revision: Option<Revision>,
    pub upstream_revision: Option<Revision>,
    pub applied_at: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    pub last_outcome_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_note: Option<String>,
    pub quarantined_sha256: Option<Sha256>,
    pub held: bool,
    pub pending: bool,
    /// A cycle or CLI command holds the target's lock right now.
    pub busy: bool,
    /// The state file cannot be read or parsed (the target is left alone until fixed).
    pub state_error: Option<String>,
    /// New upstream content waiting on the gate: its sha256, since when, and why.
    pub gated_sha256: Option<Sha256>,
    pub gated_since: Option<DateTime<Utc>>,
    pub gate_reason: Option<String>,
    /// Live content PowerSync is still deploying (initial replication), and since when.
    pub deploying_sha256: Option<Sha256>,
    pub deploying_since: Option<DateTime<Utc>>,
    /// The daemon's last cycle of this target could not save its state (`/status` only).
    pub state_unsaved: bool,
    /// `rulekeeper status --json` only: whether a daemon runs on this state directory (if
    /// not, nothing polls, and the times are from its last run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_running: Option<bool>,
}

/// Whether a daemon runs for this config, as `rulekeeper status` can tell from outside.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DaemonSeen {
    /// A process holds `state_dir/daemon.lock`.
    pub holds_state_dir: bool,
    /// Something answers `GET /healthz` on `listen`.
    pub answers: bool,
}

impl DaemonSeen {
    pub fn running(&self) -> bool {
        self.holds_state_dir
    }

    /// The line above the table.
    pub fn line(&self, cfg: &Config) -> String {
        let dir = cfg.state_dir.display();
        match (self.holds_state_dir, self.answers) {
            (true, true) => format!("daemon: running (holds {dir}, answers on {})", cfg.listen),
            (true, false) => format!(
                "daemon: running (holds {dir}) but NOT answering on {}: starting, or stuck",
                cfg.listen
            ),
            (false, answers) => format!(
                "daemon: NOT RUNNING: no rulekeeper daemon holds {dir}{}; what follows is what the last cycles left, nothing is polling",
                if answers {
                    format!(" (something else answers on {})", cfg.listen)
                } else {
                    format!(" and nothing answers on {}", cfg.listen)
                }
            ),
        }
    }
}

/// Looks for a daemon on `cfg`: its lock on the state directory, and an answer on `listen`
/// within half a second.
pub fn daemon(cfg: &Config) -> DaemonSeen {
    DaemonSeen {
        holds_state_dir: crate::store::lock::daemon_holds(&cfg.state_dir),
        answers: healthz(cfg.listen),
    }
}

fn healthz(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let limit = std::time::Duration::from_millis(500);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(limit));
    let _ = s.set_write_timeout(Some(limit));
    let req = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// Every target's status, each state loaded through `store` (a daemon's own stores know
/// the times of routine cycles not written yet).
pub fn collect(cfg: &Config, store: impl Fn(&Target) -> Store) -> Vec<TargetStatus> {
    read_all(cfg, store).into_iter().map(|(s, _)| s).collect()
}

/// A command's store of `t`: what is on disk now.
pub fn on_disk(cfg: &Config) -> impl Fn(&Target) -> Store + '_ {
    |t| Store::new(&cfg.state_dir, &t.name)
}

/// Every target's status as read now, with the error its state read met, if any.
pub fn read_all(
    cfg: &Config,
    store: impl Fn(&Target) -> Store,
) -> Vec<(TargetStatus, Option<StateTrouble>)> {
    cfg.targets
        .values()
        .map(|t| {
            let store = store(t);
            let state = store.load();
            let error = state.as_ref().err().map(StateError::trouble);
            let live = crate::store::install::read_live(&t.path, &t.file)
                .ok()
                .flatten()
                .map(|b| Sha256::of(&b));
            (of(t, state, live, store.is_locked()), error)
        })
        .collect()
}

/// One target's status from what was read: its state (or why it could not be), the live
/// file's sha256, and whether its lock is held.
pub fn of(
    t: &Target,
    state: Result<TargetState, StateError>,
    live_sha256: Option<Sha256>,
    busy: bool,
) -> TargetStatus {
    let (st, state_error) = match state {
        Ok(st) => (st, None),
        Err(e) => (TargetState::default(), Some(e.to_string())),
    };
    TargetStatus {
        target: t.name.clone(),
        path: t.path.display().to_string(),
        live_sha256,
        applied_sha256: st.applied.as_ref().map(|a| a.sha256.clone()),
        revision: st.applied.as_ref().and_then(|a| a.revision.clone()),
        upstream_revision: st.upstream_revision.clone(),
        applied_at: st.applied.as_ref().map(|a| a.at),
        last_success: st.last_success,
        last_outcome: if state_error.is_some() {
            Some(Outcome::StateError)
        } else {
            st.last_outcome
        },
        last_outcome_at: st.last_outcome_at,
        last_error: st.last_error.clone(),
        last_note: st.last_note.clone(),
        quarantined_sha256: st.quarantine.as_ref().map(|q| q.sha256.clone()),
        held: st.hold,
        pending: st.pending.is_some(),
        busy,
        state_error,
        gated_sha256: st.gate.as_ref().map(|g| g.sha256.clone()),
        gated_since: st.gate.as_ref().map(|g| g.since),
        gate_reason: st.gate.as_ref().map(|g| g.reason.clone()),
        deploying_sha256: st.deploying.as_ref().map(|d| d.sha256.clone()),
        deploying_since: st.deploying.as_ref().map(|d| d.since),
        state_unsaved: false,
        daemon_running: None,
    }
}

fn ago(t: Option<DateTime<Utc>>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let secs = (Utc::now() - t).num_seconds().max(0) as u64;
            format!(
                "{} ago",
                humantime::format_duration(std::time::Duration::from_secs(secs))
            )
        }
    }
}

/// A hash or revision in the table: its short form, or `-`.
fn cell<T: std::ops::Deref<Target = str>>(s: &Option<T>) -> String {
    s.as_deref().map(short).unwrap_or("-").to_string()
}

/// Prints the status; returns whether every target's state could be read.
/// The live file is not what rulekeeper applied, and no apply is under way (an apply in
/// progress has swapped the file before it records it).
fn drifted(s: &TargetStatus) -> bool {
    s.live_sha256 != s.applied_sha256 && s.applied_sha256.is_some() && !(s.pending && s.busy)
}

/// The human-readable table and the notes below it.
pub fn table(all: &[TargetStatus]) -> String {
    let mut out = rows(all);
    notes(all, &mut out);
    out
}

/// One line per target under a header.
fn rows(all: &[TargetStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<12} {:<12} {:<16} {:<20} {:<20} {:<12} {:<4}",
        "TARGET",
        "SHA256",
        "REVISION",
        "LAST OUTCOME",
        "WHEN",
        "LAST SUCCESS",
        "QUARANTINE",
        "HELD"
    );
    for s in all {
        let mut sha = cell(&s.live_sha256);
        if drifted(s) {
            sha.push('*');
        }
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<12} {:<16} {:<20} {:<20} {:<12} {:<4}",
            s.target,
            sha,
            cell(&s.revision),
            s.last_outcome.map(Outcome::as_str).unwrap_or("-"),
            ago(s.last_outcome_at),
            ago(s.last_success),
            cell(&s.quarantined_sha256),
            if s.held { "yes" } else { "no" },
        );
    }
    out
}

/// What the rows cannot say: errors, notes, gate waits, deploys, applies in progress, drift.
fn notes(all: &[TargetStatus], out: &mut String) {
    use std::fmt::Write;
    for s in all {
        if let Some(e) = &s.state_error {
            let _ = writeln!(
                out,
                "{}: STATE ERROR: {e}; this target is left alone until the file is fixed or moved aside (docs/operations.md, \"A broken state file\")",
                s.target
            );
        }
        if let Some(e) = &s.last_error {
            let _ = writeln!(out, "{}: last error: {e}", s.target);
        }
        if let Some(n) = &s.last_note {
            let _ = writeln!(out, "{}: note: {n}", s.target);
        }
        if let (Some(sha), Some(why)) = (&s.gated_sha256, &s.gate_reason) {
            let _ = writeln!(
                out,
                "{}: upstream {} waits on the gate ({}): {why}",
                s.target,
                short(sha),
                ago(s.gated_since)
            );
        }
        if let Some(sha) = &s.deploying_sha256 {
            let _ = writeln!(
                out,
                "{}: PowerSync is deploying {} (initial replication, since {}); rulekeeper follows it until it is active",
                s.target,
                short(sha),
                ago(s.deploying_since)
            );
        }
        if s.pending && s.busy {
            let _ = writeln!(out, "{}: an apply is in progress", s.target);
        } else if s.pending {
            let _ = writeln!(
                out,
                "{}: an apply was interrupted; the next cycle finishes it",
                s.target
            );
        }
    }
    if all.iter().any(drifted) {
        let _ = writeln!(
            out,
            "* the live file differs from what rulekeeper applied (drift; the next cycle converges it)"
        );
    }
}
