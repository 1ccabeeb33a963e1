//! The systemd lab: a real systemd booted as PID 1 in private pid, mount, net and uts
//! namespaces, so tests can run rulekeeper and the units it manages under real systemd
//! (`Type=notify`, `WatchdogSec=`, `LoadCredential=`, `try-restart`, `InvocationID`,
//! `Restart=` and start limits, timers, journald).
//!
//! `tests/support/lab-init` is the lab's PID 1 before it becomes systemd: it puts a private
//! tmpfs over every directory a booting systemd writes to (`/run`, `/tmp`, `/var/*`,
//! `/etc/systemd/system`) and masks boot services that touch the kernel or shared files.
//! Without that, systemd-tmpfiles at boot would empty the HOST's `/tmp`. The lab's only host
//! directory is `Lab::dir`, seen inside as `/run/lab`; everything else a test writes into the
//! lab goes through `/proc/<pid>/root` and lands on the lab's tmpfs. The network namespace has
//! only `lo`, so ports inside never collide with the host's.
//!
//! Needs root, `unshare`/`nsenter`/`setsid` (util-linux), `ip` (iproute2) and systemd. Where
//! any is missing the tests skip loudly; under `RULEKEEPER_REQUIRE_TOOLS=1` they fail.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{repo_root, require_tool, Out};

const SYSTEMD: &str = "/lib/systemd/systemd";

/// The live file of [`Lab::managed_service`].
pub const MANAGED_LIVE: &str = "/var/lib/powersync/sync-rules.yaml";

/// A booted lab; dropping it kills the lab's PID 1 and with it everything inside.
pub struct Lab {
    /// Host side of `/run/lab`.
    pub dir: tempfile::TempDir,
    /// systemd's pid as the host sees it.
    pid: i32,
    outer: Child,
}

fn skip(why: &str) -> Option<Lab> {
    crate::util::skip(
        crate::util::Need::Tool,
        &format!("systemd lab unavailable: {why}"),
    )
}

impl Lab {
    /// Boots a lab, or returns None (after a loud message) where that is impossible here.
    pub fn boot() -> Option<Lab> {
        Lab::boot_with(false)
    }

    /// A lab where `dpkg -i` may install: `/usr` and `/etc` are overlays written on the lab's
    /// tmpfs, `/var/lib/dpkg` a copy of the host's (`tests/support/lab-init`).
    pub fn boot_for_packages() -> Option<Lab> {
        Lab::boot_with(true)
    }

