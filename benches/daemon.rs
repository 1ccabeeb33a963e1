//! Daemon benchmarks (`cargo bench --bench daemon`); results and how to read them are in
//! docs/benchmarks.md.
//!
//! Runs the real `rulekeeper run` binary as a child process and measures it from outside:
//!
//! - idle RSS / CPU with 1 file target, 1,000 file targets and 1,000 `forgejo` targets
//!   polling a tiny fake forge served by this process (all unchanged upstream, 10 s interval);
//! - push-to-live-file latency: change the content on the fake forge, POST the webhook, and
//!   time until the live file on disk holds the new bytes.
//!
//! The binary: `RULEKEEPER_BIN` if set, else the one cargo built for this bench
//! (`CARGO_BIN_EXE_rulekeeper`, set by cargo for benches and integration tests; the bench
//! profile inherits `[profile.release]`), else `cargo build --release --bin rulekeeper` is run
//! and `target/release/rulekeeper` used.
//!
//! Only 127.0.0.1 is used; every daemon is stopped at the end of its scenario (SIGTERM, then
//! SIGKILL after 5 s) and every wait is bounded. Knobs (environment):
//! `RK_BENCH_WINDOW` idle measurement window in seconds (default 30),
//! `RK_BENCH_SETTLE` seconds between ready and the window (default 5),
//! `RK_BENCH_ITERS` latency iterations (default 100),
//! `RK_BENCH_ONLY` comma list of `idle1,file1000,forge1000,latency` (default all).

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{binary, cpu_seconds, env_u64, free_port, http, mib, selected, status_field, Daemon};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One GET /metrics: (sum of `rulekeeper_cycles_total`, body bytes, time taken).
fn scrape(port: u16) -> (f64, usize, Duration) {
    let t0 = Instant::now();
    let Ok((200, body)) = http(port, "GET", "/metrics", &[]) else {
        return (f64::NAN, 0, t0.elapsed());
    };
    let took = t0.elapsed();
    let cycles = body
        .lines()
        .filter(|l| l.starts_with("rulekeeper_cycles_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    (cycles, body.len(), took)
}

/// How many targets wrote their state file (once per cycle) since `since`.
fn targets_polled_since(state_dir: &Path, since: std::time::SystemTime) -> usize {
    let Ok(rd) = std::fs::read_dir(state_dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            std::fs::metadata(e.path().join("state.json"))
                .and_then(|m| m.modified())
                .map(|m| m >= since)
                .unwrap_or(false)
        })
        .count()
}

// ---------------------------------------------------------------------------------------
// The fake forge: Forgejo's raw-file and commits APIs, conditional on ETag
// ---------------------------------------------------------------------------------------

struct ForgeState {
    /// (version, content); the ETag is the content's git blob id, as Forgejo's raw API sends
    /// it (rulekeeper checks the bytes against it), the commit sha the version in hex.
    content: Mutex<(u64, Vec<u8>)>,
    raw_200: AtomicU64,
    raw_304: AtomicU64,
    commits: AtomicU64,
}

struct Forge {
    port: u16,
    state: Arc<ForgeState>,
    _rt: tokio::runtime::Runtime,
}

impl Forge {
    fn start(initial: &[u8]) -> Forge {
        let state = Arc::new(ForgeState {
            content: Mutex::new((1, initial.to_vec())),
            raw_200: AtomicU64::new(0),
            raw_304: AtomicU64::new(0),
            commits: AtomicU64::new(0),
        });
        // Its own runtime, on one thread, so it does not compete much with the daemon.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(forge_route(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Forge {
            port,
            state,
            _rt: rt,
        }
    }

    fn set(&self, content: &[u8]) {
        let mut c = self.state.content.lock().unwrap();
        c.0 += 1;
        c.1 = content.to_vec();
    }

    fn requests(&self) -> (u64, u64, u64) {
        (
            self.state.raw_200.load(Ordering::Relaxed),
            self.state.raw_304.load(Ordering::Relaxed),
            self.state.commits.load(Ordering::Relaxed),
        )
    }
}

