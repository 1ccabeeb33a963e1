//! A forge's commit-statuses API: where a status is posted for each kind (Forgejo/Gitea,
//! GitHub, GitLab), in which words and body, with the source's own client, API base and
//! write-token header. What to post, and when, is `commit_status`'s business.

use std::path::Path;
use std::time::Duration;

use super::client::{api_base, auth_headers, client, push_segments};
use crate::config::{Source, SourceKind};
use crate::store::state::CommitState;

/// The forge's word for a state.
pub fn word(state: CommitState, kind: SourceKind) -> &'static str {
    match (state, kind) {
        (CommitState::Pending, _) => "pending",
        (CommitState::Success, _) => "success",
        // GitLab's word for it.
        (CommitState::Failure, SourceKind::Gitlab) => "failed",
        (CommitState::Failure, _) => "failure",
    }
}

/// One status, as the forge is told it.
pub struct Status<'a> {
    pub sha: &'a str,
    pub state: CommitState,
    pub context: &'a str,
    pub description: &'a str,
}

/// Posts one status, with the source's own HTTP client (its private CA, user agent and
/// timeouts are the forge's, not ours to guess), base URL and each forge's token header.
/// The error is fit for a log line: the URL redacted, the token never in it.
pub async fn post(
    s: &Source,
    token_file: &Path,
    timeout: Duration,
    status: &Status<'_>,
) -> Result<(), String> {
    let repo = s.repo.clone().unwrap_or_default();
    let (owner, name) = repo.split_once('/').unwrap_or((&repo, ""));
    let sha = status.sha;
    let segs: Vec<&str> = match s.kind {
        SourceKind::Forgejo | SourceKind::Gitea => {
            vec!["api", "v1", "repos", owner, name, "statuses", sha]
        }
        SourceKind::Github => vec!["repos", owner, name, "statuses", sha],
        // The project as one encoded segment, as for the files API.
        SourceKind::Gitlab => vec!["api", "v4", "projects", &repo, "statuses", sha],
        _ => return Err("not a forge source".into()),
    };
    let mut u = api_base(s.kind, s.base_url.as_deref()).map_err(|e| e.message)?;
    push_segments(&mut u, &segs).map_err(|e| e.message)?;
    let state = word(status.state, s.kind);
    let body = if s.kind == SourceKind::Gitlab {
        serde_json::json!({"state": state, "name": status.context, "description": status.description})
    } else {
        serde_json::json!({"state": state, "context": status.context, "description": status.description})
    };
    if let Some(until) = super::limit::blocked(&u) {
        return Err(super::limit::refusal(&u, until).message);
    }
    let tls = super::client::Tls::for_url(s.base_url.as_deref());
    let client = client(timeout, s.ca_file.as_deref(), tls).map_err(|e| e.message)?;
    let mut req = client
        .post(u.clone())
        .headers(auth_headers(s.kind, token_file).map_err(|e| e.message)?)
        .json(&body);
    if s.kind == SourceKind::Github {
        req = req
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
    }
    let shown = crate::util::redact::url(u.as_str());
    let resp = req
        .send()
        .await
        .map_err(|e| format!("POST {shown}: {}", e.without_url()))?;
    let code = resp.status();
    if let Some(until) = super::limit::note(&u, code, resp.headers()) {
        return Err(super::limit::refusal(&u, until).message);
    }
    if code.is_success() {
        Ok(())
    } else {
        Err(format!("POST {shown} answered {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_says_failed() {
        assert_eq!(word(CommitState::Failure, SourceKind::Gitlab), "failed");
        assert_eq!(word(CommitState::Failure, SourceKind::Github), "failure");
    }
}
