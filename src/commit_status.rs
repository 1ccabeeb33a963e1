//! What the app team sees on their commit: each upstream commit's fate on this host, posted
//! as a commit status on the source's forge (`commit_status:`, docs/operations.md "What the
//! app team sees"). One context per host and target, so a fleet's hosts never overwrite each
//! other. `pending` when new content enters the pipeline (or waits on the gate), `success`
//! only after verification, `failure` with the reason. Each state is posted once per commit
//! (remembered in state); posting is best effort: it runs beside the cycle, is retried a few
//! times, logged once when it gives up, and counted. The token never appears in a message.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};

use crate::config::{CommitStatus, SourceKind, Target};
use crate::labels::Outcome;
use crate::report::{Asked, Report};
use crate::source::{forge, integrity};
use crate::state::{CommitState as State, PostedStatus as Posted, TargetState};

/// GitHub's limit for a status description; the others take more, none needs more.
const DESCRIPTION_CHARS: usize = 140;
const ATTEMPTS: u32 = 3;

/// One status to post.
#[derive(Debug, Clone)]
pub struct Post {
    pub sha: String,
    pub state: State,
    pub description: String,
}

/// The forge's word for a state.
fn word(state: State, kind: SourceKind) -> &'static str {
    match (state, kind) {
        (State::Pending, _) => "pending",
        (State::Success, _) => "success",
        // GitLab's word for it.
        (State::Failure, SourceKind::Gitlab) => "failed",
        (State::Failure, _) => "failure",
    }
}

/// `rulekeeper_commit_status_total{target, result}`: `posted` or `failed` (after retries).
pub static POSTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "rulekeeper_commit_status_total",
            "Commit statuses posted to the forge (result = posted | failed, after retries)",
        ),
        &["target", "result"],
    )
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
});

/// Posts still running, so a one-shot command can let them finish before it exits.
static RUNNING: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// The context of this host's statuses for `t`.
pub fn context(t: &Target, c: &CommitStatus) -> String {
    c.context
        .clone()
        .unwrap_or_else(|| format!("rulekeeper/{}/{}", hostname(), t.name))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `pending` for an upstream commit that enters the pipeline now.
pub fn entering(t: &Target, st: &mut TargetState, sha: Option<&str>) -> Option<Post> {
    t.commit_status.as_ref()?;
    let sha = sha?;
    remember(
        st,
        Post {
            sha: sha.to_string(),
            state: State::Pending,
            description: format!("applying on {}", hostname()),
        },
    )
}

/// The status a finished cycle means for its upstream commit, if any is due.
pub fn finished(t: &Target, rep: &Report, st: &mut TargetState) -> Option<Post> {
    t.commit_status.as_ref()?;
    let host = hostname();
    if rep.asked == Asked::Rollback {
        // An operator took a commit off this host; its line on the commit says so. What the
        // rollback put live is the operator's choice, not a commit's new fate.
        let sha = rep
            .rolled_back_from
            .clone()
            .filter(|r| integrity::is_commit_id(r) && rep.outcome == Outcome::RolledBack)?;
        return remember(
            st,
            Post {
                sha,
                state: State::Failure,
                description: format!("rolled back by an operator on {host}"),
            },
        );
    }
    if rep.asked != Asked::Poll {
        // An operator's push is not an upstream commit.
        return None;
    }
    let reason = rep.reason.as_deref().unwrap_or("");
    let (state, description) = match rep.outcome {
        Outcome::Applied => (
            State::Success,
            if rep.unverified {
                format!("installed on {host}, not verified: {}", headline(reason))
            } else {
                format!("live on {host}, verified")
            },
        ),
        Outcome::Gated => (
            State::Pending,
            format!("waiting for the gate: {}", headline(reason)),
        ),
        Outcome::Rejected => (State::Failure, format!("rejected: {}", headline(reason))),
        Outcome::RolledBack => (State::Failure, format!("rolled back: {}", headline(reason))),
        Outcome::RollbackFailed => (
            State::Failure,
            format!("rollback failed: {}", headline(reason)),
        ),
        Outcome::Quarantined => (State::Failure, format!("quarantined: {}", headline(reason))),
        _ => return None,
    };
    let sha = match rep.outcome {
        Outcome::Applied => rep.revision.clone(),
        _ => st.upstream_revision.clone(),
    }?;
    remember(
        st,
        Post {
            sha,
            state,
            description,
        },
    )
}

/// Keeps `post` if it is not what was posted last for its commit (a commit's failure is
/// posted once, however many polls find it quarantined), and remembers it.
fn remember(st: &mut TargetState, post: Post) -> Option<Post> {
    let same = st
        .commit_status
        .as_ref()
        .is_some_and(|p| p.sha == post.sha && p.state == post.state);
    if same {
        return None;
    }
    st.commit_status = Some(Posted {
        sha: post.sha.clone(),
        state: post.state,
    });
    Some(post)
}

/// What an app developer wants from a reason: for a validator's `PATH:LINE:COL: fatal: MSG`,
/// "line LINE: MSG"; else the reason without rulekeeper's own prefixes.
fn headline(reason: &str) -> String {
    let r = reason
        .trim_start_matches("rolled back: ")
        .trim_start_matches("validation failed: ");
    if let Some((before, msg)) = r.split_once(": fatal: ") {
        let mut parts = before.rsplitn(3, ':');
        let (_col, line) = (parts.next(), parts.next());
        if let Some(line) = line.filter(|l| l.chars().all(|c| c.is_ascii_digit())) {
            let msg = msg.split("; ").next().unwrap_or(msg);
            return format!("line {line}: {msg}");
        }
        return msg.split("; ").next().unwrap_or(msg).to_string();
    }
    r.to_string()
}

fn bounded(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= DESCRIPTION_CHARS {
        return one;
    }
    let cut: String = one.chars().take(DESCRIPTION_CHARS - 3).collect();
    format!("{cut}...")
}

/// Starts posting `post` beside the cycle; never waits for it.
pub fn send(t: &Target, post: Post) {
    let Some(c) = t.commit_status.clone() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let t = t.clone();
    let h = rt.spawn(async move {
        let result = post_with_retries(&t, &c, &post).await;
        let label = if result.is_ok() { "posted" } else { "failed" };
        POSTS.with_label_values(&[&t.name, label]).inc();
        match result {
            Ok(()) => {
                tracing::info!(target_name = %t.name, commit = %post.sha, state = ?post.state, "commit status posted")
            }
            Err(e) => {
                tracing::warn!(target_name = %t.name, commit = %post.sha, error = %e, "cannot post the commit status; given up")
            }
        }
    });
    let mut running = crate::mutex::lock(&RUNNING);
    running.retain(|h| !h.is_finished());
    running.push(h);
}

/// Waits (at most `limit`) for the posts still running: `once` and the other one-shot
/// commands call it before they exit.
pub async fn flush(limit: Duration) {
    let handles: Vec<_> = std::mem::take(&mut *crate::mutex::lock(&RUNNING));
    let _ = tokio::time::timeout(limit, async {
        for h in handles {
            let _ = h.await;
        }
    })
    .await;
}

async fn post_with_retries(t: &Target, c: &CommitStatus, post: &Post) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        match post_once(t, c, post).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(format!("{ATTEMPTS} attempts: {last}"))
}

