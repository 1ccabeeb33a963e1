//! The `file` source: a path on this host (another checkout, a mounted volume), or a directory
//! for a tree target. Always read whole; the content hash does the "unchanged" work.

use std::path::PathBuf;

use super::{FetchError, FetchReason, Fetched};
use crate::config::Target;

pub struct FileSource {
    path: PathBuf,
    max_bytes: u64,
    /// A tree target's limits: the path is a directory.
    tree: Option<crate::store::tree::Limits>,
}

impl FileSource {
    pub fn new(target: &Target) -> Self {
        FileSource {
            path: PathBuf::from(target.source.path.clone().unwrap_or_default()),
            max_bytes: target.max_bytes,
            tree: target.tree.then_some(crate::store::tree::Limits {
                max_files: target.max_files,
                max_bytes: target.max_bytes,
            }),
        }
    }

    pub async fn fetch(&self) -> Result<Fetched, FetchError> {
        let path = self.path.clone();
        let max = self.max_bytes;
        if let Some(limits) = self.tree {
            return tokio::task::spawn_blocking(move || read_dir_tree(&path, limits))
                .await
                .map_err(|e| {
                    FetchError::new(FetchReason::Io, format!("reader task failed: {e}"))
                })?;
        }
        tokio::task::spawn_blocking(move || read_capped_file(&path, max))
            .await
            .map_err(|e| FetchError::new(FetchReason::Io, format!("reader task failed: {e}")))?
    }
}

/// A directory as a tree (regular files only, within the limits; a refusal names the entry).
fn read_dir_tree(
    path: &std::path::Path,
    limits: crate::store::tree::Limits,
) -> Result<Fetched, FetchError> {
    if !path.is_dir() {
        return Err(FetchError::new(
            FetchReason::NotFound,
            format!("{} is no directory (`tree: true`)", path.display()),
        ));
    }
    let tree = crate::store::tree::Tree::from_dir(path, limits).map_err(|e| tree_error(path, e))?;
    Ok(Fetched::Content {
        body: tree.encode(),
        token: None,
        revision: None,
    })
}

/// A tree refused: too large, too many files, or an entry that is no plain file.
pub(crate) fn tree_error(at: &std::path::Path, e: crate::store::tree::TreeError) -> FetchError {
    use crate::store::tree::TreeError;
    let reason = match e {
        TreeError::TooLarge(_) | TreeError::TooManyFiles(_) => FetchReason::TooLarge,
        TreeError::Io { .. } => FetchReason::Io,
        TreeError::Entry { .. } | TreeError::Encoding(_) => FetchReason::Protocol,
    };
    FetchError::new(reason, format!("{}: {e}", at.display()))
}

fn read_capped_file(path: &std::path::Path, max: u64) -> Result<Fetched, FetchError> {
    // A symbolic link to the real file is fine for a source; a FIFO or device is not (it
    // would block the cycle).
    let body = crate::util::regular_file::read(path, true, max).map_err(|e| {
        let reason = if e.is_not_found() {
            FetchReason::NotFound
        } else {
            FetchReason::Io
        };
        FetchError::new(reason, format!("cannot read {}: {e}", path.display()))
    })?;
    if body.len() as u64 > max {
        return Err(FetchError::new(
            FetchReason::TooLarge,
            format!("{} is over max_bytes ({max})", path.display()),
        ));
    }
    Ok(Fetched::Content {
        body,
        token: None,
        revision: None,
    })
}
