//! Opening files that must be regular files (live files, `.prev`, `file` sources) without
//! ever blocking: a FIFO, a device or a directory at such a path is refused with a clear
//! error instead of hanging a cycle (a FIFO's `open` or `read` waits for a writer). Live
//! files must not be symbolic links either: the swap renames over the path, which would
//! replace the link and leave its target with the old content.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a path is not a readable regular file.
#[derive(Debug, thiserror::Error)]
pub enum NotRegular {
    #[error("is a symbolic link (to {0}); point the config at the real file: the swap would replace the link, not its target")]
    Symlink(String),
    #[error("is {0}, not a regular file")]
    Special(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl NotRegular {
    /// The path does not exist (a missing live file is normal before the first apply).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NotRegular::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

fn kind(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() || ft.is_char_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    }
}

/// Checks what is at `path` without opening it. `follow`: whether a symbolic link is
/// followed (sources) or refused (live files).
pub fn check(path: &Path, follow: bool) -> Result<(), NotRegular> {
    let meta = if follow {
        std::fs::metadata(path)?
    } else {
        std::fs::symlink_metadata(path)?
    };
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(NotRegular::Symlink(to));
    }
    match kind(meta.file_type()) {
        None => Ok(()),
        Some(k) => Err(NotRegular::Special(k)),
    }
}

/// Opens a regular file for reading. The type is checked before opening (opening some
/// devices has effects), and again on the open file (the path may have changed meanwhile);
/// the open itself never blocks. Returns the open file's metadata too (the type check's).
fn open(path: &Path, follow: bool) -> Result<(File, std::fs::Metadata), NotRegular> {
    check(path, follow)?;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                NotRegular::Symlink("?".into())
            } else {
                NotRegular::Io(e)
            }
        })?;
    let meta = f.metadata()?;
    match kind(meta.file_type()) {
        None => Ok((f, meta)),
        Some(k) => Err(NotRegular::Special(k)),
    }
}

/// Reads at most `max + 1` bytes of a regular file (so a caller can tell "over `max`").
pub fn read(path: &Path, follow: bool, max: u64) -> Result<Vec<u8>, NotRegular> {
    read_stamped(path, follow, max).map(|(b, _)| b)
}

/// [`read`], with the file's stamp taken on the open file before the read (a write after it
/// moves the stamp).
pub fn read_stamped(
    path: &Path,
    follow: bool,
    max: u64,
) -> Result<(Vec<u8>, crate::util::stamp::Stamp), NotRegular> {
    let (f, meta) = open(path, follow)?;
    let stamp = crate::util::stamp::Stamp::of(&meta);
    let mut out = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_fifo_dir_and_symlink_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = read(&fifo, true, 10).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = read(d.path(), true, 10).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let real = d.path().join("real");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = read(&link, false, 10).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(read(&link, true, 10).unwrap(), b"x");
        assert!(read(&d.path().join("none"), false, 10)
            .unwrap_err()
            .is_not_found());
    }
}
