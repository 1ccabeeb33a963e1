//! Reading an HTTP answer safely: a body capped at `max_bytes` and checked against its
//! Content-Length, close-delimited bodies told apart (one cut short looks whole), and
//! transport errors classified into a reason label with credentials redacted.

use reqwest::header::HeaderMap;

use crate::source::integrity;
use crate::source::{FetchError, FetchReason};

/// An HTTP/1 body without Content-Length and not chunked ends when the server closes the
/// connection: one cut short looks exactly like a whole one.
pub(super) fn close_delimited(resp: &reqwest::Response) -> bool {
    let http1 = matches!(
        resp.version(),
        reqwest::Version::HTTP_09 | reqwest::Version::HTTP_10 | reqwest::Version::HTTP_11
    );
    let chunked = resp
        .headers()
        .get_all(reqwest::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .map(|s| s.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false)
        });
    http1 && resp.content_length().is_none() && !chunked
}

pub(super) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

/// Turns a transport error into a reason label and a message whose URL (if any) has its
/// credentials redacted.
pub(super) fn classify(e: &reqwest::Error) -> FetchError {
    let reason = if e.is_timeout() {
        FetchReason::Timeout
    } else if e.is_connect() {
        FetchReason::Connect
    } else if e.is_redirect() {
        FetchReason::Redirect
    } else {
        FetchReason::Transport
    };
    let shown = e.url().map(|u| crate::util::redact::url(u.as_str()));
    let mut bare = e.to_string();
    // The source chain says what actually went wrong (refused, reset, TLS ...).
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !bare.contains(&text) {
            bare = format!("{bare}: {text}");
        }
        cause = c.source();
    }
    if let Some(u) = e.url() {
        bare = crate::util::redact::in_text(&bare, u.as_str());
    }
    let msg = match shown {
        Some(u) if !bare.contains(&u) => format!("{bare} ({u})"),
        _ => bare,
    };
    FetchError::new(reason, msg)
}

/// Reads a body, failing as soon as it exceeds `max` bytes (without reading the rest).
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: u64,
    url: &str,
) -> Result<Vec<u8>, FetchError> {
    let declared = resp.content_length();
    if let Some(len) = declared {
        if len > max {
            return Err(FetchError::new(
                FetchReason::TooLarge,
                format!("{url} is {len} bytes, over max_bytes ({max})"),
            ));
        }
    }
    let mut out = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                // A body shorter than its Content-Length: say how short.
                return Err(match declared {
                    Some(len) if !e.is_timeout() => FetchError::new(
                        FetchReason::Integrity,
                        format!(
                            "GET {url}: got {} of {len} bytes: the body was cut short ({})",
                            out.len(),
                            classify(&e).message
                        ),
                    ),
                    _ => classify(&e),
                });
            }
        };
        if (out.len() + chunk.len()) as u64 > max {
            return Err(FetchError::new(
                FetchReason::TooLarge,
                format!("{url} is over max_bytes ({max})"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    if let Some(len) = declared {
        integrity::check_len(out.len() as u64, len, "Content-Length")?;
    }
    Ok(out)
}
