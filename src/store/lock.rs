//! The `flock`s that keep the daemon and CLI commands from interleaving: a target's lock, the
//! live directory's lock, a unit's restart lock, and the daemon's hold on its state directory.
//!
//! A lock is only a lock while its path still names the locked file: one removed or replaced
//! (a state directory removed under a running daemon) is taken again on what is there now.
//! A [`Slot`] keeps a lock's file open between cycles, so the daemon's unchanged poll locks
//! with one `flock` and one `statx` instead of creating, opening and closing it each time. A
//! kept file is used by one holder at a time (a `flock` on a file description this process
//! already locked would succeed at once, so two holders in one process must not share it).

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::state::{io_err, StateError};

/// (device, inode): which file a path or an open file is, whatever its name.
pub(super) type FileId = (u64, u64);

fn id_of(m: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

pub(super) fn file_id(path: &Path) -> std::io::Result<FileId> {
    Ok(id_of(&fs::metadata(path)?))
}

/// A lock's file kept open between holders, with its id. A slot serves one lock path; a
/// kept file is used only while that path still names it.
#[derive(Debug, Default, Clone)]
pub struct Slot(Arc<Mutex<Option<(FileId, File)>>>);

impl Slot {
    /// The kept file, taken out of the slot (None: none kept, or in use by another holder of
    /// this process).
    fn take(&self) -> Option<(FileId, File)> {
        crate::util::mutex::lock(&self.0).take()
    }

    fn put(&self, id: FileId, file: File) {
        *crate::util::mutex::lock(&self.0) = Some((id, file));
    }
}

/// Holds an exclusive `flock` until dropped; a guard from a [`Slot`] goes back to it then.
#[derive(Debug)]
pub struct LockGuard {
    file: Option<File>,
    pub(super) id: FileId,
    home: Option<Slot>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(file) = self.file.take() else { return };
        match self.home.take() {
            Some(slot) => {
                // Unlocked, but kept open for the next holder.
                if file.unlock().is_ok() {
                    slot.put(self.id, file);
                }
            }
            None => drop(file),
        }
    }
}

/// How a lock is taken: waiting for the holder, or giving up at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Block,
    Try,
}

fn held(path: &Path) -> StateError {
    StateError::Held {
        path: path.to_path_buf(),
    }
}

/// `flock`s `file`: Ok(false) when `Wait::Try` finds it held.
fn flock(file: &File, wait: Wait, path: &Path) -> Result<bool, StateError> {
    match wait {
        Wait::Block => file.lock().map(|()| true).map_err(io_err(path)),
        Wait::Try => match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(path)(e)),
        },
    }
}

/// The kept file of `slot` for `path`, locked, if it is still the file at `path`.
fn from_slot(slot: &Slot, path: &Path, wait: Wait) -> Result<Option<LockGuard>, StateError> {
    let Some((id, file)) = slot.take() else {
        return Ok(None);
    };
    if !flock(&file, wait, path)? {
        slot.put(id, file);
        return Err(held(path));
    }
    if file_id(path).ok() == Some(id) {
        return Ok(Some(LockGuard {
            file: Some(file),
            id,
            home: Some(slot.clone()),
        }));
    }
    // Removed or replaced since it was kept: let it go, and open what is there now.
    let _ = file.unlock();
    Ok(None)
}

/// Takes an exclusive lock on the file at `path` (created if needed); `Err(Held)` when
/// `Wait::Try` finds it held. A file removed or replaced while we waited is locked again.
pub fn lock_file(path: &Path, wait: Wait, slot: Option<&Slot>) -> Result<LockGuard, StateError> {
    if let Some(g) = slot
        .map(|s| from_slot(s, path, wait))
        .transpose()?
        .flatten()
    {
        return Ok(g);
    }
    for _ in 0..10 {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        if !flock(&file, wait, path)? {
            return Err(held(path));
        }
        let id = id_of(&file.metadata().map_err(io_err(path))?);
        if file_id(path).ok() == Some(id) {
            return Ok(LockGuard {
                file: Some(file),
                id,
                home: slot.cloned(),
            });
        }
    }
    Err(StateError::LockLost {
        path: path.to_path_buf(),
    })
}

/// An exclusive `flock` on a directory itself (its inode cannot be swapped under us by
/// removing a file); a missing directory is created. Kept in `slot` when given; a kept one
/// is used only while the path still names it (a directory removed and made again is a new
/// one, which a command would lock).
pub fn lock_dir(dir: &Path, wait: Wait, slot: Option<&Slot>) -> Result<LockGuard, StateError> {
    if let Some(g) = slot.map(|s| from_slot(s, dir, wait)).transpose()?.flatten() {
        return Ok(g);
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file = File::open(dir).map_err(io_err(dir))?;
    if !flock(&file, wait, dir)? {
        return Err(held(dir));
    }
    let id = id_of(&file.metadata().map_err(io_err(dir))?);
    Ok(LockGuard {
        file: Some(file),
        id,
        home: slot.cloned(),
    })
}

/// Whether someone holds the lock at `path` now (without waiting or creating it).
pub fn is_locked(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// `state_dir/daemon.lock`, held by a running daemon for its whole life, so `status` can tell
/// a live daemon's state from a stopped one's. None when another process holds it already
/// (a second daemon on the same state directory; it is logged, not fatal).
pub fn daemon_lock(state_dir: &Path) -> Result<Option<LockGuard>, StateError> {
    fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let path = state_dir.join("daemon.lock");
    match lock_file(&path, Wait::Try, None) {
        Ok(g) => Ok(Some(g)),
        Err(StateError::Held { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a daemon holds `state_dir/daemon.lock` now.
pub fn daemon_holds(state_dir: &Path) -> bool {
    is_locked(&state_dir.join("daemon.lock"))
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
    lock_file(&dir.join(format!("{safe}.lock")), Wait::Block, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_lock_excludes_a_second_holder_and_follows_a_replaced_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lock");
        let slot = Slot::default();
        let g = lock_file(&path, Wait::Try, Some(&slot)).unwrap();
        // A second holder in this process: its own file description, refused while held.
        assert!(matches!(
            lock_file(&path, Wait::Try, Some(&slot)),
            Err(StateError::Held { .. })
        ));
        assert!(is_locked(&path));
        let first = g.id;
        drop(g);
        assert!(!is_locked(&path));
        // Kept: the same file again.
        let g = lock_file(&path, Wait::Try, Some(&slot)).unwrap();
        assert_eq!(g.id, first);
        drop(g);
        // Replaced behind our back: the new file is locked, not the kept one.
        fs::remove_file(&path).unwrap();
        let g = lock_file(&path, Wait::Try, Some(&slot)).unwrap();
        assert_eq!(Some(g.id), file_id(&path).ok());
        assert!(is_locked(&path));
    }
}
