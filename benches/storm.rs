//! Storm harnesses (`cargo bench --bench storm`); results in docs/reliability.md.
//!
//! Three storms against the real `rulekeeper` binary, a managed service
//! (tests/support/fakesvc.py, restarted by command; it reads its rules once at start) and an
//! upstream served by this process over raw TCP, so any answer can be sent, well-formed or not.
//!
//! - `once`: `RK_STORM_KILLS` (1,000) runs of `rulekeeper once`, each SIGKILLed at a random
//!   moment of its cycle, while upstream moves between good, unhealthy (probe 500) and crashing
//!   (exits 0.3 s after start) revisions.
//! - `run`: the same with `rulekeeper run` (polling every second), SIGKILLed at a random moment
//!   and started again.
//! - `faults`: `RK_STORM_CYCLES` (10,000) cycles (`once` over a forgejo and an http target)
//!   against an upstream that mixes 5xx, 401, timeouts, slow drips, bodies cut short (with a
//!   Content-Length, and delimited by close), oversize bodies, non-UTF-8, an HTML page with 200,
//!   YAML lists and scalars, altered bytes, and flips between good and invalid revisions.
//!
//! After every kill and every cycle: the live file exists (once something was applied) and is
//! exactly one revision's bytes, never partial. At the end of the kill storms: upstream is set
//! to a new good revision and the target must converge (live == upstream, service healthy on
//! it, no pending record, no temp files). For the fault storm: bad installs (the live file
//! holding anything but a good revision) must be 0, and restarts of the managed service must
//! equal the number of real changes between good revisions (restarts caused by faults: 0).
//!
//! Knobs: `RK_STORM_KILLS`, `RK_STORM_CYCLES`, `RK_STORM_ONLY` (`once,run,faults`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::forge::blob_id;
use common::{binary, env_u64, free_port};
use rand::Rng;

// ---------------------------------------------------------------------------------------
// Upstream: a raw HTTP server that speaks Forgejo's raw API (blob id as ETag) and plain HTTP
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    None,
    Status5xx,
    Unauthorized,
    Timeout,
    SlowDrip,
    ShortWithLength,
    ShortClosed,
    Oversize,
    NotUtf8,
    Html,
    List,
    Scalar,
    Altered,
}

const FAULTS: [Fault; 12] = [
    Fault::Status5xx,
    Fault::Unauthorized,
    Fault::Timeout,
    Fault::SlowDrip,
    Fault::ShortWithLength,
    Fault::ShortClosed,
    Fault::Oversize,
    Fault::NotUtf8,
    Fault::Html,
    Fault::List,
    Fault::Scalar,
    Fault::Altered,
];

struct Upstream {
    content: Vec<u8>,
    /// Probability (0..1) that a content request gets a fault instead.
    fault_rate: f64,
    /// Faults served, by kind.
    served: BTreeMap<String, u64>,
}

fn serve_upstream(up: Arc<Mutex<Upstream>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(c) = conn else { continue };
            let up = up.clone();
            std::thread::spawn(move || answer(c, &up));
        }
    });
    port
}

fn answer(mut c: TcpStream, up: &Mutex<Upstream>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    if path.contains("/commits") {
        let body = format!("[{{\"sha\":\"{}\"}}]", "a".repeat(40));
        let _ = c.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        return;
    }
    let (content, fault) = {
        let mut u = up.lock().expect("upstream");
        let fault = if rand::rng().random_bool(u.fault_rate) {
            FAULTS[rand::rng().random_range(0..FAULTS.len())]
        } else {
            Fault::None
        };
        *u.served.entry(format!("{fault:?}")).or_default() += 1;
        (u.content.clone(), fault)
    };
    let inm = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("if-none-match:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let etag = format!("\"{}\"", blob_id(&content));
    // `claims`: the bytes the headers describe (the blob id for forgejo, a Content-Digest for
    // plain http), which an altered answer does not match.
    let ok = |body: &[u8], claims: &[u8]| -> Vec<u8> {
        use base64::Engine;
        use sha2::Digest;
        let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(claims));
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{}\"\r\nContent-Digest: sha-256=:{digest}:\r\nConnection: close\r\n\r\n",
            body.len(),
            blob_id(claims)
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    // A served body that is what it claims.
    let genuine = |body: &[u8]| ok(body, body);
    let out: Vec<u8> = match fault {
        Fault::None => {
            if inm.as_deref() == Some(etag.as_str()) {
                format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\n\r\n")
                    .into_bytes()
            } else {
                ok(&content, &content)
            }
        }
        Fault::Status5xx => {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec()
        }
        Fault::Unauthorized => b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        Fault::Timeout => {
            std::thread::sleep(Duration::from_millis(1500));
            return;
        }
        Fault::SlowDrip => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n",
                content.len()
            );
            let _ = c.write_all(head.as_bytes());
            for b in content.iter() {
                if c.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Fault::ShortWithLength => {
            let cut = &content[..content.len() / 2];
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\r\n",
                content.len()
            )
            .into_bytes();
            r.extend_from_slice(cut);
            r
        }
        Fault::ShortClosed => {
            // Cut at a line boundary, so it still parses as YAML; no length, no chunking.
            let end = content[..content.len() - 1]
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            let mut r = format!("HTTP/1.1 200 OK\r\nETag: {etag}\r\nConnection: close\r\n\r\n")
                .into_bytes();
            r.extend_from_slice(&content[..end]);
            r
        }
        Fault::Oversize => genuine(&vec![b'#'; 300 * 1024]),
        Fault::NotUtf8 => genuine(b"bucket_definitions:\n  g: \xff\xfe\n"),
        Fault::Html => genuine(b"<html><body>Sign in</body></html>\n"),
        Fault::List => genuine(b"- bucket_definitions\n- streams\n"),
        Fault::Scalar => genuine(b"bucket_definitions\n"),
        Fault::Altered => {
            let mut v = content.clone();
            if let Some(i) = v.iter().rposition(|b| b.is_ascii_lowercase()) {
                v[i] = if v[i] == b'x' { b'y' } else { b'x' };
            }
            ok(&v, &content)
        }
    };
    let _ = c.write_all(&out);
    let _ = c.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------------------------------
