//! PowerSync's admin API, as rulekeeper uses it: validating a candidate against the
//! running service (`/api/admin/v1/validate`) and checking after a restart that the new
//! rules are live and clean (`/api/admin/v1/diagnostics`). Shapes from docs/contract.md
//! "PowerSync facts rulekeeper relies on"; the API token comes from a file and is never logged.

use serde_json::Value;

use crate::config::PowerSyncApi;
use crate::source::read_secret;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Could not talk to the service at all (down, booting, refused).
    #[error("{0}")]
    Unreachable(String),
    /// The service answered, but not as documented (auth failure, bad JSON, ...).
    #[error("{0}")]
    Protocol(String),
}

/// One message PowerSync reported.
#[derive(Debug, Clone)]
pub struct Problem {
    pub fatal: bool,
    pub message: String,
}

pub fn join(ps: &[&Problem]) -> String {
    ps.iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

async fn post(api: &PowerSyncApi, endpoint: &str, body: Value) -> Result<Value, ApiError> {
    let token = read_secret(&api.token_file).map_err(|e| ApiError::Protocol(e.message))?;
    let url = format!("{}{endpoint}", api.url.trim_end_matches('/'));
    let shown = crate::redact::url(&url);
    let client = reqwest::Client::builder()
        .timeout(api.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ApiError::Protocol(e.to_string()))?;
    let resp = client
        .post(&url)
        .bearer_auth(token.expose())
        .json(&body)
        .send()
        .await
        .map_err(|e| ApiError::Unreachable(format!("POST {shown}: {}", e.without_url())))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ApiError::Unreachable(format!("POST {shown}: {}", e.without_url())))?;
    if !status.is_success() {
        let snippet: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
        return Err(ApiError::Protocol(format!(
            "POST {shown} answered {status}: {snippet}"
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Protocol(format!("POST {shown}: answer is not JSON: {e}")))
}

fn problems(errors: Option<&Value>) -> Vec<Problem> {
    errors
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Problem {
                    fatal: e
                        .get("level")
                        .or_else(|| e.get("type"))
                        .and_then(Value::as_str)
                        .map(|l| l != "warning")
                        .unwrap_or(true),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)")
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /api/admin/v1/validate {"sync_rules": yaml}` → the errors PowerSync reports.
pub async fn validate(api: &PowerSyncApi, yaml: &str) -> Result<Vec<Problem>, ApiError> {
    let v = post(
        api,
        "/api/admin/v1/validate",
        serde_json::json!({ "sync_rules": yaml }),
    )
    .await?;
    let data = v
        .get("data")
        .ok_or_else(|| ApiError::Protocol("validate answer has no `data`".into()))?;
    Ok(problems(data.get("errors")))
}

/// After a restart: the active (or deploying) sync rules must be `expected` and clean.
pub async fn check_live(api: &PowerSyncApi, expected: &str) -> Result<(), ApiError> {
    // Without `sync_rules_content` PowerSync leaves the rules text out of the answer.
    let v = post(
        api,
        "/api/admin/v1/diagnostics",
        serde_json::json!({ "sync_rules_content": true }),
    )
    .await?;
    let data = v.get("data").unwrap_or(&v);
    let mut seen_expected = false;
    let mut errs = Vec::new();
    for key in ["deploying_sync_rules", "active_sync_rules"] {
        let Some(r) = data.get(key).filter(|r| !r.is_null()) else {
            continue;
        };
        let content = r.get("content").and_then(Value::as_str);
        if content
            .map(|c| c.trim() == expected.trim())
            .unwrap_or(false)
        {
            seen_expected = true;
            for p in problems(r.get("errors")) {
                if p.fatal {
                    errs.push(format!("{key}: {}", p.message));
                }
            }
        }
    }
    if !seen_expected {
        return Err(ApiError::Protocol(
            "diagnostics show neither active nor deploying sync rules equal to the new file".into(),
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::Protocol(errs.join("; ")));
    }
    Ok(())
}
