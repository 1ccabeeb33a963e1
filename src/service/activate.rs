//! Making the managed service re-read its rules: `systemctl try-restart UNIT` (a no-op when
//! the unit is not running, as at boot), a command, or nothing. For systemd it also records
//! the unit's `InvocationID`, so verification can tell "still the process we started" from
//! "crashed and was restarted by systemd meanwhile".
//!
//! Two directions, two rules (docs/contract.md "The cycle": Restart, Rollback):
//! - applying new content ([`restart`]) never starts a unit that is not running: the operator
//!   stopped it, or it waits for us at boot;
//! - putting last-good back ([`bring_back`]) must leave a unit that was running before the
//!   apply running again, even when the bad content killed it or a crash loop tripped its
//!   start limit: `reset-failed`, then `systemctl restart`.

use std::time::Duration;

use crate::config::{PowerSyncDeploy, Restart, RestartKind, SignalReload};
use crate::service::powersync::{self, ApiError, DeployError};
use crate::service::reload;
use crate::util::exec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarted {
    /// The unit was active and has been restarted; this is its new invocation.
    Systemd { unit: String, invocation: String },
    /// The unit was not active, so nothing was restarted and there is nothing to verify.
    NotActive { unit: String },
    /// The restart command ran and succeeded.
    Command,
    /// PowerSync took the content through its deploy API (or already ran or deployed it):
    /// verification follows it in diagnostics.
    Deployed {
        api: PowerSyncDeploy,
        timeout: Duration,
    },
    /// PowerSync's API does not answer (not started yet, as at boot): nothing deployed,
    /// nothing to verify; a later cycle deploys the live file once it answers.
    NotAnswering { detail: String },
    /// A reload was sent to this unit (`systemd_reload`, or a signal to its main process);
    /// this was its invocation before, which it must keep: a reload that became a restart
    /// is no reload.
    Reloaded { unit: String, invocation: String },
    /// A signal was sent to the process a pid file names.
    Signalled { pid: i32 },
    /// A reload endpoint answered 2xx.
    HttpReloaded,
    /// `restart: none`.
    Nothing,
}

impl Restarted {
    /// A reload rather than a restart: the same process took the new file.
    pub fn is_reload(&self) -> bool {
        matches!(
            self,
            Restarted::Reloaded { .. } | Restarted::Signalled { .. } | Restarted::HttpReloaded
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("{0}")]
    Exec(#[from] exec::ExecError),
    #[error("{0}")]
    Deploy(#[from] powersync::DeployError),
    #[error("`{argv}` failed ({status}): {output}")]
    Failed {
        argv: String,
        status: String,
        output: String,
    },
    /// A reload that was sent and failed (its endpoint refused it).
    #[error("reload failed: {0}")]
    Reload(String),
    /// A reload that could not be sent (a missing or stale pid file): the service never saw
    /// the new file.
    #[error("reload not sent: {0}")]
    NotSent(String),
}

/// A unit's `ActiveState`, as systemd spells it (an unknown word is kept as it came).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ActiveState {
    Active,
    Reloading,
    #[default]
    Inactive,
    Failed,
    Activating,
    Deactivating,
    Other(String),
}

impl ActiveState {
    fn parse(s: &str) -> ActiveState {
        match s {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            other => ActiveState::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Other(s) => s,
        })
    }
}

/// systemd's `SubState` while it waits to restart a unit that died (`Restart=`).
const AUTO_RESTART: &str = "auto-restart";

/// Properties of a unit as `systemctl show` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active_state: ActiveState,
    /// systemd's open set of sub-states (type-specific): kept as reported, for messages.
    pub sub_state: String,
    pub invocation: String,
}

impl UnitState {
    /// Running as far as verification is concerned (`reloading` keeps the same process).
    pub fn is_up(&self) -> bool {
        matches!(
            self.active_state,
            ActiveState::Active | ActiveState::Reloading
        )
    }

