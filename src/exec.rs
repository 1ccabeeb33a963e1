//! Running external programs (validators, restart and verify commands, git, systemctl):
//! argv only (never a shell), no stdin, output captured and bounded, a hard time limit, and
//! the child killed if it overruns or if the caller goes away.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How much of each stream is kept (the tail matters most for error messages).
const KEEP: usize = 16 * 1024;

#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// A short human summary of what the program said (stderr, else stdout), for errors.
    pub fn summary(&self) -> String {
        let s = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        let text = String::from_utf8_lossy(s);
        let text = text.trim();
        const MAX: usize = 2000;
        if text.len() > MAX {
            let mut cut = text.len() - MAX;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            format!("...{}", &text[cut..])
        } else {
            text.to_string()
        }
    }

    pub fn status_text(&self) -> String {
        match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` did not finish within {}", humantime::format_duration(*.timeout))]
    Timeout { program: String, timeout: Duration },
}

/// Runs `argv` with a time limit. `envs` are added to the inherited environment.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    cwd: Option<&Path>,
    envs: &[(&str, &str)],
) -> Result<Output, ExecError> {
    run_keep(argv, timeout, cwd, envs, None).await
}

/// As [`run`], but keeps the first `max` bytes of stdout whole (for reading data, not logs).
pub async fn run_keep(
    argv: &[String],
    timeout: Duration,
    cwd: Option<&Path>,
    envs: &[(&str, &str)],
    stdout_max: Option<usize>,
) -> Result<Output, ExecError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1.min(argv.len())..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    // Our sd_notify socket and watchdog are ours alone, not the children's.
    for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // Own process group, so a timeout can kill what the program started too.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let work = async {
        let (o, e, status) = tokio::join!(
            async {
                match stdout_max {
                    Some(max) => read_head(out.as_mut(), max).await,
                    None => read_tail(out.as_mut()).await,
                }
            },
            read_tail(err.as_mut()),
            child.wait()
        );
        (o, e, status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((stdout, stderr, status)) => {
            let status = status.map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
            Ok(Output {
                success: status.success(),
                code: status.code(),
                stdout,
                stderr,
            })
        }
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: plain syscall on a process group we created.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            Err(ExecError::Timeout { program, timeout })
        }
    }
}

async fn read_tail<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>) -> Vec<u8> {
    let Some(r) = r else { return Vec::new() };
    let mut keep = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > 2 * KEEP {
                    keep.drain(..keep.len() - KEEP);
                }
            }
        }
    }
    if keep.len() > KEEP {
        keep.drain(..keep.len() - KEEP);
    }
    keep
}

async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>, max: usize) -> Vec<u8> {
    let Some(r) = r else { return Vec::new() };
    let mut keep = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            // Keep draining past `max` so the child is not blocked on a full pipe.
            Ok(n) if keep.len() < max => keep.extend_from_slice(&buf[..n.min(max - keep.len())]),
            Ok(_) => {}
        }
    }
    keep
}
