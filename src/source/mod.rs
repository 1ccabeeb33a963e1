//! Fetching upstream content. Each kind answers the same question: "has the content moved
//! since the validator I remembered, and if so what is it now?" Fetches are conditional,
//! size-capped and time-limited; tokens are read from files and never appear in errors.

mod file;
pub mod forge;
mod git;
pub mod integrity;
pub(crate) mod signature;

use crate::model::conditional::Conditional;
use std::path::{Path, PathBuf};

use crate::config::{SourceKind, Target};
pub use crate::model::labels::FetchReason;

/// What a fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// The remembered validator still holds: upstream has not moved.
    NotModified,
    /// New (or unconditionally fetched) content.
    Content {
        body: Vec<u8>,
        /// Validator to send next time (see `state::SourceMemo::token`).
        token: Option<crate::model::conditional::Conditional>,
        /// The commit (or other revision) upstream reports for this content.
        revision: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// `rulekeeper_fetch_failures_total{reason}`.
    pub reason: FetchReason,
    pub message: String,
    /// When the source may be asked again (a forge's rate limit); None: on the usual backoff.
    pub retry_at: Option<std::time::SystemTime>,
}

impl FetchError {
    pub fn new(reason: FetchReason, message: impl Into<String>) -> Self {
        FetchError {
            reason,
            message: message.into(),
            retry_at: None,
        }
    }

    pub fn retry_at(mut self, t: std::time::SystemTime) -> Self {
        self.retry_at = Some(t);
        self
    }
}

pub use crate::util::secret::Secret;

/// Reads a source's token file: a failure is the fetch's `token` reason.
pub fn read_token(path: &Path) -> Result<Secret, FetchError> {
    crate::util::secret::read(path)
        .map_err(|e| FetchError::new(FetchReason::Token, format!("token: {e}")))
}

/// A ready-to-use source for one target (HTTP client built once, with its CA).
pub struct Source {
    inner: Inner,
}

enum Inner {
    // Boxed: a forge source is several URLs and a client, the others a few paths.
    Forge(Box<forge::ForgeSource>),
    Git(git::GitSource),
    File(file::FileSource),
}

impl Source {
    /// Builds the source; `cache_dir` is where the git kind keeps its clone.
    pub fn new(target: &Target, cache_dir: PathBuf) -> Result<Self, FetchError> {
        let s = &target.source;
        let inner = match s.kind {
            SourceKind::File => Inner::File(file::FileSource::new(target)),
            SourceKind::Git => Inner::Git(git::GitSource::new(target, cache_dir)),
            _ => Inner::Forge(Box::new(forge::ForgeSource::new(target)?)),
        };
        Ok(Source { inner })
    }

    /// The file as it is at revision `rev` (a commit, branch or tag): for `diff --rev`. Forge
    /// and git sources only: a file or plain http source has no revisions.
    pub async fn fetch_revision(&self, rev: &str) -> Result<Vec<u8>, FetchError> {
        match &self.inner {
            Inner::Forge(f) => f.fetch_revision(rev).await,
            Inner::Git(g) => g.fetch_revision(rev).await,
            Inner::File(_) => Err(FetchError::new(
                FetchReason::Config,
                "a `file` source has no revisions",
            )),
        }
    }

    /// `require_signature`: `revision` must carry a valid signature by an allowed key, and
    /// (forges) be shown to hold `body`. The key files are read afresh on each call.
    pub async fn verify_signature(
        &self,
        cfg: &crate::config::RequireSignature,
        revision: &str,
        body: &[u8],
    ) -> Result<(), signature::Refusal> {
        let commit = match &self.inner {
            Inner::Forge(f) => f.signed_commit(revision, body).await?,
            Inner::Git(g) => g.commit(revision).await?,
            Inner::File(_) => {
                return Err(signature::Refusal::Unsigned(
                    "a `file` source has no commits".into(),
                ))
            }
        };
        signature::verify(cfg, &commit)
            .await
            .map_err(signature::Refusal::Unsigned)
    }

    /// Fetches; `cond` is the remembered validator (None: fetch unconditionally).
    pub async fn fetch(&self, cond: Option<&Conditional>) -> Result<Fetched, FetchError> {
        match &self.inner {
            Inner::Forge(f) => f.fetch(cond).await,
            Inner::Git(g) => g.fetch(cond).await,
            Inner::File(f) => f.fetch().await,
        }
    }
}
