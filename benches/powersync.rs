//! What a rules change costs PowerSync's clients, and how long a crashing revision keeps the
//! service down, against the real PowerSync Service (`cargo bench --bench powersync`; results
//! in docs/benchmarks.md). Uses the test harness (tests/it/pservice.rs) on the real service
//! only: a build named by `RULEKEEPER_POWERSYNC_DIR`, on a private Postgres. Without one it
//! says so and measures nothing (the stand-in's timings would say nothing about PowerSync).
//!
//! - `outage`: a client holds `POST /sync/stream` open with a JWT signed with the HS256 key of
//!   the test's PowerSync config, reconnecting at once (10 ms apart) whenever the stream ends.
//!   rulekeeper applies `RK_BENCH_CHANGES` (default 5) good changes on the restart path
//!   (`sync_config: {path}`, `restart.command`) and on the deploy path
//!   (`restart.powersync_deploy`), then one bad revision each. Per change: failed connection
//!   attempts, reconnects, and the longest gap (stream lost → first data on a new stream).
//!   The client also records every bucket it is sent: a bad revision's bucket must never
//!   appear.
//! - `crash`: with the validators off, a revision PowerSync dies on (`restart.command`, the
//!   example config's verify window: 3 good answers 2 s apart): the time `rulekeeper once`
//!   takes from start to healthy on last-good, `RK_BENCH_ITERS` times (default 3).
//!
//! Knobs: `RK_BENCH_ONLY=outage,crash`, `RK_BENCH_CHANGES`, `RK_BENCH_ITERS`,
//! `RULEKEEPER_POWERSYNC_DIR` (a built PowerSync, as for the tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
#[path = "../tests/it/pservice.rs"]
mod pservice;
use common::util;

use pservice::{PowerSync, Rules};

/// The HS256 key of the harness's PowerSync config (`k`, base64url).
const JWK_K: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";

fn rules(tag: &str, bucket: &str) -> String {
    format!("# {tag}\nbucket_definitions:\n  {bucket}:\n    data:\n      - SELECT * FROM lists\n")
}

/// Valid YAML that PowerSync dies on at start (restart path) or refuses (deploy path).
fn fatal(tag: &str) -> String {
    format!("# {tag}\nbucket_definitions:\n  bad_bucket:\n    data:\n      - SELECT * FROM lists WHERE nosuchfunc(name)\n")
}

/// Parses, deploys, then fails (no primary key): the deploy path's rolled-back revision.
fn fails_once_deployed(tag: &str) -> String {
    format!("# {tag}\nbucket_definitions:\n  bad_bucket:\n    data:\n      - SELECT * FROM no_pk\n")
}

