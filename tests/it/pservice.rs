//! A PowerSync Service for the tests in `powersync_real.rs`, `powersync_deploy.rs` and the
//! parity corpus: one test body, two backends, chosen here and nowhere else.
//!
//! - **The real service** (`Backend::Real`) when `RULEKEEPER_POWERSYNC_DIR` names a build that
//!   someone made from the public source (`powersync-ja/powersync-service`; nothing in this
//!   repository builds it): a directory holding `bin/node` and `src/service/lib/entry.js`. It
//!   runs on a private Postgres cluster (`cluster()`): one per test process, `initdb` as
//!   `nobody`, `wal_level=logical`, its own port on 127.0.0.1, databases per test.
//! - **The stand-in** (`Backend::StandIn`) otherwise: `tests/support/powersync-standin.mjs` on
//!   the Node and the `@powersync/service-sync-rules` parser that `npm ci --prefix
//!   contrib/powersync` installs. It is not the service: no Postgres, no replication; its
//!   schema is [`STANDIN_SCHEMA`], the same tables as [`SCHEMA`]. The real service is its
//!   judge: the same scenarios run against both, so a stand-in that drifts fails them.
//!
//! Where the two must differ, the difference lives here, in one place: how a table is held up
//! (`PowerSync::hold_table`: a Postgres lock, or a file the stand-in watches), how a big
//! table is made (`PowerSync::big_table`), where versions are read from
//! (`PowerSync::versions`), and [`Backend::is_real`] for the parity corpus, which only the real
//! service can judge.
//!
//! Without a build the real-only tests skip loudly; `RULEKEEPER_REQUIRE_TOOLS=1` does not make
//! them required, `RULEKEEPER_REQUIRE_POWERSYNC=1` does. Without `contrib/powersync/node_modules`
//! the stand-in tests skip, and fail under `RULEKEEPER_REQUIRE_TOOLS=1`.
//!
//! `PowerSync` is one service: its directory (config, pid, log) under a per-process root that a
//! reaper removes, with every service under it, when the test process is gone (even after
//! `kill -9`); started and stopped with `tests/support/psctl` (also rulekeeper's
//! `restart.command` in the tests).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{free_port, repo_root, require_tool, wait_until, Need};

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

/// [`SCHEMA`] as the stand-in reads it (`standin.json`): table -> columns and primary key.
pub const STANDIN_SCHEMA: &str = r#"{
  "lists": {"columns": {"id": "text", "name": "text", "owner_id": "text", "created_at": "timestamptz"}, "primary_key": ["id"]},
  "todos": {"columns": {"id": "text", "list_id": "text", "description": "text", "completed": "boolean", "created_by": "text", "photo_id": "text"}, "primary_key": ["id"]},
  "users": {"columns": {"id": "text", "name": "text", "org_id": "text", "is_admin": "boolean"}, "primary_key": ["id"]},
  "no_pk": {"columns": {"id": "text", "value": "text"}, "primary_key": []}
}"#;

/// The stand-in's `big` table (see [`PowerSync::big_table`]): its initial replication takes
/// this long, as 200,000 rows take the real service on this kind of machine.
const STANDIN_BIG_MS: u64 = 20_000;

/// A built PowerSync: `DIR/bin/node` and `DIR/src/service/lib/entry.js`.
#[derive(Clone, Debug)]
pub struct Build {
    pub dir: PathBuf,
}

impl Build {
    fn check(dir: PathBuf) -> Result<Build, String> {
        let b = Build { dir };
        if b.dir.join("bin/node").is_file() && b.dir.join("src/service/lib/entry.js").is_file() {
            Ok(b)
        } else {
            Err(format!(
                "RULEKEEPER_POWERSYNC_DIR={} has no bin/node or src/service/lib/entry.js",
                b.dir.display()
            ))
        }
    }
}

/// Which PowerSync the tests talk to.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The real service, from `RULEKEEPER_POWERSYNC_DIR`.
    Real(Build),
    /// `tests/support/powersync-standin.mjs` on contrib/powersync's pinned Node.
    StandIn { node: PathBuf },
}

