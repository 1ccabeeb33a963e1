//! `require_signature`: a revision is applied only when it carries a valid signature by an
//! allowed key, verified on this host (never the forge's own `verified: true`).
//!
//! A commit object is its headers, a blank line and its message; a signature is the
//! `gpgsig` (or `gpgsig-sha256`) header, and what was signed is the object without that
//! header. `git` sources read the object from the fetched commit; forge sources get the
//! signature and payload from the API, rebuild the object and check that it hashes to the
//! commit id (`source::forge::signed`). SSH signatures are verified with `ssh-keygen -Y
//! verify` against `allowed_signers` at the commit's own time (so `valid-after` and
//! `valid-before` hold); OpenPGP ones with `gpgv` against `gpg_keyring`, in a private home.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::RequireSignature;
use crate::source::integrity::git_object_id;
use crate::source::FetchError;
use crate::util::exec;

/// Why a revision is not applied under `require_signature`.
#[derive(Debug)]
pub enum Refusal {
    /// The revision is not signed by an allowed key, or cannot be shown to be: the content
    /// is refused (a rejection, keyed by revision).
    Unsigned(String),
    /// The forge could not be asked: the cycle fails like any fetch, and tries again.
    Fetch(FetchError),
}

/// One entry of a tree object as a forge lists it.
#[derive(Debug, Clone)]
pub struct TreeEntry {
    pub name: String,
    /// As listed (`040000` or `40000` for a directory, `100644`, ...).
    pub mode: String,
    pub sha: String,
}

/// The id of the tree object holding `entries`: git's order (a directory sorts as if its
/// name ended in `/`), modes without leading zeros, each id as raw bytes.
pub fn tree_id(entries: &[TreeEntry], hex_len: usize) -> Result<String, String> {
    let key = |e: &TreeEntry| {
        let mut k = e.name.as_bytes().to_vec();
        if e.mode.trim_start_matches('0') == "40000" {
            k.push(b'/');
        }
        k
    };
    let mut sorted: Vec<&TreeEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| key(e));
    let mut body = Vec::new();
    for e in sorted {
        let raw = hex::decode(&e.sha)
            .map_err(|_| format!("tree entry `{}`: `{}` is no object id", e.name, e.sha))?;
        body.extend_from_slice(e.mode.trim_start_matches('0').as_bytes());
        body.push(b' ');
        body.extend_from_slice(e.name.as_bytes());
        body.push(0);
        body.extend_from_slice(&raw);
    }
    Ok(git_object_id("tree", &body, hex_len))
}

/// A commit as far as its signature is concerned.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The object without its signature header: what was signed.
    pub payload: Vec<u8>,
    pub signature: Option<String>,
    pub tree: String,
    pub committer_email: String,
    /// The committer's time (Unix seconds): when the signature is judged.
    pub committer_time: i64,
}

/// Parses a raw commit object (`git cat-file commit`), taking the signature header out.
pub fn parse(raw: &[u8]) -> Result<Commit, String> {
    let text =
        std::str::from_utf8(raw).map_err(|_| "the commit object is not UTF-8".to_string())?;
    let (head, _) = text
        .split_once("\n\n")
        .ok_or_else(|| "the commit object has no message separator".to_string())?;
    let mut payload = String::new();
    let mut signature: Option<String> = None;
    let mut in_sig = false;
    for line in text.split_inclusive('\n') {
        if in_sig {
            if let Some(cont) = line.strip_prefix(' ') {
                if let Some(s) = signature.as_mut() {
                    s.push_str(cont);
                }
                continue;
            }
            in_sig = false;
        }
        let is_header = payload.len() < head.len();
        if is_header {
            if let Some(rest) = line
                .strip_prefix("gpgsig ")
                .or_else(|| line.strip_prefix("gpgsig-sha256 "))
            {
                signature = Some(rest.to_string());
                in_sig = true;
                continue;
            }
        }
        payload.push_str(line);
    }
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(str::to_string)
    };
    let tree = header("tree").ok_or("the commit names no tree")?;
    let committer = header("committer").ok_or("the commit names no committer")?;
    let (email, time) = parse_person(&committer)?;
    Ok(Commit {
        payload: payload.into_bytes(),
        signature,
        tree,
        committer_email: email,
        committer_time: time,
    })
}

/// `Name <email> 1700000000 +0100` -> (email, time).
fn parse_person(s: &str) -> Result<(String, i64), String> {
    let open = s.find('<').ok_or("a committer line without an email")?;
    let close = s.find('>').ok_or("a committer line without an email")?;
    let email = s.get(open + 1..close).unwrap_or_default().to_string();
    let time = s
        .get(close + 1..)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .ok_or("a committer line without a time")?;
    Ok((email, time))
}

/// The object git signed `payload` into, with `signature` as its `gpgsig` header (after the
/// last header line, continuation lines indented by one space).
pub fn object_with(payload: &str, signature: &str) -> Vec<u8> {
    let (head, rest) = payload.split_once("\n\n").unwrap_or((payload, ""));
    let sig = signature.trim_end_matches('\n').replace('\n', "\n ");
    format!("{head}\ngpgsig {sig}\n\n{rest}").into_bytes()
}