// The world: a target, the managed service, the binary
// ---------------------------------------------------------------------------------------

fn fakesvc() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/fakesvc.py")
        .display()
        .to_string()
}

fn rules(tag: &str, health: &str) -> Vec<u8> {
    let h = match health {
        "good" => String::new(),
        other => format!("health: {other}\n"),
    };
    format!("# {tag}\n{h}bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n")
        .into_bytes()
}

struct World {
    dir: tempfile::TempDir,
    svc: PathBuf,
    port: u16,
    config: PathBuf,
    bin: PathBuf,
}

impl World {
    fn new(bin: &Path, targets: &[(&str, String)], listen: u16, interval: &str) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = dir.path().join("svc");
        std::fs::create_dir_all(&svc).unwrap();
        std::fs::create_dir_all(dir.path().join("live")).unwrap();
        let port = free_port();
        let mut yaml = format!(
            "listen: 127.0.0.1:{listen}\nstate_dir: {}\nstartup_timeout: 5s\ntargets:\n",
            dir.path().join("state").display()
        );
        for (name, source) in targets {
            yaml.push_str(&format!(
                "  {name}:\n    source: {source}\n    path: {}\n    max_bytes: 65536\n    interval: {interval}\n\
                 \x20   validate: {{ require_keys: [bucket_definitions, streams] }}\n\
                 \x20   restart: {{ command: [python3, \"{}\", restart, \"{}\"], timeout: 10s }}\n\
                 \x20   verify: {{ http: \"http://127.0.0.1:{port}/probe\", interval: 50ms, successes: 8, timeout: 1s }}\n",
                dir.path().join(format!("live/{name}.yaml")).display(),
                fakesvc(),
                svc.display()
            ));
        }
        let config = dir.path().join("rulekeeper.yaml");
        std::fs::write(&config, yaml).unwrap();
        let first = targets.first().map(|(n, _)| *n).unwrap_or("t");
        std::fs::write(
            svc.join("svc.json"),
            format!(
                "{{\"rules\": \"{}\", \"port\": {port}}}",
                dir.path().join(format!("live/{first}.yaml")).display()
            ),
        )
        .unwrap();
        World {
            dir,
            svc,
            port,
            config,
            bin: bin.to_path_buf(),
        }
    }

    fn live(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.path().join(format!("live/{name}.yaml"))).ok()
    }

    fn temps(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("live"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(".rk-"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.svc.join("restarts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn probe_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /probe HTTP/1.0\r\n\r\n");
        let mut b = String::new();
        let _ = s.read_to_string(&mut b);
        b.starts_with("HTTP/1.0 200") || b.starts_with("HTTP/1.1 200")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .arg("-c")
            .arg(&self.config)
            .env_remove("NOTIFY_SOCKET")
            .env("RULEKEEPER_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    fn once(&self) -> (i32, String) {
        let out = self.command(&["once"]).output().expect("once");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn pending(&self, name: &str) -> bool {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("state/targets/{name}/state.json")),
        )
        .map(|s| s.contains("\"pending\": {"))
        .unwrap_or(false)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .args([fakesvc().as_str(), "stop", self.svc.to_str().unwrap_or("")])
            .output();
    }
}

/// What a storm saw.
#[derive(Default)]
struct Seen {
    kills: u64,
    /// The live file held bytes that are no revision (partial or invented).
    partial: u64,
    /// The live file was missing after something had been applied.
    missing: u64,
    temps_mid_storm: u64,
    outcomes: BTreeMap<String, u64>,
}

fn check_live(
    w: &World,
    name: &str,
    known: &HashSet<Vec<u8>>,
    applied_once: bool,
    seen: &mut Seen,
) {
    match w.live(name) {
        Some(b) if known.contains(&b) => {}
        Some(_) => seen.partial += 1,
        None if applied_once => seen.missing += 1,
        None => {}
    }
}

/// Sets upstream to a new good revision and runs `once` until it converges.
fn converge(w: &World, up: &Mutex<Upstream>, known: &mut HashSet<Vec<u8>>) -> String {
    let fin = rules("final", "good");
    known.insert(fin.clone());
    up.lock().expect("upstream").content = fin.clone();
    let mut tries = 0;
    loop {
        tries += 1;
        let (code, out) = w.once();
        let ok = code == 0 && w.live("t").as_deref() == Some(fin.as_slice());
        if ok || tries >= 5 {
            let healthy = w.probe_ok();
            let started_on_final = std::fs::read_to_string(w.svc.join("starts.log"))
                .map(|s| s.lines().last() == Some("start # final"))
                .unwrap_or(false);
            return format!(
                "converged: {} after {tries} `once` run(s) (last exit {code}: {}); service healthy: {healthy}, running the final revision: {started_on_final}; pending record: {}; temp files: {}",
                if ok { "yes" } else { "NO" },
                out.trim(),
                w.pending("t"),
                w.temps()
            );
        }
    }
}

fn next_revision(i: u64) -> Vec<u8> {
    match rand::rng().random_range(0..3) {
        0 => rules(&format!("good-{i}"), "good"),
        1 => rules(&format!("unhealthy-{i}"), "bad"),
        _ => rules(&format!("crashing-{i}"), "flaky"),
    }
}

fn forge_source(port: u16) -> String {
    format!(
        "{{ kind: forgejo, base_url: \"http://127.0.0.1:{port}\", repo: o/r, path: rules.yaml, timeout: 1s }}"
    )
}

// ---------------------------------------------------------------------------------------
// The storms
// ---------------------------------------------------------------------------------------

/// A kill storm's world: an upstream on a good revision, one target polling it every
/// `interval`, already applied once; and the set of every revision upstream ever served.
fn kill_storm_world(bin: &Path, interval: &str) -> (Arc<Mutex<Upstream>>, World, HashSet<Vec<u8>>) {
    let up = Arc::new(Mutex::new(Upstream {
        content: rules("start", "good"),
        fault_rate: 0.0,
        served: BTreeMap::new(),
    }));
    let port = serve_upstream(up.clone());
    let w = World::new(bin, &[("t", forge_source(port))], free_port(), interval);
    let (code, _) = w.once();
    assert_eq!(code, 0, "the first apply works");
    (up, w, HashSet::from([rules("start", "good")]))
}

/// Upstream moves to a random next revision (good, unhealthy or crashing).
fn move_upstream(up: &Mutex<Upstream>, known: &mut HashSet<Vec<u8>>, i: u64) {
    let r = next_revision(i);
    known.insert(r.clone());
    up.lock().expect("upstream").content = r;
}

fn kill_storm_once(bin: &Path, kills: u64) {
    let (up, w, mut known) = kill_storm_world(bin, "1h");
    let mut seen = Seen::default();
    let t0 = Instant::now();
    for i in 0..kills {
        // Upstream moves every few runs, so kills land in applies, verifications and rollbacks.
        if i % 3 == 0 {
            move_upstream(&up, &mut known, i);
        }
        let mut child = w
            .command(&["once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn once");
        let at = Duration::from_millis(rand::rng().random_range(0..1500));
        let started = Instant::now();
        let mut finished = false;
        while started.elapsed() < at {
            if let Ok(Some(_)) = child.try_wait() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !finished {
            let _ = child.kill();
            seen.kills += 1;
        }
        let _ = child.wait();
        *seen
            .outcomes
            .entry(
                if finished {
                    "finished before the kill"
                } else {
                    "killed"
                }
                .to_string(),
            )
            .or_default() += 1;
        check_live(&w, "t", &known, true, &mut seen);
        if w.temps() > 0 {
            seen.temps_mid_storm += 1;
        }
    }
    let end = converge(&w, &up, &mut known);
    println!(
        "| once | {kills} runs | {} SIGKILLs | {:.0} s | partial live file: **{}** | missing live file: **{}** | runs leaving temps (until the next run): {} | {end} |",
        seen.kills,
        t0.elapsed().as_secs_f64(),
        seen.partial,
        seen.missing,
        seen.temps_mid_storm,
    );
}

fn kill_storm_run(bin: &Path, kills: u64) {
    let (up, w, mut known) = kill_storm_world(bin, "1s");
    let mut seen = Seen::default();
    let t0 = Instant::now();
    for i in 0..kills {
        if i % 2 == 0 {
            move_upstream(&up, &mut known, i);
        }
        let mut child = w
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..2500)));
        let _ = child.kill();
        let _ = child.wait();
        seen.kills += 1;
        check_live(&w, "t", &known, true, &mut seen);
        if w.temps() > 0 {
            seen.temps_mid_storm += 1;
        }
    }
    let end = converge(&w, &up, &mut known);
    println!(
        "| run | {kills} starts | {} SIGKILLs | {:.0} s | partial live file: **{}** | missing live file: **{}** | kills leaving temps (until the next start): {} | {end} |",
        seen.kills,
        t0.elapsed().as_secs_f64(),
        seen.partial,
        seen.missing,
        seen.temps_mid_storm,
    );
}