impl Backend {
    pub fn is_real(&self) -> bool {
        matches!(self, Backend::Real(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Real(_) => "the real PowerSync Service",
            Backend::StandIn { .. } => "the PowerSync stand-in",
        }
    }

    pub fn node(&self) -> PathBuf {
        match self {
            Backend::Real(b) => b.dir.join("bin/node"),
            Backend::StandIn { node } => node.clone(),
        }
    }

    pub fn entry(&self) -> PathBuf {
        match self {
            Backend::Real(b) => b.dir.join("src/service/lib/entry.js"),
            Backend::StandIn { .. } => repo_root().join("tests/support/powersync-standin.mjs"),
        }
    }
}

/// The Node that `npm ci --prefix contrib/powersync` installs (package `node`).
pub fn pinned_node() -> Option<PathBuf> {
    let dir = repo_root().join("contrib/powersync/node_modules");
    let mut candidates = vec![dir.join(".bin/node"), dir.join("node/bin/node")];
    for base in [dir.join("node/node_modules"), dir.clone()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("node-") {
                candidates.push(e.path().join("bin/node"));
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The backend, chosen once per test process: the real service when `RULEKEEPER_POWERSYNC_DIR`
/// is set (a wrong directory fails the tests: it was asked for), else the stand-in.
pub fn backend() -> Option<&'static Backend> {
    static BACKEND: OnceLock<Result<Backend, (Need, String)>> = OnceLock::new();
    let chosen = BACKEND.get_or_init(|| {
        if let Some(d) = std::env::var_os("RULEKEEPER_POWERSYNC_DIR") {
            return match Build::check(PathBuf::from(d)) {
                Ok(b) => Ok(Backend::Real(b)),
                Err(why) => panic!("{why}"),
            };
        }
        if Need::PowerSync.required() {
            panic!(
                "RULEKEEPER_REQUIRE_POWERSYNC=1 but RULEKEEPER_POWERSYNC_DIR is not set: build                  the service from powersync-ja/powersync-service and name the build there"
            );
        }
        match pinned_node() {
            Some(node) => Ok(Backend::StandIn { node }),
            None => Err((
                Need::Tool,
                "the PowerSync stand-in needs contrib/powersync's Node and parser (npm ci \
                 --prefix contrib/powersync)"
                    .to_string(),
            )),
        }
    });
    match chosen {
        Ok(b) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("PowerSync tests run against {}", b.name()));
            Some(b)
        }
        Err((need, why)) => crate::util::skip(*need, why),
    }
}

/// The real service only (the parity corpus, the benchmark): a loud skip without a build, a
/// failure under `RULEKEEPER_REQUIRE_POWERSYNC=1`.
pub fn real() -> Option<&'static Backend> {
    let b = backend()?;
    if b.is_real() {
        return Some(b);
    }
    crate::util::skip(
        Need::PowerSync,
        "this test needs the real PowerSync Service: set RULEKEEPER_POWERSYNC_DIR to a build of \
         powersync-ja/powersync-service (bin/node, src/service/lib/entry.js)",
    )
}

/// A reaper in its own session (so Ctrl-C does not reach it) that waits for the test process
/// to go, then kills every PowerSync under `root` (`ps-*/pid`), then runs `then` (shell), then
/// removes `root`. `argv`, when given, runs as the reaper's child and its end ends the wait too.
fn spawn_reaper(root: &Path, then: &str, argv: &[String], log: &Path) -> Result<(), String> {
    let script = format!(
        r#"
parent=$1; root=$2; shift 2
child=
if [ $# -gt 0 ]; then "$@" & child=$!; fi
while kill -0 "$parent" 2>/dev/null && {{ [ -z "$child" ] || kill -0 "$child" 2>/dev/null; }}; do sleep 0.5; done
for f in "$root"/ps-*/pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
{then}
rm -rf "$root"
"#
    );
    let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
    Command::new("setsid")
        .args(["sh", "-c", &script, "reaper"])
        .arg(std::process::id().to_string())
        .arg(root)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn the reaper: {e}"))?;
    Ok(())
}

/// The stand-ins' root for this test process, reaped with it.
fn standin_root() -> Option<&'static StandInRoot> {
    static ROOT: OnceLock<Result<StandInRoot, String>> = OnceLock::new();
    let r = ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("rk-standin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
        let log = root.join("reaper.log");
        spawn_reaper(&root, "", &[], &log)?;
        Ok(StandInRoot {
            root,
            next: AtomicUsize::new(0),
        })
    });
    match r {
        Ok(r) => Some(r),
        Err(why) => crate::util::skip(Need::Tool, why),
    }
}

