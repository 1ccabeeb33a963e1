//! Shared test harness: tool discovery, temp dirs, the built binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// docs/contract.md, "Metrics": every name the alerts and the dashboard may use.
pub const METRICS: [&str; 17] = [
    "rulekeeper_build_info",
    "rulekeeper_rules_info",
    "rulekeeper_last_success_timestamp_seconds",
    "rulekeeper_last_apply_timestamp_seconds",
    "rulekeeper_rollbacks_total",
    "rulekeeper_cycles_total",
    "rulekeeper_fetch_failures_total",
    "rulekeeper_quarantined",
    "rulekeeper_drift_corrections_total",
    "rulekeeper_cycle_duration_seconds",
    "rulekeeper_webhook_requests_total",
    "rulekeeper_held",
    "rulekeeper_gated",
    "rulekeeper_quarantined_info",
    "rulekeeper_poll_interval_seconds",
    "rulekeeper_powersync_deploying",
    "rulekeeper_commit_status_total",
];

/// docs/contract.md, "Metrics": the `outcome` label values of `rulekeeper_cycles_total`.
pub const CYCLE_OUTCOMES: [&str; 11] = [
    "unchanged",
    "applied",
    "rejected",
    "quarantined",
    "rolled_back",
    "rollback_failed",
    "fetch_failed",
    "held",
    "gated",
    "state_error",
    "failed",
];

/// Hex sha256 of a text, as rulekeeper reports content.
pub fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Path of the `rulekeeper` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rulekeeper"))
}

/// Root of the repository (for alerts/, grafana/, nix/, contrib/ ...).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What makes a missing piece a failure instead of a skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A tool CI installs: required under `RULEKEEPER_REQUIRE_TOOLS=1`.
    Tool,
    /// A build of the real PowerSync Service: required under `RULEKEEPER_REQUIRE_POWERSYNC=1`.
    PowerSync,
    /// nixpkgs' lib: required under `RULEKEEPER_REQUIRE_NIXPKGS=1`.
    Nixpkgs,
}

impl Need {
    fn variable(self) -> &'static str {
        match self {
            Need::Tool => "RULEKEEPER_REQUIRE_TOOLS",
            Need::PowerSync => "RULEKEEPER_REQUIRE_POWERSYNC",
            Need::Nixpkgs => "RULEKEEPER_REQUIRE_NIXPKGS",
        }
    }

    pub fn required(self) -> bool {
        std::env::var(self.variable()).as_deref() == Ok("1")
    }
}

/// The one way a test gives up on a missing piece: a loud skip (None), or a failure when
/// `need`'s variable says the piece is required.
pub fn skip<T>(need: Need, why: &str) -> Option<T> {
    if need.required() {
        panic!("{why} ({}=1)", need.variable());
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why}; this test did not run !!!!!!!!\n");
    None
}

/// Lines of YAML with their common indentation removed.
fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds an external tool on PATH. When it is missing the test is skipped with a loud
/// message, unless `RULEKEEPER_REQUIRE_TOOLS=1`, in which case the test fails.
/// Usage: `let Some(promtool) = util::require_tool("promtool") else { return };`
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = which(name) {
        return Some(p);
    }
    skip(Need::Tool, &format!("tool `{name}` is not installed"))
}

/// Looks a program up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a command and returns (status success, stdout, stderr) as strings.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("spawn command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit code, stdout and stderr of one `rulekeeper` run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until `cond` holds, polling every 20 ms, failing the test after `secs`.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The `source:` of a `file` source reading `path`.
pub fn file_source(path: &Path) -> String {
    format!("{{ kind: file, path: \"{}\" }}", path.display())
}

/// A rules file for the fake service: `tag` lands on the first line (the service logs it at
/// start), `health` is `good`, `bad` (probe 500) or `flaky` (200 then exit 1).
pub fn rules(tag: &str, health: &str) -> String {
    let h = match health {
        "good" => String::new(),
        other => format!("health: {other}\n"),
    };
    format!("# {tag}\n{h}bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n")
}

/// A YAML value from a flow-style fragment (`{ none: true }`, `[a, b]`, `5s`): how tests
/// spell the parts of a config they build. A fragment that does not parse fails the test.
pub fn yaml(fragment: &str) -> serde_yaml::Value {
    serde_yaml::from_str(fragment)
        .unwrap_or_else(|e| panic!("test config fragment {fragment:?}: {e}"))
}

