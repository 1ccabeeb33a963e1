//! Running external programs (validators, restart and verify commands, git, systemctl):
//! argv only (never a shell), no stdin, output captured and bounded, a hard time limit, and
//! the child killed if it overruns or if the caller goes away.
//!
//! A run ends when the program exits, not when every copy of its stdout/stderr is closed: a
//! restart command that starts a service in the background (`server &`) hands that service
//! its pipes. After the exit, output already written is collected for a short grace period;
//! the pipes are then drained (and discarded) in the background until the last holder closes
//! them, so a backgrounded service never blocks or dies on a full or closed pipe. The process
//! group is killed only on a timeout, never after a clean exit.

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
    let stdout = Capture::spawn(child.stdout.take(), stdout_max);
    let stderr = Capture::spawn(child.stderr.take(), None);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(|source| ExecError::Spawn {
                program: program.clone(),
                source,
            })?;
            // What the program wrote before it exited is in the pipes now; anything still
            // holding them (a backgrounded child) is not waited for.
            let _ = tokio::time::timeout(AFTER_EXIT, async {
                stdout.closed().await;
                stderr.closed().await;
            })
            .await;
            Ok(Output {
                success: status.success(),
                code: status.code(),
                stdout: stdout.take(),
                stderr: stderr.take(),
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

/// How long output is still collected after the program exited.
const AFTER_EXIT: Duration = Duration::from_millis(200);

/// One output stream, read by a task of its own until EOF: bounded in memory, and still
/// drained after the run has returned.
struct Capture {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Capture {
    /// `head`: keep the first `head` bytes (data); None: keep the last [`KEEP`] (logs).
    fn spawn<R>(stream: Option<R>, head: Option<usize>) -> Capture
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, done) = tokio::sync::watch::channel(false);
        if let Some(mut r) = stream {
            let buf = buf.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 8192];
                loop {
                    match r.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut b = crate::util::mutex::lock(&buf);
                            keep(&mut b, &chunk[..n], head);
                        }
                    }
                }
                let _ = tx.send(true);
            });
        } else {
            let _ = tx.send(true);
        }
        Capture { buf, done }
    }

    async fn closed(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    fn take(&self) -> Vec<u8> {
        let b = crate::util::mutex::lock(&self.buf);
        b.clone()
    }
}

/// Appends `data`, keeping the first `head` bytes, or the last [`KEEP`] when `head` is None.
fn keep(buf: &mut Vec<u8>, data: &[u8], head: Option<usize>) {
    match head {
        Some(max) => {
            let room = max.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
        None => {
            buf.extend_from_slice(data);
            if buf.len() > 2 * KEEP {
                buf.drain(..buf.len() - KEEP);
            }
        }
    }
}