fn jwt() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use hmac::Mac;
    let now = chrono::Utc::now().timestamp();
    let head = B64.encode(r#"{"alg":"HS256","kid":"k1","typ":"JWT"}"#);
    let claims = B64.encode(
        serde_json::json!({"sub": "u1", "aud": "powersync", "iat": now, "exp": now + 7200})
            .to_string(),
    );
    let key = B64.decode(JWK_K).unwrap_or_default();
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap_or_else(|_| {
        panic!("hmac key");
    });
    m.update(format!("{head}.{claims}").as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    format!("{head}.{claims}.{sig}")
}

/// What the client saw; counters only grow.
#[derive(Default, Clone)]
struct Seen {
    failed: u64,
    connects: u64,
    /// Stream lost → first data on the next stream, one per loss.
    gaps: Vec<Duration>,
    buckets: std::collections::BTreeSet<String>,
    lines: u64,
    last_line: Option<Instant>,
    connected_at: Option<Instant>,
}

struct Client {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(url: String) -> Client {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            rt.block_on(run_client(url, s, st));
        });
        Client {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run_client(url: String, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => panic!("client: {e}"),
    };
    let token = jwt();
    let mut lost: Option<Instant> = None;
    let record = |f: &mut dyn FnMut(&mut Seen)| {
        if let Ok(mut s) = seen.lock() {
            f(&mut s);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let r = client
            .post(format!("{url}/sync/stream"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"raw_data": true, "include_checksum": true}))
            .timeout(Duration::from_secs(3600))
            .send()
            .await;
        let mut resp = match r {
            Ok(r) if r.status().is_success() => r,
            _ => {
                record(&mut |s| s.failed += 1);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        record(&mut |s| {
            s.connects += 1;
            s.connected_at = Some(Instant::now());
        });
        let mut first = true;
        let mut buf = Vec::new();
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::SeqCst) { return; }
                    continue;
                }
            };
            match chunk {
                Ok(Some(b)) => {
                    let now = Instant::now();
                    buf.extend_from_slice(&b);
                    let mut names = Vec::new();
                    while let Some(i) = buf.iter().position(|c| *c == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                            collect_buckets(&v, &mut names);
                        }
                    }
                    let gap = if first {
                        lost.take().map(|l| now - l)
                    } else {
                        None
                    };
                    first = false;
                    record(&mut |s| {
                        s.lines += 1;
                        s.last_line = Some(now);
                        s.buckets.extend(names.iter().cloned());
                        if let Some(g) = gap {
                            s.gaps.push(g);
                        }
                    });
                }
                Ok(None) | Err(_) => {
                    lost = Some(Instant::now());
                    break;
                }
            }
        }
    }
}

fn collect_buckets(v: &serde_json::Value, out: &mut Vec<String>) {
    for list in [
        v.pointer("/checkpoint/buckets"),
        v.pointer("/checkpoint_diff/updated_buckets"),
    ]
    .into_iter()
    .flatten()
    {
        for b in list.as_array().into_iter().flatten() {
            if let Some(name) = b.get("bucket").and_then(|n| n.as_str()) {
                out.push(name.to_string());
            }
        }
    }
}

struct Target {
    env: util::Env,
    ps: PowerSync,
    up: std::path::PathBuf,
}

impl Target {
    fn new(deploy: bool, first: &str) -> Option<Target> {
        let env = util::Env::new();
        let ps = PowerSync::new(if deploy {
            Rules::Api
        } else {
            Rules::File(env.live.clone())
        })?;
        let up = env.dir.path().join("upstream.yaml");
        std::fs::write(&up, first).ok()?;
        if !deploy {
            std::fs::write(&env.live, first).ok()?;
        }
        ps.start();
        let restart = if deploy {
            format!(
                "{{ powersync_deploy: {{ url: \"{}\", token_file: \"{}\" }}, timeout: 30s }}",
                ps.url(),
                ps.token_file().display()
            )
        } else {
            ps.restart_command()
        };
        let verify = if deploy {
            "{ none: true, timeout: 60s, interval: 500ms }".to_string()
        } else {
            format!(
                "{{ http: \"{}/probes/liveness\", timeout: 90s, interval: 2s, successes: 3 }}",
                ps.url()
            )
        };
        let text = format!(
            "state_dir: {}\ntargets:\n  ps:\n    source: {{ kind: file, path: \"{}\" }}\n    path: {}\n    restart: {restart}\n    verify: {verify}\n    validate: {{ require_keys: [bucket_definitions, streams] }}\n",
            env.state.display(),
            up.display(),
            env.live.display(),
        );
        std::fs::write(&env.config, text).ok()?;
        let t = Target { env, ps, up };
        let o = t.env.once();
        assert!(o.code == 0, "first cycle: {}", o.all());
        t.ps.wait_active(first);
        Some(t)
    }

    /// Publishes `content` upstream and runs one cycle; returns its exit code.
    fn change(&self, content: &str) -> i32 {
        std::fs::write(&self.up, content).unwrap_or_else(|e| panic!("write upstream: {e}"));
        self.env.once().code
    }
}

