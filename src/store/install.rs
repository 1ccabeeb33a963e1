//! Putting content in place crash-safely. A candidate is written to a temp file in the live
//! file's directory and fsynced; installing keeps the old live content as `<name>.prev`
//! (itself replaced atomically), renames the candidate over the live path and fsyncs the
//! directory. At every instant the live path holds a complete old or complete new file.
//!
//! Every file written here (the candidate the validators read, the live file, `.prev`) keeps
//! the owner, group and mode of the file it replaces unless the config names them: a service
//! user must keep reading its file, and a file that carries secrets must not become readable
//! by everyone. A new file gets the configured mode (else 0644) and the owner and group of its
//! directory.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::LiveFile;

use crate::store::state::fsync_dir;
use crate::util::stamp::Stamp;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A FIFO, device, directory or symbolic link where a live file (or `.prev`) belongs.
    #[error("{}: {why}", path.display())]
    NotRegular {
        path: PathBuf,
        #[source]
        why: crate::util::regular_file::NotRegular,
    },
}

fn ierr<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Prefix of rulekeeper's temp files next to a live file, so stale ones can be found.
fn temp_prefix(live: &Path) -> String {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.rk-")
}

/// The directory holding the live file (what renames and fsyncs happen in).
pub fn live_dir(live: &Path) -> &Path {
    dir_of(live)
}

fn dir_of(live: &Path) -> &Path {
    live.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `<live>.prev`
pub fn prev_path(live: &Path) -> PathBuf {
    let mut s = live.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

/// Reads the live file (or `.prev`); `None` when it does not exist. Anything but a regular
/// file (a symbolic link, a FIFO, a device, a directory) is an error, never a hang.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    Ok(read_stamped(path)?.map(|(b, _)| b))
}

/// [`read`], with the file's stamp from before the read.
fn read_stamped(path: &Path) -> Result<Option<(Vec<u8>, Stamp)>, InstallError> {
    match crate::util::regular_file::read_stamped(path, false, u64::MAX - 1) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(crate::util::regular_file::NotRegular::Io(e)) => Err(ierr("cannot read", path)(e)),
        Err(why) => Err(InstallError::NotRegular {
            path: path.to_path_buf(),
            why,
        }),
    }
}

/// A fully written, fsynced file beside the live one (or, for a tree, a whole staged
/// directory in its version store), not yet in place. Dropping it removes it.
#[derive(Debug)]
pub struct Candidate {
    kind: Staged,
}

#[derive(Debug)]
enum Staged {
    File(tempfile::NamedTempFile),
    Tree {
        dir: tempfile::TempDir,
        /// Its name in the version store once installed.
        sha: String,
    },
}

impl Candidate {
    /// What validators read: the staged file, or the staged directory.
    pub fn path(&self) -> &Path {
        match &self.kind {
            Staged::File(f) => f.path(),
            Staged::Tree { dir, .. } => dir.path(),
        }
    }
}

/// `.<name>.rk-tree` beside the live path: where a tree target's versions live.
pub fn tree_store(live: &Path) -> PathBuf {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir_of(live).join(format!(".{name}.rk-tree"))
}

fn limits(want: &LiveFile) -> Option<crate::store::tree::Limits> {
    want.tree
        .map(|(max_files, max_bytes)| crate::store::tree::Limits {
            max_files,
            max_bytes,
        })
}

