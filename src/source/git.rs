//! The `git` source: any remote the system `git` reaches (ssh with the service's keys,
//! https, git://). `git ls-remote` says where the ref points; only when that moved does a
//! shallow fetch into a cache under `state_dir` run, and the file is read from that commit.

use crate::model::conditional::Conditional;
use std::path::PathBuf;
use std::time::Duration;

use super::{FetchError, FetchReason, Fetched};
use crate::config::Target;
use crate::util::exec;

pub struct GitSource {
    url: String,
    git_ref: String,
    path: String,
    cache: PathBuf,
    timeout: Duration,
    max_bytes: u64,
    /// A tree target's limits: `path` names a directory in the repository.
    tree: Option<crate::store::tree::Limits>,
}

const ENV: &[(&str, &str)] = &[
    ("GIT_TERMINAL_PROMPT", "0"),
    ("GIT_ASKPASS", "/bin/false"),
    ("LC_ALL", "C"),
];

impl GitSource {
    pub fn new(target: &Target, cache: PathBuf) -> Self {
        let s = &target.source;
        GitSource {
            url: s.url.clone().unwrap_or_default(),
            git_ref: s.git_ref.clone().unwrap_or_else(|| "HEAD".to_string()),
            path: s.path.clone().unwrap_or_default(),
            cache,
            timeout: s.timeout,
            max_bytes: target.max_bytes,
            tree: target.tree.then_some(crate::store::tree::Limits {
                max_files: target.max_files,
                max_bytes: target.max_bytes,
            }),
        }
    }

    async fn git(&self, args: &[&str], in_cache: bool) -> Result<exec::Output, FetchError> {
        self.git_keep(args, in_cache, None).await
    }

