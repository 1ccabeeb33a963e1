//! What the app team sees on their commit: each upstream commit's fate on this host, posted
//! as a commit status on the source's forge (`commit_status:`, docs/operations.md "What the
//! app team sees"). One context per host and target, so a fleet's hosts never overwrite each
//! other. `pending` when new content enters the pipeline (or waits on the gate), `success`
//! only after verification, `failure` with the reason. Each state is posted once per commit
//! (remembered in state). This module decides what to post; the cycle hands the posts to its
//! caller, whose `poster::Poster` delivers them, and `source::forge::status` speaks each
//! forge's API.

use crate::config::{CommitStatus, Target};
use crate::cycle::report::{Asked, Report};
use crate::model::ids::Revision;
use crate::model::labels::Outcome;
use crate::model::reason::Reason;
use crate::source::integrity;
use crate::store::state::{CommitState as State, PostedStatus as Posted, TargetState};

/// GitHub's limit for a status description; the others take more, none needs more.
const DESCRIPTION_CHARS: usize = 140;

/// One status to post.
#[derive(Debug, Clone)]
pub struct Post {
    /// The commit the status is for.
    pub sha: Revision,
    pub state: State,
    pub description: String,
}

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
            sha: sha.into(),
            state: State::Pending,
            description: bounded(&format!("applying on {}", hostname())),
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
                description: bounded(&format!("rolled back by an operator on {host}")),
            },
        );
    }
    if rep.asked != Asked::Poll {
        // An operator's push is not an upstream commit.
        return None;
    }
    let none = Reason::Note(String::new());
    let reason = rep.reason.as_ref().unwrap_or(&none);
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
        Outcome::Applied => rep.live.revision.clone(),
        _ => st.upstream_revision.clone(),
    }?;
    remember(
        st,
        Post {
            sha,
            state,
            description: bounded(&description),
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

/// What an app developer wants from a reason: the cause of a rollback, not rulekeeper's
/// framing; for a validator's or the service's refusal, its first located error.
fn headline(reason: &Reason) -> String {
    match reason {
        Reason::RolledBack(cause) => headline(cause),
        Reason::Quarantined { why, .. } => located(why),
        other => located(&other.to_string()),
    }
}

/// A validator's `PATH:LINE:COL: fatal: MSG` (the format `contrib/powersync/validate` and
/// PowerSync's messages come in: the service's words, not rulekeeper's) as "line LINE: MSG";
/// a message without a location as it is, up to its first "; ".
fn located(words: &str) -> String {
    if let Some((before, msg)) = words.split_once(": fatal: ") {
        let mut parts = before.rsplitn(3, ':');
        let (_col, line) = (parts.next(), parts.next());
        let msg = msg.split("; ").next().unwrap_or(msg);
        if let Some(line) = line.filter(|l| l.chars().all(|c| c.is_ascii_digit())) {
            return format!("line {line}: {msg}");
        }
        return msg.to_string();
    }
    words.to_string()
}

fn bounded(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= DESCRIPTION_CHARS {
        return one;
    }
    let cut: String = one.chars().take(DESCRIPTION_CHARS - 3).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_keeps_the_line_and_the_message() {
        assert_eq!(
            headline(&Reason::Rejected("validate.command exit code 1: /var/lib/powersync/sync-rules.yaml:4:35: fatal: Function 'nosuchfunc' is not defined; /var/lib/powersync/sync-rules.yaml: 1 fatal error(s), 0 warning(s)".into())),
            "line 4: Function 'nosuchfunc' is not defined"
        );
        assert_eq!(
            headline(&Reason::RolledBack(Box::new(Reason::Unhealthy(
                "verification failed: the service died".into()
            )))),
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
    }
}