fn tree_err(path: &Path) -> impl FnOnce(crate::store::tree::TreeError) -> InstallError + '_ {
    move |e| InstallError::Io {
        what: "tree",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The live content as the cycle compares it: the file's bytes, or a tree's encoding (its
/// directory, through the live link, or a plain directory at the path); None when nothing is
/// there.
pub fn read_live(path: &Path, want: &LiveFile) -> Result<Option<Vec<u8>>, InstallError> {
    Ok(read_live_stamped(path, want)?.map(|r| r.bytes))
}

/// A live file as read: its bytes, and for a plain file its stamp from before the read.
#[derive(Debug)]
pub struct LiveRead {
    pub bytes: Vec<u8>,
    /// None for a tree: a directory's stamp says nothing of the files in it.
    pub stamp: Option<Stamp>,
}

/// [`read_live`], with the stamp (see [`LiveRead`]).
pub fn read_live_stamped(path: &Path, want: &LiveFile) -> Result<Option<LiveRead>, InstallError> {
    let Some(l) = limits(want) else {
        return Ok(read_stamped(path)?.map(|(bytes, s)| LiveRead {
            bytes,
            stamp: Some(s),
        }));
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let t = crate::store::tree::Tree::from_dir(path, l).map_err(tree_err(path))?;
            Ok(Some(LiveRead {
                bytes: t.encode(),
                stamp: None,
            }))
        }
        Ok(_) => Err(InstallError::Io {
            what: "a tree target's live path is no directory:",
            path: path.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ierr("cannot read", path)(e)),
    }
}

/// The mode, owner and group a file at `live` gets: what `want` names, else what the file
/// there now has, else (a new file) 0644 and the directory's owner and group.
fn effective(live: &Path, want: &LiveFile) -> Result<(u32, u32, u32), InstallError> {
    let (mode, uid, gid) = match std::fs::symlink_metadata(live) {
        Ok(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = dir_of(live);
            let d = std::fs::metadata(dir).map_err(ierr("cannot read the owner of", dir))?;
            (0o644, d.uid(), d.gid())
        }
        Err(e) => return Err(ierr("cannot read the owner and mode of", live)(e)),
    };
    Ok((
        want.mode.unwrap_or(mode),
        want.uid.unwrap_or(uid),
        want.gid.unwrap_or(gid),
    ))
}

/// Creates the live file's directory when it is missing: only the last level, unless
/// `create_dirs` (a typo in `path` must not grow a tree the service never reads).
fn ensure_dir(live: &Path, create_dirs: bool) -> Result<(), InstallError> {
    let dir = dir_of(live);
    if dir.is_dir() {
        return Ok(());
    }
    if create_dirs {
        return std::fs::create_dir_all(dir).map_err(ierr("cannot create directory", dir));
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(InstallError::Io {
            what: "cannot create directory (its parent does not exist either; create it, or set `create_dirs: true`)",
            path: dir.to_path_buf(),
            source: e,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ierr("cannot create directory", dir)(e)),
    }
}

/// Writes `content` to a temp file in the live file's directory, with the mode, owner and
/// group the live file is to have ([`effective`]).
pub fn stage(live: &Path, content: &[u8], want: &LiveFile) -> Result<Candidate, InstallError> {
    crate::util::offload::blocking(|| stage_now(live, content, want))
}

fn stage_now(live: &Path, content: &[u8], want: &LiveFile) -> Result<Candidate, InstallError> {
    ensure_dir(live, want.create_dirs)?;
    if let Some(l) = limits(want) {
        let tree = crate::store::tree::Tree::decode(content, l).map_err(tree_err(live))?;
        let store = tree_store(live);
        std::fs::create_dir_all(&store).map_err(ierr("cannot create directory", &store))?;
        let dir = tempfile::Builder::new()
            .prefix(".stage-")
            .tempdir_in(&store)
            .map_err(ierr("cannot create a staging directory in", &store))?;
        let mode = want.mode.unwrap_or(0o644);
        tree.write_to(dir.path(), mode).map_err(tree_err(live))?;
        return Ok(Candidate {
            kind: Staged::Tree {
                dir,
                sha: crate::util::digest::sha256_hex(content),
            },
        });
    }
    let perms = effective(live, want)?;
    stage_as(live, content, perms)
}

fn stage_as(
    live: &Path,
    content: &[u8],
    (mode, uid, gid): (u32, u32, u32),
) -> Result<Candidate, InstallError> {
    let dir = dir_of(live);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(live))
        .tempfile_in(dir)
        .map_err(ierr("cannot create a temp file in", dir))?;
    // Messages name the live file the candidate is for: the temp file is removed when this
    // fails, so its name would point at nothing.
    tmp.write_all(content).map_err(ierr(
        "cannot write the new content (a temp file, removed) for",
        live,
    ))?;
    let f = tmp.as_file();
    let m = f.metadata().map_err(ierr(
        "cannot read the new content's owner (a temp file, removed) for",
        live,
    ))?;
    if (m.uid(), m.gid()) != (uid, gid) {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(|e| InstallError::Io {
            what: "cannot give the new content the owner and group of the file it replaces (or the configured `owner`/`group`); rulekeeper needs to run as root, or as that owner, for",
            path: live.to_path_buf(),
            source: e,
        })?;
    }
    // After the chown, which clears set-id bits.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(ierr(
            "cannot set the mode of the new content (a temp file, removed) for",
            live,
        ))?;
    f.sync_all().map_err(ierr(
        "cannot fsync the new content (a temp file, removed) for",
        live,
    ))?;
    Ok(Candidate {
        kind: Staged::File(tmp),
    })
}