    /// The unit ran and died, or is cycling through systemd's automatic restarts: what a
    /// crash on bad rules looks like, as opposed to `inactive` (stopped, or never started).
    pub fn crashed(&self) -> bool {
        self.active_state == ActiveState::Failed
            || (self.active_state == ActiveState::Activating && self.sub_state == AUTO_RESTART)
    }
}

/// Whether the managed unit was running before an apply, as far as we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasRunning {
    Yes,
    No,
    /// Not recorded (an apply from an older version, or the host rebooted since).
    Unknown,
}

impl From<Option<bool>> for WasRunning {
    fn from(running: Option<bool>) -> Self {
        match running {
            Some(true) => WasRunning::Yes,
            Some(false) => WasRunning::No,
            None => WasRunning::Unknown,
        }
    }
}

async fn systemctl(args: &[&str], timeout: Duration) -> Result<exec::Output, RestartError> {
    let mut argv = vec!["systemctl".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Ok(exec::run(
        &argv,
        timeout,
        None,
        &[("SYSTEMD_PAGER", ""), ("LC_ALL", "C")],
    )
    .await?)
}

/// `systemctl ARGS`, failing unless it exits 0.
pub(crate) async fn systemctl_checked(
    args: &[&str],
    timeout: Duration,
) -> Result<(), RestartError> {
    let out = systemctl(args, timeout).await?;
    must(out, &format!("systemctl {}", args.join(" ")))?;
    Ok(())
}

fn must(out: exec::Output, what: &str) -> Result<exec::Output, RestartError> {
    if out.success {
        Ok(out)
    } else {
        Err(RestartError::Failed {
            argv: what.to_string(),
            status: out.status_text(),
            output: out.summary(),
        })
    }
}

/// `ActiveState`, `SubState` and `InvocationID` of a unit.
pub async fn unit_state(unit: &str, timeout: Duration) -> Result<UnitState, RestartError> {
    let out = systemctl(
        &[
            "show",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "-p",
            "InvocationID",
            "--",
            unit,
        ],
        timeout,
    )
    .await?;
    let out = must(out, &format!("systemctl show {unit}"))?;
    let mut st = UnitState::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(v) = line.strip_prefix("ActiveState=") {
            st.active_state = ActiveState::parse(v.trim());
        } else if let Some(v) = line.strip_prefix("SubState=") {
            st.sub_state = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("InvocationID=") {
            st.invocation = v.trim().to_string();
        }
    }
    Ok(st)
}

/// Whether [`restart`] would restart or start the unit, without doing it (the daemon
/// defers such work at boot: the managed unit is ordered after us, so a job for it now would
/// wait for our own start).
pub async fn would_touch(cfg: &Restart, was: WasRunning) -> Result<bool, RestartError> {
    // A reload job waits behind our start job as a restart job would; a signal is no job.
    let unit = match cfg.kind() {
        RestartKind::Systemd(unit) => unit,
        RestartKind::SystemdReload(unit) => {
            return Ok(unit_state(&unit, cfg.timeout).await?.is_up())
        }
        _ => return Ok(false),
    };
    let st = unit_state(&unit, cfg.timeout).await?;
    Ok(wants_start(&st, was))
}

fn wants_start(st: &UnitState, was: WasRunning) -> bool {
    match was {
        WasRunning::Yes => true,
        WasRunning::No => st.is_up(),
        WasRunning::Unknown => st.is_up() || st.crashed(),
    }
}

/// Restarts as configured. For systemd, `was` says whether the unit ran before the apply
/// this restart belongs to: applying new content passes `No`, so a unit that is not running
/// is left alone (`try-restart`); putting last-good back passes what was recorded, so a unit
/// the bad content killed is started again (`reset-failed`, then `restart`). With `Unknown`,
/// a crashed unit is brought back and an `inactive` one is left alone.
/// `content` is what was just installed (the deploy kind sends it).
pub async fn restart(
    cfg: &Restart,
    was: WasRunning,
    content: &[u8],
) -> Result<Restarted, RestartError> {
    let unit = match cfg.kind() {
        RestartKind::None => return Ok(Restarted::Nothing),
        RestartKind::SystemdReload(unit) => return reload::systemd(&unit, cfg.timeout).await,
        RestartKind::Signal(s) => return reload::signal(&s, cfg.timeout).await,
        RestartKind::Http(h) => return reload::http(&h, cfg.timeout).await,
        RestartKind::PowerSyncDeploy(api) => return deploy(api, cfg.timeout, content).await,
        RestartKind::Command(argv) => {
            let out = exec::run(&argv, cfg.timeout, None, &[]).await?;
            must(out, &argv.join(" "))?;
            return Ok(Restarted::Command);
        }
        RestartKind::Systemd(unit) => unit,
    };
    let st = unit_state(&unit, cfg.timeout).await?;
    if !wants_start(&st, was) {
        // Not running and not ours to start: the operator stopped it, or at boot it waits
        // (After=) for our own start job, which a restart job would then wait behind.
        return Ok(Restarted::NotActive { unit });
    }
    if st.is_up() {
        let out = systemctl(&["try-restart", "--", &unit], cfg.timeout).await?;
        must(out, &format!("systemctl try-restart {unit}"))?;
    } else {
        // A crash loop may have tripped the start limit; `restart` would then be refused.
        if st.crashed() {
            let out = systemctl(&["reset-failed", "--", &unit], cfg.timeout).await?;
            if !out.success {
                tracing::warn!(unit = %unit, output = %out.summary(), "systemctl reset-failed failed; trying restart anyway");
            }
        }
        let out = systemctl(&["restart", "--", &unit], cfg.timeout).await?;
        must(out, &format!("systemctl restart {unit}"))?;
    }
    let st = unit_state(&unit, cfg.timeout).await?;
    Ok(Restarted::Systemd {
        unit,
        invocation: st.invocation,
    })
}

/// Deploys `content` unless PowerSync already runs it with nothing else deploying, or is
/// deploying it now: every deploy is a new version that replicates from scratch, also for
/// content PowerSync has (docs/powersync.md, "When a rollback is expensive"), so a rollback after a
/// refused deploy, or a retry, must not start one for nothing.
async fn deploy(
    api: PowerSyncDeploy,
    timeout: Duration,
    content: &[u8],
) -> Result<Restarted, RestartError> {
    let ep = powersync::Endpoint::deploy(&api, timeout);
    let d = match powersync::diagnostics(&ep).await {
        Ok(d) => d,
        Err(ApiError::Unreachable(detail)) => return Ok(Restarted::NotAnswering { detail }),
        Err(e) => return Err(DeployError::Api(e).into()),
    };
    if !matches!(d.holding(content), powersync::Deployed::Absent) {
        tracing::info!(url = %crate::util::redact::url(&api.url), "PowerSync already has this content; not deployed again");
    } else {
        match powersync::deploy(&ep, content).await {
            Ok(()) => {}
            Err(DeployError::Api(ApiError::Unreachable(detail))) => {
                return Ok(Restarted::NotAnswering { detail })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Restarted::Deployed { api, timeout })
}

/// Whether a systemd unit is running now (`None` for other restart kinds).
pub async fn running_now(cfg: &Restart) -> Result<Option<bool>, RestartError> {
    match cfg.kind() {
        RestartKind::Systemd(unit) | RestartKind::SystemdReload(unit) => {
            Ok(Some(unit_state(&unit, cfg.timeout).await?.is_up()))
        }
        RestartKind::Signal(SignalReload {
            unit: Some(unit), ..
        }) => Ok(Some(unit_state(&unit, cfg.timeout).await?.is_up())),
        _ => Ok(None),
    }
}
