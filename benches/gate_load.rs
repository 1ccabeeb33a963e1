//! Gate query load (`cargo bench --bench gate_load`); results in docs/fleet.md and
//! docs/benchmarks.md.
//!
//! A fleet of `RK_GATE_HOSTS` (1,000) gated hosts asks its metrics store every
//! `gate.interval` (30 s) whether new content may be applied: about 33 queries a second. This
//! starts a real VictoriaMetrics, imports the rulekeeper series of the fleet (10 canaries, the
//! rest production, 15 minutes of 30 s samples), then sends the production gate of
//! docs/fleet.md at that rate for `RK_GATE_SECS` (60) seconds, one fresh connection per query
//! as separate hosts would, and records latency percentiles and VictoriaMetrics' CPU and RSS.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{cpu_seconds, env_u64, free_port, http, mib, status_field};

const SHA_OLD: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_NEW: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The production gate of docs/fleet.md for the candidate `sha`.
fn gate_query(sha: &str) -> String {
    format!(
        "count(rulekeeper_rules_info{{target=\"powersync\", role=\"canary\", sha256=\"{sha}\"}}) \
         == count(rulekeeper_rules_info{{target=\"powersync\", role=\"canary\"}}) \
         and on () min(time() - rulekeeper_last_apply_timestamp_seconds{{target=\"powersync\", role=\"canary\"}}) > 900 \
         unless on () rulekeeper_quarantined_info{{sha256=\"{sha}\"}}"
    )
}

fn main() {
    let hosts = env_u64("RK_GATE_HOSTS", 1000);
    let secs = env_u64("RK_GATE_SECS", 60);
    let interval = 30.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut vm = Command::new("victoria-metrics")
        .arg(format!(
            "-storageDataPath={}",
            dir.path().join("vm").display()
        ))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-search.latencyOffset=1s")
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("victoria-metrics (apt-get install victoria-metrics)");
    let t0 = Instant::now();
    while http(port, "GET", "/health", &[]).map(|r| r.0).ok() != Some(200) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "victoria-metrics did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 15 minutes of history every 30 s for every host; canaries moved to the new sha 20
    // minutes ago, production still runs the old one.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let applied_s = now_ms / 1000 - 1200;
    let mut body = String::new();
    for step in 0..30u64 {
        let ts = now_ms - (29 - step) * 30_000;
        for h in 0..hosts {
            let (role, sha) = if h < 10 {
                ("canary", SHA_NEW)
            } else {
                ("production", SHA_OLD)
            };
            let l = format!(
                "job=\"rulekeeper\",instance=\"host-{h}:9871\",role=\"{role}\",target=\"powersync\""
            );
            body.push_str(&format!(
                "rulekeeper_rules_info{{{l},sha256=\"{sha}\",revision=\"r\"}} 1 {ts}\n\
                 rulekeeper_last_apply_timestamp_seconds{{{l}}} {applied_s} {ts}\n\
                 rulekeeper_gated{{{l}}} {} {ts}\n\
                 rulekeeper_quarantined{{{l}}} 0 {ts}\n",
                (role == "production") as u8
            ));
        }
    }
    let series = hosts * 4;
    let samples = series * 30;
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = format!(
            "POST /api/v1/import/prometheus HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("import");
        s.write_all(body.as_bytes()).expect("import");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        assert!(r.starts_with("HTTP/1.1 204"), "import: {r}");
    }
    // VictoriaMetrics makes imported data searchable after a short delay.
    let q_new = format!(
        "/api/v1/query?query={}",
        url::form_urlencoded::byte_serialize(gate_query(SHA_NEW).as_bytes()).collect::<String>()
    );
    let t0 = Instant::now();
    loop {
        let (_, b) = http(port, "GET", &q_new, &[]).expect("query");
        if b.contains("\"result\":[{") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the gate never opened: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let q_old = format!(
        "/api/v1/query?query={}",
        url::form_urlencoded::byte_serialize(gate_query(SHA_OLD).as_bytes()).collect::<String>()
    );
    let (_, closed) = http(port, "GET", &q_old, &[]).expect("query");
    assert!(
        closed.contains("\"result\":[]"),
        "an old sha must not open: {closed}"
    );

    // The load: hosts / interval queries a second, from 8 client threads.
    let rate = hosts as f64 / interval;
    let total = (rate * secs as f64) as u64;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(Mutex::new(0u64));
    let pid = vm.id();
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (lat, errors, q) = (lat.clone(), errors.clone(), q_new.clone());
        workers.push(std::thread::spawn(move || {
            let mut i = w;
            while i < total {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let t = Instant::now();
                match http(port, "GET", &q, &[]) {
                    Ok((200, b)) if b.contains("\"result\":[{") => lat
                        .lock()
                        .expect("lat")
                        .push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => *errors.lock().expect("errors") += 1,
                }
                i += 8;
            }
        }));
    }
    let mut peak_rss = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        peak_rss = peak_rss.max(status_field(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(250));
    }
    for w in workers {
        let _ = w.join();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu0) / wall * 100.0;
    let mut l = lat.lock().expect("lat").clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!("| hosts | series | samples | queries/s | queries | errors | p50 | p99 | max | VM CPU (% of one core) | VM RSS peak |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {hosts} | {series} | {samples} | {rate:.1} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {cpu:.1} % | {:.0} MiB |",
        l.len(),
        errors.lock().expect("errors"),
        pct(0.5),
        pct(0.99),
        l.last().copied().unwrap_or(f64::NAN),
        mib(peak_rss),
    );
    let _ = vm.kill();
    let _ = vm.wait();
}
