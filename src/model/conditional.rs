//! What makes the next fetch of a source conditional: the validator its last answer carried.
//! Stored in `state.json` (as the source memo's `token`) in the spelling it always had
//! (`etag:<value>`, `lm:<date>`, `rev:<commit>`), so older state files read as before.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Conditional {
    /// An HTTP `ETag`, sent back as `If-None-Match`.
    ETag(String),
    /// An HTTP `Last-Modified`, sent back as `If-Modified-Since`.
    LastModified(String),
    /// The commit a git source last fetched: an unchanged `ls-remote` needs no fetch.
    Commit(String),
}

impl From<Conditional> for String {
    fn from(c: Conditional) -> String {
        match c {
            Conditional::ETag(v) => format!("etag:{v}"),
            Conditional::LastModified(v) => format!("lm:{v}"),
            Conditional::Commit(v) => format!("rev:{v}"),
        }
    }
}

impl TryFrom<String> for Conditional {
    type Error = String;

    fn try_from(s: String) -> Result<Conditional, String> {
        if let Some(v) = s.strip_prefix("etag:") {
            Ok(Conditional::ETag(v.to_string()))
        } else if let Some(v) = s.strip_prefix("lm:") {
            Ok(Conditional::LastModified(v.to_string()))
        } else if let Some(v) = s.strip_prefix("rev:") {
            Ok(Conditional::Commit(v.to_string()))
        } else {
            Err(format!("`{s}` is no fetch validator (etag:, lm: or rev:)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_as_state_files_always_had_it() {
        for c in [
            Conditional::ETag("\"abc\"".into()),
            Conditional::LastModified("Tue, 01 Dec 2026 10:00:00 GMT".into()),
            Conditional::Commit("0123abcd".into()),
        ] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Conditional>(&json).unwrap(), c);
        }
        assert_eq!(
            serde_json::to_string(&Conditional::Commit("x".into())).unwrap(),
            "\"rev:x\""
        );
        assert!(serde_json::from_str::<Conditional>("\"nope\"").is_err());
    }
}
