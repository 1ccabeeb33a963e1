//! `POST /hooks/<target>`: push triggers from a forge. Authentication (DESIGN.md "HTTP"):
//! `Authorization: Bearer <secret>`, Forgejo/Gitea `X-Forgejo-Signature` /
//! `X-Gitea-Signature` (hex HMAC-SHA256 of the body), GitHub `X-Hub-Signature-256:
//! sha256=<hex>`, or GitLab `X-Gitlab-Token`. Every comparison is constant-time, every auth
//! failure gets the same 401 body, and no secret or signature is ever logged. A hook only
//! asks for an earlier cycle; polling stays the source of truth.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::StatusCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{json, Body};
use crate::config::Config;
use crate::shared::Shared;
use crate::source::{read_secret, Secret};

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// A secret as last read, with its file's mtime (None: unreadable).
type Cached = (Option<SystemTime>, Option<Secret>);

/// The webhook secrets, re-read when their file changes or on SIGHUP.
pub struct Secrets {
    files: HashMap<String, PathBuf>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Secrets {
    pub fn new(cfg: &Config) -> Secrets {
        let files: HashMap<String, PathBuf> = cfg
            .targets
            .values()
            .filter_map(|t| {
                t.webhook
                    .as_ref()
                    .map(|w| (t.name.clone(), w.secret_file.clone()))
            })
            .collect();
        let s = Secrets {
            files,
            cache: Mutex::new(HashMap::new()),
        };
        s.reload();
        s
    }

    /// Re-reads every secret file (SIGHUP).
    pub fn reload(&self) {
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        cache.clear();
        for (t, f) in &self.files {
            cache.insert(t.clone(), read(t, f));
        }
    }

    /// The secret for `target`, re-reading its file if it changed since last time.
    fn get(&self, target: &str) -> Option<Secret> {
        let file = self.files.get(target)?;
        let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let stale = cache.get(target).map(|(m, _)| *m != mtime).unwrap_or(true);
        if stale {
            cache.insert(target.to_string(), read(target, file));
        }
        cache.get(target).and_then(|(_, s)| s.clone())
    }
}

fn read(target: &str, file: &std::path::Path) -> Cached {
    let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
    match read_secret(file) {
        Ok(s) => (mtime, Some(s)),
        Err(e) => {
            tracing::warn!(target_name = target, error = %e.message, "webhook secret unavailable; hooks answer 503");
            (mtime, None)
        }
    }
}

/// What the request presented.
enum Cred {
    Bearer(Vec<u8>),
    Token(Vec<u8>),
    Hmac(Vec<u8>),
    Malformed,
}

fn credentials(h: &HeaderMap) -> Option<Cred> {
    let get = |n: &str| h.get(n).map(|v| v.as_bytes().to_vec());
    if let Some(v) = get("authorization") {
        return Some(match v.strip_prefix(b"Bearer ") {
            Some(t) => Cred::Bearer(t.trim_ascii().to_vec()),
            None => Cred::Malformed,
        });
    }
    if let Some(v) = get("x-hub-signature-256") {
        return Some(
            match v.strip_prefix(b"sha256=").and_then(|x| hex::decode(x).ok()) {
                Some(sig) => Cred::Hmac(sig),
                None => Cred::Malformed,
            },
        );
    }
    for n in ["x-forgejo-signature", "x-gitea-signature"] {
        if let Some(v) = get(n) {
            return Some(match hex::decode(v.trim_ascii()) {
                Ok(sig) => Cred::Hmac(sig),
                Err(_) => Cred::Malformed,
            });
        }
    }
    get("x-gitlab-token").map(Cred::Token)
}

/// Constant-time equality that does not leak the length either.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let ha = Sha256::digest(a);
    let hb = Sha256::digest(b);
    ha.ct_eq(&hb).into()
}

fn verify(cred: &Cred, secret: &Secret, body: &[u8]) -> bool {
    let s = secret.expose().as_bytes();
    match cred {
        Cred::Bearer(t) | Cred::Token(t) => ct_eq(t, s),
        Cred::Hmac(sig) => match Hmac::<Sha256>::new_from_slice(s) {
            Ok(mut mac) => {
                mac.update(body);
                mac.verify_slice(sig).is_ok()
            }
            Err(_) => false,
        },
        Cred::Malformed => false,
    }
}

fn unauthorized() -> hyper::Response<Body> {
    json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"error": "unauthorized"}),
    )
}

/// Reads at most MAX_BODY bytes; None when the body is larger (reading stops there).
async fn read_body(mut body: Incoming) -> Result<Option<Vec<u8>>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Ok(None);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Some(out))
}

/// Whether a push to `pushed` (e.g. `refs/heads/main`) concerns the configured ref.
fn ref_matches(configured: Option<&str>, pushed: &str) -> bool {
    match configured {
        None | Some("HEAD") => true,
        Some(c) => {
            pushed == c
                || pushed.strip_prefix("refs/heads/") == Some(c)
                || pushed.strip_prefix("refs/tags/") == Some(c)
        }
    }
}

pub async fn handle(
    shared: &Shared,
    secrets: &Secrets,
    name: &str,
    headers: &HeaderMap,
    body: Incoming,
) -> hyper::Response<Body> {
    let m = &shared.metrics;
    let known = shared.cfg.targets.contains_key(name);
    let count = |result: &str| {
        // Only known targets get a label, so random paths cannot grow the metric.
        if known {
            m.webhook(name, result);
        }
    };
    let Some(cred) = credentials(headers) else {
        count("unauthorized");
        return unauthorized();
    };
    let Some(target) = shared.cfg.targets.get(name) else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "unknown target"}),
        );
    };
    let Some(secret) = secrets.get(name) else {
        count("not_configured");
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "webhook not configured for this target"}),
        );
    };
    let too_large = || {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"error": "body over 1 MiB"}),
        )
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.map(|l| l > MAX_BODY as u64).unwrap_or(false) {
        count("too_large");
        return too_large();
    }
    let bytes = match read_body(body).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            count("too_large");
            return too_large();
        }
        Err(_) => {
            count("bad_request");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "cannot read body"}),
            );
        }
    };
    if !verify(&cred, &secret, &bytes) {
        count("unauthorized");
        tracing::warn!(target_name = name, "webhook with wrong credentials");
        return unauthorized();
    }
    // The payload is optional: a bare authenticated POST just triggers a cycle.
    let payload: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) => {
                count("bad_request");
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "body is not JSON"}),
                );
            }
        }
    };
    if let Some(pushed) = payload.get("ref").and_then(|r| r.as_str()) {
        if !ref_matches(target.source.git_ref.as_deref(), pushed) {
            count("ignored");
            return json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"status": "ignored", "reason": "push to another ref", "ref": pushed}),
            );
        }
    }
    if let Some(after) = payload.get("after").and_then(|a| a.as_str()) {
        if shared.applied_revision(name).as_deref() == Some(after) {
            count("unchanged");
            return json(
                StatusCode::OK,
                &serde_json::json!({"status": "unchanged", "revision": after}),
            );
        }
    }
    shared.trigger(name);
    count("triggered");
    tracing::info!(target_name = name, "webhook triggered a cycle");
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"status": "triggered", "target": name}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert!(ref_matches(Some("master"), "refs/heads/master"));
        assert!(!ref_matches(Some("master"), "refs/heads/feature"));
        assert!(ref_matches(None, "refs/heads/x"));
        assert!(ref_matches(Some("v1"), "refs/tags/v1"));
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
