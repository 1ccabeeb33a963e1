//! Staged rollout across hosts with the metrics store as the only coordinator (docs/fleet.md):
//! before new upstream content is swapped in, a Prometheus-compatible query API
//! (VictoriaMetrics, Prometheus: `GET /api/v1/query`) is asked whether it may be. Open means
//! the query returned a non-empty vector or a scalar > 0; anything else, an error or no answer
//! included, keeps the content waiting (fail closed).

use std::time::Duration;

use crate::config::Gate;

/// The gate's verdict on one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Open,
    /// Why not: "query returned nothing", "query API unreachable: ...", ...
    Closed(String),
}

/// `query` with `{sha256}` and `{revision}` replaced, each escaped for a PromQL string
/// literal (the query author writes the quotes around them).
pub fn render(query: &str, sha256: &str, revision: Option<&str>) -> String {
    query
        .replace("{sha256}", &escape(sha256))
        .replace("{revision}", &escape(revision.unwrap_or("")))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Judges a `/api/v1/query` answer body: Ok(true) open, Ok(false) closed (empty), Err(why)
/// for anything that is not a success answer of a vector or scalar.
pub fn judge(body: &[u8]) -> Result<bool, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if v.get("status").and_then(|s| s.as_str()) != Some("success") {
        let err = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no error given");
        return Err(format!("query failed: {err}"));
    }
    let data = v.get("data").ok_or("answer has no data")?;
    match data.get("resultType").and_then(|t| t.as_str()) {
        Some("vector") => data
            .get("result")
            .and_then(|r| r.as_array())
            .map(|r| !r.is_empty())
            .ok_or_else(|| "vector answer without a result list".to_string()),
        Some("scalar") => {
            let value = data
                .get("result")
                .and_then(|r| r.get(1))
                .and_then(|x| x.as_str())
                .and_then(|x| x.parse::<f64>().ok())
                .ok_or("scalar answer without a number")?;
            Ok(value > 0.0)
        }
        Some(other) => Err(format!(
            "query returned a {other}, not an instant vector or scalar"
        )),
        None => Err("answer has no resultType".into()),
    }
}

fn client() -> Result<&'static reqwest::Client, String> {
    crate::util::http::shared(crate::util::http::Use::Gate)
}

/// Asks the gate about the candidate `sha256` (from `revision`).
pub async fn ask(cfg: &Gate, sha256: &str, revision: Option<&str>) -> Answer {
    match ask_inner(cfg, sha256, revision).await {
        Ok(true) => Answer::Open,
        Ok(false) => Answer::Closed("query returned nothing".into()),
        Err(why) => Answer::Closed(why),
    }
}

async fn ask_inner(cfg: &Gate, sha256: &str, revision: Option<&str>) -> Result<bool, String> {
    let query = render(&cfg.query, sha256, revision);
    let base = cfg.url.trim_end_matches('/');
    let shown = crate::util::redact::url(base);
    let mut req = client()?
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query.as_str())])
        .timeout(cfg.timeout.max(Duration::from_millis(100)));
    if let Some(tf) = &cfg.token_file {
        let tok = crate::util::secret::read(tf).map_err(|e| format!("gate token: {e}"))?;
        req = req.bearer_auth(tok.expose());
    }
    let resp = req.send().await.map_err(|e| {
        format!(
            "query API unreachable: {shown}: {}",
            crate::util::redact::in_text(&e.without_url().to_string(), base)
        )
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("query API unreachable: {shown}: {}", e.without_url()))?;
    if !status.is_success() && body.is_empty() {
        return Err(format!("query API answered {status}"));
    }
    judge(&body).map_err(|e| format!("{e} ({shown} answered {status})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let vector = |r: &str| {
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{r}}}}}"#)
        };
        assert_eq!(
            judge(vector(r#"[{"metric":{},"value":[1,"1"]}]"#).as_bytes()),
            Ok(true)
        );
        assert_eq!(judge(vector("[]").as_bytes()), Ok(false));
        let scalar = |x: &str| {
            format!(r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,"{x}"]}}}}"#)
        };
        assert_eq!(judge(scalar("2").as_bytes()), Ok(true));
        assert_eq!(judge(scalar("0").as_bytes()), Ok(false));
        assert_eq!(judge(scalar("-1").as_bytes()), Ok(false));
        assert!(judge(scalar("NaN").as_bytes()).is_ok_and(|o| !o));
        let e = judge(br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#);
        assert!(e.unwrap_err().contains("parse error"));
        assert!(
            judge(br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
                .unwrap_err()
                .contains("matrix")
        );
        assert!(judge(b"<html>proxy error</html>").is_err());
        assert!(judge(br#"{"status":"success"}"#).is_err());
    }

    #[test]
    fn substitution_is_escaped() {
        assert_eq!(
            render(
                r#"x{sha256="{sha256}",revision="{revision}"}"#,
                "ab12",
                Some("a\"b\\c")
            ),
            r#"x{sha256="ab12",revision="a\"b\\c"}"#
        );
        assert_eq!(render("{revision}", "x", None), "");
    }
}
