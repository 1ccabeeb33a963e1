//! Forges that say "slow down": a 429 with `Retry-After` (seconds or an HTTP date), or GitHub's
//! rate limit (403 or 429 with `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`). Until the
//! time a forge names, no request goes to it from this process: not the file, not the commits
//! API, not a commit status. The wait is kept per origin (scheme, host, port), since a forge's
//! limit is per token or per client, not per file.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::source::{FetchError, FetchReason};

/// How long to wait after a 429 that names no time.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait believed: a forge's mistake must not silence a target for days.
const MAX_WAIT: Duration = Duration::from_secs(3600);

static UNTIL: Mutex<Option<HashMap<String, SystemTime>>> = Mutex::new(None);

fn key(u: &url::Url) -> String {
    u.origin().ascii_serialization()
}

/// Sends `req` (a request for `u`) unless `u`'s forge asked to be left alone, and notes a
/// "slow down" in its answer: a refusal either way. The one way a forge source asks its API.
pub async fn send(
    u: &url::Url,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, FetchError> {
    if let Some(until) = blocked(u) {
        return Err(refusal(u, until));
    }
    let resp = req.send().await.map_err(|e| super::wire::classify(&e))?;
    if let Some(until) = note(u, resp.status(), resp.headers()) {
        return Err(refusal(u, until));
    }
    Ok(resp)
}

/// The time before which nothing may be asked of `u`'s forge, if it is still ahead.
pub fn blocked(u: &url::Url) -> Option<SystemTime> {
    let now = SystemTime::now();
    let mut g = crate::util::mutex::lock(&UNTIL);
    let m = g.get_or_insert_with(HashMap::new);
    match m.get(&key(u)) {
        Some(t) if *t > now => Some(*t),
        Some(_) => {
            m.remove(&key(u));
            None
        }
        None => None,
    }
}

/// The error of a request not made because the forge asked to wait until `until`.
pub fn refusal(u: &url::Url, until: SystemTime) -> FetchError {
    let at: chrono::DateTime<chrono::Utc> = until.into();
    FetchError::new(
        FetchReason::RateLimited,
        format!(
            "{} asked to slow down: no request to it before {} (next try then)",
            u.origin().ascii_serialization(),
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    )
    .retry_at(until)
}

/// Reads an answer: when it is a rate limit, the forge's wait is recorded for its origin and
/// returned.
pub fn note(u: &url::Url, status: StatusCode, headers: &HeaderMap) -> Option<SystemTime> {
    let until = wait_of(status, headers, SystemTime::now())?;
    let mut g = crate::util::mutex::lock(&UNTIL);
    let m = g.get_or_insert_with(HashMap::new);
    let t = m.entry(key(u)).or_insert(until);
    *t = (*t).max(until);
    Some(*t)
}

/// The time a rate-limit answer asks to wait until, or None when it is no rate limit.
fn wait_of(status: StatusCode, h: &HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let exhausted = header("x-ratelimit-remaining") == Some("0");
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && (exhausted || header("retry-after").is_some()));
    if !limited {
        return None;
    }
    let retry_after = header("retry-after").and_then(|v| {
        v.parse::<u64>()
            .ok()
            .map(|s| now + Duration::from_secs(s))
            .or_else(|| {
                chrono::DateTime::parse_from_rfc2822(v)
                    .ok()
                    .map(|d| SystemTime::from(d.with_timezone(&chrono::Utc)))
            })
    });
    let reset = header("x-ratelimit-reset")
        .filter(|_| exhausted)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let until = retry_after.or(reset).unwrap_or(now + DEFAULT_WAIT);
    Some(until.clamp(now, now + MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn retry_after_seconds_and_dates_and_githubs_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |t: SystemTime| t.duration_since(now).unwrap().as_secs();
        let w = wait_of(
            StatusCode::TOO_MANY_REQUESTS,
            &h(&[("retry-after", "30")]),
            now,
        );
        assert_eq!(w.map(s), Some(30));
        let date =
            chrono::DateTime::<chrono::Utc>::from(now + Duration::from_secs(90)).to_rfc2822();
        let w = wait_of(
            StatusCode::TOO_MANY_REQUESTS,
            &h(&[("retry-after", &date)]),
            now,
        );
        assert_eq!(w.map(s), Some(90));
        let reset = (1_000_000 + 120).to_string();
        let gh = h(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset),
        ]);
        assert_eq!(wait_of(StatusCode::FORBIDDEN, &gh, now).map(s), Some(120));
        // A plain 403 is an auth failure, not a rate limit.
        assert_eq!(wait_of(StatusCode::FORBIDDEN, &h(&[]), now), None);
        assert_eq!(
            wait_of(StatusCode::TOO_MANY_REQUESTS, &h(&[]), now).map(s),
            Some(60)
        );
        let far = h(&[("retry-after", "999999")]);
        assert_eq!(
            wait_of(StatusCode::TOO_MANY_REQUESTS, &far, now).map(s),
            Some(3600)
        );
    }
}
