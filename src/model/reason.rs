//! Reasons as people read them (the log line, state, `status`, an alert, a commit status): the
//! typed [`Reason`] a cycle ends with, which every reader renders and none parses, and a
//! validator's or PowerSync's messages cut to a bounded length, so one long output never
//! floods a reason.

use std::fmt;

/// Why a cycle ended as it did. `Display` gives the one sentence the log, state, `status`
/// and alerts show; commit statuses pick the part an app developer needs by variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// What a good outcome still wants said (verification skipped, PowerSync deploying, drift
    /// corrected, the live file already current). Not an error.
    Note(String),
    /// A validator or the service refused the content, in its own words.
    Rejected(String),
    /// A restart or verification of new content failed.
    Unhealthy(String),
    /// The content was rolled back to last-good because of the cause.
    RolledBack(Box<Reason>),
    /// A rollback that did not leave a healthy service: the cause, then what happened after.
    RollbackFailed { cause: Box<Reason>, after: String },
    /// Upstream serves content this host quarantined, and why it was.
    Quarantined {
        sha256: crate::model::ids::Sha256,
        why: String,
    },
    /// Nothing applied for a reason of the host's or the operator's: fetch failed, held,
    /// gated, an unreadable state, a refused deploy path.
    Stopped(String),
    /// rulekeeper itself failed at a stage (install, state, internal).
    Failed { stage: &'static str, error: String },
}

impl Reason {
    /// A note is said on a good outcome; everything else is an error `status` shows.
    pub fn is_note(&self) -> bool {
        matches!(self, Reason::Note(_))
    }

    /// This reason with `more` said after it (a note on top of a note, an error's sequel).
    pub fn and(self, more: &str) -> Reason {
        match self {
            Reason::Note(n) => Reason::Note(format!("{n}; {more}")),
            Reason::Rejected(r) => Reason::Rejected(format!("{r}; {more}")),
            Reason::Unhealthy(r) => Reason::Unhealthy(format!("{r}; {more}")),
            Reason::Stopped(r) => Reason::Stopped(format!("{r}; {more}")),
            Reason::RolledBack(c) => Reason::RolledBack(Box::new(c.and(more))),
            Reason::RollbackFailed { cause, after } => Reason::RollbackFailed {
                cause,
                after: format!("{after}; {more}"),
            },
            Reason::Quarantined { sha256, why } => Reason::Quarantined {
                sha256,
                why: format!("{why}; {more}"),
            },
            Reason::Failed { stage, error } => Reason::Failed {
                stage,
                error: format!("{error}; {more}"),
            },
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Note(s) | Reason::Rejected(s) | Reason::Unhealthy(s) | Reason::Stopped(s) => {
                f.write_str(s)
            }
            Reason::RolledBack(cause) => write!(f, "rolled back: {cause}"),
            Reason::RollbackFailed { cause, after } => write!(f, "{cause}; {after}"),
            Reason::Quarantined { sha256, why } => {
                write!(f, "upstream {} is quarantined: {why}", sha256.short())
            }
            Reason::Failed { stage, error } => write!(f, "{stage}: {error}"),
        }
    }
}

/// How many of a validator's messages go into a reason, and how long it may be: enough for
/// the first fatal errors in the validator's own words, short enough for an alert.
pub const REASON_LINES: usize = 3;
pub const REASON_CHARS: usize = 600;
const LINE_CHARS: usize = 290;

/// The first `max` lines, each cut at [`LINE_CHARS`], joined with "; ", the whole cut at
/// [`REASON_CHARS`], with a count of what was left out.
pub fn bounded(lines: &[String], max: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for l in lines.iter().take(max) {
        let l = cut(l.trim(), LINE_CHARS);
        let sep = if out.is_empty() { "" } else { "; " };
        if out.len() + sep.len() + l.len() > REASON_CHARS {
            break;
        }
        out.push_str(sep);
        out.push_str(&l);
        used += 1;
    }
    if used < lines.len() {
        out.push_str(&format!(" (+{} more)", lines.len() - used));
    }
    out
}

pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The quarantine's reason as a label value: one line, at most [`LABEL_CHARS`]
/// characters, so an alert can quote it (the validator's first message, the failed probe)
/// without a long validator output bloating every scrape.
pub fn label(reason: &str) -> String {
    let one_line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= LABEL_CHARS {
        return one_line;
    }
    let cut: String = one_line.chars().take(LABEL_CHARS - 3).collect();
    format!("{cut}...")
}

const LABEL_CHARS: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_three_lines_and_at_most_600_characters() {
        let lines: Vec<String> = (0..5).map(|i| format!("error {i}")).collect();
        assert_eq!(bounded(&lines, 3), "error 0; error 1; error 2 (+2 more)");
        let long: Vec<String> = (0..3).map(|_| "x".repeat(1000)).collect();
        let b = bounded(&long, 3);
        assert!(b.len() <= REASON_CHARS + " (+9 more)".len(), "{}", b.len());
        assert!(b.ends_with("(+1 more)"), "{b}");
        assert_eq!(bounded(&[], 3), "");
    }

    #[test]
    fn label_is_one_line_of_at_most_300_characters() {
        assert_eq!(label("a\n  b\tc"), "a b c");
        let l = label(&"é".repeat(400));
        assert_eq!(l.chars().count(), 300);
        assert!(l.ends_with("..."));
    }
}
