//! PowerSync's admin API, as rulekeeper uses it: validating a candidate against the
//! running service (`/api/admin/v1/validate`) and checking after a restart that the new
//! rules are live and clean (`/api/admin/v1/diagnostics`). Shapes from docs/contract.md
//! "PowerSync facts rulekeeper relies on"; the API token comes from a file and is never logged.

use serde_json::Value;

use crate::config::PowerSyncApi;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Could not talk to the service at all (down, booting, refused).
    #[error("{0}")]
    Unreachable(String),
    /// The request may have reached the service, but no answer came back (timeout, reset).
    #[error("{0}")]
    Lost(String),
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
    crate::model::reason::bounded(&lines, max)
}

/// Where PowerSync's API is and how to authenticate: from `validate.powersync_api`,
/// `verify.powersync_api` or `restart.powersync_deploy`.
pub struct Endpoint<'a> {
    pub url: &'a str,
    pub token_file: &'a std::path::Path,
    pub timeout: std::time::Duration,
}

impl<'a> From<&'a PowerSyncApi> for Endpoint<'a> {
    fn from(api: &'a PowerSyncApi) -> Self {
        Endpoint {
            url: &api.url,
            token_file: &api.token_file,
            timeout: api.timeout,
        }
    }
}

impl<'a> Endpoint<'a> {
    /// The deploy restarter's API, each request limited to `timeout`.
    pub fn deploy(api: &'a crate::config::PowerSyncDeploy, timeout: std::time::Duration) -> Self {
        Endpoint {
            url: &api.url,
            token_file: &api.token_file,
            timeout,
        }
    }
}

/// An HTTP answer that was not 2xx: its status and the body's PowerSync error, if it has one.
struct Refusal {
    status: reqwest::StatusCode,
    code: Option<String>,
    details: Option<String>,
    snippet: String,
}

enum Sent {
    Ok(Value),
    Refused(Refusal),
}

async fn send(
    ep: &Endpoint<'_>,
    endpoint: &str,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Result<Sent, ApiError> {
    let token = crate::util::secret::read(ep.token_file)
        .map_err(|e| ApiError::Protocol(format!("PowerSync API token: {e}")))?;
    let url = format!("{}{endpoint}", ep.url.trim_end_matches('/'));
    let shown = crate::util::redact::url(&url);
    // The deploy path asks diagnostics every `verify.interval`: one client for every call.
    let client =
        crate::util::http::shared(crate::util::http::Use::PowerSync).map_err(ApiError::Protocol)?;
    let resp = build(
        client
            .post(&url)
            .timeout(ep.timeout)
            .bearer_auth(token.expose()),
    )
    .send()
    .await
    .map_err(|e| {
        let connect = e.is_connect();
        let what = format!("POST {shown}: {}", e.without_url());
        if connect {
            ApiError::Unreachable(what)
        } else {
            ApiError::Lost(what)
        }
    })?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ApiError::Lost(format!("POST {shown}: {}", e.without_url())))?;
    if !status.is_success() {
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let field = |k: &str| {
            body.as_ref()
                .and_then(|b| b.pointer(&format!("/error/{k}")))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        return Ok(Sent::Refused(Refusal {
            status,
            code: field("code"),
            details: field("details").or_else(|| field("description")),
            snippet: format!(
                "POST {shown} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
        }));
    }
    serde_json::from_slice(&bytes)
        .map(Sent::Ok)
        .map_err(|e| ApiError::Protocol(format!("POST {shown}: answer is not JSON: {e}")))
}

async fn post(api: &PowerSyncApi, endpoint: &str, body: Value) -> Result<Value, ApiError> {
    post_json(&Endpoint::from(api), endpoint, body).await
}

async fn post_json(ep: &Endpoint<'_>, endpoint: &str, body: Value) -> Result<Value, ApiError> {
    match send(ep, endpoint, |r| r.json(&body)).await? {
        Sent::Ok(v) => Ok(v),
        Sent::Refused(r) => Err(ApiError::Protocol(r.snippet)),
    }
}

/// Why a deploy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// 422 `PSYNC_R0001`: PowerSync could not parse the rules; nothing changed.
    #[error("PowerSync refused the rules: {0}")]
    Rejected(String),
    /// 422 `PSYNC_S4105`: PowerSync's config has a `sync_config:` (or `sync_rules:`) block.
    #[error(
        "PowerSync's sync config API is disabled (422 PSYNC_S4105): remove the `sync_config:` \
         (or `sync_rules:`) block from PowerSync's config so that rulekeeper can deploy, or use \
         another restart kind"
    )]
    Disabled,
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// `POST /api/sync-rules/v1/deploy` with the rules as `application/yaml`.
pub async fn deploy(ep: &Endpoint<'_>, yaml: &[u8]) -> Result<(), DeployError> {
    let body = yaml.to_vec();
    let sent = send(ep, "/api/sync-rules/v1/deploy", |r| {
        r.header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(body)
    })
    .await?;
    match sent {
        Sent::Ok(_) => Ok(()),
        Sent::Refused(r) if r.status.as_u16() == 422 => match r.code.as_deref() {
            Some("PSYNC_S4105") => Err(DeployError::Disabled),
            _ => Err(DeployError::Rejected(r.details.unwrap_or(r.snippet))),
        },
        Sent::Refused(r) => Err(DeployError::Api(ApiError::Protocol(r.snippet))),
    }
}