struct StandInRoot {
    root: PathBuf,
    next: AtomicUsize,
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
    pub bindir: PathBuf,
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
        Err(why) => crate::util::skip(Need::Tool, &format!("Postgres for PowerSync: {why}")),
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
        // Postgres runs as the reaper's child: an immediate shutdown once the tests are gone.
        spawn_reaper(
            &root,
            r#"kill -QUIT "$child" 2>/dev/null; wait "$child""#,
            &pg_argv,
            &root.join("postgres.log"),
        )?;
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
    pub backend: &'static Backend,
    /// The real service's databases and cluster; None for the stand-in.
    pub pg: Option<(Db, &'static Cluster)>,
}

/// `tests/support/psctl`.
pub fn psctl() -> PathBuf {
    repo_root().join("tests/support/psctl")
}

/// A table held up (see [`PowerSync::hold_table`]); dropping it releases the table.
pub struct Hold {
    release: Box<dyn FnMut()>,
}

impl Hold {
    pub fn release(&mut self) {
        (self.release)();
        self.release = Box::new(|| {});
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        (self.release)();
    }
}

/// The stand-in's knobs (`standin.json` beside its config): the schema of [`SCHEMA`], and how
/// long a new version replicates.
pub fn standin_knobs(big_ms: Option<u64>) -> String {
    let big = big_ms.map_or(String::new(), |ms| {
        format!(r#", "table_replication_ms": {{"big": {ms}}}"#)
    });
    let schema = STANDIN_SCHEMA.trim_end().trim_end_matches('}');
    let schema = if big_ms.is_some() {
        format!(
            r#"{schema},  "big": {{"columns": {{"id": "text", "payload": "text"}}, "primary_key": ["id"]}}
}}"#
        )
    } else {
        format!("{schema}}}")
    };
    format!(r#"{{"schema": {schema}, "replication_ms": 300{big}}}"#)
}

impl PowerSync {
    /// Prepares a service (backend, databases for the real one, `powersync.yaml`), or None
    /// (skipped).
    pub fn new(rules: Rules) -> Option<PowerSync> {
        let backend = backend()?;
        let port = free_port();
        let (dir, pg) = match backend {
            Backend::Real(_) => {
                let cluster = cluster()?;
                let db = cluster.db();
                let dir = cluster.root.join(format!("ps-{}", db.n));
                (dir, Some((db, cluster)))
            }
            Backend::StandIn { .. } => {
                let root = standin_root()?;
                let n = root.next.fetch_add(1, Ordering::SeqCst);
                (root.root.join(format!("ps-{n}")), None)
            }
        };
        std::fs::create_dir_all(&dir).expect("mkdir powersync dir");
        let (pg_port, db) = match &pg {
            Some((db, cluster)) => (cluster.port, db.clone()),
            // The stand-in reads no database; the config names one all the same.
            None => (
                5432,
                Db {
                    n: 0,
                    app: "app".into(),
                    store: "psstore".into(),
                },
            ),
        };
        std::fs::write(
            dir.join("powersync.yaml"),
            config_yaml(pg_port, &db, port, &rules),
        )
        .expect("write powersync.yaml");
        if !backend.is_real() {
            std::fs::write(dir.join("standin.json"), standin_knobs(None)).expect("standin.json");
        }
        std::fs::write(
            dir.join("env"),
            format!(
                "NODE='{}'\nENTRY='{}'\n",
                backend.node().display(),
                backend.entry().display()
            ),
        )
        .expect("write env");
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("write token");
        Some(PowerSync {
            dir,
            port,
            backend,
            pg,
        })
    }

