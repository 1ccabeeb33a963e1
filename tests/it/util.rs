//! Shared test harness: tool discovery, temp dirs, the built binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of the `rulekeeper` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rulekeeper"))
}

/// Root of the repository (for alerts/, grafana/, nix/, contrib/ ...).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Finds an external tool on PATH. When it is missing the test is skipped with a loud
/// message, unless `RULEKEEPER_REQUIRE_TOOLS=1`, in which case the test fails.
/// Usage: `let Some(promtool) = util::require_tool("promtool") else { return };`
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = which(name) {
        return Some(p);
    }
    if std::env::var("RULEKEEPER_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("required tool `{name}` is not on PATH (RULEKEEPER_REQUIRE_TOOLS=1)");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: tool `{name}` is not installed; this test did not run !!!!!!!!\n"
    );
    None
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

/// A rules file for the fake service: `tag` lands on the first line (the service logs it at
/// start), `health` is `good`, `bad` (probe 500) or `flaky` (200 then exit 1).
pub fn rules(tag: &str, health: &str) -> String {
    let h = match health {
        "good" => String::new(),
        other => format!("health: {other}\n"),
    };
    format!("# {tag}\n{h}bucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n")
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
    /// Directory for the systemctl stand-in (units live under it).
    pub systemd: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        require_tool("python3").expect("python3 is needed by the fake service");
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("live/sync-rules.yaml");
        std::fs::create_dir_all(live.parent().unwrap()).unwrap();
        let systemd = dir.path().join("systemd");
        let svc = systemd.join("fake.service");
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
            systemd,
            dir,
        }
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

    /// Writes the config with the given YAML fragments (flow style) for one target `ps`.
    pub fn write_config(&self, source: &str, restart: &str, verify: &str, extra: &str) {
        let text = format!(
            "state_dir: {}\nlisten: 127.0.0.1:{}\ntargets:\n  ps:\n    source: {source}\n    path: {}\n    restart: {restart}\n    verify: {verify}\n    validate: {{ require_keys: [bucket_definitions, streams] }}\n{extra}",
            self.state.display(),
            free_port(),
            self.live.display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Config for a Forgejo source on `forge`, command restarter, HTTP verify.
    pub fn forgejo_config(&self, base_url: &str, token_file: &Path) {
        self.write_config(
            &format!(
                "{{ kind: forgejo, base_url: \"{base_url}\", repo: owner/app, path: powersync/sync-rules.yaml, ref: master, token_file: \"{}\", timeout: 5s }}",
                token_file.display()
            ),
            &self.restart_command(),
            &self.verify_http(),
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

    pub fn rk_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("-c").arg(&self.config);
        cmd.env("FAKE_SYSTEMD_DIR", &self.systemd);
        let path = format!(
            "{}:{}",
            repo_root().join("tests/support/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run rulekeeper");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
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

    /// How many restarts were asked for (restart command or systemctl).
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
        wait_until(10, "fake service probe", || self.probe_ok() == healthy);
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
