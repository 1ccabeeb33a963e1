//! How rulekeeper talks to a forge's API, for fetching and for commit statuses alike: one
//! shared client per (timeout, CA file), the API base of each kind, URL path segments, and
//! the token header each forge wants (marked sensitive, so it is never logged).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::SourceKind;
use crate::source::{read_token, FetchError, FetchReason};

/// The HTTP client for a source: system roots plus an optional private CA. Clients are
/// shared between targets with the same (timeout, ca_file, TLS): each holds a parsed root
/// store and a connection pool, which would otherwise cost memory and a socket per target.
/// Tokens are per request, so sharing is safe.
pub fn client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
    tls: Tls,
) -> Result<reqwest::Client, FetchError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (Duration, Option<PathBuf>, Tls);
    static CLIENTS: OnceLock<Mutex<HashMap<Key, reqwest::Client>>> = OnceLock::new();
    let key = (timeout, ca_file.map(|p| p.to_path_buf()), tls);
    let mut cache = crate::util::mutex::lock(CLIENTS.get_or_init(Default::default));
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let c = build_client(timeout, ca_file, tls)?;
    cache.insert(key, c.clone());
    Ok(c)
}

/// Whether a source's client will speak TLS: reading the system's root store costs a
/// one-shot command (`once`) more CPU than its whole cycle, and a plain `http://` source
/// never needs it (redirects stay on the same origin, so on the same scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tls {
    Yes,
    No,
}

impl Tls {
    /// The TLS a source at `base` (its `base_url` or `url`; None: the forge's default,
    /// which is https) needs.
    pub fn for_url(base: Option<&str>) -> Tls {
        match base.and_then(|b| url::Url::parse(b).ok()) {
            Some(u) if u.scheme() == "http" => Tls::No,
            _ => Tls::Yes,
        }
    }
}

fn build_client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
    tls: Tls,
) -> Result<reqwest::Client, FetchError> {
    let mut b = crate::util::http::builder()
        .tls_built_in_root_certs(tls == Tls::Yes)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        // One client serves many targets on the same forge; a few idle connections do.
        .pool_max_idle_per_host(4)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .map(|first| first.origin() == attempt.url().origin())
                .unwrap_or(false);
            if attempt.previous().len() >= 5 || !same_origin {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }));
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            FetchError::new(
                FetchReason::Config,
                format!("cannot read ca_file {}: {e}", ca.display()),
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            FetchError::new(
                FetchReason::Config,
                format!("ca_file {} is not PEM: {e}", ca.display()),
            )
        })?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| {
        FetchError::new(
            FetchReason::Config,
            format!("cannot build HTTP client: {e}"),
        )
    })
}

/// The API base of a forge source: `base_url`, or GitHub's public API when GitHub has none.
pub fn api_base(kind: SourceKind, base_url: Option<&str>) -> Result<url::Url, FetchError> {
    let default = if kind == SourceKind::Github {
        "https://api.github.com"
    } else {
        ""
    };
    parse_base(base_url.unwrap_or(default))
}

pub(super) fn parse_base(base: &str) -> Result<url::Url, FetchError> {
    let mut u = url::Url::parse(base)
        .map_err(|e| FetchError::new(FetchReason::Config, format!("base_url: {e}")))?;
    // Treat base_url as a directory even without a trailing slash (forge behind a sub-path).
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

pub fn push_segments(u: &mut url::Url, segs: &[&str]) -> Result<(), FetchError> {
    let mut p = u
        .path_segments_mut()
        .map_err(|_| FetchError::new(FetchReason::Config, "base URL cannot have a path"))?;
    p.pop_if_empty();
    for s in segs {
        p.push(s);
    }
    drop(p);
    Ok(())
}

/// [`auth_headers`], kept per (forge kind, token file) for the process: the file is read
/// again only when its stamp moved or has not settled (`util::stamp`), so a rotated token is
/// sent from the next request on, and targets sharing a token file share one copy.
pub fn kept_auth_headers(kind: SourceKind, tf: &Path) -> Result<HeaderMap, FetchError> {
    use crate::util::stamp::{Seen, Stamp};
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Kept = Mutex<HashMap<(SourceKind, PathBuf), Seen<HeaderMap>>>;
    static KEPT: OnceLock<Kept> = OnceLock::new();
    // Stamped before the read: a change after it moves the stamp, so it is read again.
    let stamp = std::fs::metadata(tf).ok().map(|m| Stamp::of(&m));
    let key = (kind, tf.to_path_buf());
    let mut kept = crate::util::mutex::lock(KEPT.get_or_init(Default::default));
    if let (Some(now), Some(seen)) = (&stamp, kept.get(&key)) {
        if seen.trusted(now) {
            return Ok(seen.value.clone());
        }
    }
    let h = auth_headers(kind, tf);
    match (&h, stamp) {
        (Ok(h), Some(st)) => {
            kept.insert(key, Seen::now(st, h.clone()));
        }
        _ => {
            kept.remove(&key);
        }
    }
    h
}

/// Each forge's header for a token read from `tf` (Forgejo/Gitea `Authorization: token`,
/// GitLab `PRIVATE-TOKEN`, others Bearer), marked sensitive: the read token of a source and
/// the write token of commit statuses go the same way.
pub fn auth_headers(kind: SourceKind, tf: &Path) -> Result<HeaderMap, FetchError> {
    let mut h = HeaderMap::new();
    let tok = read_token(tf)?;
    let (name, value) = match kind {
        SourceKind::Forgejo | SourceKind::Gitea => (
            reqwest::header::AUTHORIZATION,
            format!("token {}", tok.expose()),
        ),
        SourceKind::Gitlab => (
            HeaderName::from_static("private-token"),
            tok.expose().to_string(),
        ),
        _ => (
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", tok.expose()),
        ),
    };
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        FetchError::new(
            FetchReason::Token,
            format!(
                "token file {} holds characters not allowed in a header",
                tf.display()
            ),
        )
    })?;
    v.set_sensitive(true);
    h.insert(name, v);
    Ok(h)
}
