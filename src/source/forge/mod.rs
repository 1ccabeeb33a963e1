//! HTTP-based sources: the Forgejo/Gitea, GitHub and GitLab file APIs and plain `http`.
//! All are conditional (ETag, else Last-Modified), capped at `max_bytes`, only follow
//! redirects that stay on the same origin (so a token is never sent to another host), and
//! check the bytes against what the forge says they are (`integrity`) before returning them.
//!
//! Here: each kind's URLs and the fetch (conditional request, then the file at its commit).
//! `client`: the HTTP client, API base and token headers, shared with commit statuses.
//! `status`: the commit-statuses API of each forge.
//! `wire`: reading an answer (capped, cut-short detection, error classification).

mod client;
pub mod limit;
mod signed;
pub mod status;
mod tree;
mod wire;

use crate::model::conditional::Conditional;
use std::path::PathBuf;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use client::parse_base;
pub use client::{api_base, client, push_segments};
pub use wire::read_capped;
use wire::{classify, close_delimited, header_str};

use super::integrity;
use super::{FetchError, FetchReason, Fetched};
use crate::config::{SourceKind, Target};

pub struct ForgeSource {
    kind: SourceKind,
    client: reqwest::Client,
    url: url::Url,
    /// `url` as messages show it (credentials redacted).
    shown: String,
    /// Forgejo/Gitea/GitHub: where to ask for the last commit touching the file.
    commits_url: Option<url::Url>,
    /// Forgejo/Gitea: the contents API, which names the file's blob id when the raw
    /// answer's ETag does not.
    meta_url: Option<url::Url>,
    token_file: Option<PathBuf>,
    max_bytes: u64,
    allow_close_delimited: bool,
    /// A tree target (`tree: true`): where the forge serves the directory.
    tree: Option<tree::TreeApi>,
    /// Forgejo/Gitea/GitHub: `.../repos/{o}/{r}`, where commits and trees are asked for
    /// (`require_signature`).
    repo_url: Option<url::Url>,
    /// The file's path in the repository, without a leading `/`.
    path: String,
}

impl ForgeSource {
    /// Long on purpose: one arm per forge, so each forge's URL layout stands whole in one
    /// place beside its API's documentation.
    pub fn new(target: &Target) -> Result<Self, FetchError> {
        let s = &target.source;
        let tls = client::Tls::for_url(s.base_url.as_deref().or(s.url.as_deref()));
        let client = client(s.timeout, s.ca_file.as_deref(), tls)?;
        let repo = s.repo.clone().unwrap_or_default();
        let path = s.path.clone().unwrap_or_default();
        let git_ref = s.git_ref.clone();
        let path_segs: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut meta_url = None;
        let mut tree_repo: Option<url::Url> = None;
        let (url, commits_url) = match s.kind {
            SourceKind::Forgejo | SourceKind::Gitea => {
                let base = parse_base(s.base_url.as_deref().unwrap_or_default())?;
                let (owner, name) = repo.split_once('/').unwrap_or((&repo, ""));
                let mut u = base.clone();
                push_segments(&mut u, &["api", "v1", "repos", owner, name, "raw"])?;
                push_segments(&mut u, &path_segs)?;
                let mut m = base.clone();
                push_segments(&mut m, &["api", "v1", "repos", owner, name, "contents"])?;
                push_segments(&mut m, &path_segs)?;
                if let Some(r) = &git_ref {
                    m.query_pairs_mut().append_pair("ref", r);
                }
                meta_url = Some(m);
                let mut r = base.clone();
                push_segments(&mut r, &["api", "v1", "repos", owner, name])?;
                tree_repo = Some(r);
                let mut c = base;
                push_segments(&mut c, &["api", "v1", "repos", owner, name, "commits"])?;
                {
                    let mut q = c.query_pairs_mut();
                    if let Some(r) = &git_ref {
                        q.append_pair("sha", r);
                    }
                    q.append_pair("path", &path)
                        .append_pair("limit", "1")
                        .append_pair("stat", "false")
                        .append_pair("verification", "false")
                        .append_pair("files", "false");
                }
                if let Some(r) = &git_ref {
                    u.query_pairs_mut().append_pair("ref", r);
                }
                (u, Some(c))
            }
            SourceKind::Github => {
                let base = api_base(s.kind, s.base_url.as_deref())?;
                let (owner, name) = repo.split_once('/').unwrap_or((&repo, ""));
                let mut u = base.clone();
                push_segments(&mut u, &["repos", owner, name, "contents"])?;
                push_segments(&mut u, &path_segs)?;
                let mut r = base.clone();
                push_segments(&mut r, &["repos", owner, name])?;
                tree_repo = Some(r);
                let mut c = base;
                push_segments(&mut c, &["repos", owner, name, "commits"])?;
                {
                    let mut q = c.query_pairs_mut();
                    if let Some(r) = &git_ref {
                        q.append_pair("sha", r);
                    }
                    q.append_pair("path", &path).append_pair("per_page", "1");
                }
                if let Some(r) = &git_ref {
                    u.query_pairs_mut().append_pair("ref", r);
                }
                (u, Some(c))
            }
            SourceKind::Gitlab => {
                let base = parse_base(s.base_url.as_deref().unwrap_or_default())?;
                let mut u = base;
                // GitLab wants the project path and file path each as one encoded segment.
                push_segments(
                    &mut u,
                    &[
                        "api",
                        "v4",
                        "projects",
                        &repo,
                        "repository",
                        "files",
                        &path,
                        "raw",
                    ],
                )?;
                u.query_pairs_mut()
                    .append_pair("ref", git_ref.as_deref().unwrap_or("HEAD"));
                let mut r = parse_base(s.base_url.as_deref().unwrap_or_default())?;
                push_segments(&mut r, &["api", "v4", "projects", &repo, "repository"])?;
                // Only a tree target asks GitLab which commit last touched its path (a file's
                // raw answer names the commit in a header).
                let commits = target.tree.then(|| {
                    let mut c = r.clone();
                    let _ = push_segments(&mut c, &["commits"]);
                    {
                        let mut q = c.query_pairs_mut();
                        if let Some(gr) = &git_ref {
                            q.append_pair("ref_name", gr);
                        }
                        q.append_pair("path", &path).append_pair("per_page", "1");
                    }
                    c
                });
                tree_repo = Some(r);
                (u, commits)
            }
            _ => {
                let u = url::Url::parse(s.url.as_deref().unwrap_or_default())
                    .map_err(|e| FetchError::new(FetchReason::Config, format!("url: {e}")))?;
                (u, None)
            }
        };
        Ok(ForgeSource {
            kind: s.kind,
            client,
            shown: crate::util::redact::url(url.as_str()),
            url,
            repo_url: tree_repo.clone(),
            path: path.trim_matches('/').to_string(),
            commits_url,
            meta_url,
            token_file: s.token_file.clone(),
            max_bytes: target.max_bytes,
            allow_close_delimited: s.allow_close_delimited,
            tree: match (target.tree, tree_repo) {
                (true, Some(repo)) => Some(tree::TreeApi {
                    repo,
                    dir: path.trim_matches('/').to_string(),
                    limits: crate::store::tree::Limits {
                        max_files: target.max_files,
                        max_bytes: target.max_bytes,
                    },
                }),
                _ => None,
            },
        })
    }

