//! Tree targets on a forge's API (`tree: true` with `kind: forgejo | gitea | github | gitlab`):
//! the last commit that touched the directory (one commits query: an unchanged poll costs
//! only that), then the directory's tree at that commit and each blob, every blob's bytes
//! checked against its git blob id.
//!
//! - Forgejo/Gitea: `GET /repos/{o}/{r}/git/trees/{commit}?recursive=true`, blobs from
//!   `/git/blobs/{sha}` (base64);
//! - GitHub: the same paths under its API base (`?recursive=1`);
//! - GitLab: `GET /projects/{id}/repository/tree?path=&ref=&recursive=true` (paged), blobs from
//!   `/repository/blobs/{sha}/raw`, and the commits query
//!   `/repository/commits?ref_name=&path=&per_page=1`.

use base64::Engine;
use reqwest::header::HeaderMap;

use super::client::push_segments;
use super::wire::read_capped;
use super::ForgeSource;
use crate::config::SourceKind;
use crate::model::conditional::Conditional;
use crate::source::{FetchError, FetchReason, Fetched};
use crate::store::tree::{Limits, Tree, TreeError};

/// Where a forge serves a tree target's directory.
pub struct TreeApi {
    /// `.../repos/{o}/{r}` (Forgejo, Gitea, GitHub) or `.../projects/{id}/repository` (GitLab).
    pub repo: url::Url,
    /// The directory in the repository, without leading or trailing `/`.
    pub dir: String,
    pub limits: Limits,
}

/// One file of the listing: its path below the directory and its blob id.
struct Entry {
    path: String,
    sha: String,
}

fn protocol(what: String) -> FetchError {
    FetchError::new(FetchReason::Protocol, what)
}

impl ForgeSource {
    /// The directory as a tree, unless the commit that last touched it is the one `cond`
    /// names (then one request answered the poll).
    pub(super) async fn fetch_tree(
        &self,
        api: &TreeApi,
        cond: Option<&Conditional>,
    ) -> Result<Fetched, FetchError> {
        let commit = self.last_commit().await.ok_or_else(|| {
            FetchError::new(
                FetchReason::NotFound,
                format!("no commit touches `{}` on {}", api.dir, self.shown),
            )
        })?;
        if cond == Some(&Conditional::Commit(commit.clone())) {
            return Ok(Fetched::NotModified);
        }
        let entries = self.listing(api, &commit).await?;
        let mut tree = Tree::default();
        let at = std::path::Path::new(&api.dir);
        for e in entries {
            let bytes = self.blob(api, &e.sha).await?;
            let id = crate::source::integrity::git_blob_id(&bytes, e.sha.len());
            if id != e.sha {
                return Err(FetchError::new(
                    FetchReason::Integrity,
                    format!(
                        "{}/{}: the bytes hash to {id}, not the blob {} the tree names",
                        api.dir, e.path, e.sha
                    ),
                ));
            }
            tree.insert(e.path, bytes, api.limits)
                .map_err(|e| crate::source::file::tree_error(at, e))?;
        }
        Ok(Fetched::Content {
            body: tree.encode(),
            token: Some(Conditional::Commit(commit.clone())),
            revision: Some(commit),
        })
    }

    pub(super) async fn get_json(
        &self,
        u: url::Url,
    ) -> Result<(serde_json::Value, HeaderMap), FetchError> {
        let req = self
            .client
            .get(u.clone())
            .headers(self.auth_headers()?)
            .header("Accept", "application/json");
        let resp = super::limit::send(&u, req).await?;
        let status = resp.status();
        let shown = crate::util::redact::url(u.as_str());
        if !status.is_success() {
            return Err(FetchError::new(
                if status.as_u16() == 404 {
                    FetchReason::NotFound
                } else {
                    FetchReason::HttpStatus
                },
                format!("GET {shown} answered {status}"),
            ));
        }
        let headers = resp.headers().clone();
        let bytes = read_capped(resp, 64 * 1024 * 1024, &shown).await?;
        let v =
            serde_json::from_slice(&bytes).map_err(|e| protocol(format!("GET {shown}: {e}")))?;
        Ok((v, headers))
    }