/// The git blob id of `body` (`git hash-object`).
fn blob_id(body: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", body.len()).as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn forge_route(st: &ForgeState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // api/v1/repos/{o}/{r}/raw/{path...}  |  api/v1/repos/{o}/{r}/commits
    let is_repo = parts.len() >= 6 && parts[..3] == ["api", "v1", "repos"];
    let (ver, body) = {
        let c = st.content.lock().unwrap();
        (c.0, c.1.clone())
    };
    if is_repo && parts[5] == "raw" && parts.len() >= 7 {
        let etag = format!("\"{}\"", blob_id(&body));
        let inm = req
            .headers()
            .get(hyper::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        if inm == Some(etag.as_str()) {
            st.raw_304.fetch_add(1, Ordering::Relaxed);
            return Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .header("ETag", etag)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        st.raw_200.fetch_add(1, Ordering::Relaxed);
        return Response::builder()
            .status(StatusCode::OK)
            .header("ETag", etag)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    }
    if is_repo && parts[5] == "commits" && parts.len() == 6 {
        st.commits.fetch_add(1, Ordering::Relaxed);
        let json = format!("[{{\"sha\":\"{ver:040x}\"}}]");
        return Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap();
    }
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Full::new(Bytes::from_static(b"not found\n")))
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

fn rules(n: u64) -> Vec<u8> {
    format!(
        "# generated by benches/daemon.rs\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists -- revision {n}\n"
    )
    .into_bytes()
}

enum Kind {
    File,
    Forge(u16),
}

fn config(dir: &Path, port: u16, n: usize, kind: &Kind, interval: &str, webhook: bool) -> String {
    let mut y = format!(
        "listen: 127.0.0.1:{port}\nstate_dir: {}\nstartup_timeout: 120s\ntargets:\n",
        dir.join("state").display()
    );
    std::fs::create_dir_all(dir.join("up")).unwrap();
    std::fs::create_dir_all(dir.join("live")).unwrap();
    if webhook {
        std::fs::write(dir.join("secret"), "bench-secret\n").unwrap();
    }
    for i in 0..n {
        let name = format!("t{i:04}");
        let source = match kind {
            Kind::File => {
                let up = dir.join("up").join(format!("{name}.yaml"));
                std::fs::write(&up, rules(0)).unwrap();
                format!("{{kind: file, path: {}}}", up.display())
            }
            Kind::Forge(fp) => format!(
                "{{kind: forgejo, base_url: \"http://127.0.0.1:{fp}\", repo: o/r, path: {name}.yaml, ref: master}}"
            ),
        };
        y.push_str(&format!(
            "  {name}:\n    source: {source}\n    path: {}\n    interval: {interval}\n    restart: {{none: true}}\n    verify: {{none: true}}\n",
            dir.join("live").join(format!("{name}.yaml")).display()
        ));
        if webhook {
            y.push_str(&format!(
                "    webhook: {{secret_file: {}}}\n",
                dir.join("secret").display()
            ));
        }
    }
    y
}

struct IdleResult {
    name: String,
    targets: usize,
    boot: Duration,
    boot_cpu: f64,
    rss_end_kb: u64,
    rss_max_kb: u64,
    hwm_kb: u64,
    anon_kb: u64,
    cpu_pct: f64,
    threads: u64,
    fds: usize,
    polled: usize,
    window: f64,
    cycles_total: f64,
    scrape_bytes: usize,
    scrape_time: Duration,
    rss_after_scrape_kb: u64,
    forge_reqs: Option<(u64, u64, u64)>,
    rss_target_mib: f64,
    cpu_target_pct: Option<f64>,
}

fn idle(
    bin: &Path,
    name: &str,
    n: usize,
    forge: Option<&Forge>,
    rss_target_mib: f64,
    cpu_target_pct: Option<f64>,
) -> IdleResult {
    let window = Duration::from_secs(env_u64("RK_BENCH_WINDOW", 30));
    let settle = Duration::from_secs(env_u64("RK_BENCH_SETTLE", 5));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let kind = match forge {
        Some(f) => Kind::Forge(f.port),
        None => Kind::File,
    };
    let cfg = config(dir, port, n, &kind, "10s", false);
    eprintln!("[{name}] starting rulekeeper with {n} target(s)");
    let mut d = Daemon::start(bin, dir, &cfg, port);
    let boot = d.wait_healthy(Duration::from_secs(150), dir);
    let pid = d.pid();
    let boot_cpu = cpu_seconds(pid);
    eprintln!("[{name}] healthy after {boot:.2?} ({boot_cpu:.2} s CPU); settling {settle:?}, then measuring {window:?}");
    std::thread::sleep(settle);
    // No /metrics scrape before or during the window: rendering 1,000 targets' series is
    // itself a large allocation (measured separately at the end).
    let f0 = forge.map(|f| f.requests());
    let wall0 = std::time::SystemTime::now();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut rss_max = 0;
    while t0.elapsed() < window {
        rss_max = rss_max.max(status_field(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu1 = cpu_seconds(pid);
    let secs = t0.elapsed().as_secs_f64();
    let f1 = forge.map(|f| f.requests());
    let rss_end = status_field(pid, "VmRSS");
    let hwm = status_field(pid, "VmHWM");
    let anon = status_field(pid, "RssAnon");
    let threads = status_field(pid, "Threads");
    let fds = open_fds(pid);
    let polled = targets_polled_since(&dir.join("state").join("targets"), wall0);
    let (cycles_total, scrape_bytes, scrape_time) = scrape(port);
    std::thread::sleep(Duration::from_millis(200));
    let rss_after_scrape_kb = status_field(pid, "VmRSS");
    let r = IdleResult {
        name: name.to_string(),
        targets: n,
        boot,
        boot_cpu,
        rss_end_kb: rss_end,
        rss_max_kb: rss_max.max(rss_end),
        hwm_kb: hwm,
        anon_kb: anon,
        cpu_pct: (cpu1 - cpu0) / secs * 100.0,
        threads,
        fds,
        polled,
        window: secs,
        cycles_total,
        scrape_bytes,
        scrape_time,
        rss_after_scrape_kb,
        forge_reqs: match (f0, f1) {
            (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1, b.2 - a.2)),
            _ => None,
        },
        rss_target_mib,
        cpu_target_pct,
    };
    d.stop();
    eprintln!(
        "[{name}] RSS {:.1} MiB (max {:.1}, peak {:.1}), CPU {:.2}% of one core, {}/{} targets polled in {:.0} s; after one /metrics scrape ({:.1} MB in {:.0?}) RSS {:.1} MiB",
        mib(r.rss_end_kb), mib(r.rss_max_kb), mib(r.hwm_kb), r.cpu_pct, r.polled, n, r.window,
        r.scrape_bytes as f64 / 1e6, r.scrape_time, mib(r.rss_after_scrape_kb)
    );
    r
}

struct LatencyResult {
    iters: usize,
    samples_ms: Vec<f64>,
    post_ms: Vec<f64>,
    timeouts: usize,
    rss_end_kb: u64,
}

fn latency(bin: &Path) -> LatencyResult {
    let iters = env_u64("RK_BENCH_ITERS", 100) as usize;
    let forge = Forge::start(&rules(0));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let cfg = config(dir, port, 1, &Kind::Forge(forge.port), "1h", true);
    let live = dir.join("live").join("t0000.yaml");
    eprintln!("[latency] starting rulekeeper (1 forgejo target, interval 1h, webhook)");
    let mut d = Daemon::start(bin, dir, &cfg, port);
    d.wait_healthy(Duration::from_secs(60), dir);
    assert_eq!(
        std::fs::read(&live).unwrap(),
        rules(0),
        "boot did not install the first content"
    );
    let mut samples = Vec::with_capacity(iters);
    let mut posts = Vec::with_capacity(iters);
    let mut timeouts = 0;
    for i in 1..=iters {
        // Triggers within 500 ms of the previous cycle's start are deferred (coalescing
        // cooldown in the supervisor); keep iterations apart so each measures one push.
        std::thread::sleep(Duration::from_millis(600));
        let want = rules(i as u64);
        forge.set(&want);
        let t0 = Instant::now();
        let (status, body) = http(
            port,
            "POST",
            "/hooks/t0000",
            &[("Authorization", "Bearer bench-secret")],
        )
        .expect("webhook POST failed");
        let posted = t0.elapsed();
        assert_eq!(status, 202, "webhook answered {status}: {body}");
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if std::fs::read(&live).map(|b| b == want).unwrap_or(false) {
                samples.push(t0.elapsed().as_secs_f64() * 1e3);
                posts.push(posted.as_secs_f64() * 1e3);
                break;
            }
            if Instant::now() > deadline {
                timeouts += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let rss_end_kb = status_field(d.pid(), "VmRSS");
    d.stop();
    LatencyResult {
        iters,
        samples_ms: samples,
        post_ms: posts,
        timeouts,
        rss_end_kb,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} CPU(s), {cpu}")
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (use RK_BENCH_ONLY).
    let started = Instant::now();
    let bin = binary();
    println!("rulekeeper daemon benchmarks");
    println!("binary:  {}", bin.display());
    println!("machine: {}", machine());
    println!();

    let mut idles = Vec::new();
    if selected("idle1") {
        idles.push(idle(&bin, "file x1", 1, None, 12.0, None));
    }
    if selected("file1000") {
        idles.push(idle(&bin, "file x1000", 1000, None, 64.0, Some(5.0)));
    }
    if selected("forge1000") {
        let forge = Forge::start(&rules(0));
        idles.push(idle(
            &bin,
            "forgejo x1000",
            1000,
            Some(&forge),
            64.0,
            Some(5.0),
        ));
    }
    let lat = selected("latency").then(|| latency(&bin));

    println!();
    if !idles.is_empty() {
        println!("Idle (interval 10 s, upstream unchanged)");
        println!(
            "RSS/CPU columns cover the idle window only (no /metrics scrape before or in it);"
        );
        println!("\"after scrape\" is VmRSS after one GET /metrics at the end of the window.");
        println!(
            "| scenario      | targets | boot s | boot CPU s | RSS MiB | RSS max | VmHWM | RssAnon | CPU % core | threads | fds  | polled/window  | target           | verdict | /metrics | scrape ms | after scrape MiB |"
        );
        println!(
            "|---------------|--------:|-------:|-----------:|--------:|--------:|------:|--------:|-----------:|--------:|-----:|---------------:|------------------|---------|---------:|----------:|-----------------:|"
        );
        for r in &idles {
            let rss_ok = mib(r.rss_max_kb) <= r.rss_target_mib;
            let cpu_ok = r.cpu_target_pct.map(|t| r.cpu_pct <= t).unwrap_or(true);
            let target = match r.cpu_target_pct {
                Some(c) => format!("<= {} MiB, <= {c}%", r.rss_target_mib),
                None => format!("<= {} MiB", r.rss_target_mib),
            };
            println!(
                "| {:<13} | {:>7} | {:>6.2} | {:>10.2} | {:>7.1} | {:>7.1} | {:>5.1} | {:>7.1} | {:>10.2} | {:>7} | {:>4} | {:>5} in {:>3.0} s | {:<16} | {:<7} | {:>5.1} MB | {:>9.0} | {:>16.1} |",
                r.name,
                r.targets,
                r.boot.as_secs_f64(),
                r.boot_cpu,
                mib(r.rss_end_kb),
                mib(r.rss_max_kb),
                mib(r.hwm_kb),
                mib(r.anon_kb),
                r.cpu_pct,
                r.threads,
                r.fds,
                r.polled,
                r.window,
                target,
                if rss_ok && cpu_ok { "PASS" } else { "MISS" },
                r.scrape_bytes as f64 / 1e6,
                r.scrape_time.as_secs_f64() * 1e3,
                mib(r.rss_after_scrape_kb),
            );
        }
        for r in &idles {
            println!(
                "  {}: rulekeeper_cycles_total since start = {}",
                r.name, r.cycles_total
            );
            if let Some((ok, nm, commits)) = r.forge_reqs {
                println!(
                    "  {}: fake forge saw {ok} x 200, {nm} x 304, {commits} commits calls during the window",
                    r.name
                );
            }
        }
        println!();
    }
    if let Some(l) = lat {
        let mut s = l.samples_ms.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut p = l.post_ms.clone();
        p.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p50 = pct(&s, 50.0);
        println!("Push to live file (forgejo source, webhook, restart/verify none)");
        println!("| iterations | ok  | timeouts | p50 ms | p90 ms | p99 ms | max ms | min ms | POST p50 ms | RSS MiB | target       | verdict |");
        println!("|-----------:|----:|---------:|-------:|-------:|-------:|-------:|-------:|------------:|--------:|--------------|---------|");
        println!(
            "| {:>10} | {:>3} | {:>8} | {:>6.1} | {:>6.1} | {:>6.1} | {:>6.1} | {:>6.1} | {:>11.2} | {:>7.1} | p50 <= 100 ms | {:<7} |",
            l.iters,
            s.len(),
            l.timeouts,
            p50,
            pct(&s, 90.0),
            pct(&s, 99.0),
            s.last().copied().unwrap_or(f64::NAN),
            s.first().copied().unwrap_or(f64::NAN),
            pct(&p, 50.0),
            mib(l.rss_end_kb),
            if p50 <= 100.0 && l.timeouts == 0 { "PASS" } else { "MISS" }
        );
        println!();
    }
    println!("total bench time: {:.0} s", started.elapsed().as_secs_f64());
}