/// What `.prev` gets: the mode, owner and group the live file has now (the file it was).
fn current(live: &Path, want: &LiveFile) -> Result<(u32, u32, u32), InstallError> {
    effective(
        live,
        &LiveFile {
            mode: None,
            uid: None,
            gid: None,
            create_dirs: want.create_dirs,
            tree: None,
        },
    )
}

/// Installs `candidate` at `live`. When `prev` is given it becomes `<live>.prev` first.
pub fn install(
    candidate: Candidate,
    live: &Path,
    prev: Option<&[u8]>,
    want: &LiveFile,
) -> Result<(), InstallError> {
    crate::util::offload::blocking(|| install_now(candidate, live, prev, want))
}

fn install_now(
    candidate: Candidate,
    live: &Path,
    prev: Option<&[u8]>,
    want: &LiveFile,
) -> Result<(), InstallError> {
    let tmp = match candidate.kind {
        Staged::File(tmp) => tmp,
        Staged::Tree { dir, sha } => return install_tree(dir, &sha, live, prev.is_some()),
    };
    let p = prev_path(live);
    // Last-good must survive any single failure: if the live rename fails after `.prev` was
    // replaced (an immutable or bind-mounted live file, EPERM/EBUSY), the `.prev` it replaced
    // goes back, or the one good version before it would be gone.
    let mut replaced: Option<Option<Vec<u8>>> = None;
    if let Some(old) = prev {
        let before = read(&p).ok().flatten();
        let staged = stage_as(live, old, current(live, want)?)?;
        let Staged::File(staged) = staged.kind else {
            unreachable!("stage_as stages a file")
        };
        staged
            .persist(&p)
            .map_err(|e| ierr("cannot rename into place", &p)(e.error))?;
        replaced = Some(before);
    }
    if let Err(e) = tmp.persist(live) {
        if let Some(before) = replaced {
            restore_prev(live, &p, before.as_deref(), want);
        }
        return Err(ierr("cannot rename into place", live)(e.error));
    }
    let dir = dir_of(live);
    fsync_dir(dir).map_err(ierr("cannot fsync directory", dir))?;
    Ok(())
}

/// Puts a staged tree in place: the directory becomes version `sha` in the store, `.prev` is
/// pointed at the version the live link points to now (when `keep_prev`), and a new link is
/// renamed over the live path, the one atomic step. Versions neither link names are removed.
fn install_tree(
    staged: tempfile::TempDir,
    sha: &str,
    live: &Path,
    keep_prev: bool,
) -> Result<(), InstallError> {
    let store = tree_store(live);
    let version = store.join(sha);
    if version.is_dir() {
        // The same tree is in the store already (a rollback to it): the staged copy goes.
        drop(staged);
    } else {
        let staged = staged.keep();
        std::fs::rename(&staged, &version).map_err(ierr("cannot rename into place", &version))?;
    }
    fsync_dir(&store).map_err(ierr("cannot fsync directory", &store))?;
    let p = prev_path(live);
    if keep_prev {
        match std::fs::symlink_metadata(live) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(live).map_err(ierr("cannot read", live))?;
                flip_link(&p, &target)?;
            }
            Ok(m) if m.is_dir() => {
                // A plain directory from before rulekeeper managed the path: one exchange
                // makes the path the new link and leaves the old directory under the link's
                // name; it is kept as version `adopted`, named by `.prev`.
                let name = live
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let link = dir_of(live).join(format!(".{name}.rk-swap"));
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(relative_version(live, sha), &link)
                    .map_err(ierr("cannot create a link at", &link))?;
                exchange(&link, live)?;
                let kept = store.join("adopted");
                let _ = std::fs::remove_dir_all(&kept);
                std::fs::rename(&link, &kept).map_err(ierr("cannot rename into place", &kept))?;
                flip_link(&p, &relative_version(live, "adopted"))?;
                let dir = dir_of(live);
                fsync_dir(dir).map_err(ierr("cannot fsync directory", dir))?;
                prune_versions(live);
                return Ok(());
            }
            _ => {}
        }
    }
    flip_link(live, &relative_version(live, sha))?;
    let dir = dir_of(live);
    fsync_dir(dir).map_err(ierr("cannot fsync directory", dir))?;
    prune_versions(live);
    Ok(())
}

