//! Making the managed service re-read its rules: `systemctl try-restart UNIT` (a no-op when
//! the unit is not running, as at boot), a command, or nothing. For systemd it also records
//! the unit's `InvocationID`, so verification can tell "still the process we started" from
//! "crashed and was restarted by systemd meanwhile".

use std::time::Duration;

use crate::config::{Restart, RestartKind};
use crate::exec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarted {
    /// The unit was active and has been restarted; this is its new invocation.
    Systemd { unit: String, invocation: String },
    /// The unit was not active, so nothing was restarted and there is nothing to verify.
    NotActive { unit: String },
    /// The restart command ran and succeeded.
    Command,
    /// `restart: none`.
    Nothing,
}

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("{0}")]
    Exec(#[from] exec::ExecError),
    #[error("`{argv}` failed ({status}): {output}")]
    Failed {
        argv: String,
        status: String,
        output: String,
    },
}

/// Properties of a unit as `systemctl show` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active_state: String,
    pub invocation: String,
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

/// Whether the unit is active right now.
pub async fn is_active(unit: &str, timeout: Duration) -> Result<bool, RestartError> {
    let out = systemctl(&["is-active", "--", unit], timeout).await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "active")
}

/// `ActiveState` and `InvocationID` of a unit.
pub async fn unit_state(unit: &str, timeout: Duration) -> Result<UnitState, RestartError> {
    let out = systemctl(
        &[
            "show",
            "-p",
            "ActiveState",
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
            st.active_state = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("InvocationID=") {
            st.invocation = v.trim().to_string();
        }
    }
    Ok(st)
}

/// Restarts as configured.
pub async fn restart(cfg: &Restart) -> Result<Restarted, RestartError> {
    match cfg.kind() {
        RestartKind::None => Ok(Restarted::Nothing),
        RestartKind::Command(argv) => {
            let out = exec::run(&argv, cfg.timeout, None, &[]).await?;
            must(out, &argv.join(" "))?;
            Ok(Restarted::Command)
        }
        RestartKind::Systemd(unit) => {
            // try-restart of an inactive unit is a no-op, so skip the call: at boot the
            // managed unit's start job waits (After=) for rulekeeper's own start, and a
            // try-restart job merged into it would block until our restart timeout.
            if !is_active(&unit, cfg.timeout).await? {
                return Ok(Restarted::NotActive { unit });
            }
            let out = systemctl(&["try-restart", "--", &unit], cfg.timeout).await?;
            must(out, &format!("systemctl try-restart {unit}"))?;
            let st = unit_state(&unit, cfg.timeout).await?;
            Ok(Restarted::Systemd {
                unit,
                invocation: st.invocation,
            })
        }
    }
}
