//! `POST /hooks/<target>`: push triggers from a forge. Authentication (docs/contract.md "HTTP"):
//! `Authorization: Bearer <secret>`, Forgejo/Gitea `X-Forgejo-Signature` /
//! `X-Gitea-Signature` (hex HMAC-SHA256 of the body), GitHub `X-Hub-Signature-256:
//! sha256=<hex>`, or GitLab `X-Gitlab-Token`. Every comparison is constant-time, every auth
//! failure gets the same 401 body, and no secret or signature is ever logged. A hook only
//! asks for an earlier cycle; polling stays the source of truth.
//!
//! Anyone can reach this endpoint, so nobody unauthenticated may make it hold memory: a
//! bearer or GitLab token is checked before a byte of the body is read; a signed body (the
//! HMAC schemes need it whole) is admitted only within a global budget of bytes in flight
//! ([`BODY_BUDGET`]; over it, 503), and must arrive within [`BODY_TIMEOUT`]. Every early
//! answer (401, 413, 503) is sent first, then the rest of the body is read and discarded (up
//! to [`DRAIN_MAX`] bytes or [`DRAIN_TIME`]) so the client sees the answer, not a reset.
//! Wrong credentials, and valid triggers that join a cycle already asked for, are counted per
//! target and logged as one summary line per minute.

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
use crate::daemon::shared::Shared;
use crate::model::labels::WebhookResult;
use crate::util::secret::{self, Secret};

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// Bytes of signed bodies being read at once, over all connections.
pub const BODY_BUDGET: usize = 16 * MAX_BODY;
/// A body must arrive within this.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// After an early answer, at most this much of the body is read and thrown away...
pub const DRAIN_MAX: usize = 2 * MAX_BODY;
/// ...for at most this long...
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// ...on at most this many connections at once (beyond, the connection just closes after
/// the answer: under a flood, freeing the slot matters more than a polite goodbye).
pub const DRAINS: usize = 256;
/// Wrong-credential summaries are logged at most this often.
pub const AUTH_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Per-server limits and counters of the webhook.
pub struct Guard {
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    drains: std::sync::Arc<tokio::sync::Semaphore>,
    /// Wrong-credential requests per target since the last summary line.
    auth_failures: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Valid triggers per target that joined a cycle already asked for, since the last line.
    coalesced: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

impl Guard {
    pub fn new() -> Guard {
        Guard {
            budget: std::sync::Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET)),
            drains: std::sync::Arc::new(tokio::sync::Semaphore::new(DRAINS)),
            auth_failures: Mutex::new(Default::default()),
            coalesced: Mutex::new(Default::default()),
        }
    }

    fn auth_failed(&self, target: &str) {
        let mut m = crate::util::mutex::lock(&self.auth_failures);
        *m.entry(target.to_string()).or_default() += 1;
    }

    fn take_auth_failures(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m = crate::util::mutex::lock(&self.auth_failures);
        std::mem::take(&mut *m)
    }

    fn joined(&self, target: &str) {
        let mut m = crate::util::mutex::lock(&self.coalesced);
        *m.entry(target.to_string()).or_default() += 1;
    }

    fn take_coalesced(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m = crate::util::mutex::lock(&self.coalesced);
        std::mem::take(&mut *m)
    }
}

/// Logs one line per target per [`AUTH_LOG_EVERY`] for requests with wrong credentials,
/// instead of one per request (a flood would otherwise flood the journal).
pub async fn report_auth_failures(
    guard: std::sync::Arc<Guard>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(AUTH_LOG_EVERY);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        for (target, n) in guard.take_auth_failures() {
            tracing::warn!(
                target_name = %target,
                count = n,
                "{n} webhook request(s) with wrong credentials in the last {}s",
                AUTH_LOG_EVERY.as_secs()
            );
        }
        for (target, n) in guard.take_coalesced() {
            tracing::info!(
                target_name = %target,
                count = n,
                "{n} more webhook trigger(s) in the last {}s joined a cycle already asked for",
                AUTH_LOG_EVERY.as_secs()
            );
        }
        if last {
            return;
        }
    }
}

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
        let mut cache = crate::util::mutex::lock(&self.cache);
        cache.clear();
        for (t, f) in &self.files {
            cache.insert(t.clone(), read(t, f));
        }
    }

    /// The secret for `target`, re-reading its file if it changed since last time.
    fn get(&self, target: &str) -> Option<Secret> {
        let file = self.files.get(target)?;
        let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
        let mut cache = crate::util::mutex::lock(&self.cache);
        let stale = cache.get(target).map(|(m, _)| *m != mtime).unwrap_or(true);
        if stale {
            cache.insert(target.to_string(), read(target, file));
        }
        cache.get(target).and_then(|(_, s)| s.clone())
    }
}

