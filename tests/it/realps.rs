//! The real PowerSync Service (1.25.0, built from `../shared/powersync`) for the tests in
//! `powersync_real.rs` and the parity corpus: the service on a private Postgres cluster.
//!
//! - `build()` runs `../shared/powersync/build <repo>/target/powersync` once per test process
//!   (or takes `RULEKEEPER_POWERSYNC_DIR`, a directory that build produced).
//! - `cluster()` is one Postgres cluster per test process (`initdb` as `nobody` in a temp dir,
//!   `wal_level=logical`, its own port on 127.0.0.1, the unix socket in that dir). Each test
//!   takes its own databases from it (`Cluster::db`: `app_N` with a known schema and publication,
//!   `psstore_N` for bucket storage), so tests in one process share it. A reaper (its own
//!   session, so Ctrl-C does not reach it) watches the test process: when that is gone it kills
//!   every PowerSync started under the cluster's dir, then Postgres, and removes the dir.
//! - `PowerSync` is one service: its `powersync.yaml`, started and stopped with
//!   `tests/support/psctl` (also rulekeeper's `restart.command` in the tests), and helpers for
//!   its probes and admin API.
//!
//! Where a piece is missing (Postgres binaries, `setpriv`, the build failing because the package
//! registries cannot be reached) the tests skip loudly; with `RULEKEEPER_REQUIRE_TOOLS=1` they
//! fail instead.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{free_port, repo_root, require_tool, wait_until};

/// PowerSync's admin API token (`api.tokens`).
pub const TOKEN: &str = "admintoken";
/// The Postgres password of `postgres`.
pub const PASSWORD: &str = "pw";

/// The schema of every test's source database (`app_N`). The parity corpus
/// (`tests/corpus/sync-rules`) is written against it: `no_pk` has no primary key.
pub const SCHEMA: &str = "
create table lists(id text primary key, name text, owner_id text, created_at timestamptz);
create table todos(id text primary key, list_id text, description text, completed boolean,
                   created_by text, photo_id text);
create table users(id text primary key, name text, org_id text, is_admin boolean);
create table no_pk(id text, value text);
insert into lists values ('l1', 'groceries', 'u1', now()), ('l2', 'work', 'u2', now());
insert into todos values ('t1', 'l1', 'milk', false, 'u1', null);
insert into users values ('u1', 'ann', 'o1', true), ('u2', 'bob', 'o1', false);
create publication powersync for all tables;
";

/// Skips loudly (None), or panics under `RULEKEEPER_REQUIRE_TOOLS=1`.
pub fn skip<T>(why: &str) -> Option<T> {
    if std::env::var("RULEKEEPER_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("the real PowerSync Service is unavailable (RULEKEEPER_REQUIRE_TOOLS=1): {why}");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: the real PowerSync Service is unavailable: {why}; this test did not run !!!!!!!!\n"
    );
    None
}

/// A built PowerSync: `DIR/bin/node` and `DIR/src/service/lib/entry.js`.
#[derive(Clone, Debug)]
pub struct Build {
    pub dir: PathBuf,
}

impl Build {
    pub fn node(&self) -> PathBuf {
        self.dir.join("bin/node")
    }
    pub fn entry(&self) -> PathBuf {
        self.dir.join("src/service/lib/entry.js")
    }
    fn check(dir: PathBuf) -> Result<Build, String> {
        let b = Build { dir };
        if b.node().is_file() && b.entry().is_file() {
            Ok(b)
        } else {
            Err(format!(
                "{} has no bin/node or src/service/lib/entry.js",
                b.dir.display()
            ))
        }
    }
}

/// Builds PowerSync once per test process (the build script is a no-op when it is built).
pub fn build() -> Option<Build> {
    static BUILT: OnceLock<Result<Build, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        if let Some(d) = std::env::var_os("RULEKEEPER_POWERSYNC_DIR") {
            return Build::check(PathBuf::from(d));
        }
        let script = repo_root().join("../shared/powersync/build");
        if !script.is_file() {
            return Err(format!("{} is missing", script.display()));
        }
        let dir = repo_root().join("target/powersync");
        let log = dir.with_extension("build.log");
        let out = Command::new(&script)
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::write(&log, &text);
        if !out.status.success() {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "`{} {}` failed ({}); offline, or the registries cannot be reached? Last lines:\n{}",
                script.display(),
                dir.display(),
                out.status,
                tail.join("\n")
            ));
        }
        Build::check(dir)
    });
    match r {
        Ok(b) => Some(b.clone()),
        Err(why) => skip(why),
    }
}

