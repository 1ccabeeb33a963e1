//! Deciding whether the service is healthy on the rules just installed. One good answer
//! proves nothing (PowerSync can answer its probes and then exit 1 on bad rules), so
//! health is `successes` consecutive good answers `interval` apart within `timeout`, and
//! with systemd the unit must stay active on the same invocation throughout: it is checked
//! beside every probe, so a unit that dies or is restarted fails verification at once.
//! Without systemd (`restart.command`, Docker and Compose hosts), an HTTP probe that got a
//! good answer and then finds nothing listening means the same: the window fails at that
//! probe, not at the timeout.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{PowerSyncDeploy, Verify, VerifyKind};
use crate::service::activate::{self, Restarted};
use crate::service::gauges::{self, Gauges};
use crate::service::powersync::{self, Deployed};
use crate::util::digest::short;
use crate::util::exec;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not healthy within {}: {last}", humantime::format_duration(*.timeout))]
    Timeout { timeout: Duration, last: String },
    #[error("unit {unit} did not stay up: {detail}")]
    UnitChanged { unit: String, detail: String },
    #[error("cannot ask systemd about {unit}: {detail}")]
    Systemd { unit: String, detail: String },
    #[error("the service died: it answered {good} good probe(s), then {detail}")]
    Died { good: u32, detail: String },
    #[error("PowerSync diagnostics: {0}")]
    PowerSync(String),
    /// The service's own gauges say the reload did not take.
    #[error("{0}")]
    Reload(String),
}

/// How verification passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healthy {
    Yes,
    /// Deployed through PowerSync's API, clean, but its initial replication was not done
    /// by `verify.timeout`: the daemon follows it to active (docs/powersync.md).
    Deploying,
}

/// What a reload is judged against: the service's gauges just before it was sent, and when.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    pub gauges: Option<Gauges>,
    pub at: SystemTime,
}

/// Reads `verify.metrics` (if configured) just before a reload or restart.
pub async fn before(cfg: &Verify) -> Before {
    let gauges = match &cfg.metrics {
        Some(m) => gauges::read(m, Duration::from_secs(5)).await.ok(),
        None => None,
    };
    // Some services stamp their last reload in whole seconds: a reload in the same second as
    // the one before could not be told from it, so it waits for the next second.
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let now = secs(SystemTime::now());
    if let Some(ts) = gauges.and_then(|g| g.timestamp) {
        if ts as u64 >= now.as_secs() {
            let next = Duration::from_secs(now.as_secs() + 1).saturating_sub(now);
            tokio::time::sleep(next).await;
        }
    }
    Before {
        gauges,
        at: SystemTime::now(),
    }
}

/// Verifies according to `cfg`. `content` is the installed file (for PowerSync's check).
pub async fn verify(
    cfg: &Verify,
    restarted: &Restarted,
    content: &[u8],
    before: &Before,
) -> Result<Healthy, VerifyError> {
    let watch = match restarted {
        Restarted::Systemd { unit, invocation } => Some(UnitWatch {
            unit,
            invocation,
            reload: false,
        }),
        Restarted::Reloaded { unit, invocation } => Some(UnitWatch {
            unit,
            invocation,
            reload: true,
        }),
        _ => None,
    };
    if let Some(m) = &cfg.metrics {
        match gauges::wait(m, before.gauges, before.at, cfg.timeout, cfg.interval).await {
            gauges::Verdict::Reloaded => {}
            gauges::Verdict::Failed(why) => return Err(VerifyError::Reload(why)),
        }
    }
    let mut healthy = Healthy::Yes;
    if let Restarted::Deployed { api, timeout } = restarted {
        healthy = taken_up(cfg, api, *timeout, content).await?;
    }
    match cfg.kind() {
        VerifyKind::None => {}
        VerifyKind::Http(url) => {
            window(cfg, watch.as_ref(), Some(RETRY), || {
                probe_http(url.clone(), cfg.interval)
            })
            .await?
        }
        VerifyKind::Command(argv) => {
            // `{since}`: when the restart or reload was sent (Unix seconds), for a check that
            // reads what the service logged since.
            let since = before
                .at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .to_string();
            let argv: Vec<String> = argv.iter().map(|a| a.replace("{since}", &since)).collect();
            window(cfg, watch.as_ref(), None, || {
                probe_command(argv.clone(), cfg.timeout)
            })
            .await?
        }
    }
    if let Some(w) = &watch {
        w.check().await?;
    }
    if let Some(api) = &cfg.powersync_api {
        let text = String::from_utf8_lossy(content);
        powersync::check_live(api, &text)
            .await
            .map_err(|e| VerifyError::PowerSync(e.to_string()))?;
    }
    Ok(healthy)
}

/// After a deploy: polls PowerSync's diagnostics every `interval` until the deployed content
/// is active, failing at once when the version that holds it reports a fatal error. Still
/// deploying cleanly at `timeout` passes as [`Healthy::Deploying`]: initial replication of a
/// large database takes hours, and redeploying during it only delays it (powersync-service
/// #421), so slowness is never a reason to roll back.
async fn taken_up(
    cfg: &Verify,
    api: &PowerSyncDeploy,
    request_timeout: Duration,
    content: &[u8],
) -> Result<Healthy, VerifyError> {
    let ep = powersync::Endpoint::deploy(api, request_timeout.min(cfg.timeout));
    let deadline = Instant::now() + cfg.timeout;
    let mut last = "no answer yet".to_string();
    let mut deploying = false;
    loop {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, powersync::diagnostics(&ep)).await {
            Ok(Ok(d)) => match d.holding(content) {
                Deployed::Fatal(errors) => {
                    let text = String::from_utf8_lossy(content);
                    return Err(VerifyError::PowerSync(powersync::summarize(
                        &errors.iter().collect::<Vec<_>>(),
                        "the deployed rules",
                        &text,
                        crate::model::reason::REASON_LINES,
                    )));
                }
                Deployed::Active => return Ok(Healthy::Yes),
                Deployed::Deploying => {
                    deploying = true;
                    last = "still deploying (initial replication)".into();
                }
                Deployed::Absent => {
                    deploying = false;
                    last = "PowerSync shows neither an active nor a deploying version with the deployed content".into();
                }
            },
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        let next = started + cfg.interval;
        if next >= deadline {
            if deploying {
                return Ok(Healthy::Deploying);
            }
            return Err(VerifyError::Timeout {
                timeout: cfg.timeout,
                last,
            });
        }
        tokio::time::sleep_until(next).await;
    }
}