    /// Holds up the initial replication of `table`: the real service's snapshot waits on a
    /// lock taken in Postgres; the stand-in waits while `hold/<table>` exists.
    pub fn hold_table(&self, table: &str) -> Hold {
        match &self.pg {
            Some((db, cluster)) => {
                let app = format!("rk-hold-{table}");
                let mut locker = Command::new(cluster.bindir.join("psql"))
                    .args([
                        "-X",
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &cluster.port.to_string(),
                    ])
                    .args(["-U", "postgres", "-d", &db.app, "-c"])
                    .arg(format!(
                        "begin; lock table {table} in access exclusive mode; select pg_sleep(300);"
                    ))
                    .env("PGPASSWORD", PASSWORD)
                    .env("PGAPPNAME", &app)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("psql");
                wait_until(30, &format!("the lock on {table}"), || {
                    cluster
                        .psql(
                            &db.app,
                            &format!(
                                "select 1 from pg_locks l join pg_class c on c.oid = l.relation \
                                 where c.relname = '{table}' and l.mode = 'AccessExclusiveLock' and l.granted"
                            ),
                        )
                        .1
                        .trim()
                        == "1"
                });
                let cluster: &'static Cluster = cluster;
                Hold {
                    // End the locking backend: killing psql alone leaves it sleeping.
                    release: Box::new(move || {
                        let (ok, out) = cluster.psql(
                            "postgres",
                            &format!(
                                "select pg_terminate_backend(pid) from pg_stat_activity \
                                 where application_name = '{app}'"
                            ),
                        );
                        assert!(ok || std::thread::panicking(), "{out}");
                        let _ = locker.kill();
                        let _ = locker.wait();
                    }),
                }
            }
            None => {
                let file = self.dir.join("hold").join(table);
                std::fs::create_dir_all(file.parent().expect("hold dir")).expect("mkdir hold");
                std::fs::write(&file, "").expect("hold file");
                Hold {
                    release: Box::new(move || {
                        let _ = std::fs::remove_file(&file);
                    }),
                }
            }
        }
    }

    /// A table `big` whose initial replication takes tens of seconds: 200,000 rows in the real
    /// service's source database, [`STANDIN_BIG_MS`] for the stand-in.
    pub fn big_table(&self) {
        match &self.pg {
            Some((db, cluster)) => {
                let (ok, out) = cluster.psql(
                    &db.app,
                    "create table big(id text primary key, payload text); \
                     insert into big select g::text, repeat('x', 200) from generate_series(1, 200000) g;",
                );
                assert!(ok, "{out}");
            }
            None => std::fs::write(
                self.dir.join("standin.json"),
                standin_knobs(Some(STANDIN_BIG_MS)),
            )
            .expect("standin.json"),
        }
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

    /// The versions of the sync rules in PowerSync's bucket storage, oldest first: id, state
    /// (ACTIVE, PROCESSING, STOP, TERMINATED), slot and whether the initial snapshot is done.
    /// Read from storage (`psstore_N.sync_rules`, or the stand-in's `standin-storage.json`),
    /// never through the service: no request can hang on it.
    pub fn versions(&self) -> Vec<Version> {
        let Some((db, cluster)) = &self.pg else {
            let text =
                std::fs::read_to_string(self.dir.join("standin-storage.json")).unwrap_or_default();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            return v["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| Version {
                    id: e["id"].as_u64().unwrap_or(0) as u32,
                    state: e["state"].as_str().unwrap_or("").to_string(),
                    slot: e["slot"].as_str().unwrap_or("").to_string(),
                    snapshot_done: e["snapshot_done"].as_bool().unwrap_or(false),
                })
                .collect();
        };
        let (ok, out) = cluster.psql(
            &db.store,
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

/// A `powersync.yaml` (the run configuration recorded for 1.25.0, docs/powersync.md) for a Postgres on
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
                self.port
            ));
            let _ = std::fs::copy(self.dir.join("powersync.log"), &keep);
            eprintln!(
                "---- {} {} log (last 40 lines; all of it in {}) ----\n{}\n---- versions: {:?}",
                self.backend.name(),
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