/// The link target (relative to the live path's directory) of version `name`.
fn relative_version(live: &Path, name: &str) -> PathBuf {
    let store = tree_store(live);
    PathBuf::from(store.file_name().unwrap_or_default()).join(name)
}

/// Points the link at `link` to `target`, atomically: a new link beside it, renamed over it.
fn flip_link(link: &Path, target: &Path) -> Result<(), InstallError> {
    let dir = dir_of(link);
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.rk-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(ierr("cannot create a link at", &tmp))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ierr("cannot rename into place", link)(e)
    })
}

/// `renameat2(RENAME_EXCHANGE)`: swaps a plain directory at `b` with the link at `a` in one
/// step (the only way to turn a directory into a link without a moment of neither).
fn exchange(a: &Path, b: &Path) -> Result<(), InstallError> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())
        .map_err(|e| ierr("bad path", a)(std::io::Error::other(e)))?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())
        .map_err(|e| ierr("bad path", b)(std::io::Error::other(e)))?;
    // SAFETY: two valid C strings; renameat2 touches no memory of ours.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(ierr("cannot swap a directory with its link at", b)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Removes versions that neither the live link nor `.prev` names, and staging directories a
/// killed run left (they are never live).
fn prune_versions(live: &Path) {
    let store = tree_store(live);
    let named: Vec<PathBuf> = [live.to_path_buf(), prev_path(live)]
        .iter()
        .filter_map(|l| std::fs::read_link(l).ok())
        .filter_map(|t| t.file_name().map(PathBuf::from))
        .collect();
    let Ok(rd) = std::fs::read_dir(&store) else {
        return;
    };
    for e in rd.flatten() {
        let name = PathBuf::from(e.file_name());
        if named.contains(&name) {
            continue;
        }
        if let Err(err) = std::fs::remove_dir_all(e.path()) {
            tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an old tree version");
        }
    }
}

/// fsyncs the live file's directory: what makes a rename in it durable.
pub fn sync_live_dir(live: &Path) -> Result<(), InstallError> {
    crate::util::offload::blocking(|| sync_live_dir_now(live))
}

fn sync_live_dir_now(live: &Path) -> Result<(), InstallError> {
    let dir = dir_of(live);
    fsync_dir(dir).map_err(ierr("cannot fsync directory", dir))
}

/// Puts back the `.prev` an install replaced before its live rename failed (none: removes
/// the new one). Best effort: this runs after a failure, and its own failure is logged.
fn restore_prev(live: &Path, p: &Path, before: Option<&[u8]>, want: &LiveFile) {
    let undone = match before {
        Some(bytes) => stage(live, bytes, want).and_then(|c| match c.kind {
            Staged::File(f) => f
                .persist(p)
                .map(|_| ())
                .map_err(|e| ierr("cannot rename into place", p)(e.error)),
            Staged::Tree { .. } => Ok(()),
        }),
        None => std::fs::remove_file(p).map_err(ierr("cannot remove", p)),
    };
    if let Err(e) = undone {
        tracing::error!(path = %p.display(), error = %e, "cannot put the previous .prev back");
    }
}