    fn auth_headers(&self) -> Result<HeaderMap, FetchError> {
        match &self.token_file {
            Some(tf) => client::kept_auth_headers(self.kind, tf),
            None => Ok(HeaderMap::new()),
        }
    }

    /// Fetches the file (conditionally). For forges, the content and its revision always
    /// agree: once the file at `ref` has changed, the commit that last touched it is resolved
    /// and the file is fetched again *at that commit*, so a branch that moves between two
    /// requests cannot pair one commit's id with another commit's bytes.
    pub async fn fetch(&self, cond: Option<&Conditional>) -> Result<Fetched, FetchError> {
        if let Some(api) = &self.tree {
            return self.fetch_tree(api, cond).await;
        }
        let Some(first) = self.get(&self.url, self.meta_url.as_ref(), cond).await? else {
            return Ok(Fetched::NotModified);
        };
        let revision = match first.revision {
            Some(r) => Some(r),
            None => self.last_commit().await,
        };
        let Some(commit) = revision.filter(|_| self.kind.is_forge()) else {
            return Ok(Fetched::Content {
                body: first.body,
                token: first.token,
                revision: None,
            });
        };
        let at = with_ref(&self.url, &commit);
        let meta_at = self.meta_url.as_ref().map(|m| with_ref(m, &commit));
        let Some(pinned) = self.get(&at, meta_at.as_ref(), None).await? else {
            return Err(FetchError::new(
                FetchReason::Protocol,
                format!(
                    "GET {} answered 304 to an unconditional request",
                    self.shown
                ),
            ));
        };
        // The validator belongs to the first answer: if the branch moved in between, it
        // does not describe these bytes, and the next fetch must not be conditional on it.
        let token = first.token.filter(|_| pinned.body == first.body);
        Ok(Fetched::Content {
            body: pinned.body,
            token,
            revision: Some(commit),
        })
    }