/// One version of the rules in PowerSync's bucket storage, as diagnostics report it.
#[derive(Debug, Clone, Default)]
pub struct Version {
    pub content: Option<String>,
    pub errors: Vec<Problem>,
}

impl Version {
    pub fn is(&self, content: &[u8]) -> bool {
        self.content.as_deref().is_some_and(|c| {
            c.as_bytes() == content || c.trim() == String::from_utf8_lossy(content).trim()
        })
    }

    pub fn fatal(&self) -> Vec<&Problem> {
        self.errors.iter().filter(|p| p.fatal).collect()
    }
}

/// What PowerSync runs now and what it is deploying.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub active: Option<Version>,
    pub deploying: Option<Version>,
}

/// Where deployed content stands in PowerSync's diagnostics.
#[derive(Debug)]
pub enum Deployed {
    /// Active, and nothing else deploying.
    Active,
    Deploying,
    /// The version holding it reports fatal errors.
    Fatal(Vec<Problem>),
    /// Not what PowerSync runs or deploys (never deployed, replaced, PowerSync's storage
    /// reset), or active while another version deploys (about to be replaced).
    Absent,
}

impl Diagnostics {
    /// Where `content` stands: the one answer to "does PowerSync run or deploy this?" that
    /// the deploy, its verification and the follow-up cycles share.
    pub fn holding(&self, content: &[u8]) -> Deployed {
        let (v, active) = match (&self.deploying, &self.active) {
            (Some(v), _) if v.is(content) => (v, false),
            (None, Some(v)) if v.is(content) => (v, true),
            _ => return Deployed::Absent,
        };
        let fatal: Vec<Problem> = v.fatal().into_iter().cloned().collect();
        if !fatal.is_empty() {
            Deployed::Fatal(fatal)
        } else if active {
            Deployed::Active
        } else {
            Deployed::Deploying
        }
    }
}

/// `POST /api/admin/v1/diagnostics {"sync_rules_content": true}`.
pub async fn diagnostics(ep: &Endpoint<'_>) -> Result<Diagnostics, ApiError> {
    // Without `sync_rules_content` PowerSync leaves the rules text out of the answer.
    let v = post_json(
        ep,
        "/api/admin/v1/diagnostics",
        serde_json::json!({ "sync_rules_content": true }),
    )
    .await?;
    let data = v.get("data").unwrap_or(&v);
    let version = |key: &str| -> Option<Version> {
        let r = data.get(key).filter(|r| !r.is_null())?;
        Some(Version {
            content: r.get("content").and_then(Value::as_str).map(str::to_string),
            errors: problems(r.get("errors")),
        })
    };
    Ok(Diagnostics {
        active: version("active_sync_rules"),
        deploying: version("deploying_sync_rules"),
    })
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
    let d = diagnostics(&Endpoint::from(api)).await?;
    let mut seen_expected = false;
    let mut errs = Vec::new();
    for (key, v) in [
        ("deploying_sync_rules", &d.deploying),
        ("active_sync_rules", &d.active),
    ] {
        let Some(v) = v.as_ref().filter(|v| v.is(expected.as_bytes())) else {
            continue;
        };
        seen_expected = true;
        for p in v.fatal() {
            errs.push(format!("{key}: {}", p.message));
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
