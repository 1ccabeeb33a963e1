//! Directory targets (`tree: true`): a whole tree of files kept in step at once.
//!
//! A tree travels through the cycle as one canonical byte string ([`Tree::encode`]), so the
//! cycle, state, history, quarantine and `rollback --to` treat it exactly as a file: its
//! sha256 is the tree hash. The encoding is `rk-tree 1\n`, then for each file in byte order of
//! its path: the path (relative, `/`-separated), a NUL, the content's length in decimal, a
//! newline, and the content. Two trees with the same paths and contents have the same hash;
//! modes, owners and times are not part of it.
//!
//! On disk the live path is a symbolic link to a version directory
//! (`.<name>.rk-tree/<sha256>` beside it); `.prev` is a link to the previous one. A swap makes
//! the new directory whole, then renames a new link over the live path: a reader that resolves
//! the path sees the old tree or the new one, never a mix, and one that is listing the old
//! directory goes on seeing the old one. (A symlink flip rather than `renameat2`'s
//! `RENAME_EXCHANGE`: it needs nothing of the file system, keeps old and new side by side for
//! `.prev`, and a reader holding the old directory open is never switched under.) Entries are
//! regular files only: no symbolic links, no `..`, no absolute paths; their count is bounded
//! by `max_files` and their total size by `max_bytes`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

const MAGIC: &[u8] = b"rk-tree 1\n";

/// Why a tree is refused.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("entry `{entry}`: {why}")]
    Entry { entry: String, why: String },
    #[error("the tree holds more than max_files ({0}) files")]
    TooManyFiles(usize),
    #[error("the tree is over max_bytes ({0})")]
    TooLarge(u64),
    #[error("not an rk-tree encoding: {0}")]
    Encoding(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Limits a tree must keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// Relative paths to contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree(pub BTreeMap<String, Vec<u8>>);

/// A relative path is one of ours: no `..`, not absolute, no empty or `.` segments.
pub fn check_entry(entry: &str) -> Result<(), TreeError> {
    let bad = |why: &str| {
        Err(TreeError::Entry {
            entry: entry.to_string(),
            why: why.to_string(),
        })
    };
    if entry.is_empty() {
        return bad("an empty path");
    }
    if entry.contains('\0') {
        return bad("a NUL in the path");
    }
    if entry.starts_with('/') {
        return bad("an absolute path");
    }
    for c in Path::new(entry).components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return bad("`..` in the path"),
            _ => return bad("not a plain relative path"),
        }
    }
    if entry.split('/').any(|s| s.is_empty() || s == ".") {
        return bad("not a plain relative path");
    }
    Ok(())
}

impl Tree {
    /// Adds a file, keeping the limits.
    pub fn insert(
        &mut self,
        entry: String,
        content: Vec<u8>,
        limits: Limits,
    ) -> Result<(), TreeError> {
        check_entry(&entry)?;
        if self.0.len() >= limits.max_files && !self.0.contains_key(&entry) {
            return Err(TreeError::TooManyFiles(limits.max_files));
        }
        self.0.insert(entry, content);
        if self.bytes() > limits.max_bytes {
            return Err(TreeError::TooLarge(limits.max_bytes));
        }
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.0.values().map(|c| c.len() as u64).sum()
    }