    /// The file at revision `rev` (its bytes checked as for a fetch).
    pub async fn fetch_revision(&self, rev: &str) -> Result<Vec<u8>, FetchError> {
        if !self.kind.is_forge() {
            return Err(FetchError::new(
                FetchReason::Config,
                "a plain `http` source has no revisions",
            ));
        }
        let at = with_ref(&self.url, rev);
        let meta_at = self.meta_url.as_ref().map(|m| with_ref(m, rev));
        match self.get(&at, meta_at.as_ref(), None).await? {
            Some(got) => Ok(got.body),
            None => Err(FetchError::new(
                FetchReason::Protocol,
                format!(
                    "GET {} answered 304 to an unconditional request",
                    self.shown
                ),
            )),
        }
    }

    /// One GET of the file at `url` (its bytes checked, with `meta` for Forgejo's contents
    /// API); None for a 304 to a conditional request.
    async fn get(
        &self,
        url: &url::Url,
        meta: Option<&url::Url>,
        cond: Option<&Conditional>,
    ) -> Result<Option<Got>, FetchError> {
        let mut req = self.client.get(url.clone()).headers(self.auth_headers()?);
        if self.kind == SourceKind::Github {
            // The object form, not raw: it carries the blob `sha` the bytes are checked with.
            req = req
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
        }
        match cond {
            Some(Conditional::ETag(etag)) => {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag.as_str())
            }
            Some(Conditional::LastModified(lm)) => {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm.as_str())
            }
            Some(Conditional::Commit(_)) | None => {}
        }
        let resp = limit::send(url, req).await?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED && cond.is_some() {
            return Ok(None);
        }
        if !status.is_success() {
            let reason = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => FetchReason::Auth,
                StatusCode::NOT_FOUND => FetchReason::NotFound,
                s if s.is_server_error() => FetchReason::ServerError,
                _ => FetchReason::HttpStatus,
            };
            return Err(FetchError::new(
                reason,
                format!(
                    "GET {} answered {status}",
                    crate::util::redact::url(url.as_str())
                ),
            ));
        }
        let token = header_str(resp.headers(), "etag")
            .map(Conditional::ETag)
            .or_else(|| header_str(resp.headers(), "last-modified").map(Conditional::LastModified));
        let revision = header_str(resp.headers(), "x-gitlab-last-commit-id")
            .or_else(|| header_str(resp.headers(), "x-gitlab-commit-id"));
        let headers = resp.headers().clone();
        let close_delimited = close_delimited(&resp);
        let cap = if self.kind == SourceKind::Github {
            // base64 plus the JSON around it
            self.max_bytes / 3 * 4 + 64 * 1024
        } else {
            self.max_bytes
        };
        let raw = read_capped(resp, cap, &self.shown).await?;
        let body = self.checked(raw, &headers, close_delimited, meta).await?;
        Ok(Some(Got {
            body,
            token,
            revision,
        }))
    }

    /// The file's bytes once they match what the source says they are.
    async fn checked(
        &self,
        raw: Vec<u8>,
        headers: &HeaderMap,
        close_delimited: bool,
        meta: Option<&url::Url>,
    ) -> Result<Vec<u8>, FetchError> {
        match self.kind {
            SourceKind::Github => github_content(&raw, self.max_bytes, &self.shown),
            SourceKind::Forgejo | SourceKind::Gitea => {
                match header_str(headers, "etag").and_then(|e| integrity::etag_blob_id(&e)) {
                    Some(id) => {
                        integrity::check_blob_id(&raw, &id, "the ETag (the forge's blob id)")?
                    }
                    None => {
                        let id = self.meta_blob_id(meta).await?;
                        integrity::check_blob_id(&raw, &id, "the contents API")?;
                    }
                }
                Ok(raw)
            }
            SourceKind::Gitlab => {
                if let Some(size) =
                    header_str(headers, "x-gitlab-size").and_then(|v| v.parse().ok())
                {
                    integrity::check_len(raw.len() as u64, size, "X-Gitlab-Size")?;
                }
                if let Some(sha) = header_str(headers, "x-gitlab-content-sha256") {
                    integrity::check_sha256(&raw, &sha, "X-Gitlab-Content-Sha256")?;
                } else if let Some(id) =
                    header_str(headers, "x-gitlab-blob-id").and_then(|v| integrity::object_id(&v))
                {
                    integrity::check_blob_id(&raw, &id, "X-Gitlab-Blob-Id")?;
                } else {
                    return Err(FetchError::new(
                        FetchReason::Integrity,
                        format!(
                            "GET {} sent neither X-Gitlab-Content-Sha256 nor X-Gitlab-Blob-Id, so the bytes cannot be checked",
                            self.shown
                        ),
                    ));
                }
                Ok(raw)
            }
            _ => {
                if close_delimited && !self.allow_close_delimited {
                    return Err(FetchError::new(
                        FetchReason::Integrity,
                        format!(
                            "GET {} ended its body by closing the connection (no Content-Length, not chunked), so a body cut short cannot be told from a whole one ({} bytes arrived); set source.allow_close_delimited: true to accept such bodies",
                            self.shown,
                            raw.len()
                        ),
                    ));
                }
                for name in ["content-digest", "repr-digest", "digest"] {
                    if let Some(sha) =
                        header_str(headers, name).and_then(|v| integrity::digest_sha256(&v))
                    {
                        integrity::check_sha256(&raw, &sha, name)?;
                    }
                }
                Ok(raw)
            }
        }
    }

    /// Forgejo/Gitea: the file's blob id from the contents API (when the raw answer's ETag
    /// is not one, e.g. behind a proxy that rewrites ETags).
    async fn meta_blob_id(&self, meta: Option<&url::Url>) -> Result<String, FetchError> {
        let u = meta.ok_or_else(|| {
            FetchError::new(
                FetchReason::Integrity,
                "no blob id to check the bytes against",
            )
        })?;
        let resp = self
            .client
            .get(u.clone())
            .headers(self.auth_headers()?)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        if !resp.status().is_success() {
            return Err(FetchError::new(
                FetchReason::Integrity,
                format!(
                    "the raw answer's ETag is not a blob id and GET {u} answered {}, so the bytes cannot be checked",
                    resp.status()
                ),
            ));
        }
        let meta = read_capped(
            resp,
            self.max_bytes / 3 * 4 + 64 * 1024,
            &crate::util::redact::url(u.as_str()),
        )
        .await?;
        serde_json::from_slice::<serde_json::Value>(&meta)
            .ok()
            .and_then(|v| v.get("sha")?.as_str().and_then(integrity::object_id))
            .ok_or_else(|| {
                FetchError::new(
                    FetchReason::Integrity,
                    format!("GET {u} did not name the file's blob id (`sha`)"),
                )
            })
    }

    /// The commit that last touched the file, when the forge can tell. Best effort: a
    /// failure here only costs the revision label, never the apply.
    async fn last_commit(&self) -> Option<String> {
        let u = self.commits_url.as_ref()?;
        let headers = self.auth_headers().ok()?;
        let resp = match limit::send(u, self.client.get(u.clone()).headers(headers)).await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::debug!(status = %r.status(), "commits API did not answer; no revision");
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e.message, "commits API: no revision");
                return None;
            }
        };
        let bytes = read_capped(resp, 1024 * 1024, "the commits API")
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let first = v.get(0)?;
        // Forgejo, Gitea and GitHub name it `sha`, GitLab `id`.
        let sha = first.get("sha").or_else(|| first.get("id"))?.as_str()?;
        integrity::is_commit_id(sha).then(|| sha.to_string())
    }
}

