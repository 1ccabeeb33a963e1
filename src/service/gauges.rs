//! The service's own "did the reload work" signal: two gauges in its Prometheus metrics, such
//! as Prometheus' `prometheus_config_last_reload_successful` and
//! `prometheus_config_last_reload_success_timestamp_seconds` (Alertmanager and vmalert have the
//! same pair). Services that fail to reload keep running the old config, so without this the
//! disk says one thing and the service does another.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::ReloadMetrics;

/// The two gauges as last read (None: not in the exposition).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    pub success: Option<f64>,
    pub timestamp: Option<f64>,
    pub count: Option<f64>,
}

/// Reads the gauges once.
pub async fn read(m: &ReloadMetrics, timeout: Duration) -> Result<Gauges, String> {
    let client = crate::util::http::shared(crate::util::http::Use::Reload)?;
    let shown = crate::util::redact::url(&m.url);
    let resp = client
        .get(&m.url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("GET {shown}: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("GET {shown} answered {}", resp.status()));
    }
    let text = resp
        .text()
        .await
        .map_err(|e| format!("GET {shown}: {}", e.without_url()))?;
    Ok(Gauges {
        success: sample(&text, &m.success),
        timestamp: m.timestamp.as_deref().and_then(|t| sample(&text, t)),
        count: m.count.as_deref().and_then(|c| sample(&text, c)),
    })
}

/// The value of the first sample of `name` (with or without labels) in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = match rest.chars().next()? {
            ' ' => rest,
            '{' => rest.split_once('}')?.1,
            _ => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Whether a timestamp or a count said this reload was handled (a failed reload does not
/// move a success timestamp, so for a 0 only an explicit sign counts).
fn moved_by_count_or_stamp(stamped: Option<bool>, counted: Option<bool>) -> bool {
    stamped == Some(true) || counted == Some(true)
}

/// What a reload's gauges said.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reloaded,
    Failed(String),
}

/// Waits, within `timeout`, for the gauges to answer for the reload sent at `since`. The
/// service has handled this reload when its timestamp is not older than the reload or its
/// count of attempts moved (with neither configured, any reading counts). Then:
/// - success 1 and handled: it worked;
/// - success 0 and handled, or a 0 that was 1 before: it failed;
/// - a 0 that was already 0 before still describes the previous reload (reloads are
///   asynchronous, even behind an HTTP 200): not yet an answer;
/// - nothing settled by `timeout`: failed, the reload was never reported.
pub async fn wait(
    m: &ReloadMetrics,
    before: Option<Gauges>,
    since: SystemTime,
    timeout: Duration,
    interval: Duration,
) -> Verdict {
    let deadline = Instant::now() + timeout;
    // Gauges carry whole or fractional seconds; a reload in the same second counts.
    let since_secs = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0);
    let mut last;
    let interval = interval.clamp(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match read(m, interval.max(Duration::from_secs(1))).await {
            Ok(g) => {
                // Handled this reload: its timestamp is not older than the reload, or its count
                // of attempts moved (vmalert stamps only some reloads, and counts them all).
                let stamped = match (&m.timestamp, g.timestamp) {
                    (None, _) => None,
                    (Some(_), Some(ts)) => Some(ts >= since_secs),
                    (Some(_), None) => Some(false),
                };
                let counted = match (&m.count, g.count) {
                    (None, _) => None,
                    (Some(_), Some(n)) => Some(before.and_then(|b| b.count).is_none_or(|b| n > b)),
                    (Some(_), None) => Some(false),
                };
                let moved = match (stamped, counted) {
                    (None, None) => true,
                    (a, b) => a == Some(true) || b == Some(true),
                };
                let was = before.and_then(|b| b.success);
                match g.success {
                    Some(s) if s == 1.0 && moved => return Verdict::Reloaded,
                    Some(s)
                        if s == 0.0
                            && (moved_by_count_or_stamp(stamped, counted) || was == Some(1.0)) =>
                    {
                        return Verdict::Failed(format!(
                            "the service did not take the new file: {} is 0 after the reload",
                            m.success
                        ))
                    }
                    _ => {}
                }
                let shown = |v: Option<f64>| v.map_or("absent".to_string(), |v| v.to_string());
                last = format!("{} = {}", m.success, shown(g.success));
                if let Some(t) = &m.timestamp {
                    last.push_str(&format!(", {t} = {}", shown(g.timestamp)));
                }
                if let Some(c) = &m.count {
                    last.push_str(&format!(", {c} = {}", shown(g.count)));
                }
            }
            Err(e) => last = e,
        }
        if Instant::now() + interval >= deadline {
            return Verdict::Failed(format!(
                "the reload was not seen within {}: the service never reported it ({last})",
                humantime::format_duration(timeout)
            ));
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        let text = "# HELP x\nfoo_total 3\nfoo 1\nbar{instance=\"a\"} 0\nbar_ts 1.7e9\n";
        assert_eq!(sample(text, "foo"), Some(1.0));
        assert_eq!(sample(text, "bar"), Some(0.0));
        assert_eq!(sample(text, "bar_ts"), Some(1.7e9));
        assert_eq!(sample(text, "baz"), None);
    }
}