    async fn git_keep(
        &self,
        args: &[&str],
        in_cache: bool,
        stdout_max: Option<usize>,
    ) -> Result<exec::Output, FetchError> {
        let mut argv: Vec<String> = vec!["git".into()];
        if in_cache {
            argv.push("-C".into());
            argv.push(self.cache.display().to_string());
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        let out = exec::run_keep(&argv, self.timeout, None, ENV, stdout_max)
            .await
            .map_err(|e| match e {
                exec::ExecError::Timeout { .. } => {
                    FetchError::new(FetchReason::Timeout, format!("git {} timed out", args[0]))
                }
                other => FetchError::new(FetchReason::Git, other.to_string()),
            })?;
        if !out.success {
            let msg = crate::util::redact::in_text(&out.summary(), &self.url);
            return Err(FetchError::new(
                FetchReason::Git,
                format!(
                    "git {} on {} failed ({}): {msg}",
                    args[0],
                    crate::util::redact::url(&self.url),
                    out.status_text()
                ),
            ));
        }
        Ok(out)
    }

    /// The commit the configured ref points at upstream.
    async fn remote_commit(&self) -> Result<String, FetchError> {
        if self.url.starts_with('-') {
            return Err(FetchError::new(
                FetchReason::Config,
                "git url must not start with `-`",
            ));
        }
        let out = self
            .git(&["ls-remote", "--", &self.url, &self.git_ref], false)
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut best: Option<(u8, String)> = None;
        for line in text.lines() {
            let Some((sha, name)) = line.split_once('\t') else {
                continue;
            };
            let rank = if name == self.git_ref {
                0
            } else if name == format!("refs/heads/{}", self.git_ref) {
                1
            } else if name == format!("refs/tags/{}^{{}}", self.git_ref) {
                2
            } else if name == format!("refs/tags/{}", self.git_ref) {
                3
            } else {
                continue;
            };
            if best.as_ref().map(|(r, _)| rank < *r).unwrap_or(true) {
                best = Some((rank, sha.to_string()));
            }
        }
        best.map(|(_, s)| s).ok_or_else(|| {
            FetchError::new(
                FetchReason::NotFound,
                format!(
                    "ref `{}` not found on {}",
                    self.git_ref,
                    crate::util::redact::url(&self.url)
                ),
            )
        })
    }

    pub async fn fetch(&self, cond: Option<&Conditional>) -> Result<Fetched, FetchError> {
        let commit = self.remote_commit().await?;
        if cond == Some(&Conditional::Commit(commit.clone())) {
            return Ok(Fetched::NotModified);
        }
        let refspec = if self.git_ref == "HEAD" {
            "HEAD".to_string()
        } else {
            self.git_ref.clone()
        };
        let (body, fetched) = self.file_at(&refspec).await?;
        Ok(Fetched::Content {
            body,
            token: Some(Conditional::Commit(fetched.clone())),
            revision: Some(fetched),
        })
    }

    /// The fetched commit `rev` as an object, for `require_signature`: git already binds the
    /// file read at it to its tree.
    pub async fn commit(
        &self,
        rev: &str,
    ) -> Result<super::signature::Commit, super::signature::Refusal> {
        use super::signature::Refusal;
        if !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Unsigned(format!("`{rev}` is no commit id")));
        }
        let out = self
            .git(&["cat-file", "commit", rev], true)
            .await
            .map_err(Refusal::Fetch)?;
        super::signature::parse(&out.stdout).map_err(Refusal::Unsigned)
    }

    /// The file at revision `rev` (a commit the server lets clients fetch, a branch or a tag).
    pub async fn fetch_revision(&self, rev: &str) -> Result<Vec<u8>, FetchError> {
        Ok(self.file_at(rev).await?.0)
    }

    /// Fetches `refspec` (shallow) into the cache and reads the file there: its bytes and the
    /// commit they are at.
    async fn file_at(&self, refspec: &str) -> Result<(Vec<u8>, String), FetchError> {
        if !self.cache.join("HEAD").exists() {
            std::fs::create_dir_all(&self.cache).map_err(|e| {
                FetchError::new(
                    FetchReason::Io,
                    format!("cannot create {}: {e}", self.cache.display()),
                )
            })?;
            self.git(&["init", "--quiet", "--bare"], true).await?;
        }
        self.git(
            &[
                "fetch",
                "--quiet",
                "--depth",
                "1",
                "--no-tags",
                "--",
                &self.url,
                refspec,
            ],
            true,
        )
        .await?;
        let out = self
            .git(&["rev-parse", "FETCH_HEAD^{commit}"], true)
            .await?;
        let fetched = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Some(limits) = self.tree {
            return Ok((self.tree_at(&fetched, limits).await?.encode(), fetched));
        }
        let spec = format!("{fetched}:{}", self.path.trim_start_matches('/'));
        let size = self
            .git(&["cat-file", "-s", &spec], true)
            .await
            .map_err(|e| {
                FetchError::new(
                    FetchReason::NotFound,
                    format!("{} (is `path` right?)", e.message),
                )
            })?;
        let size: u64 = String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        if size > self.max_bytes {
            return Err(FetchError::new(
                FetchReason::TooLarge,
                format!(
                    "{} at {fetched} is {size} bytes, over max_bytes ({})",
                    self.path, self.max_bytes
                ),
            ));
        }
        let blob = self
            .git_keep(
                &["cat-file", "blob", &spec],
                true,
                Some(self.max_bytes as usize),
            )
            .await?;
        Ok((blob.stdout, fetched))
    }

    /// The directory `path` at `commit` as a tree: blobs only (a symbolic link or a submodule
    /// in it is refused, naming it), read from the object store git has checked.
    async fn tree_at(
        &self,
        commit: &str,
        limits: crate::store::tree::Limits,
    ) -> Result<crate::store::tree::Tree, FetchError> {
        let dir = self.path.trim_matches('/');
        let spec = format!("{commit}:{dir}");
        let listing = self
            .git(&["ls-tree", "-r", "-z", &spec], true)
            .await
            .map_err(|e| {
                FetchError::new(
                    FetchReason::NotFound,
                    format!("{} (is `path` a directory?)", e.message),
                )
            })?;
        let mut tree = crate::store::tree::Tree::default();
        let at = std::path::Path::new(dir);
        for item in listing.stdout.split(|b| *b == 0).filter(|i| !i.is_empty()) {
            let item = String::from_utf8_lossy(item);
            let Some((meta, entry)) = item.split_once('\t') else {
                continue;
            };
            let mut f = meta.split_whitespace();
            let (mode, kind, object) = (f.next(), f.next(), f.next().unwrap_or_default());
            if kind != Some("blob") || !matches!(mode, Some("100644") | Some("100755")) {
                let what = match mode {
                    Some("120000") => "a symbolic link",
                    Some("160000") => "a submodule",
                    _ => "not a regular file",
                };
                return Err(super::file::tree_error(
                    at,
                    crate::store::tree::TreeError::Entry {
                        entry: entry.to_string(),
                        why: what.into(),
                    },
                ));
            }
            let blob = self
                .git_keep(
                    &["cat-file", "blob", object],
                    true,
                    Some(self.max_bytes as usize),
                )
                .await?;
            tree.insert(entry.to_string(), blob.stdout, limits)
                .map_err(|e| super::file::tree_error(at, e))?;
        }
        Ok(tree)
    }
}