    /// The files under the directory at `commit`, with their blob ids; a symbolic link or a
    /// submodule in it is refused, naming it.
    async fn listing(&self, api: &TreeApi, commit: &str) -> Result<Vec<Entry>, FetchError> {
        let prefix = format!("{}/", api.dir);
        let mut raw: Vec<(String, String, String, String)> = Vec::new(); // path, type, mode, sha
        if self.kind == SourceKind::Gitlab {
            let mut page = 1;
            loop {
                let mut u = api.repo.clone();
                push_segments(&mut u, &["tree"])?;
                u.query_pairs_mut()
                    .append_pair("path", &api.dir)
                    .append_pair("ref", commit)
                    .append_pair("recursive", "true")
                    .append_pair("per_page", "100")
                    .append_pair("page", &page.to_string());
                let (v, h) = self.get_json(u).await?;
                for e in v.as_array().into_iter().flatten() {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    raw.push((s("path"), s("type"), s("mode"), s("id")));
                }
                match h
                    .get("x-next-page")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|p| p.parse().ok())
                {
                    Some(next) if next > page => page = next,
                    _ => break,
                }
            }
        } else {
            let mut u = api.repo.clone();
            push_segments(&mut u, &["git", "trees", commit])?;
            let recursive = if self.kind == SourceKind::Github {
                "1"
            } else {
                "true"
            };
            u.query_pairs_mut()
                .append_pair("recursive", recursive)
                .append_pair("per_page", "100000");
            let (v, _) = self.get_json(u).await?;
            if v["truncated"].as_bool() == Some(true) {
                return Err(protocol(format!(
                    "the forge cut the tree listing of {} short (too many files)",
                    api.dir
                )));
            }
            for e in v["tree"].as_array().into_iter().flatten() {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                raw.push((s("path"), s("type"), s("mode"), s("sha")));
            }
        }
        let mut out = Vec::new();
        for (path, kind, mode, sha) in raw {
            let Some(rel) = path.strip_prefix(&prefix) else {
                continue;
            };
            if kind == "tree" {
                continue;
            }
            if kind != "blob" || mode == "120000" {
                let why = match mode.as_str() {
                    "120000" => "a symbolic link",
                    "160000" => "a submodule",
                    _ => "not a regular file",
                };
                return Err(crate::source::file::tree_error(
                    std::path::Path::new(&api.dir),
                    TreeError::Entry {
                        entry: rel.to_string(),
                        why: why.into(),
                    },
                ));
            }
            if !crate::source::integrity::is_commit_id(&sha) {
                return Err(protocol(format!("`{rel}`: `{sha}` is no blob id")));
            }
            out.push(Entry {
                path: rel.to_string(),
                sha,
            });
        }
        if out.len() > api.limits.max_files {
            return Err(crate::source::file::tree_error(
                std::path::Path::new(&api.dir),
                TreeError::TooManyFiles(api.limits.max_files),
            ));
        }
        Ok(out)
    }

    async fn blob(&self, api: &TreeApi, sha: &str) -> Result<Vec<u8>, FetchError> {
        let mut u = api.repo.clone();
        if self.kind == SourceKind::Gitlab {
            push_segments(&mut u, &["blobs", sha, "raw"])?;
            let req = self.client.get(u.clone()).headers(self.auth_headers()?);
            let resp = super::limit::send(&u, req).await?;
            let status = resp.status();
            let shown = crate::util::redact::url(u.as_str());
            if !status.is_success() {
                return Err(FetchError::new(
                    FetchReason::HttpStatus,
                    format!("GET {shown} answered {status}"),
                ));
            }
            return read_capped(resp, api.limits.max_bytes, &shown).await;
        }
        push_segments(&mut u, &["git", "blobs", sha])?;
        let (v, _) = self.get_json(u).await?;
        let content: String = v["content"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| protocol(format!("blob {sha}: {e}")))
    }
}
