//! What the bench binaries share: finding the binary, a tiny HTTP client, /proc readings,
//! and the daemon under test as a child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod forge;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn selected(name: &str) -> bool {
    match std::env::var("RK_BENCH_ONLY") {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("RULEKEEPER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_rulekeeper") {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building target/release/rulekeeper with `{cargo} build --release`");
    let st = Command::new(cargo)
        .args(["build", "--release", "--bin", "rulekeeper"])
        .current_dir(root)
        .status()
        .expect("cannot run cargo");
    assert!(st.success(), "cargo build --release failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("release").join("rulekeeper")
}

/// The integration tests' harness (tests/it/util.rs), shared rather than copied.
#[path = "../../tests/it/util.rs"]
pub mod util;
#[allow(unused_imports)] // Not every bench picks a port.
pub use util::free_port;

/// A request on a fresh connection: (status, body), or the I/O error.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    util::try_http(port, method, path, headers, b"")
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM, RssAnon, ...) or a count (Threads).
pub fn status_field(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or(0)
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------

pub struct Daemon {
    pub child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(bin: &Path, dir: &Path, config_yaml: &str, port: u16) -> Daemon {
        Daemon::start_with(bin, dir, config_yaml, port, &[])
    }

    /// [`Daemon::start`] with more environment (a `NOTIFY_SOCKET`, as under systemd).
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        config_yaml: &str,
        port: u16,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let cfg = dir.join("rulekeeper.yaml");
        std::fs::write(&cfg, config_yaml).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("RULEKEEPER_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start rulekeeper");
        Daemon { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls /healthz until 200; panics (after stopping the daemon) past `limit`.
    pub fn wait_healthy(&mut self, limit: Duration, dir: &Path) -> Duration {
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/healthz", &[]) {
                return t0.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                panic!("rulekeeper exited early ({st}); log tail (newest first):\n{tail}");
            }
            if t0.elapsed() > limit {
                self.stop();
                panic!("rulekeeper not healthy within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn clk_tck() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends comm: state is field 3; utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / clk_tck()
}

/// CPU time of a process in seconds, in nanoseconds' precision: the sum of its threads'
/// on-CPU time (`/proc/PID/task/*/schedstat`), with the threads summed. A thread that exits
/// takes its time with it, so a window compares the thread sets at both ends (see
/// [`Cpu::since`]); without schedstat, [`cpu_seconds`] (clock ticks).
pub fn cpu_precise(pid: u32) -> Cpu {
    let ticks = cpu_seconds(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Cpu {
            precise: None,
            ticks,
            threads: Vec::new(),
        };
    };
    let mut ns = 0u64;
    let mut any = false;
    let mut threads = Vec::new();
    for t in tasks.flatten() {
        threads.push(t.file_name().to_string_lossy().into_owned());
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(v) = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            ns += v;
            any = true;
        }
    }
    threads.sort();
    Cpu {
        precise: any.then_some(ns as f64 / 1e9),
        ticks,
        threads,
    }
}

/// A process's CPU time at one moment (see [`cpu_precise`]).
pub struct Cpu {
    precise: Option<f64>,
    ticks: f64,
    threads: Vec<String>,
}

impl Cpu {
    /// Seconds of CPU from `earlier` to this: the precise sum when the same threads lived
    /// throughout, else clock ticks (which keep the time of exited threads).
    pub fn since(&self, earlier: &Cpu) -> f64 {
        match (self.precise, earlier.precise) {
            (Some(b), Some(a)) if self.threads == earlier.threads => b - a,
            _ => {
                eprintln!("(threads came or went in the window: CPU from clock ticks, 10 ms each)");
                self.ticks - earlier.ticks
            }
        }
    }
}