/// One answer with the file.
struct Got {
    body: Vec<u8>,
    token: Option<Conditional>,
    /// GitLab names the commit in a header.
    revision: Option<String>,
}

/// `u` with its `ref` query parameter set to `r` (added if it had none).
fn with_ref(u: &url::Url, r: &str) -> url::Url {
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != "ref")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = u.clone();
    {
        let mut q = out.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        q.append_pair("ref", r);
    }
    out
}

/// GitHub's contents API object for a file: the base64 content, checked against the blob
/// `sha` and `size` it names.
fn github_content(raw: &[u8], max: u64, url: &str) -> Result<Vec<u8>, FetchError> {
    use base64::Engine;
    let protocol = |m: String| FetchError::new(FetchReason::Protocol, m);
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| {
        FetchError::new(
            FetchReason::Integrity,
            format!(
                "GET {url}: the contents object is not whole JSON ({e}; {} bytes arrived)",
                raw.len()
            ),
        )
    })?;
    if v.get("type").and_then(|t| t.as_str()) != Some("file") {
        return Err(protocol(format!("GET {url}: not a file")));
    }
    let size = v.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
    if size > max {
        return Err(FetchError::new(
            FetchReason::TooLarge,
            format!("{url} is {size} bytes, over max_bytes ({max})"),
        ));
    }
    if v.get("encoding").and_then(|e| e.as_str()) != Some("base64") {
        return Err(protocol(format!(
            "GET {url}: the file's content is not inlined as base64"
        )));
    }
    let b64: String = v
        .get("content")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let body = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| {
            FetchError::new(
                FetchReason::Integrity,
                format!("GET {url}: content is not base64: {e}"),
            )
        })?;
    integrity::check_len(body.len() as u64, size, "the contents API's size")?;
    let sha = v
        .get("sha")
        .and_then(|s| s.as_str())
        .and_then(integrity::object_id)
        .ok_or_else(|| protocol(format!("GET {url}: no blob sha in the contents object")))?;
    integrity::check_blob_id(&body, &sha, "the contents API's sha")?;
    Ok(body)
}