/// The systemd unit a restart started: it must stay up, on the same invocation, for the
/// whole window. Checked beside every probe, so a crash fails verification at once instead
/// of at the timeout.
struct UnitWatch<'a> {
    unit: &'a str,
    invocation: &'a str,
    /// The unit was reloaded, not restarted: its invocation is the one from before.
    reload: bool,
}

impl UnitWatch<'_> {
    async fn check(&self) -> Result<(), VerifyError> {
        let st = activate::unit_state(self.unit, Duration::from_secs(30))
            .await
            .map_err(|e| VerifyError::Systemd {
                unit: self.unit.to_string(),
                detail: e.to_string(),
            })?;
        if st.invocation != self.invocation {
            return Err(VerifyError::UnitChanged {
                unit: self.unit.to_string(),
                detail: format!(
                    "{} (InvocationID {} -> {})",
                    if self.reload {
                        "the reload became a restart"
                    } else {
                        "it was restarted during the window"
                    },
                    short(self.invocation),
                    short(&st.invocation)
                ),
            });
        }
        if !st.is_up() {
            return Err(VerifyError::UnitChanged {
                unit: self.unit.to_string(),
                detail: format!("ActiveState={} SubState={}", st.active_state, st.sub_state),
            });
        }
        Ok(())
    }
}

/// How soon an HTTP probe that failed is repeated (when `interval` is longer). PowerSync on
/// rules it cannot run answers its probes for about one second and then exits: probed only
/// every `interval`, that second can fall between two probes, and the death would only be
/// seen at `timeout`. Good answers stay `interval` apart, so the window means what it says.
const RETRY: Duration = Duration::from_millis(250);

/// Polls `probe` every `interval` (after a failure every `retry`, if shorter) until
/// `successes` in a row, or fails at `timeout`; fails at once when the watched unit goes down
/// or is restarted, or when a probe finds nothing listening after a good answer.
async fn window<F, Fut>(
    cfg: &Verify,
    watch: Option<&UnitWatch<'_>>,
    retry: Option<Duration>,
    mut probe: F,
) -> Result<(), VerifyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Probe>>,
{
    let deadline = Instant::now() + cfg.timeout;
    let mut streak = 0u32;
    // Good answers since the restart: a service that was listening and then refuses
    // connections has exited (PowerSync answers its probes, then exits 1 on bad rules).
    // Waiting for the timeout would only lengthen the outage before the rollback.
    let mut good = 0u32;
    let mut last = "no answer yet".to_string();
    loop {
        let started = Instant::now();
        let answer = tokio::time::timeout_at(deadline, probe()).await;
        if let Some(w) = watch {
            if let Ok(r) = tokio::time::timeout_at(deadline, w.check()).await {
                r?;
            }
        }
        match answer {
            Ok(Ok(())) => {
                good += 1;
                streak += 1;
                if streak >= cfg.successes {
                    return Ok(());
                }
            }
            Ok(Err(Probe::Refused(detail))) if good > 0 => {
                return Err(VerifyError::Died { good, detail });
            }
            Ok(Err(Probe::Refused(e) | Probe::Failed(e))) => {
                if streak > 0 {
                    tracing::info!(after = streak, error = %e, "health probe failed after good answers");
                }
                streak = 0;
                last = e;
            }
            Err(_) => {}
        }
        let wait = match retry {
            Some(r) if streak == 0 => r.min(cfg.interval),
            _ => cfg.interval,
        };
        let next = started + wait;
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

/// Why one probe failed. `Refused` means nothing listens any more: after good answers, the
/// service died.
#[derive(Debug)]
enum Probe {
    Refused(String),
    Failed(String),
}

async fn probe_http(url: String, interval: Duration) -> Result<(), Probe> {
    let client = crate::util::http::shared(crate::util::http::Use::Probe).map_err(Probe::Failed)?;
    let shown = crate::util::redact::url(&url);
    let answer = client
        .get(&url)
        .timeout(interval.max(Duration::from_secs(1)))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(Probe::Failed(format!("{shown} answered {}", r.status()))),
        Err(e) if e.is_connect() => Err(Probe::Refused(format!("{shown}: connection refused"))),
        Err(e) => Err(Probe::Failed(format!(
            "{shown}: {}",
            crate::util::redact::in_text(&e.without_url().to_string(), &url)
        ))),
    }
}

// A command's failure says nothing about whether the service still listens, so it never
// ends the window early.
async fn probe_command(argv: Vec<String>, timeout: Duration) -> Result<(), Probe> {
    let out = exec::run(&argv, timeout, None, &[])
        .await
        .map_err(|e| Probe::Failed(e.to_string()))?;
    if out.success {
        Ok(())
    } else {
        Err(Probe::Failed(format!(
            "{} ({}): {}",
            argv.join(" "),
            out.status_text(),
            out.summary()
        )))
    }
}