    fn boot_with(packages: bool) -> Option<Lab> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return skip("the lab needs root");
        }
        for tool in ["unshare", "nsenter", "setsid", "ip"] {
            require_tool(tool)?;
        }
        if !Path::new(SYSTEMD).exists() {
            return skip(&format!(
                "no systemd at {SYSTEMD} (apt-get install systemd)"
            ));
        }
        let dir = tempfile::tempdir().expect("lab dir");
        let log = std::fs::File::create(dir.path().join(".lab.log")).expect("lab log");
        let mut outer = Command::new("setsid")
            .args(["unshare", "--pid", "--fork", "--mount", "--net", "--uts"])
            .args(["--mount-proc", "--propagation", "private"])
            .arg(repo_root().join("tests/support/lab-init"))
            .env("RK_LAB_PACKAGES", if packages { "1" } else { "0" })
            .arg(dir.path())
            .args(visible_inside())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        let deadline = Instant::now() + Duration::from_secs(15);
        let pid = loop {
            if let Some(pid) = systemd_child(outer.id()) {
                break pid;
            }
            if let Ok(Some(status)) = outer.try_wait() {
                let log = std::fs::read_to_string(dir.path().join(".lab.log")).unwrap_or_default();
                return skip(&format!("cannot create the namespaces ({status}): {log}"));
            }
            assert!(Instant::now() < deadline, "lab: systemd did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let lab = Lab { dir, pid, outer };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = lab.systemctl(&["is-system-running"]).stdout;
            if matches!(state.trim(), "running" | "degraded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "lab: systemd did not finish booting (state: {state}); log: {}",
                lab.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(lab)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(".lab.log")).unwrap_or_default()
    }

    /// A path inside the lab, reachable from the host through `/proc/<pid>/root`.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }

    /// Writes a file inside the lab (its parents created).
    pub fn write(&self, inside: &str, text: &str) {
        let p = self.path(inside);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir in lab");
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {inside} in lab: {e}"));
    }

    /// Runs a shell script inside every namespace of the lab, in `/run/lab`.
    pub fn sh(&self, script: &str) -> Out {
        self.try_sh(script).expect("nsenter")
    }

    /// [`Lab::sh`] without the panic, for code that runs while a test is already panicking
    /// (a second panic there aborts the whole test binary).
    fn try_sh(&self, script: &str) -> std::io::Result<Out> {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c"])
            .arg(format!("cd /run/lab && {script}"))
            .env_remove("NOTIFY_SOCKET")
            .output()?;
        Ok(out.into())
    }

    pub fn systemctl(&self, args: &[&str]) -> Out {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        self.sh(&format!("systemctl --no-pager {}", quoted.join(" ")))
    }

    /// `systemctl show -p PROP --value UNIT`
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.systemctl(&["show", "-p", prop, "--value", unit])
            .stdout
            .trim()
            .to_string()
    }

    pub fn daemon_reload(&self) {
        let o = self.systemctl(&["daemon-reload"]);
        assert_eq!(o.code, 0, "daemon-reload: {}", o.all());
    }

    /// Journal entries (as JSON objects) matching `args` (units, FIELD=value matches).
    pub fn journal(&self, args: &str) -> Vec<serde_json::Value> {
        parse_journal(&self.sh(&format!("journalctl --no-pager -o json {args}")))
    }

    /// Runs `f` on this thread inside the lab's network namespace: sockets it opens (clients
    /// or listeners) live there, so a test can talk to services on the lab's loopback.
    pub fn in_net<R>(&self, f: impl FnOnce() -> R) -> R {
        let ours = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        let lab = std::fs::File::open(format!("/proc/{}/ns/net", self.pid)).expect("lab netns");
        // SAFETY: setns on this thread with a namespace fd we hold open.
        let rc = unsafe { libc::setns(lab.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into the lab: {}",
            std::io::Error::last_os_error()
        );
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // SAFETY: as above, back to the namespace this thread came from.
        let rc = unsafe { libc::setns(ours.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
        match r {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// A managed service and rulekeeper's config for it, for the package and hardening tests:
    /// `powersync.service` (`tests/support/fakesvc.py` on 127.0.0.1:8080 reading
    /// [`MANAGED_LIVE`]), an upstream file holding `first`, and the config (returned as YAML):
    /// a 1 s poll, `try-restart`, a probe.
    pub fn managed_service(&self, first: &str) -> String {
        self.provide(&repo_root().join("tests/support/fakesvc.py"), "fakesvc.py");
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("svc")).expect("svc dir");
        std::fs::write(
            d.join("svc/svc.json"),
            format!("{{\"rules\": \"{MANAGED_LIVE}\", \"port\": 8080}}"),
        )
        .expect("svc.json");
        std::fs::create_dir_all(d.join("upstream")).expect("upstream dir");
        self.publish(first);
        std::fs::create_dir_all(self.path("/var/lib/powersync")).expect("live dir");
        self.write(
            "/etc/systemd/system/powersync.service",
            "[Service]\nExecStart=/usr/bin/python3 /run/lab/fakesvc.py serve /run/lab/svc\n",
        );
        format!(
            "listen: 127.0.0.1:9871\nstate_dir: /var/lib/rulekeeper\ntargets:\n  powersync:\n\
             \x20   source: {{ kind: file, path: /run/lab/upstream/sync-rules.yaml }}\n\
             \x20   path: {MANAGED_LIVE}\n    interval: 1s\n    mode: \"0644\"\n\
             \x20   validate: {{ require_keys: [bucket_definitions, streams] }}\n\
             \x20   restart: {{ systemd: powersync.service, timeout: 20s }}\n\
             \x20   verify: {{ http: \"http://127.0.0.1:8080/probe\", interval: 100ms, successes: 3, timeout: 20s }}\n"
        )
    }

    /// Replaces the managed service's upstream file atomically.
    pub fn publish(&self, text: &str) {
        let up = self.dir.path().join("upstream");
        std::fs::write(up.join(".next"), text).expect("write upstream");
        std::fs::rename(up.join(".next"), up.join("sync-rules.yaml")).expect("rename upstream");
    }

    /// A sample of the daemon's `/metrics` on the lab's loopback (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let m = self.in_net(|| crate::util::http(9871, "GET", "/metrics", &[], b"").1);
        crate::util::metric(&m, name, labels).unwrap_or(0.0)
    }

    /// Puts `src` (a host file) at `/run/lab/<name>`: a hard link where possible.
    pub fn provide(&self, src: &Path, name: &str) -> String {
        let dst = self.dir.path().join(name);
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).expect("copy into the lab");
        }
        format!("/run/lab/{name}")
    }
}

/// Host directories a lab unit may run programs from, kept visible inside even when they live
/// under a directory the lab puts a tmpfs over (a checkout in `/tmp`, as CI may have it): the
/// checkout (`contrib/`, `tests/support/`), the directory of the binary under test, and a
/// PowerSync build from `RULEKEEPER_POWERSYNC_DIR`.
fn visible_inside() -> Vec<PathBuf> {
    let mut dirs = vec![repo_root()];
    dirs.extend(crate::util::bin().parent().map(Path::to_path_buf));
    dirs.extend(std::env::var_os("RULEKEEPER_POWERSYNC_DIR").map(PathBuf::from));
    dirs.into_iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect()
}

/// The pid of the `systemd` process that unshare forked (the lab's PID 1).
fn systemd_child(outer: u32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "systemd")
                .unwrap_or(false)
        })
}

fn parse_journal(o: &Out) -> Vec<serde_json::Value> {
    o.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed lab test is read from CI's log: leave there what systemd saw.
            let units = "systemctl --no-pager list-units --all 'rulekeeper*' 'podman-*'";
            if let Ok(o) = self.try_sh(units) {
                eprintln!("---- lab state at failure ----\n{}", o.all());
            }
            // With the fields rulekeeper logs (reason, error, outcome), which short forms drop.
            let journal = self
                .try_sh("journalctl --no-pager -o json _TRANSPORT=journal + _TRANSPORT=stdout")
                .map(|o| parse_journal(&o))
                .unwrap_or_default();
            for e in journal {
                let Some(m) = e.as_object() else { continue };
                let fields: Vec<String> = m
                    .iter()
                    .filter(|(k, _)| {
                        !k.starts_with('_')
                            && !k.starts_with("SYSLOG")
                            && !k.starts_with("CODE_")
                            && !["MESSAGE", "PRIORITY", "INVOCATION_ID"].contains(&k.as_str())
                    })
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                    .collect();
                let msg = m.get("MESSAGE").and_then(|v| v.as_str()).unwrap_or("");
                eprintln!("journal: {msg} {}", fields.join(" "));
            }
        }
        // SAFETY: plain kill of the lab's PID 1; the kernel then kills the whole namespace.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.outer.wait();
    }
}