/// Checks the commit's signature and committer against `cfg`; the error says why not.
pub async fn verify(cfg: &RequireSignature, c: &Commit) -> Result<(), String> {
    let sig = c.signature.as_deref().ok_or("it is not signed")?;
    if !cfg.committers.is_empty() && !cfg.committers.contains(&c.committer_email) {
        return Err(format!(
            "its committer <{}> is not in `committers`",
            c.committer_email
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let files = Files {
        home: dir.path().to_path_buf(),
        sig: dir.path().join("sig"),
        payload: dir.path().join("payload"),
    };
    std::fs::write(&files.sig, sig).map_err(|e| e.to_string())?;
    std::fs::write(&files.payload, &c.payload).map_err(|e| e.to_string())?;
    if sig.starts_with("-----BEGIN SSH SIGNATURE-----") {
        let allowed = cfg
            .allowed_signers
            .as_deref()
            .ok_or("it is signed with SSH, and no `allowed_signers` is configured")?;
        return verify_ssh(allowed, &files, c.committer_time).await;
    }
    if sig.starts_with("-----BEGIN PGP SIGNATURE-----") {
        let keyring = cfg
            .gpg_keyring
            .as_deref()
            .ok_or("it is signed with OpenPGP, and no `gpg_keyring` is configured")?;
        return verify_pgp(keyring, &files).await;
    }
    Err("its signature is neither SSH nor OpenPGP".into())
}

/// The signature and the payload as files, in a private directory (gpgv's home too).
struct Files {
    home: PathBuf,
    sig: PathBuf,
    payload: PathBuf,
}

/// Runs a verifying tool; the error is one that kept it from answering.
async fn tool(argv: &[String]) -> Result<exec::Output, String> {
    exec::run(argv, Duration::from_secs(30), None, &[])
        .await
        .map_err(|e| e.to_string())
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// `ssh-keygen -Y find-principals`, then `-Y verify` as each principal found, both at the
/// commit's time so `valid-after`/`valid-before` hold as git holds them.
async fn verify_ssh(allowed: &Path, f: &Files, committer_time: i64) -> Result<(), String> {
    let at = chrono::DateTime::from_timestamp(committer_time, 0)
        .map(|t| t.format("%Y%m%d%H%M%S").to_string())
        .unwrap_or_default();
    let verify_time = format!("verify-time={at}");
    let found = tool(&[
        "ssh-keygen".into(),
        "-Y".into(),
        "find-principals".into(),
        "-f".into(),
        arg(allowed),
        "-s".into(),
        arg(&f.sig),
        "-O".into(),
        verify_time.clone(),
    ])
    .await?;
    let principals: Vec<String> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if !found.success || principals.is_empty() {
        return Err(format!(
            "no key in {} signed it (or not at the commit's time)",
            allowed.display()
        ));
    }
    for p in &principals {
        // ssh-keygen reads the message on stdin: a shell only for that redirection.
        let out = tool(&[
            "sh".into(),
            "-c".into(),
            "exec ssh-keygen -Y verify -f \"$1\" -I \"$2\" -n git -s \"$3\" -O \"$4\" < \"$5\""
                .into(),
            "verify".into(),
            arg(allowed),
            p.clone(),
            arg(&f.sig),
            verify_time.clone(),
            arg(&f.payload),
        ])
        .await?;
        if out.success {
            return Ok(());
        }
    }
    Err(format!(
        "the SSH signature does not verify against {}",
        allowed.display()
    ))
}

/// `gpgv` with only `keyring`, in an empty home of its own.
async fn verify_pgp(keyring: &Path, f: &Files) -> Result<(), String> {
    let keyring = std::path::absolute(keyring).map_err(|e| e.to_string())?;
    let out = tool(&[
        "gpgv".into(),
        "--homedir".into(),
        arg(&f.home),
        "--keyring".into(),
        arg(&keyring),
        arg(&f.sig),
        arg(&f.payload),
    ])
    .await?;
    if out.success {
        return Ok(());
    }
    Err(format!(
        "the OpenPGP signature does not verify against {}: {}",
        keyring.display(),
        crate::model::reason::cut(out.summary().trim(), 200)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &str = "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@example.com> 1700000000 +0000\ncommitter C <c@example.com> 1700000001 +0000\ngpgsig -----BEGIN SSH SIGNATURE-----\n U1NIU0lH\n -----END SSH SIGNATURE-----\n\nmessage\n";

    #[test]
    fn the_payload_is_the_object_without_its_signature_and_rebuilds_it() {
        let c = parse(SIGNED.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(c.payload.clone()).unwrap(),
            "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@example.com> 1700000000 +0000\ncommitter C <c@example.com> 1700000001 +0000\n\nmessage\n"
        );
        let sig = c.signature.clone().unwrap();
        assert!(
            sig.starts_with("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n"),
            "{sig}"
        );
        assert_eq!(c.committer_email, "c@example.com");
        assert_eq!(c.committer_time, 1700000001);
        let rebuilt = object_with(std::str::from_utf8(&c.payload).unwrap(), &sig);
        assert_eq!(String::from_utf8(rebuilt).unwrap(), SIGNED);
    }
}