/// Removes temp files a crashed run left next to the live file. They are never the live
/// file, so removing them is always safe.
pub fn remove_stale_temps(live: &Path) {
    let dir = dir_of(live);
    let prefix = temp_prefix(live);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let store = tree_store(live);
    for e in rd.flatten() {
        if e.path() == store {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove stale temp file");
            }
        }
    }
    // A tree target's staging directories a killed run left: never live, never `.prev`.
    if let Ok(rd) = std::fs::read_dir(&store) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".stage-") {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a stale staging directory");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(m: u32) -> LiveFile {
        LiveFile {
            mode: Some(m),
            ..LiveFile::default()
        }
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_prev_keeps_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("rules.yaml");
        std::fs::write(&live, b"old").unwrap();
        std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o600)).unwrap();
        let keep = LiveFile::default();
        let c = stage(&live, b"new", &keep).unwrap();
        let m = std::fs::metadata(c.path()).unwrap().mode() & 0o7777;
        assert_eq!(m, 0o600, "the candidate the validators read is no wider");
        install(c, &live, Some(b"old"), &keep).unwrap();
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode_of(&live), 0o600);
        assert_eq!(mode_of(&prev_path(&live)), 0o600);
        // A new file: 0644 unless configured.
        let fresh = d.path().join("new.yaml");
        install(stage(&fresh, b"x", &keep).unwrap(), &fresh, None, &keep).unwrap();
        assert_eq!(mode_of(&fresh), 0o644);
    }

    #[test]
    fn only_the_last_missing_directory_is_created_unless_asked() {
        let d = tempfile::tempdir().unwrap();
        let keep = LiveFile::default();
        let one = d.path().join("a").join("rules.yaml");
        assert!(stage(&one, b"x", &keep).is_ok());
        let deep = d.path().join("typo").join("b").join("rules.yaml");
        let e = stage(&deep, b"x", &keep).unwrap_err().to_string();
        assert!(e.contains("create_dirs"), "{e}");
        assert!(!d.path().join("typo").exists());
        let asked = LiveFile {
            create_dirs: true,
            ..LiveFile::default()
        };
        assert!(stage(&deep, b"x", &asked).is_ok());
    }

    /// A live rename that fails (here: the live path is a directory, EISDIR; on hosts, an
    /// immutable or bind-mounted file) leaves the `.prev` that was there: last-good survives.
    #[test]
    fn failed_live_rename_puts_prev_back() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("rules.yaml");
        std::fs::create_dir(&live).unwrap();
        std::fs::write(live.join("x"), b"x").unwrap();
        std::fs::write(prev_path(&live), b"v1").unwrap();
        let c = stage(&live, b"v3", &mode(0o644)).unwrap();
        let e = install(c, &live, Some(b"v2"), &mode(0o644)).unwrap_err();
        assert!(e.to_string().contains("cannot rename into place"), "{e}");
        assert_eq!(std::fs::read(prev_path(&live)).unwrap(), b"v1");
        // no temp file left
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // with no .prev before, none after
        std::fs::remove_file(prev_path(&live)).unwrap();
        let c = stage(&live, b"v3", &mode(0o644)).unwrap();
        assert!(install(c, &live, Some(b"v2"), &mode(0o644)).is_err());
        assert!(!prev_path(&live).exists());
    }

    #[test]
    fn install_keeps_prev_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("rules.yaml");
        std::fs::write(&live, b"old").unwrap();
        let c = stage(&live, b"new", &mode(0o640)).unwrap();
        install(c, &live, Some(b"old"), &mode(0o640)).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"new");
        assert_eq!(std::fs::read(prev_path(&live)).unwrap(), b"old");
        let m = std::fs::metadata(&live).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o640);
        // nothing else left behind
        let n = std::fs::read_dir(d.path()).unwrap().count();
        assert_eq!(n, 2);
    }

    #[test]
    fn dropped_candidate_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("rules.yaml");
        drop(stage(&live, b"x", &mode(0o644)).unwrap());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
