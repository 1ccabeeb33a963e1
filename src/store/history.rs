//! The versions a target went through, kept under its state directory
//! (`state_dir/targets/<t>/history/`): a list of the last applies and rollbacks
//! (`history.json`: when, sha256, revision, outcome, restarts, duration) and the content of
//! each version that was live and verified (`<sha256>.yaml`, content-addressed), so
//! `rulekeeper rollback --to` can go back to any of them with the forge down. Bounded by the
//! target's `history:` limits: `keep` entries, and `max_bytes` of contents, newest first.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::HistoryLimits;
use crate::model::ids::{Revision, Sha256};
use crate::model::labels::Outcome;
use crate::util::digest::sha256_hex;

/// What a finished cycle did, as the history records it.
pub struct Done {
    pub outcome: Outcome,
    pub revision: Option<Revision>,
    pub restarts: u32,
    pub duration: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("history {}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    NotFound(String),
    /// Written by a newer rulekeeper: left as it is.
    #[error(
        "history {} has format {found}; this rulekeeper knows formats up to {known} (written by a newer rulekeeper: upgrade)",
        path.display()
    )]
    Newer {
        path: PathBuf,
        found: u64,
        known: u64,
    },
}

/// The format of `history.json` this binary writes: 1 was a bare list of entries, 2 is
/// `{"format": 2, "entries": [...]}`. Both are read.
pub const HISTORY_FORMAT: u64 = 2;

/// `history.json` in any format: a bare list (1), or the list with its format (2 on).
#[derive(Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Versioned {
        // Checked before (a newer one is refused); required here so a stray object is no list.
        #[serde(rename = "format")]
        _format: u64,
        entries: Vec<Entry>,
    },
    Bare(Vec<Entry>),
}

/// What is written.
#[derive(Serialize)]
struct Written<'a> {
    format: u64,
    entries: &'a [Entry],
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One apply or rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// What the cycle tried to make live (for a rollback: the content rolled back from).
    pub sha256: Sha256,
    pub revision: Option<Revision>,
    pub outcome: Outcome,
    pub restarts: u32,
    pub duration_ms: u64,
    /// The content is kept: a version that was live and verified.
    #[serde(default)]
    pub kept: bool,
}

pub struct History {
    dir: PathBuf,
}

impl History {
    /// The history of the target whose state directory is `target_dir`.
    pub fn new(target_dir: &Path) -> History {
        History {
            dir: target_dir.join("history"),
        }
    }

    fn list_path(&self) -> PathBuf {
        self.dir.join("history.json")
    }

    fn content_path(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.yaml"))
    }