/// Waits until `content` is active and the client has data on a connection opened after
/// `since` (both paths end the client's stream for new rules: the restart, or PowerSync when
/// the new version becomes active); at most 15 s, then the numbers are taken as they are.
fn settle(c: &Client, ps: &PowerSync, content: &str, since: Instant) {
    ps.wait_active(content);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let s = c.snapshot();
        if let (Some(conn), Some(line)) = (s.connected_at, s.last_line) {
            if conn > since && line > conn {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("(no reconnect within 15 s of the change)");
}

fn outage() {
    let changes = common::env_u64("RK_BENCH_CHANGES", 5);
    println!("## outage: {changes} good changes per path, then one bad revision");
    println!("| path | change | exit | failed connects | reconnects | longest gap |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, deploy) in [("restart", false), ("deploy", true)] {
        let first = rules(&format!("{name}-0"), "b0");
        let Some(t) = Target::new(deploy, &first) else {
            return;
        };
        let c = Client::start(t.ps.url());
        util::wait_until(30, "the client connected with data", || {
            c.snapshot().lines > 0
        });
        let mut worst_failed = 0;
        let mut worst_gap = Duration::ZERO;
        for i in 1..=changes {
            let content = rules(&format!("{name}-{i}"), &format!("b{i}"));
            let before = c.snapshot();
            let t0 = Instant::now();
            let code = t.change(&content);
            settle(&c, &t.ps, &content, t0);
            let after = c.snapshot();
            let failed = after.failed - before.failed;
            let gap = after.gaps[before.gaps.len()..]
                .iter()
                .max()
                .copied()
                .unwrap_or_default();
            worst_failed = worst_failed.max(failed);
            worst_gap = worst_gap.max(gap);
            println!(
                "| {name} | {i} | {code} | {failed} | {} | {:.0} ms |",
                after.connects - before.connects,
                gap.as_secs_f64() * 1000.0
            );
        }
        // A bad revision: refused or rolled back, never the rules a client syncs.
        let bad = if deploy {
            fails_once_deployed("bad")
        } else {
            fatal("bad")
        };
        let before = c.snapshot();
        let t0 = Instant::now();
        let code = t.change(&bad);
        let last_good = t.env.live();
        settle(&c, &t.ps, &last_good, t0);
        let after = c.snapshot();
        println!(
            "| {name} | bad revision ({}) | {code} | {} | {} | {:.0} ms |",
            if deploy {
                "rolled back"
            } else {
                "rolled back after the crash"
            },
            after.failed - before.failed,
            after.connects - before.connects,
            after.gaps[before.gaps.len()..]
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0
        );
        let bad_seen = after.buckets.iter().any(|b| b.starts_with("bad_bucket"));
        println!(
            "{name}: worst good change: {worst_failed} failed connects, {:.0} ms gap; buckets the client was sent: {:?}; bad revision's bucket seen: {bad_seen}",
            worst_gap.as_secs_f64() * 1000.0,
            after.buckets
        );
        assert!(!bad_seen, "a client synced a bad revision's bucket");
    }
}

fn crash() {
    let iters = common::env_u64("RK_BENCH_ITERS", 3);
    println!("## crash: restart.command, validators off, example verify window (3 x 2 s, 90 s)");
    let first = rules("good", "b0");
    let Some(t) = Target::new(false, &first) else {
        return;
    };
    let mut times = Vec::new();
    for i in 0..iters {
        let t0 = Instant::now();
        let code = t.change(&fatal(&format!("crash-{i}")));
        let took = t0.elapsed();
        assert_eq!(code, 1, "a crashing revision is rolled back (exit 1)");
        assert!(t.ps.live_ok(), "healthy on last-good");
        assert_eq!(t.env.live(), first);
        println!(
            "crash {i}: once took {:.1} s (crash -> healthy on last-good)",
            took.as_secs_f64()
        );
        times.push(took.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "crash -> healthy: min {:.1} s, median {:.1} s, max {:.1} s",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if pservice::real().is_none() {
        return;
    }
    if common::selected("crash") {
        crash();
    }
    if common::selected("outage") {
        outage();
    }
}
