//! `require_signature` on Forgejo/Gitea and GitHub: the commit's signature and the exact
//! payload it signs come from `GET {repo}/git/commits/{sha}` (`verification.signature` and
//! `verification.payload`; Forgejo nests them under `commit`). Nothing the forge says about
//! them is believed: the payload, with the signature put back as its `gpgsig` header, must
//! hash to `{sha}`; then the installed bytes are bound to it by walking the payload's root
//! tree down `path` through `git/trees/{sha}`, recomputing each tree object's id from the
//! entries listed, until the file's entry names the blob id of the bytes fetched. A forge
//! that pairs a valid signature with bytes from another tree fails that walk.

use crate::source::integrity::{git_blob_id, git_object_id};
use crate::source::signature::{self, Commit, Refusal};

use super::ForgeSource;

impl ForgeSource {
    /// The signed commit `sha`, checked to be that commit and to hold `body` at the target's
    /// path.
    pub(crate) async fn signed_commit(&self, sha: &str, body: &[u8]) -> Result<Commit, Refusal> {
        let repo = self.repo_url.clone().ok_or_else(|| {
            Refusal::Unsigned("this forge's API gives no signed commit payload".into())
        })?;
        let mut u = repo.clone();
        super::push_segments(&mut u, &["git", "commits", sha]).map_err(Refusal::Fetch)?;
        let (v, _) = self.get_json(u).await.map_err(Refusal::Fetch)?;
        let ver = v
            .get("verification")
            .or_else(|| v.get("commit").and_then(|c| c.get("verification")));
        let text = |k: &str| {
            ver.and_then(|x| x.get(k))
                .and_then(|x| x.as_str())
                .filter(|s| !s.is_empty())
        };
        let Some(sig) = text("signature") else {
            return Err(Refusal::Unsigned("it is not signed".into()));
        };
        let payload = text("payload").ok_or_else(|| {
            Refusal::Unsigned("the forge names a signature but gives no signed payload".into())
        })?;
        let object = signature::object_with(payload, sig);
        let id = git_object_id("commit", &object, sha.len());
        if id != sha {
            return Err(Refusal::Unsigned(format!(
                "the payload the forge gave hashes to {id}, not to the commit {sha}"
            )));
        }
        let commit = signature::parse(&object).map_err(Refusal::Unsigned)?;
        self.bind(&repo, &commit.tree, body).await?;
        Ok(commit)
    }

    /// Walks from the root tree `root` down the target's path; the file's entry must be the
    /// blob `body` hashes to.
    async fn bind(&self, repo: &url::Url, root: &str, body: &[u8]) -> Result<(), Refusal> {
        let parts: Vec<&str> = self.path.split('/').filter(|p| !p.is_empty()).collect();
        let mut cur = root.to_string();
        for (i, name) in parts.iter().enumerate() {
            let mut u = repo.clone();
            super::push_segments(&mut u, &["git", "trees", &cur]).map_err(Refusal::Fetch)?;
            let (v, _) = self.get_json(u).await.map_err(Refusal::Fetch)?;
            let entries = tree_entries(&v).map_err(Refusal::Unsigned)?;
            let id = signature::tree_id(&entries, cur.len()).map_err(Refusal::Unsigned)?;
            if id != cur {
                return Err(Refusal::Unsigned(format!(
                    "the tree the forge listed for {cur} hashes to {id}: it is not the signed commit's tree"
                )));
            }
            let e = entries.iter().find(|e| e.name == *name).ok_or_else(|| {
                Refusal::Unsigned(format!(
                    "the signed commit has no `{}`",
                    parts[..=i].join("/")
                ))
            })?;
            cur = e.sha.clone();
        }
        let got = git_blob_id(body, cur.len());
        if got != cur {
            return Err(Refusal::Unsigned(format!(
                "the bytes fetched (blob {got}) are not the `{}` of the signed commit (blob {cur})",
                self.path
            )));
        }
        Ok(())
    }
}

/// A `git/trees/{sha}` answer's entries; a truncated listing cannot be hashed.
fn tree_entries(v: &serde_json::Value) -> Result<Vec<signature::TreeEntry>, String> {
    if v.get("truncated").and_then(|t| t.as_bool()) == Some(true) {
        return Err("the forge truncated a tree listing".into());
    }
    let list = v
        .get("tree")
        .and_then(|t| t.as_array())
        .ok_or("a tree listing without `tree`")?;
    list.iter()
        .map(|e| {
            let s = |k: &str| {
                e.get(k)
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("a tree entry without `{k}`"))
            };
            Ok(signature::TreeEntry {
                name: s("path")?,
                mode: s("mode")?,
                sha: s("sha")?,
            })
        })
        .collect()
}