/// A rulekeeper config built from parts and written as YAML: tests change a key of a target
/// ([`Target::set`]), never the text of a config file.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub state_dir: PathBuf,
    pub listen: u16,
    /// Other top-level keys (`startup_timeout`, ...).
    pub top: serde_yaml::Mapping,
    pub targets: Vec<(String, Target)>,
}

/// One target of a [`Cfg`]: its keys, in the order they were set.
#[derive(Clone, Debug, Default)]
pub struct Target(serde_yaml::Mapping);

impl Target {
    /// A target with its required keys.
    pub fn new(
        source: serde_yaml::Value,
        path: &Path,
        restart: serde_yaml::Value,
        verify: serde_yaml::Value,
    ) -> Target {
        Target::default()
            .set("source", source)
            .set("path", path.display().to_string())
            .set("restart", restart)
            .set("verify", verify)
    }

    /// Sets (or replaces) `key`.
    pub fn set(mut self, key: &str, value: impl Into<serde_yaml::Value>) -> Target {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Sets `key` inside the mapping at `outer` (e.g. `history.max_bytes`).
    pub fn set_in(mut self, outer: &str, key: &str, value: impl Into<serde_yaml::Value>) -> Target {
        let entry = self
            .0
            .entry(outer.into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
        if let serde_yaml::Value::Mapping(m) = entry {
            m.insert(key.into(), value.into());
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&serde_yaml::Value> {
        self.0.get(key)
    }
}

impl Cfg {
    pub fn new(state_dir: &Path, listen: u16) -> Cfg {
        Cfg {
            state_dir: state_dir.to_path_buf(),
            listen,
            top: Default::default(),
            targets: Vec::new(),
        }
    }

    pub fn target(mut self, name: &str, t: Target) -> Cfg {
        self.targets.retain(|(n, _)| n != name);
        self.targets.push((name.to_string(), t));
        self
    }

    pub fn top(mut self, key: &str, value: impl Into<serde_yaml::Value>) -> Cfg {
        self.top.insert(key.into(), value.into());
        self
    }

    pub fn yaml(&self) -> String {
        let mut root = serde_yaml::Mapping::new();
        root.insert(
            "state_dir".into(),
            self.state_dir.display().to_string().into(),
        );
        root.insert("listen".into(), format!("127.0.0.1:{}", self.listen).into());
        for (k, v) in &self.top {
            root.insert(k.clone(), v.clone());
        }
        let mut targets = serde_yaml::Mapping::new();
        for (n, t) in &self.targets {
            targets.insert(n.as_str().into(), serde_yaml::Value::Mapping(t.0.clone()));
        }
        root.insert("targets".into(), serde_yaml::Value::Mapping(targets));
        serde_yaml::to_string(&root).expect("config as YAML")
    }

    pub fn write(&self, file: &Path) {
        std::fs::write(file, self.yaml()).expect("write the config");
    }
}

/// One test's world: a temp dir with the live file, state dir, a fake managed service
/// (tests/support/fakesvc.py) and a config file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub live: PathBuf,
    pub state: PathBuf,
    pub svc: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    /// Where the fake service's directories live.
    pub services: PathBuf,
    /// The daemon's `listen` port.
    pub listen: u16,
    /// The config as last written (see [`Env::edit`]).
    pub cfg: std::cell::RefCell<Option<Cfg>>,
}

impl Env {
    pub fn new() -> Env {
        require_tool("python3").expect("python3 is needed by the fake service");
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("live/sync-rules.yaml");
        std::fs::create_dir_all(live.parent().unwrap()).unwrap();
        let services = dir.path().join("services");
        let svc = services.join("fake");
        std::fs::create_dir_all(&svc).unwrap();
        let port = free_port();
        std::fs::write(
            svc.join("svc.json"),
            format!("{{\"rules\": \"{}\", \"port\": {port}}}", live.display()),
        )
        .unwrap();
        Env {
            state: dir.path().join("state"),
            config: dir.path().join("rulekeeper.yaml"),
            live,
            svc,
            port,
            services,
            listen: free_port(),
            cfg: std::cell::RefCell::new(None),
            dir,
        }
    }

    /// A world with a `file` source at `upstream.yaml` (returned), nothing restarted or
    /// probed: the cycle alone.
    pub fn with_file_source() -> (Env, PathBuf) {
        let env = Env::new();
        let up = env.dir.path().join("upstream.yaml");
        env.write_config(&file_source(&up), "{ none: true }", "{ none: true }", "");
        (env, up)
    }

    /// A world with a `file` source at `upstream.yaml` (returned), the managed fake service
    /// restarted by command and probed over HTTP: the whole cycle.
    pub fn with_managed_file_source() -> (Env, PathBuf) {
        let env = Env::new();
        let up = env.dir.path().join("upstream.yaml");
        env.write_config(
            &file_source(&up),
            &env.restart_command(),
            &env.verify_http(),
            "",
        );
        (env, up)
    }

    pub fn fakesvc() -> String {
        repo_root()
            .join("tests/support/fakesvc.py")
            .display()
            .to_string()
    }

    /// `restart: command:` that restarts the fake service.
    pub fn restart_command(&self) -> String {
        format!(
            "{{ command: [python3, \"{}\", restart, \"{}\"], timeout: 20s }}",
            Self::fakesvc(),
            self.svc.display()
        )
    }

    /// A stability window the flaky service (exits after 0.3 s) cannot pass.
    pub fn verify_http(&self) -> String {
        format!(
            "{{ http: \"http://127.0.0.1:{}/probe\", timeout: 5s, interval: 100ms, successes: 6 }}",
            self.port
        )
    }

    /// Writes the config for one target `ps` from the given parts (flow-style YAML) and
    /// `extra` keys of the target (YAML lines, e.g. `"    webhook: { ... }\n"`).
    pub fn write_config(&self, source: &str, restart: &str, verify: &str, extra: &str) {
        let mut t = Target::new(yaml(source), &self.live, yaml(restart), yaml(verify)).set(
            "validate",
            yaml("{ require_keys: [bucket_definitions, streams] }"),
        );
        if !extra.trim().is_empty() {
            let keys: serde_yaml::Mapping = serde_yaml::from_str(&dedent(extra))
                .unwrap_or_else(|e| panic!("extra target keys {extra:?}: {e}"));
            for (k, v) in keys {
                t = t.set(k.as_str().expect("a key"), v);
            }
        }
        self.write_cfg(Cfg::new(&self.state, self.listen).target("ps", t));
    }

    /// Writes `cfg` as this world's config.
    pub fn write_cfg(&self, cfg: Cfg) {
        cfg.write(&self.config);
        *self.cfg.borrow_mut() = Some(cfg);
    }

    /// Changes target `ps` of the config written last, and writes it again.
    pub fn edit(&self, f: impl FnOnce(Target) -> Target) {
        self.edit_cfg(|c| {
            let (name, t) = c
                .targets
                .iter()
                .find(|(n, _)| n == "ps")
                .cloned()
                .expect("target ps");
            c.target(&name, f(t))
        });
    }

    /// Changes the config written last, and writes it again.
    pub fn edit_cfg(&self, f: impl FnOnce(Cfg) -> Cfg) {
        let cfg = self
            .cfg
            .borrow()
            .clone()
            .expect("a config was written first");
        self.write_cfg(f(cfg));
    }

    /// Sets target `ps`'s `validate:` (a flow-style mapping).
    pub fn set_validate(&self, validate: &str) {
        self.edit(|t| t.set("validate", yaml(validate)));
    }

    /// Config for a Forgejo source on `forge`, command restarter, HTTP verify.
    pub fn forgejo_config(&self, base_url: &str, token_file: &Path) {
        self.forgejo_config_verify(base_url, token_file, &self.verify_http());
    }

    /// As `forgejo_config`, with the given `verify:` fragment.
    pub fn forgejo_config_verify(&self, base_url: &str, token_file: &Path, verify: &str) {
        self.write_config(
            &format!(
                "{{ kind: forgejo, base_url: \"{base_url}\", repo: owner/app, path: powersync/sync-rules.yaml, ref: master, token_file: \"{}\", timeout: 5s }}",
                token_file.display()
            ),
            &self.restart_command(),
            verify,
            "",
        );
    }

    pub fn write_token(&self, token: &str) -> PathBuf {
        let p = self.dir.path().join("token");
        std::fs::write(&p, format!("{token}\n")).unwrap();
        p
    }

    /// Runs `rulekeeper ARGS` (config added when `with_config`).
    pub fn rk(&self, args: &[&str]) -> Out {
        self.rk_env(args, &[])
    }

    /// A `rulekeeper` command with the test environment.
    pub fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("-c").arg(&self.config);
        cmd.env_remove("NOTIFY_SOCKET");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `rulekeeper ARGS -c <config>` in the background, its output discarded: for a run
    /// the test kills or waits for. The caller stops it.
    pub fn spawn_quiet(&self, args: &[&str]) -> std::process::Child {
        self.command(args, &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn rulekeeper")
    }

    pub fn rk_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Out {
        self.command(args, envs)
            .output()
            .expect("run rulekeeper")
            .into()
    }

    pub fn once(&self) -> Out {
        self.rk(&["once"])
    }

    pub fn live(&self) -> String {
        std::fs::read_to_string(&self.live).unwrap_or_default()
    }

    /// How many times the fake service started (its starts.log).
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.svc.join("starts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Lines of the fake service's starts.log (each "start <first line of rules>").
    pub fn start_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.svc.join("starts.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// How many restarts the restart command was asked for.
    pub fn restarts(&self) -> usize {
        std::fs::read_to_string(self.svc.join("restarts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Starts the fake service (as if the unit were running), waiting for its probe.
    pub fn start_service(&self) {
        let (ok, _, err) = run(Command::new("python3").args([
            Self::fakesvc().as_str(),
            "start",
            self.svc.to_str().unwrap(),
        ]));
        assert!(ok, "start fake service: {err}");
        std::fs::write(self.svc.join("invocation"), "first-invocation").unwrap();
        self.wait_probe(true);
    }

    pub fn probe_ok(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let _ = s.write_all(b"GET /probe HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
    }

    pub fn wait_probe(&self, healthy: bool) {
        wait_until(30, "fake service probe", || self.probe_ok() == healthy);
    }

    pub fn state_json(&self) -> serde_json::Value {
        let p = self.state.join("targets/ps/state.json");
        serde_json::from_slice(&std::fs::read(p).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .args([
                Self::fakesvc().as_str(),
                "stop",
                self.svc.to_str().unwrap_or(""),
            ])
            .output();
    }
}

/// A running `rulekeeper run` with a NOTIFY_SOCKET the test listens on.
pub struct Daemon {
    pub child: std::process::Child,
    pub port: u16,
    pub notes: std::sync::Arc<std::sync::Mutex<Vec<(std::time::SystemTime, String)>>>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Env {
    /// Starts the daemon; `watchdog_usec` turns the systemd watchdog protocol on.
    pub fn daemon(&self, watchdog_usec: Option<u64>) -> Daemon {
        use std::os::unix::net::UnixDatagram;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let sock_path = self.dir.path().join(format!("notify-{}.sock", free_port()));
        let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
        sock.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (notes, done) = (notes.clone(), done.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !done.load(Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        notes
                            .lock()
                            .unwrap()
                            .push((std::time::SystemTime::now(), msg));
                    }
                }
            });
        }
        let mut cmd = self.command(&["run"], &[]);
        cmd.env("NOTIFY_SOCKET", &sock_path);
        if let Some(usec) = watchdog_usec {
            // WATCHDOG_PID must be the daemon's own pid: exec keeps the shell's.
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
                .arg(bin())
                .args(["run", "-c"])
                .arg(&self.config);
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => sh.env(k, v),
                    None => sh.env_remove(k),
                };
            }
            sh.env("WATCHDOG_USEC", usec.to_string());
            cmd = sh;
        }
        cmd.stdout(std::process::Stdio::null());
        cmd.stderr(std::fs::File::create(self.dir.path().join("daemon.log")).unwrap());
        let child = cmd.spawn().expect("spawn daemon");
        Daemon {
            child,
            port: self.listen,
            notes,
            done,
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Daemon {
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn has_note(&self, needle: &str) -> bool {
        self.notes()
            .iter()
            .any(|m| m.lines().any(|l| l == needle || l.starts_with(needle)))
    }

    pub fn wait_ready(&self) {
        wait_until(30, "READY=1", || self.has_note("READY=1"));
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, &[], b"")
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> i32 {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait daemon").code().unwrap_or(-1)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A minimal HTTP/1.1 client (Connection: close): returns status and body, or (0, "") when
/// the connection fails.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_http(port, method, path, headers, body).unwrap_or((0, String::new()))
}

/// [`http`] with the I/O error kept (the benchmarks count failed requests), a 2 s connect
/// limit and 10 s read and write limits.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the sample `name{labels...}` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every sample line of `name` in an exposition.
pub fn samples(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(str::to_string)
        .collect()
}
