//! Reloads: the service takes the new file without a restart, so its clients keep their
//! connections. `systemctl reload UNIT`; a signal to a unit's main process or to the process
//! a pid file names; or a reload endpoint (`POST /-/reload`). A reload that cannot be sent
//! (a stale pid file, a non-2xx answer) is a failed reload; whether a reload that was sent
//! worked is `verify`'s question (`verify.metrics`, the unit's invocation).

use std::path::Path;
use std::time::Duration;

use crate::config::{HttpReload, SignalReload};
use crate::service::activate::{systemctl_checked, unit_state, RestartError, Restarted};

/// How much of a failed reload endpoint's answer goes into the reason.
const BODY_CHARS: usize = 300;

/// `systemctl reload UNIT`, when the unit runs. The invocation before the reload is what
/// verification holds the unit to: a reload that became a restart is no reload.
pub async fn systemd(unit: &str, timeout: Duration) -> Result<Restarted, RestartError> {
    let st = unit_state(unit, timeout).await?;
    if !st.is_up() {
        // New content never starts a unit that is not running.
        return Ok(Restarted::NotActive {
            unit: unit.to_string(),
        });
    }
    systemctl_checked(&["reload", "--", unit], timeout).await?;
    Ok(Restarted::Reloaded {
        unit: unit.to_string(),
        invocation: st.invocation,
    })
}

/// A signal to a unit's main process, or to the process `pid_file` names.
pub async fn signal(s: &SignalReload, timeout: Duration) -> Result<Restarted, RestartError> {
    if let Some(unit) = &s.unit {
        let st = unit_state(unit, timeout).await?;
        if !st.is_up() {
            return Ok(Restarted::NotActive { unit: unit.clone() });
        }
        let sig = format!("--signal={}", s.number);
        systemctl_checked(&["kill", "--kill-whom=main", &sig, "--", unit], timeout).await?;
        return Ok(Restarted::Reloaded {
            unit: unit.clone(),
            invocation: st.invocation,
        });
    }
    let Some(file) = &s.pid_file else {
        return Err(RestartError::NotSent(
            "restart.signal names no unit and no pid_file".into(),
        ));
    };
    let pid = running_pid(file)?;
    // SAFETY: kill(2) with a pid read and checked just above, and a signal number from the
    // config's short list; it touches no memory of ours.
    let rc = unsafe { libc::kill(pid, s.number) };
    if rc != 0 {
        return Err(RestartError::Reload(format!(
            "cannot signal pid {pid} from {}: {}",
            file.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(Restarted::Signalled { pid })
}

/// The pid a pid file names, if that process runs. A missing, unreadable, malformed or stale
/// file is an error that names it, and nothing is signalled: a stale pid may have been given
/// to another process since.
pub fn running_pid(file: &Path) -> Result<i32, RestartError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        RestartError::NotSent(format!(
            "pid file {}: {e}; nothing was signalled",
            file.display()
        ))
    })?;
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1).ok_or_else(|| {
        RestartError::NotSent(format!(
            "pid file {} does not hold a pid ({:?}); nothing was signalled",
            file.display(),
            crate::model::reason::cut(text.trim(), 40)
        ))
    })?;
    let stale = |why: &str| {
        RestartError::NotSent(format!(
            "pid file {} names pid {pid}, {why} (a stale pid file); nothing was signalled",
            file.display()
        ))
    };
    let Some(started) = process_start(pid) else {
        return Err(stale("which is not running"));
    };
    // A pid is reused once its process is gone: a process that started after the pid file was
    // written is not the one that wrote it.
    let written = std::fs::metadata(file).and_then(|m| m.modified()).ok();
    if written.is_some_and(|w| started > w + Duration::from_secs(1)) {
        return Err(stale("a process started after the file was written"));
    }
    Ok(pid)
}

/// When process `pid` started; None when there is no such process (a zombie, a thread of
/// another process, or nothing at all).
fn process_start(pid: i32) -> Option<std::time::SystemTime> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tgid: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    if tgid != pid || rest.starts_with('Z') {
        return None;
    }
    // Field 22 of stat is the start time in clock ticks since boot; `rest` starts at field 3.
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(btime)
            + Duration::from_millis(ticks * 1000 / hz),
    )
}

/// A reload endpoint: a non-2xx answer is a failed reload, its body (bounded, credentials
/// redacted) in the reason.
pub async fn http(h: &HttpReload, timeout: Duration) -> Result<Restarted, RestartError> {
    let client =
        crate::util::http::shared(crate::util::http::Use::Reload).map_err(RestartError::Reload)?;
    let shown = crate::util::redact::url(&h.url);
    let method = reqwest::Method::from_bytes(h.method.as_bytes())
        .map_err(|e| RestartError::Reload(format!("restart.http.method: {e}")))?;
    let resp = client
        .request(method, &h.url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| RestartError::Reload(format!("{} {shown}: {}", h.method, e.without_url())))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(Restarted::HttpReloaded);
    }
    let body = resp.text().await.unwrap_or_default();
    let body = crate::util::redact::in_text(body.trim(), &h.url);
    Err(RestartError::Reload(format!(
        "{} {shown} answered {status}: {}",
        h.method,
        crate::model::reason::cut(
            &body.split_whitespace().collect::<Vec<_>>().join(" "),
            BODY_CHARS
        )
    )))
}