    pub fn load(&self) -> Result<Vec<Entry>, HistoryError> {
        let p = self.list_path();
        match std::fs::read(&p) {
            Ok(b) => {
                #[derive(Deserialize)]
                struct Format {
                    #[serde(default)]
                    format: Option<u64>,
                }
                // The format first: a newer file may not parse as any list this binary knows.
                if let Ok(Format {
                    format: Some(found),
                }) = serde_json::from_slice::<Format>(&b)
                {
                    if found > HISTORY_FORMAT {
                        return Err(HistoryError::Newer {
                            path: p,
                            found,
                            known: HISTORY_FORMAT,
                        });
                    }
                }
                match serde_json::from_slice::<OnDisk>(&b) {
                    Ok(OnDisk::Versioned { entries, .. } | OnDisk::Bare(entries)) => Ok(entries),
                    Err(e) => Err(HistoryError::Corrupt {
                        path: p,
                        message: e.to_string(),
                    }),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Adds what a cycle did, if it applied or rolled back; `live` is the live file after it.
    /// `tried` is the content a failed apply tried (the quarantined sha256).
    pub fn record(
        &self,
        rep: &Done,
        live: Option<&[u8]>,
        tried: Option<&str>,
        limits: &HistoryLimits,
    ) -> Result<(), HistoryError> {
        let (sha, kept) = match rep.outcome {
            Outcome::Applied => match live {
                Some(l) => (sha256_hex(l), true),
                None => return Ok(()),
            },
            Outcome::RolledBack | Outcome::RollbackFailed => match tried {
                Some(t) => (t.to_string(), false),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        if kept {
            if let Some(l) = live {
                let p = self.content_path(&sha);
                if !p.exists() {
                    write_atomic(&self.dir, &p, l)?;
                }
            }
        }
        let mut list = match self.load() {
            Ok(list) => list,
            // A record is never reset silently: the unreadable list goes aside for an operator
            // (`history.json.broken`, the last one kept), and a new one starts from the kept
            // contents, so one bad write neither stops the history nor `rollback --to`.
            Err(HistoryError::Corrupt { path, message }) => {
                let aside = path.with_extension("json.broken");
                std::fs::rename(&path, &aside).map_err(io(&path))?;
                tracing::warn!(path = %path.display(), moved_to = %aside.display(), error = %message, "the history list is unreadable; moved aside, a new one started from the kept versions");
                self.salvage(&sha)
            }
            Err(e) => return Err(e),
        };
        list.push(Entry {
            at: Utc::now(),
            sha256: sha.into(),
            revision: rep.revision.clone(),
            outcome: rep.outcome,
            restarts: rep.restarts,
            duration_ms: rep.duration.as_millis().try_into().unwrap_or(u64::MAX),
            kept,
        });
        let drop = list.len().saturating_sub(limits.keep);
        list.drain(..drop);
        self.within_bytes(&mut list, limits.max_bytes);
        let written = Written {
            format: HISTORY_FORMAT,
            entries: &list,
        };
        let json = serde_json::to_vec_pretty(&written).map_err(|e| HistoryError::Corrupt {
            path: self.list_path(),
            message: e.to_string(),
        })?;
        write_atomic(&self.dir, &self.list_path(), &json)?;
        self.prune(&list);
        Ok(())
    }

    /// Entries for the kept contents on disk whose bytes match their name, oldest first: what
    /// a lost list can still tell (when, from the file's time, and the sha256; no revision).
    /// `recording` is left out: the entry being recorded stands for it.
    fn salvage(&self, recording: &str) -> Vec<Entry> {
        let mut found: Vec<Entry> = self
            .content_files()
            .into_iter()
            .filter(|(sha, _)| sha != recording)
            .filter_map(|(sha, e)| {
                let bytes = std::fs::read(e.path()).ok()?;
                if sha256_hex(&bytes) != sha {
                    return None;
                }
                let at = e.metadata().ok()?.modified().ok()?;
                Some(Entry {
                    at: at.into(),
                    sha256: sha.into(),
                    revision: None,
                    outcome: Outcome::Applied,
                    restarts: 0,
                    duration_ms: 0,
                    kept: true,
                })
            })
            .collect();
        found.sort_by_key(|e| e.at);
        found
    }

    /// Keeps the contents of the newest versions that fit in `max` bytes together; older
    /// entries stay in the list without their content (`kept: false`). A content several
    /// entries share counts once.
    fn within_bytes(&self, list: &mut [Entry], max: u64) {
        let mut used = 0u64;
        let mut counted: Vec<Sha256> = Vec::new();
        for e in list.iter_mut().rev().filter(|e| e.kept) {
            if counted.contains(&e.sha256) {
                continue;
            }
            let size = std::fs::metadata(self.content_path(&e.sha256)).map(|m| m.len());
            match size {
                Ok(n) if used + n <= max => {
                    used += n;
                    counted.push(e.sha256.clone());
                }
                // Over the budget, or the content is gone: listed, no longer kept.
                _ => e.kept = false,
            }
        }
    }

    /// Removes kept contents no entry refers to any more.
    fn prune(&self, list: &[Entry]) {
        for (sha, e) in self.content_files() {
            if !list.iter().any(|x| x.kept && x.sha256 == sha) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The content files in the directory (`<sha256>.yaml`), by the sha256 their name gives.
    fn content_files(&self) -> Vec<(String, std::fs::DirEntry)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name.strip_suffix(".yaml")?.to_string(), e))
            })
            .collect()
    }

    /// The kept version `key` names: a unique prefix of its sha256 or its revision.
    pub fn find(&self, key: &str) -> Result<(Entry, Vec<u8>), HistoryError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(HistoryError::NotFound("an empty revision or sha256".into()));
        }
        let list = self.load()?;
        let mut hits: Vec<&Entry> = list
            .iter()
            .rev()
            .filter(|e| e.kept)
            .filter(|e| {
                e.sha256.starts_with(key)
                    || e.revision.as_deref().is_some_and(|r| r.starts_with(key))
            })
            .collect();
        hits.dedup_by(|a, b| a.sha256 == b.sha256);
        match hits.as_slice() {
            [] => Err(HistoryError::NotFound(format!(
                "no kept version matches `{key}` (see `rulekeeper history`)"
            ))),
            [one] => {
                let p = self.content_path(&one.sha256);
                let body = std::fs::read(&p).map_err(io(&p))?;
                if one.sha256 != sha256_hex(&body) {
                    return Err(HistoryError::Corrupt {
                        path: p,
                        message: "content does not match its sha256".into(),
                    });
                }
                Ok(((*one).clone(), body))
            }
            many => Err(HistoryError::NotFound(format!(
                "`{key}` names {} versions; give more of the sha256 or revision",
                many.len()
            ))),
        }
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), HistoryError> {
    use std::io::Write;
    let mut tmp = tempfile::Builder::new()
        .prefix(".history.")
        .tempfile_in(dir)
        .map_err(io(path))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(rev: &str) -> Done {
        Done {
            outcome: Outcome::Applied,
            revision: Some(rev.into()),
            restarts: 1,
            duration: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn keeps_the_last_ten_and_their_contents_only() {
        let d = tempfile::tempdir().unwrap();
        let h = History::new(d.path());
        let limits = HistoryLimits::default();
        for i in 0..12 {
            let body = format!("v{i}\n");
            h.record(
                &applied(&format!("rev{i:02}")),
                Some(body.as_bytes()),
                None,
                &limits,
            )
            .unwrap();
        }
        let list = h.load().unwrap();
        assert_eq!(list.len(), 10);
        assert_eq!(list[0].revision.as_deref(), Some("rev02"));
        let files = std::fs::read_dir(d.path().join("history")).unwrap().count();
        assert_eq!(files, 11, "ten contents and the list");
        let (e, body) = h.find("rev05").unwrap();
        assert_eq!(body, b"v5\n");
        assert_eq!(e.sha256, sha256_hex(b"v5\n"));
        assert!(h.find("rev01").is_err(), "pruned");
        assert!(h.find("rev").unwrap_err().to_string().contains("names"));
        let prefix = &sha256_hex(b"v7\n")[..8];
        assert_eq!(h.find(prefix).unwrap().1, b"v7\n");
    }

    #[test]
    fn contents_beyond_max_bytes_are_dropped_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let h = History::new(d.path());
        let limits = HistoryLimits {
            keep: 10,
            max_bytes: 250,
        };
        // Five versions of 100 bytes each: only the two newest fit in 250 bytes.
        for i in 0..5 {
            let body = format!("{i}{}\n", "x".repeat(98));
            h.record(
                &applied(&format!("rev{i}")),
                Some(body.as_bytes()),
                None,
                &limits,
            )
            .unwrap();
        }
        let list = h.load().unwrap();
        assert_eq!(list.len(), 5, "every entry is still listed");
        let kept: Vec<bool> = list.iter().map(|e| e.kept).collect();
        assert_eq!(kept, vec![false, false, false, true, true]);
        let contents = std::fs::read_dir(d.path().join("history"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".yaml"))
            .count();
        assert_eq!(contents, 2);
        assert!(h.find("rev2").is_err(), "its content is gone");
        assert!(h.find("rev3").is_ok());
        // The same content applied again counts once.
        let body = format!("3{}\n", "x".repeat(98));
        h.record(&applied("rev3b"), Some(body.as_bytes()), None, &limits)
            .unwrap();
        let kept: Vec<bool> = h.load().unwrap().iter().map(|e| e.kept).collect();
        assert_eq!(kept, vec![false, false, false, true, true, true]);
    }
}