fn read(target: &str, file: &std::path::Path) -> Cached {
    let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
    match secret::read(file) {
        Ok(s) => (mtime, Some(s)),
        Err(e) => {
            tracing::warn!(target_name = target, error = %e, "webhook secret unavailable; hooks answer 503");
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

/// Whether a request with these headers and this body carries valid credentials for
/// `secret` (the whole decision, for tests and fuzzing).
pub fn authentic(headers: &HeaderMap, secret: &str, body: &[u8]) -> bool {
    match credentials(headers) {
        Some(cred) => verify(&cred, &Secret::new(secret.to_string()), body),
        None => false,
    }
}

/// A webhook body that is neither empty nor JSON.
#[derive(Debug, thiserror::Error)]
#[error("body is not JSON")]
pub struct NotJson;

/// What a push payload says: the pushed `ref` and the `after` commit.
pub fn payload(bytes: &[u8]) -> Result<(Option<String>, Option<String>), NotJson> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| NotJson)?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Ok((field("ref"), field("after")))
}

/// An answer sent before the body was read: the connection closes after it, and the body is
/// read and discarded in the background first (bounded), so the client reads the answer
/// instead of a connection reset.
fn early(guard: &Guard, mut resp: hyper::Response<Body>, body: Incoming) -> hyper::Response<Body> {
    resp.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    if let Ok(permit) = guard.drains.clone().try_acquire_owned() {
        tokio::spawn(async move {
            drain(body).await;
            drop(permit);
        });
    }
    resp
}

async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len();
                if seen > DRAIN_MAX {
                    break;
                }
            }
        }
    })
    .await;
}

/// Why a body could not be read whole.
enum BodyError {
    TooLarge,
    Broken,
}

/// Reads at most MAX_BODY bytes; stops at the first byte over it.
async fn read_body(body: &mut Incoming) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
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

/// How a webhook request ends: its status, its `rulekeeper_webhook_requests_total` result
/// (None: not counted, for an unknown target), its JSON body, and whether it is sent before
/// the body was read whole (then the connection closes and the rest is drained).
struct Answer {
    status: StatusCode,
    result: Option<WebhookResult>,
    body: serde_json::Value,
    early: bool,
    retry_after: Option<&'static str>,
}

impl Answer {
    fn new(status: StatusCode, result: WebhookResult, body: serde_json::Value) -> Answer {
        Answer {
            status,
            result: Some(result),
            body,
            early: false,
            retry_after: None,
        }
    }

    /// Sent before the body was read whole.
    fn early(status: StatusCode, result: WebhookResult, body: serde_json::Value) -> Answer {
        Answer {
            early: true,
            ..Answer::new(status, result, body)
        }
    }

    fn unauthorized() -> Answer {
        // The same body for missing and wrong credentials: nothing to learn from it.
        Answer::early(
            StatusCode::UNAUTHORIZED,
            WebhookResult::Unauthorized,
            serde_json::json!({"error": "unauthorized"}),
        )
    }

    fn too_large() -> Answer {
        Answer::early(
            StatusCode::PAYLOAD_TOO_LARGE,
            WebhookResult::TooLarge,
            serde_json::json!({"error": "body over 1 MiB"}),
        )
    }

    fn bad_request(error: &str) -> Answer {
        Answer::new(
            StatusCode::BAD_REQUEST,
            WebhookResult::BadRequest,
            serde_json::json!({ "error": error }),
        )
    }
}

pub async fn handle(
    shared: &Shared,
    secrets: &Secrets,
    guard: &Guard,
    name: &str,
    headers: &HeaderMap,
    mut body: Incoming,
) -> hyper::Response<Body> {
    let a = match decide(shared, secrets, guard, name, headers, &mut body).await {
        Ok(a) | Err(a) => a,
    };
    // Only known targets get a label, so random paths cannot grow the metric.
    if let (Some(result), true) = (a.result, shared.cfg.targets.contains_key(name)) {
        shared.metrics.webhook(name, result);
    }
    let mut resp = json(a.status, &a.body);
    if let Some(secs) = a.retry_after {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static(secs),
        );
    }
    if a.early {
        early(guard, resp, body)
    } else {
        resp
    }
}