/// The directory with Postgres' server binaries (Debian: /usr/lib/postgresql/N/bin).
pub fn pg_bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    crate::util::which("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// One Postgres cluster for the whole test process.
pub struct Cluster {
    pub root: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    next: AtomicUsize,
}

/// A test's databases in the cluster.
#[derive(Clone, Debug)]
pub struct Db {
    pub n: usize,
    pub app: String,
    pub store: String,
}

/// The shared cluster, started on first use.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => Some(c),
        Err(why) => skip(why),
    }
}

/// Runs `argv` as `nobody` when we are root (initdb and postgres refuse to run as root).
fn unprivileged(argv: &[&str]) -> Command {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args(argv);
        c
    } else {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    }
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let bindir = pg_bindir().ok_or("no Postgres (apt-get install postgresql)")?;
        // SAFETY: getuid has no preconditions.
        let root_user = unsafe { libc::getuid() } == 0;
        if root_user && require_tool("setpriv").is_none() {
            return Err("setpriv (util-linux) is missing".into());
        }
        let root = std::env::temp_dir().join(format!("rk-realps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
        if root_user {
            let ok = Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(&root)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(format!("chown nobody {}", root.display()));
            }
        }
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| e.to_string())?;
        let data = root.join("data");
        let bin = |n: &str| bindir.join(n).display().to_string();
        let out = unprivileged(&[
            &bin("initdb"),
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            &format!("--pwfile={}", pwfile.display()),
            "--no-sync",
            "-E",
            "UTF8",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port();
        let postgres = bin("postgres");
        let settings = [
            "wal_level=logical".to_string(),
            format!("port={port}"),
            "listen_addresses=127.0.0.1".to_string(),
            format!("unix_socket_directories={}", root.display()),
            "fsync=off".to_string(),
            "synchronous_commit=off".to_string(),
            "full_page_writes=off".to_string(),
            "max_connections=300".to_string(),
            "max_replication_slots=100".to_string(),
            "max_wal_senders=100".to_string(),
        ];
        let mut argv: Vec<String> = vec![postgres, "-D".into(), data.display().to_string()];
        for s in settings {
            argv.push("-c".into());
            argv.push(s);
        }
        let pg = unprivileged(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        let mut pg_argv: Vec<String> = vec![pg.get_program().to_string_lossy().into_owned()];
        pg_argv.extend(pg.get_args().map(|a| a.to_string_lossy().into_owned()));
        // The reaper: its own session; postgres runs as its child. When the test process is
        // gone: every PowerSync under root, then postgres (immediate shutdown), then root.
        let reaper = r#"
parent=$1; root=$2; shift 2
"$@" &
pg=$!
while kill -0 "$parent" 2>/dev/null && kill -0 "$pg" 2>/dev/null; do sleep 0.5; done
for f in "$root"/ps-*/pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
kill -QUIT "$pg" 2>/dev/null
wait "$pg"
rm -rf "$root"
"#;
        let log = std::fs::File::create(root.join("postgres.log")).map_err(|e| e.to_string())?;
        Command::new("setsid")
            .args(["sh", "-c", reaper, "reaper"])
            .arg(std::process::id().to_string())
            .arg(&root)
            .args(&pg_argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn postgres: {e}"))?;
        let c = Cluster {
            root,
            port,
            bindir,
            next: AtomicUsize::new(0),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !c.psql("postgres", "select 1").0 {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "postgres did not come up: {}",
                    std::fs::read_to_string(c.root.join("postgres.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// `psql -c SQL` on database `db` over TCP (as PowerSync connects).
    pub fn psql(&self, db: &str, sql: &str) -> (bool, String) {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    /// Fresh databases for one test: `app_N` (schema [`SCHEMA`]) and `psstore_N`.
    pub fn db(&self) -> Db {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let db = Db {
            n,
            app: format!("app_{n}"),
            store: format!("psstore_{n}"),
        };
        for name in [&db.app, &db.store] {
            let (ok, out) = self.psql("postgres", &format!("create database {name}"));
            assert!(ok, "create database {name}: {out}");
        }
        let (ok, out) = self.psql(&db.app, SCHEMA);
        assert!(ok, "schema of {}: {out}", db.app);
        db
    }

    /// Replication slots of a test's source database.
    pub fn slots(&self, db: &Db) -> Vec<String> {
        let (ok, out) = self.psql(
            "postgres",
            &format!(
                "select slot_name from pg_replication_slots where database = '{}' order by 1",
                db.app
            ),
        );
        assert!(ok, "{out}");
        out.lines().map(str::to_string).collect()
    }
}

/// One version of the sync rules in PowerSync's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub id: u32,
    pub state: String,
    pub slot: String,
    pub snapshot_done: bool,
}

/// Where PowerSync reads its rules from.
pub enum Rules {
    /// `sync_config: {path}`: read once at start.
    File(PathBuf),
    /// No `sync_config:` block: deployed through the API.
    Api,
}

/// One PowerSync Service: its directory (config, pid, logs) under the cluster's root, its
/// databases and its port. Not started by `new`; dropping it stops it.
pub struct PowerSync {
    pub dir: PathBuf,
    pub port: u16,
    pub db: Db,
    pub cluster: &'static Cluster,
}

/// `tests/support/psctl`.
pub fn psctl() -> PathBuf {
    repo_root().join("tests/support/psctl")
}

impl PowerSync {
    /// Prepares a service (build, cluster, databases, `powersync.yaml`), or None (skipped).
    pub fn new(rules: Rules) -> Option<PowerSync> {
        let build = build()?;
        let cluster = cluster()?;
        let db = cluster.db();
        let dir = cluster.root.join(format!("ps-{}", db.n));
        std::fs::create_dir_all(&dir).expect("mkdir powersync dir");
        let port = free_port();
        let config = config_yaml(cluster.port, &db, port, &rules);
        std::fs::write(dir.join("powersync.yaml"), config).expect("write powersync.yaml");
        std::fs::write(
            dir.join("env"),
            format!(
                "NODE='{}'\nENTRY='{}'\n",
                build.node().display(),
                build.entry().display()
            ),
        )
        .expect("write env");
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("write token");
        Some(PowerSync {
            dir,
            port,
            db,
            cluster,
        })
    }

    fn psctl(&self, cmd: &str) {
        let out = Command::new(psctl())
            .arg(cmd)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run psctl");
        assert!(
            out.status.success(),
            "psctl {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the service and waits for its liveness probe.
    pub fn start(&self) {
        self.psctl("start");
        self.wait_live();
    }

    pub fn stop(&self) {
        self.psctl("stop");
    }

    /// `restart:` for rulekeeper: psctl restart on this service.
    pub fn restart_command(&self) -> String {
        format!(
            "{{ command: [\"{}\", restart, \"{}\"], timeout: 60s }}",
            psctl().display(),
            self.dir.display()
        )
    }

    /// How many restarts psctl was asked for.
    pub fn restarts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("restarts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The token file for rulekeeper's `powersync_api` keys.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The running process, if any (psctl's pid file, checked against /proc).
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z').then_some(pid)
    }

    /// PowerSync's own log (stdout and stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("powersync.log")).unwrap_or_default()
    }

    /// One HTTP/1.0 request to this service; None when the connection fails.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &str)>,
    ) -> Option<(u16, String)> {
        request(self.port, method, path, body)
    }

    fn json(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> serde_json::Value {
        let (code, text) = self
            .http(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer; log:\n{}", self.log_tail()));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {code} {text:?}: {e}"));
        assert!(code < 500, "{method} {path}: {code} {text}");
        v
    }

    pub fn live_ok(&self) -> bool {
        matches!(self.http("GET", "/probes/liveness", None), Some((200, _)))
    }

    pub fn wait_live(&self) {
        let what = format!("PowerSync on port {} live", self.port);
        wait_until(60, &what, || self.live_ok());
    }

    /// `POST /api/admin/v1/diagnostics {"sync_rules_content": true}`.
    pub fn diagnostics(&self) -> serde_json::Value {
        self.json(
            "POST",
            "/api/admin/v1/diagnostics",
            Some(("application/json", r#"{"sync_rules_content": true}"#)),
        )
    }

    /// `POST /api/admin/v1/validate {"sync_rules": yaml}`: the `data` of the answer.
    pub fn validate(&self, yaml: &str) -> serde_json::Value {
        let body = serde_json::json!({ "sync_rules": yaml }).to_string();
        self.json(
            "POST",
            "/api/admin/v1/validate",
            Some(("application/json", &body)),
        )["data"]
            .clone()
    }

    /// `POST /api/sync-rules/v1/deploy` (YAML body): status and answer.
    pub fn deploy(&self, yaml: &str) -> (u16, serde_json::Value) {
        let (code, text) = self
            .http(
                "POST",
                "/api/sync-rules/v1/deploy",
                Some(("application/yaml", yaml)),
            )
            .expect("deploy: no answer");
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// `GET /api/sync-rules/v1/current`.
    pub fn current(&self) -> serde_json::Value {
        self.json("GET", "/api/sync-rules/v1/current", None)
    }

    /// The diagnostics' `active_sync_rules` (Null when there are none).
    pub fn active(&self) -> serde_json::Value {
        self.diagnostics()["data"]["active_sync_rules"].clone()
    }

    /// Waits until `content` is active and nothing is deploying.
    pub fn wait_active(&self, content: &str) {
        wait_until(60, "rules active in PowerSync's diagnostics", || {
            let d = self.diagnostics();
            d["data"]["deploying_sync_rules"].is_null()
                && d["data"]["active_sync_rules"]["content"]
                    .as_str()
                    .map(str::trim)
                    == Some(content.trim())
        });
    }

    /// The versions of the sync rules in PowerSync's bucket storage (`psstore_N.sync_rules`),
    /// oldest first: id, state (ACTIVE, PROCESSING, STOP, TERMINATED), slot and whether the
    /// initial snapshot is done. Read from Postgres: no PowerSync request can hang on it.
    pub fn versions(&self) -> Vec<Version> {
        let (ok, out) = self.cluster.psql(
            &self.db.store,
            "select id, state, coalesce(slot_name, ''), snapshot_done from powersync.sync_rules order by id",
        );
        assert!(ok, "{out}");
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                Some(Version {
                    id: f.first()?.parse().ok()?,
                    state: f.get(1)?.to_string(),
                    slot: f.get(2)?.to_string(),
                    snapshot_done: *f.get(3)? == "t",
                })
            })
            .collect()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A `powersync.yaml` (as in ../shared/powersync/README.md) for a Postgres on
/// 127.0.0.1:`pg_port` with databases `db`, serving on `port`.
pub fn config_yaml(pg_port: u16, db: &Db, port: u16, rules: &Rules) -> String {
    let sync = match rules {
        Rules::File(p) => format!("sync_config:\n  path: {}\n", p.display()),
        Rules::Api => String::new(),
    };
    let pg = |db: &str| format!("postgres://postgres:{PASSWORD}@127.0.0.1:{pg_port}/{db}");
    format!(
        "replication:
  connections:
    - type: postgresql
      uri: {}
      sslmode: disable
storage:
  type: postgresql
  uri: {}
  sslmode: disable
port: {port}
{sync}client_auth:
  jwks:
    keys:
      - {{ kty: oct, alg: HS256, kid: k1, k: c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0 }}
  audience: ['powersync']
api:
  tokens: [{TOKEN}]
telemetry:
  disable_telemetry_sharing: true
system:
  logging: {{ level: info, format: text }}
",
        pg(&db.app),
        pg(&db.store)
    )
}

/// One HTTP/1.0 request (so no chunked answers) with the admin token to a PowerSync on
/// 127.0.0.1:`port` (in whatever network namespace the calling thread is); None when the
/// connection fails.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut req =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n");
    if let Some((ctype, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Fatal errors of a diagnostics or validate entry (`errors: [{level, message}]`).
pub fn fatal_errors(entry: &serde_json::Value) -> Vec<String> {
    entry["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"].as_str() != Some("warning"))
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

impl Drop for PowerSync {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The cluster's dir goes when the test process exits: keep the whole log.
            let keep = std::env::temp_dir().join(format!(
                "rk-powersync-{}-{}.log",
                std::process::id(),
                self.db.n
            ));
            let _ = std::fs::copy(self.dir.join("powersync.log"), &keep);
            eprintln!(
                "---- PowerSync {} log (last 40 lines; all of it in {}) ----\n{}\n---- versions: {:?}",
                self.dir.display(),
                keep.display(),
                self.log_tail(),
                self.versions()
            );
        }
        let _ = Command::new(psctl())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}
