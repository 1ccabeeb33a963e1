//! Deciding whether the service is healthy on the rules just installed. One good answer
//! proves nothing (PowerSync can answer its probes and then exit 1 on bad rules), so
//! health is `successes` consecutive good answers `interval` apart within `timeout`, and
//! with systemd the unit must still be active on the same invocation at the end.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Verify, VerifyKind};
use crate::exec;
use crate::powersync;
use crate::restart::{self, Restarted};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not healthy within {}: {last}", humantime::format_duration(*.timeout))]
    Timeout { timeout: Duration, last: String },
    #[error("unit {unit} did not stay up: {detail}")]
    UnitChanged { unit: String, detail: String },
    #[error("cannot ask systemd about {unit}: {detail}")]
    Systemd { unit: String, detail: String },
    #[error("PowerSync diagnostics: {0}")]
    PowerSync(String),
}

/// Verifies according to `cfg`. `content` is the installed file (for PowerSync's check).
pub async fn verify(
    cfg: &Verify,
    restarted: &Restarted,
    content: &[u8],
) -> Result<(), VerifyError> {
    match cfg.kind() {
        VerifyKind::None => {}
        VerifyKind::Http(url) => window(cfg, || probe_http(url.clone(), cfg.interval)).await?,
        VerifyKind::Command(argv) => {
            window(cfg, || probe_command(argv.clone(), cfg.timeout)).await?
        }
    }
    if let Restarted::Systemd { unit, invocation } = restarted {
        let st = restart::unit_state(unit, Duration::from_secs(30))
            .await
            .map_err(|e| VerifyError::Systemd {
                unit: unit.clone(),
                detail: e.to_string(),
            })?;
        if st.active_state != "active" {
            return Err(VerifyError::UnitChanged {
                unit: unit.clone(),
                detail: format!("ActiveState={}", st.active_state),
            });
        }
        if &st.invocation != invocation {
            return Err(VerifyError::UnitChanged {
                unit: unit.clone(),
                detail: format!(
                    "it was restarted during the window (InvocationID {} -> {})",
                    short(invocation),
                    short(&st.invocation)
                ),
            });
        }
    }
    if let Some(api) = &cfg.powersync_api {
        let text = String::from_utf8_lossy(content);
        powersync::check_live(api, &text)
            .await
            .map_err(|e| VerifyError::PowerSync(e.to_string()))?;
    }
    Ok(())
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// Polls `probe` every `interval` until `successes` in a row, or fails at `timeout`.
async fn window<F, Fut>(cfg: &Verify, mut probe: F) -> Result<(), VerifyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + cfg.timeout;
    let mut streak = 0u32;
    let mut last = "no answer yet".to_string();
    loop {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(())) => {
                streak += 1;
                if streak >= cfg.successes {
                    return Ok(());
                }
            }
            Ok(Err(e)) => {
                if streak > 0 {
                    tracing::info!(after = streak, error = %e, "health probe failed after good answers");
                }
                streak = 0;
                last = e;
            }
            Err(_) => {}
        }
        let next = started + cfg.interval;
        if next >= deadline {
            return Err(VerifyError::Timeout {
                timeout: cfg.timeout,
                last: if streak > 0 {
                    format!("only {streak} of {} good answers in a row", cfg.successes)
                } else {
                    last
                },
            });
        }
        tokio::time::sleep_until(next).await;
    }
}

async fn probe_http(url: String, interval: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(interval.max(Duration::from_secs(1)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) => Err(format!(
            "{url}: {}",
            if e.is_connect() {
                "connection refused".to_string()
            } else {
                e.to_string()
            }
        )),
    }
}

async fn probe_command(argv: Vec<String>, timeout: Duration) -> Result<(), String> {
    let out = exec::run(&argv, timeout, None, &[])
        .await
        .map_err(|e| e.to_string())?;
    if out.success {
        Ok(())
    } else {
        Err(format!(
            "{} ({}): {}",
            argv.join(" "),
            out.status_text(),
            out.summary()
        ))
    }
}