/// The body of a request whose credentials hold. Token schemes are decided before a byte of
/// the body is read; a signature needs the whole body, which is admitted only within the
/// budget of bytes in flight and [`BODY_TIMEOUT`].
async fn authenticated_body(
    guard: &Guard,
    name: &str,
    cred: &Cred,
    secret: &Secret,
    declared: Option<u64>,
    body: &mut Incoming,
) -> Result<Vec<u8>, Answer> {
    let wrong = || {
        guard.auth_failed(name);
        Answer::unauthorized()
    };
    let _admitted = match cred {
        Cred::Bearer(_) | Cred::Token(_) | Cred::Malformed => {
            if !verify(cred, secret, b"") {
                return Err(wrong());
            }
            None
        }
        Cred::Hmac(_) => {
            let want = declared.map(|l| l as usize).unwrap_or(MAX_BODY).max(1);
            let permit = guard.budget.clone().try_acquire_many_owned(want as u32);
            Some(permit.map_err(|_| Answer {
                retry_after: Some("5"),
                ..Answer::early(
                    StatusCode::SERVICE_UNAVAILABLE,
                    WebhookResult::Busy,
                    serde_json::json!({"error": "busy: too many webhook bodies in flight"}),
                )
            })?)
        }
    };
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read_body(body)).await {
        Ok(Ok(b)) => b,
        Ok(Err(BodyError::TooLarge)) => return Err(Answer::too_large()),
        Ok(Err(BodyError::Broken)) => return Err(Answer::bad_request("cannot read body")),
        Err(_) => {
            return Err(Answer::early(
                StatusCode::REQUEST_TIMEOUT,
                WebhookResult::Timeout,
                serde_json::json!({"error": "body not received in time"}),
            ))
        }
    };
    if !verify(cred, secret, &bytes) {
        return Err(wrong());
    }
    Ok(bytes)
}

/// The webhook's decisions in their documented order (docs/contract.md "HTTP"): `Err` for
/// a request refused, `Ok` for one taken.
async fn decide(
    shared: &Shared,
    secrets: &Secrets,
    guard: &Guard,
    name: &str,
    headers: &HeaderMap,
    body: &mut Incoming,
) -> Result<Answer, Answer> {
    let cred = credentials(headers).ok_or_else(Answer::unauthorized)?;
    let target = shared.cfg.targets.get(name).ok_or_else(|| Answer {
        result: None,
        ..Answer::early(
            StatusCode::NOT_FOUND,
            WebhookResult::NotConfigured,
            serde_json::json!({"error": "unknown target"}),
        )
    })?;
    let secret = secrets.get(name).ok_or_else(|| {
        Answer::early(
            StatusCode::SERVICE_UNAVAILABLE,
            WebhookResult::NotConfigured,
            serde_json::json!({"error": "webhook not configured for this target"}),
        )
    })?;
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > MAX_BODY as u64) {
        return Err(Answer::too_large());
    }
    let bytes = authenticated_body(guard, name, &cred, &secret, declared, body).await?;
    // The payload is optional: a bare authenticated POST just triggers a cycle.
    let (pushed, after) = payload(&bytes).map_err(|_| Answer::bad_request("body is not JSON"))?;
    if let Some(pushed) = pushed {
        if !ref_matches(target.source.git_ref.as_deref(), &pushed) {
            return Ok(Answer::new(
                StatusCode::ACCEPTED,
                WebhookResult::Ignored,
                serde_json::json!({"status": "ignored", "reason": "push to another ref", "ref": pushed}),
            ));
        }
    }
    if let Some(after) = after {
        if shared.applied_revision(name).as_deref() == Some(after.as_str()) {
            return Ok(Answer::new(
                StatusCode::OK,
                WebhookResult::Unchanged,
                serde_json::json!({"status": "unchanged", "revision": after}),
            ));
        }
    }
    // One line for the trigger that asks for a cycle; those that join it are summed up in
    // the summary line, so a flood of valid pushes does not flood the journal.
    if shared.trigger(name) {
        tracing::info!(target_name = name, "webhook triggered a cycle");
    } else {
        guard.joined(name);
    }
    Ok(Answer::new(
        StatusCode::ACCEPTED,
        WebhookResult::Triggered,
        serde_json::json!({"status": "triggered", "target": name}),
    ))
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
