//! Webhook authentication and payload parsing on arbitrary headers, secrets and bodies.
//! Input: one selector byte (which header), a header value and a secret (each up to a NUL),
//! then the body.
#![no_main]
use libfuzzer_sys::fuzz_target;

const HEADERS: [&str; 5] = [
    "authorization",
    "x-hub-signature-256",
    "x-forgejo-signature",
    "x-gitea-signature",
    "x-gitlab-token",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == 0);
    let value = parts.next().unwrap_or_default();
    let secret = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(value) {
        headers.insert(HEADERS[sel as usize % HEADERS.len()], v);
    }
    let ok = rulekeeper::daemon::server::webhook::authentic(&headers, &secret, body);
    if headers.is_empty() {
        assert!(!ok, "no credentials never authenticate");
    }
    // The right bearer always does.
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {secret}")) {
        if !secret.trim().is_empty() && secret.trim() == secret {
            let mut h = http::HeaderMap::new();
            h.insert("authorization", v);
            assert!(rulekeeper::daemon::server::webhook::authentic(&h, &secret, body));
        }
    }
    let _ = rulekeeper::daemon::server::webhook::payload(body);
});
