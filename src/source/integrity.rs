//! Checking fetched bytes against what the source itself says they are, so that a body cut
//! short (at a line boundary it still parses) or altered on the way is a fetch failure
//! (`reason="integrity"`), never an install. Each forge names its content differently:
//! Forgejo/Gitea put the git blob id in the raw file's ETag, GitLab sends
//! `X-Gitlab-Content-Sha256` / `X-Gitlab-Blob-Id` / `X-Gitlab-Size`, GitHub's contents API
//! carries the blob `sha` and `size`; plain HTTP servers may send `Content-Digest` (RFC 9530)
//! or `Digest` (RFC 3230). Lengths are checked against `Content-Length` where one was sent.

use base64::Engine;
use sha2::Digest as _;

use super::{FetchError, FetchReason};
use crate::util::digest::short;

fn integrity(message: String) -> FetchError {
    FetchError::new(FetchReason::Integrity, message)
}

/// The git blob id of `body`: sha1 (or sha256 for SHA-256 repositories, `hex_len` 64) of
/// `blob <len>\0<body>`.
pub fn git_blob_id(body: &[u8], hex_len: usize) -> String {
    git_object_id("blob", body, hex_len)
}

/// The id git gives an object of `kind` (`blob`, `tree`, `commit`) holding `body`: sha1 of
/// `<kind> <len>\0<body>`, or sha256 for a 64-digit id.
pub fn git_object_id(kind: &str, body: &[u8], hex_len: usize) -> String {
    let header = format!("{kind} {}\0", body.len());
    if hex_len == 64 {
        let mut h = sha2::Sha256::new();
        h.update(header.as_bytes());
        h.update(body);
        hex::encode(h.finalize())
    } else {
        let mut h = sha1::Sha1::new();
        h.update(header.as_bytes());
        h.update(body);
        hex::encode(h.finalize())
    }
}

/// A git object id (40 or 64 hex digits), lower-cased; None for anything else.
pub fn object_id(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase())
}

/// A commit id as forges name one: 7 (abbreviated) to 64 (SHA-256) hex digits. Not one of
/// the revisions rulekeeper writes for operators' content (`push`, `rollback`).
pub fn is_commit_id(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The blob id in an ETag such as `"3b18e512dba79e4c8300dd08aeb37f8e728b8dad"` (a weak
/// `W/` ETag does not promise the exact bytes, so it does not count).
pub fn etag_blob_id(etag: &str) -> Option<String> {
    let e = etag.trim();
    if e.starts_with("W/") {
        return None;
    }
    object_id(e.trim_matches('"'))
}

/// `body` is the blob `expected` names.
pub fn check_blob_id(body: &[u8], expected: &str, what: &str) -> Result<(), FetchError> {
    let got = git_blob_id(body, expected.len());
    if got == expected {
        Ok(())
    } else {
        Err(integrity(format!(
            "got {} bytes whose git blob id is {}, but {what} says {}: the body was cut short or altered on the way",
            body.len(),
            short(&got),
            short(expected)
        )))
    }
}

/// `body` has the sha256 (hex) `expected`.
pub fn check_sha256(body: &[u8], expected: &str, what: &str) -> Result<(), FetchError> {
    let got = hex::encode(sha2::Sha256::digest(body));
    if got.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(integrity(format!(
            "got {} bytes with sha256 {}, but {what} says {}: the body was cut short or altered on the way",
            body.len(),
            short(&got),
            short(expected.trim())
        )))
    }
}

/// `got` bytes arrived where `declared` were promised.
pub fn check_len(got: u64, declared: u64, what: &str) -> Result<(), FetchError> {
    if got == declared {
        Ok(())
    } else {
        Err(integrity(format!(
            "got {got} of {declared} bytes ({what}): the body was cut short or altered on the way"
        )))
    }
}

/// The sha256 a `Content-Digest`/`Repr-Digest` (`sha-256=:<base64>:`) or `Digest`
/// (`SHA-256=<base64>`) header value carries, as hex.
pub fn digest_sha256(header: &str) -> Option<String> {
    header.split(',').find_map(|item| {
        let (alg, value) = item.trim().split_once('=')?;
        if !alg.trim().eq_ignore_ascii_case("sha-256") {
            return None;
        }
        let b64 = value.trim().trim_matches(':');
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        (raw.len() == 32).then(|| hex::encode(raw))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_id(b"hello\n", 40),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        // `git hash-object --object-format=sha256`
        assert_eq!(
            git_blob_id(b"hello\n", 64),
            "2cf8d83d9ee29543b34a87727421fdecb7e3f3a183d337639025de576db9ebb4"
        );
    }

    #[test]
    fn etags_and_digests() {
        assert_eq!(
            etag_blob_id("\"CE013625030BA8DBA906F756967F9E9CA394464A\"").as_deref(),
            Some("ce013625030ba8dba906f756967f9e9ca394464a")
        );
        assert_eq!(
            etag_blob_id("W/\"ce013625030ba8dba906f756967f9e9ca394464a\""),
            None
        );
        assert_eq!(etag_blob_id("\"abc\""), None);
        // sha256("hello\n")
        let want = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let b64 = "WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=";
        assert_eq!(
            digest_sha256(&format!("sha-256=:{b64}:")).as_deref(),
            Some(want)
        );
        assert_eq!(
            digest_sha256(&format!("md5=abc, SHA-256={b64}")).as_deref(),
            Some(want)
        );
        assert_eq!(digest_sha256("sha-512=:AAAA:"), None);
        assert!(check_sha256(b"hello\n", want, "x").is_ok());
        let e = check_len(30, 575, "Content-Length").unwrap_err();
        assert_eq!(e.reason, FetchReason::Integrity);
        assert!(e.message.contains("got 30 of 575 bytes"), "{}", e.message);
        let e = check_blob_id(
            b"hello",
            "ce013625030ba8dba906f756967f9e9ca394464a",
            "the ETag",
        )
        .unwrap_err();
        assert_eq!(e.reason, FetchReason::Integrity);
    }
}