    /// The canonical encoding (see the module doc); its sha256 is the tree hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (path, content) in &self.0 {
            out.extend_from_slice(path.as_bytes());
            out.push(0);
            out.extend_from_slice(content.len().to_string().as_bytes());
            out.push(b'\n');
            out.extend_from_slice(content);
        }
        out
    }

    /// Reads an encoding back, checking every entry.
    pub fn decode(bytes: &[u8], limits: Limits) -> Result<Tree, TreeError> {
        let bad = |why: &str| TreeError::Encoding(why.to_string());
        let mut rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("no `rk-tree 1` header"))?;
        let mut tree = Tree::default();
        while !rest.is_empty() {
            let nul = rest
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| bad("a path without its end"))?;
            let path =
                std::str::from_utf8(&rest[..nul]).map_err(|_| bad("a path that is not UTF-8"))?;
            rest = &rest[nul + 1..];
            let nl = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| bad("a length without its end"))?;
            let len: usize = std::str::from_utf8(&rest[..nl])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("a length that is not a number"))?;
            rest = &rest[nl + 1..];
            if rest.len() < len {
                return Err(bad("a content cut short"));
            }
            if tree
                .0
                .last_key_value()
                .is_some_and(|(k, _)| k.as_str() >= path)
            {
                return Err(bad("entries out of order"));
            }
            tree.insert(path.to_string(), rest[..len].to_vec(), limits)?;
            rest = &rest[len..];
        }
        Ok(tree)
    }

    /// Whether `bytes` look like a tree's encoding.
    pub fn is_encoding(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// Reads a directory: regular files only (a symbolic link, FIFO or device inside is
    /// refused, naming it), within the limits.
    pub fn from_dir(dir: &Path, limits: Limits) -> Result<Tree, TreeError> {
        let mut tree = Tree::default();
        walk(dir, dir, &mut tree, limits)?;
        Ok(tree)
    }

    /// Reads a tar archive (`push` of a tree on standard input): regular files and
    /// directories only, within the limits; a leading `./` is dropped.
    pub fn from_tar(bytes: &[u8], limits: Limits) -> Result<Tree, TreeError> {
        use std::io::Read;
        let bad = |why: String| TreeError::Encoding(format!("tar: {why}"));
        let mut archive = tar::Archive::new(bytes);
        let mut tree = Tree::default();
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                other => {
                    return Err(TreeError::Entry {
                        entry: path,
                        why: format!("not a regular file ({other:?})"),
                    })
                }
            }
            if path.is_empty() {
                continue;
            }
            let mut content = Vec::new();
            entry
                .by_ref()
                .take(limits.max_bytes.saturating_add(1))
                .read_to_end(&mut content)
                .map_err(|e| bad(e.to_string()))?;
            tree.insert(path, content, limits)?;
        }
        Ok(tree)
    }

    /// Writes the files under `dir` (which must exist and be empty), with `mode`.
    pub fn write_to(&self, dir: &Path, mode: u32) -> Result<(), TreeError> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        for (entry, content) in &self.0 {
            let p = dir.join(entry);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
            }
            let mut f = std::fs::File::create(&p).map_err(io("cannot create", &p))?;
            f.write_all(content).map_err(io("cannot write", &p))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io("cannot set the mode of", &p))?;
            f.sync_all().map_err(io("cannot fsync", &p))?;
        }
        sync_dirs(dir)
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TreeError + 'a {
    move |source| TreeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn walk(root: &Path, dir: &Path, tree: &mut Tree, limits: Limits) -> Result<(), TreeError> {
    let rd = std::fs::read_dir(dir).map_err(io("cannot list", dir))?;
    for e in rd {
        let e = e.map_err(io("cannot list", dir))?;
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ft = e.file_type().map_err(io("cannot stat", &p))?;
        if ft.is_dir() {
            walk(root, &p, tree, limits)?;
        } else if ft.is_file() {
            let content = std::fs::read(&p).map_err(io("cannot read", &p))?;
            tree.insert(rel, content, limits)?;
        } else {
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file"
            };
            return Err(TreeError::Entry {
                entry: rel,
                why: what.into(),
            });
        }
    }
    Ok(())
}

/// fsyncs every directory under `dir` and `dir` itself: the new names are durable.
fn sync_dirs(dir: &Path) -> Result<(), TreeError> {
    let rd = std::fs::read_dir(dir).map_err(io("cannot list", dir))?;
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sync_dirs(&e.path())?;
        }
    }
    crate::store::state::fsync_dir(dir).map_err(io("cannot fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_files: 10,
        max_bytes: 1000,
    };

    #[test]
    fn round_trip_and_order_independent_hash() {
        let mut a = Tree::default();
        a.insert("b/x.yml".into(), b"2".to_vec(), L).unwrap();
        a.insert("a.yml".into(), b"1".to_vec(), L).unwrap();
        let enc = a.encode();
        assert_eq!(Tree::decode(&enc, L).unwrap(), a);
        let d = tempfile::tempdir().unwrap();
        a.write_to(d.path(), 0o644).unwrap();
        assert_eq!(Tree::from_dir(d.path(), L).unwrap().encode(), enc);
    }

    #[test]
    fn bad_entries_and_limits_are_refused_by_name() {
        let mut t = Tree::default();
        for bad in ["../x", "/etc/passwd", "a//b", "./a", ""] {
            assert!(t.insert(bad.into(), vec![], L).is_err(), "{bad}");
        }
        let e = t.insert("big".into(), vec![0; 2000], L).unwrap_err();
        assert!(matches!(e, TreeError::TooLarge(1000)), "{e}");
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let e = Tree::from_dir(d.path(), L).unwrap_err().to_string();
        assert!(e.contains("entry `link`: a symbolic link"), "{e}");
    }
}
