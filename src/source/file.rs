//! The `file` source: a path on this host (another checkout, a mounted volume). Always read
//! whole; the content hash does the "unchanged" work.

use std::path::PathBuf;

use super::{FetchError, FetchReason, Fetched};
use crate::config::Target;

pub struct FileSource {
    path: PathBuf,
    max_bytes: u64,
}

impl FileSource {
    pub fn new(target: &Target) -> Self {
        FileSource {
            path: PathBuf::from(target.source.path.clone().unwrap_or_default()),
            max_bytes: target.max_bytes,
        }
    }

    pub async fn fetch(&self) -> Result<Fetched, FetchError> {
        let path = self.path.clone();
        let max = self.max_bytes;
        tokio::task::spawn_blocking(move || read_capped_file(&path, max))
            .await
            .map_err(|e| FetchError::new(FetchReason::Io, format!("reader task failed: {e}")))?
    }
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