fn fault_storm(bin: &Path, cycles: u64) {
    let up = Arc::new(Mutex::new(Upstream {
        content: rules("good-0", "good"),
        fault_rate: 0.8,
        served: BTreeMap::new(),
    }));
    let port = serve_upstream(up.clone());
    let w = World::new(
        bin,
        &[
            ("t", forge_source(port)),
            (
                "h",
                format!("{{ kind: http, url: \"http://127.0.0.1:{port}/plain/rules.yaml\", timeout: 1s }}"),
            ),
        ],
        free_port(),
        "1h",
    );
    let mut good: HashSet<Vec<u8>> = HashSet::new();
    good.insert(rules("good-0", "good"));
    // Start from a healthy service on the first good revision.
    up.lock().expect("upstream").fault_rate = 0.0;
    let (code, out) = w.once();
    assert_eq!(code, 0, "the first apply works: {out}");
    up.lock().expect("upstream").fault_rate = 0.8;
    up.lock().expect("upstream").served.clear();
    let restarts0 = w.restarts();
    let mut changes = 0u64;
    let mut bad_installs = 0u64;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = (w.live("t"), w.live("h"));
    let t0 = Instant::now();
    let runs = cycles / 2;
    for i in 0..runs {
        // Now and then upstream flips: to a new good revision, or to one that fails validation.
        if rand::rng().random_bool(0.02) {
            let r = if rand::rng().random_bool(0.5) {
                let g = rules(&format!("good-{i}"), "good");
                good.insert(g.clone());
                g
            } else {
                format!("# invalid-{i}\nsomething_else: 1\n").into_bytes()
            };
            up.lock().expect("upstream").content = r;
        }
        let (_, out) = w.once();
        for line in out.lines() {
            if let Some((_, rest)) = line.split_once(": ") {
                let outcome = rest.split_whitespace().next().unwrap_or("?").to_string();
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
        let now = (w.live("t"), w.live("h"));
        for b in [&now.0, &now.1].into_iter().flatten() {
            if !good.contains(b) {
                bad_installs += 1;
            }
        }
        changes += (now.0 != last.0) as u64 + (now.1 != last.1) as u64;
        last = now;
    }
    let restarts = (w.restarts() - restarts0) as u64;
    let served = up.lock().expect("upstream").served.clone();
    println!(
        "| faults | {} cycles ({runs} `once` runs x 2 targets) | {:.0} s | bad installs: **{bad_installs}** | restarts: {restarts}, real changes between good revisions: {changes}, caused by faults: **{}** |",
        runs * 2,
        t0.elapsed().as_secs_f64(),
        restarts as i64 - changes as i64,
    );
    println!("outcomes: {outcomes:?}");
    println!("upstream answers served: {served:?}");
}

fn main() {
    let bin = binary();
    let only = std::env::var("RK_STORM_ONLY").unwrap_or_default();
    let want = |n: &str| only.is_empty() || only.split(',').any(|s| s.trim() == n);
    println!("binary: {}", bin.display());
    if want("once") {
        kill_storm_once(&bin, env_u64("RK_STORM_KILLS", 1000));
    }
    if want("run") {
        kill_storm_run(&bin, env_u64("RK_STORM_KILLS", 1000));
    }
    if want("faults") {
        fault_storm(&bin, env_u64("RK_STORM_CYCLES", 10_000));
    }
}