/// One post, with the source's own HTTP client (its private CA, user agent and timeouts are
/// the forge's, not ours to guess), base URL and each forge's token header.
async fn post_once(t: &Target, c: &CommitStatus, post: &Post) -> Result<(), String> {
    let s = &t.source;
    let repo = s.repo.clone().unwrap_or_default();
    let (owner, name) = repo.split_once('/').unwrap_or((&repo, ""));
    let segs: Vec<&str> = match s.kind {
        SourceKind::Forgejo | SourceKind::Gitea => {
            vec!["api", "v1", "repos", owner, name, "statuses", &post.sha]
        }
        SourceKind::Github => vec!["repos", owner, name, "statuses", &post.sha],
        // The project as one encoded segment, as for the files API.
        SourceKind::Gitlab => vec!["api", "v4", "projects", &repo, "statuses", &post.sha],
        _ => return Err("not a forge source".into()),
    };
    let mut u = forge::api_base(s.kind, s.base_url.as_deref()).map_err(|e| e.message)?;
    forge::push_segments(&mut u, &segs).map_err(|e| e.message)?;
    let context = context(t, c);
    let description = bounded(&post.description);
    let state = word(post.state, s.kind);
    let body = if s.kind == SourceKind::Gitlab {
        serde_json::json!({"state": state, "name": context, "description": description})
    } else {
        serde_json::json!({"state": state, "context": context, "description": description})
    };
    let client = forge::client(c.timeout, s.ca_file.as_deref()).map_err(|e| e.message)?;
    let mut req = client
        .post(u.clone())
        .headers(forge::auth_headers(s.kind, &c.token_file).map_err(|e| e.message)?)
        .json(&body);
    if s.kind == SourceKind::Github {
        req = req
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
    }
    let shown = crate::redact::url(u.as_str());
    let resp = req
        .send()
        .await
        .map_err(|e| format!("POST {shown}: {}", e.without_url()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("POST {shown} answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_keeps_the_line_and_the_message() {
        assert_eq!(
            headline("validation failed: validate.command exit code 1: /var/lib/powersync/sync-rules.yaml:4:35: fatal: Function 'nosuchfunc' is not defined; /var/lib/powersync/sync-rules.yaml: 1 fatal error(s), 0 warning(s)"),
            "line 4: Function 'nosuchfunc' is not defined"
        );
        assert_eq!(
            headline("rolled back: verification failed: the service died"),
            "verification failed: the service died"
        );
        assert_eq!(bounded(&"x".repeat(500)).chars().count(), DESCRIPTION_CHARS);
    }

    #[test]
    fn each_state_once_per_commit() {
        let mut st = TargetState::default();
        let p = |state| Post {
            sha: "abc".into(),
            state,
            description: String::new(),
        };
        assert!(remember(&mut st, p(State::Pending)).is_some());
        assert!(remember(&mut st, p(State::Failure)).is_some());
        assert!(remember(&mut st, p(State::Failure)).is_none());
        assert_eq!(word(State::Failure, SourceKind::Gitlab), "failed");
        assert_eq!(word(State::Failure, SourceKind::Github), "failure");
    }
}
