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
    /// `location.start_offset`: where in the rules text, in UTF-16 code units (the service
    /// is JavaScript).
    pub offset: Option<usize>,
}

impl Problem {
    /// `FILE:LINE:COL: fatal: MESSAGE`, as the offline validator prints it, so an app
    /// developer reads the same line from either validator. `text` is the rules PowerSync
    /// judged; `shown` the name to give them (the target's live path).
    pub fn located(&self, shown: &str, text: &str) -> String {
        let level = if self.fatal { "fatal" } else { "warning" };
        match self.offset.map(|o| line_col(text, o)) {
            Some((line, col)) => format!("{shown}:{line}:{col}: {level}: {}", self.message),
            None => format!("{shown}: {level}: {}", self.message),
        }
    }
}

/// 1-based line and column (in characters) of a UTF-16 offset into `text`; past the end is
/// the end.
pub fn line_col(text: &str, utf16_offset: usize) -> (usize, usize) {
    let (mut line, mut col, mut units) = (1, 1, 0);
    for c in text.chars() {
        if units >= utf16_offset {
            break;
        }
        units += c.len_utf16();
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// At most `max` problems as located lines, joined, bounded in length: what goes into a
/// reason (the log line, state, `status`, an alert's text).
pub fn summarize(ps: &[&Problem], shown: &str, text: &str, max: usize) -> String {
    let lines: Vec<String> = ps.iter().map(|p| p.located(shown, text)).collect();
    crate::validate::bounded(&lines, max)
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
                    offset: e
                        .pointer("/location/start_offset")
                        .and_then(Value::as_u64)
                        .and_then(|o| usize::try_from(o).ok()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_utf16_and_become_line_and_column() {
        let text = "a: 1\nb: é😀x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 5), (2, 1));
        // é is one UTF-16 unit, 😀 two: x is at unit 11, the 6th character of line 2
        assert_eq!(line_col(text, 11), (2, 6));
        assert_eq!(line_col(text, 999), (3, 1));
        let p = Problem {
            fatal: true,
            message: "Function 'nosuchfunc' is not defined".into(),
            offset: Some(5),
        };
        assert_eq!(
            p.located("/srv/sync-rules.yaml", text),
            "/srv/sync-rules.yaml:2:1: fatal: Function 'nosuchfunc' is not defined"
        );
    }
}
