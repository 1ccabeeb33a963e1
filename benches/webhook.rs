//! Webhook flood benchmark (`cargo bench --bench webhook`); results in docs/benchmarks.md.
//!
//! The webhook port must be reachable from the forge, so anyone can open connections to it.
//! This runs the real `rulekeeper run` and, for each scenario, keeps `RK_FLOOD_CONNS`
//! (default 1,000) connections busy for `RK_FLOOD_SECS` (default 20) seconds, each announcing
//! a ~1 MiB body and dripping it slowly (1 KiB every 100 ms), reconnecting when the server
//! closes. Meanwhile it asks `/healthz`, `/metrics` and an authenticated webhook once a second,
//! and samples the daemon's RSS every 250 ms. Scenarios:
//!
//! - `bearer`: a wrong `Authorization: Bearer` (refused before the body is read);
//! - `signed`: a wrong `X-Hub-Signature-256` (the body must be read to check it: the byte
//!   budget bounds what is in flight);
//! - `over-cap`: 1,500 connections with a wrong bearer (over the connection cap).
//!
//! Target (issue 11): RSS stays under baseline + 64 MiB, and the three requests keep answering.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binary, env_u64, free_port, http, mib, status_field, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "bench-webhook-secret";

#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    s401: AtomicU64,
    s503: AtomicU64,
    s413: AtomicU64,
    other: AtomicU64,
    no_answer: AtomicU64,
}

/// One flooding client: connect, announce ~1 MiB, drip it, read whatever answer comes.
async fn flooder(port: u16, header: &'static str, until: Instant, tally: Arc<Tally>) {
    let chunk = vec![b'x'; 1024];
    while Instant::now() < until {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tally.no_answer.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.connections.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "POST /hooks/t HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n{header}\r\n\r\n"
        );
        if s.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        // Drip the body whatever the server says, as a hostile client would, until the
        // server closes the connection (or the body is all sent, or time is up).
        let mut sent = 0usize;
        let mut buf = [0u8; 256];
        let mut answer: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                r = s.read(&mut buf), if answer.is_none() => match r {
                    Ok(n) if n > 0 => answer = Some(buf[..n].to_vec()),
                    _ => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if Instant::now() >= until || sent >= 1_000_000 {
                        break;
                    }
                    if s.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
            }
        }
        if answer.is_none() {
            let mut b = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
            {
                if n > 0 {
                    answer = Some(b[..n].to_vec());
                }
            }
        }
        let code = answer
            .as_deref()
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|t| t.split(' ').nth(1))
            .and_then(|c| c.parse::<u16>().ok());
        let slot = match code {
            Some(401) => &tally.s401,
            Some(503) => &tally.s503,
            Some(413) => &tally.s413,
            Some(_) => &tally.other,
            None => &tally.no_answer,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

struct Probe {
    ok: u64,
    failed: u64,
    max: Duration,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            ok: 0,
            failed: 0,
            max: Duration::ZERO,
        }
    }
    fn take(&mut self, r: std::io::Result<(u16, String)>, want: u16, took: Duration) {
        match r {
            Ok((code, _)) if code == want => self.ok += 1,
            _ => self.failed += 1,
        }
        self.max = self.max.max(took);
    }
    fn show(&self) -> String {
        format!(
            "{}/{} ok, max {:.0} ms",
            self.ok,
            self.ok + self.failed,
            self.max.as_secs_f64() * 1000.0
        )
    }
}

fn scenario(bin: &Path, name: &str, header: &'static str, conns: u64, secs: u64) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("up.yaml"), "a: 1\n").unwrap();
    std::fs::write(d.join("secret"), SECRET).unwrap();
    std::fs::set_permissions(
        d.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let port = free_port();
    let cfg = format!(
        "listen: 127.0.0.1:{port}\nstate_dir: {s}\ntargets:\n  t:\n    source: {{ kind: file, path: {u} }}\n    path: {l}\n    interval: 1h\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n    webhook: {{ secret_file: {sec} }}\n",
        s = d.join("state").display(),
        u = d.join("up.yaml").display(),
        l = d.join("live.yaml").display(),
        sec = d.join("secret").display(),
    );
    let mut daemon = Daemon::start(bin, d, &cfg, port);
    daemon.wait_healthy(Duration::from_secs(30), d);
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon.pid();
    let base = status_field(pid, "VmRSS");

    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..conns {
        rt.spawn(flooder(port, header, until, tally.clone()));
    }
    let (mut health, mut metrics, mut hook) = (Probe::new(), Probe::new(), Probe::new());
    let mut peak = base;
    let mut next_probe = Instant::now() + Duration::from_secs(1);
    let auth = format!("Bearer {SECRET}");
    while Instant::now() < until {
        peak = peak.max(status_field(pid, "VmRSS"));
        if Instant::now() >= next_probe {
            next_probe += Duration::from_secs(1);
            let t = Instant::now();
            health.take(http(port, "GET", "/healthz", &[]), 200, t.elapsed());
            let t = Instant::now();
            metrics.take(http(port, "GET", "/metrics", &[]), 200, t.elapsed());
            let t = Instant::now();
            hook.take(
                http(port, "POST", "/hooks/t", &[("Authorization", &auth)]),
                202,
                t.elapsed(),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    let hwm = status_field(pid, "VmHWM");
    let after = {
        std::thread::sleep(Duration::from_secs(2));
        status_field(pid, "VmRSS")
    };
    daemon.stop();
    let t = &tally;
    println!(
        "| {name} | {conns} | {secs} s | {:.1} MiB | {:.1} MiB | **+{:.1} MiB** | {:.1} MiB | {:.1} MiB | {} | {} / {} / {} / {} / {} | {} | {} | {} |",
        mib(base),
        mib(peak),
        mib(peak.saturating_sub(base)),
        mib(hwm),
        mib(after),
        t.connections.load(Ordering::Relaxed),
        t.s401.load(Ordering::Relaxed),
        t.s503.load(Ordering::Relaxed),
        t.s413.load(Ordering::Relaxed),
        t.other.load(Ordering::Relaxed),
        t.no_answer.load(Ordering::Relaxed),
        health.show(),
        metrics.show(),
        hook.show(),
    );
}

fn main() {
    // The bench holds a socket per flooding connection.
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let bin = binary();
    let conns = env_u64("RK_FLOOD_CONNS", 1000);
    let secs = env_u64("RK_FLOOD_SECS", 20);
    println!("binary: {}", bin.display());
    println!("| scenario | connections | window | RSS before | RSS peak | delta | VmHWM | RSS after | connects | answers 401 / 503 / 413 / other / none | /healthz | /metrics | valid webhook |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    scenario(&bin, "bearer", "Authorization: Bearer wrong", conns, secs);
    scenario(
        &bin,
        "signed",
        "X-Hub-Signature-256: sha256=00",
        conns,
        secs,
    );
    scenario(
        &bin,
        "over-cap",
        "Authorization: Bearer wrong",
        conns * 3 / 2,
        secs,
    );
}
