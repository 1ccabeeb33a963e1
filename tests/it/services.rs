//! Reloads against the real services from Debian's packages, each started here on 127.0.0.1:
//! Prometheus (rule files), Alertmanager (its config), vmalert (rule files) and nginx (an
//! included server block). For each: a good change is live with no restart (the same PID),
//! a change its own validator rejects is never installed, a change that gets past the
//! validators (turned off) and fails the reload is rolled back with the service on last-good,
//! and a stale pid file is refused with nothing signalled.
//!
//! How each service says whether a reload worked: Prometheus, Alertmanager and vmalert through
//! their `*_config_last_reload_successful` and `*_success_timestamp_seconds` gauges
//! (`verify.metrics`); nginx through its error log (`contrib/nginx/reloaded`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::util::{free_port, http, repo_root, require_tool, wait_until, yaml, Env};

/// One running service, stopped on drop.
pub(crate) struct Service {
    child: Child,
    port: u16,
    /// A pid file this test writes for the service (as an init script would).
    pid_file: PathBuf,
    log: PathBuf,
}

impl Service {
    pub(crate) fn start(cmd: &mut Command, dir: &Path, port: u16) -> Service {
        let log = dir.join("service.log");
        let f = std::fs::File::create(&log).expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid_file = dir.join("service.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
        Service {
            child,
            port,
            pid_file,
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn get(&self, path: &str) -> String {
        http(self.port, "GET", path, &[], b"").1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    /// SIGTERM first, so a master process (nginx) takes its workers with it; SIGKILL after 5 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service under test: how to start it on the live file, its reload and verify settings,
/// its validator, three versions of the file and how to tell which one it runs.
struct Spec {
    name: &'static str,
    start: fn(&Env, u16) -> Option<Service>,
    reload: fn(&Service) -> String,
    verify: fn(&Service) -> String,
    validator: fn(&Env) -> Option<String>,
    /// Its files are YAML (the built-in checks apply).
    yaml: bool,
    version: fn(&str) -> String,
    /// Passes the built-in checks, fails the service's validator and its reload.
    broken: &'static str,
    runs: fn(&Service, &str) -> bool,
    /// How many reloads the service has seen (to show none happened).
    reloads: fn(&Service) -> String,
}

fn metric_of(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l[name.len()..].trim().to_string())
        .unwrap_or_default()
}

fn prometheus() -> Spec {
    Spec {
        name: "prometheus",
        start: |env, port| {
            let bin = require_tool("prometheus")?;
            let dir = env.dir.path();
            let cfg = dir.join("prometheus.yml");
            std::fs::write(
                &cfg,
                format!(
                    "global: {{ evaluation_interval: 1s }}\nrule_files: [\"{}\"]\n",
                    env.live.display()
                ),
            )
            .unwrap();
            Some(Service::start(
                Command::new(bin)
                    .arg(format!("--config.file={}", cfg.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.join("tsdb").display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--web.enable-lifecycle")
                    .arg("--log.level=warn"),
                dir,
                port,
            ))
        },
        reload: |s| {
            format!(
                "{{ signal: {{ name: HUP, pid_file: \"{}\" }}, timeout: 10s }}",
                s.pid_file.display()
            )
        },
        verify: |s| {
            format!(
            "{{ none: true, timeout: 20s, interval: 200ms, metrics: {{ url: \"http://127.0.0.1:{}/metrics\", success: prometheus_config_last_reload_successful, timestamp: prometheus_config_last_reload_success_timestamp_seconds }} }}",
            s.port
        )
        },
        validator: |_| {
            Some(format!(
                "{{ command: [\"{}\", check, rules, \"{{file}}\"], timeout: 30s }}",
                require_tool("promtool")?.display()
            ))
        },
        yaml: true,
        version: |tag| {
            format!("groups:\n- name: rk\n  rules:\n  - record: rk:{tag}\n    expr: vector(1)\n")
        },
        broken: "groups:\n- name: rk\n  rules:\n  - record: rk:broken\n    expr: vector(1\n",
        runs: |s, tag| s.get("/api/v1/rules").contains(&format!("rk:{tag}")),
        reloads: |s| {
            metric_of(
                &s.get("/metrics"),
                "prometheus_config_last_reload_success_timestamp_seconds",
            )
        },
    }
}

fn alertmanager() -> Spec {
    Spec {
        name: "alertmanager",
        start: |env, port| {
            let bin = require_tool("prometheus-alertmanager")?;
            let dir = env.dir.path();
            Some(Service::start(
                Command::new(bin)
                    .arg(format!("--config.file={}", env.live.display()))
                    .arg(format!("--storage.path={}", dir.join("am").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--cluster.listen-address=")
                    .arg("--log.level=warn"),
                dir,
                port,
            ))
        },
        reload: |s| {
            format!(
                "{{ http: {{ url: \"http://127.0.0.1:{}/-/reload\" }}, timeout: 10s }}",
                s.port
            )
        },
        verify: |s| {
            format!(
            "{{ http: \"http://127.0.0.1:{port}/-/healthy\", successes: 1, interval: 200ms, timeout: 20s, metrics: {{ url: \"http://127.0.0.1:{port}/metrics\", success: alertmanager_config_last_reload_successful, timestamp: alertmanager_config_last_reload_success_timestamp_seconds }} }}",
            port = s.port
        )
        },
        validator: |_| {
            Some(format!(
                "{{ command: [\"{}\", check-config, \"{{file}}\"], timeout: 30s }}",
                require_tool("amtool")?.display()
            ))
        },
        yaml: true,
        version: |tag| format!("route: {{ receiver: {tag} }}\nreceivers:\n- name: {tag}\n"),
        broken: "route: { receiver: nobody-of-that-name }\nreceivers:\n- name: broken\n",
        runs: |s, tag| {
            s.get("/api/v2/status")
                .contains(&format!("receiver: {tag}"))
        },
        reloads: |s| {
            metric_of(
                &s.get("/metrics"),
                "alertmanager_config_last_reload_success_timestamp_seconds",
            )
        },
    }
}

fn vmalert() -> Spec {
    Spec {
        name: "vmalert",
        start: |env, port| {
            let bin = require_tool("vmalert")?;
            Some(Service::start(
                Command::new(bin)
                    .arg(format!("-rule={}", env.live.display()))
                    .arg("-datasource.url=http://127.0.0.1:1")
                    .arg("-notifier.url=http://127.0.0.1:1")
                    .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                    .arg("-evaluationInterval=1s")
                    .arg("-loggerLevel=ERROR"),
                env.dir.path(),
                port,
            ))
        },
        reload: |s| {
            format!(
                "{{ http: {{ url: \"http://127.0.0.1:{}/-/reload\" }}, timeout: 10s }}",
                s.port
            )
        },
        verify: |s| {
            format!(
            "{{ none: true, timeout: 20s, interval: 200ms, metrics: {{ url: \"http://127.0.0.1:{}/metrics\", success: vmalert_config_last_reload_successful, count: vmalert_config_last_reload_total }} }}",
            s.port
        )
        },
        validator: |_| {
            Some(format!(
                "{{ command: [\"{}\", -dryRun, \"-rule={{file}}\"], timeout: 30s }}",
                require_tool("vmalert")?.display()
            ))
        },
        yaml: true,
        version: |tag| {
            format!("groups:\n- name: rk\n  rules:\n  - alert: Rk{tag}\n    expr: vector(1) > 2\n")
        },
        broken: "groups:\n- name: rk\n  rules:\n  - alert: RkBroken\n    expr: vector(1\n",
        runs: |s, tag| s.get("/api/v1/rules").contains(&format!("\"Rk{tag}\"")),
        reloads: |s| metric_of(&s.get("/metrics"), "vmalert_config_last_reload_total"),
    }
}

fn nginx() -> Spec {
    Spec {
        name: "nginx",
        start: |env, port| {
            let bin = require_tool("nginx")?;
            let dir = env.dir.path();
            std::fs::create_dir_all(dir.join("logs")).unwrap();
            let main = dir.join("nginx.conf");
            std::fs::write(
                &main,
                format!(
                    "events {{}}\nhttp {{ access_log off; include {}; }}\n",
                    env.live.display()
                ),
            )
            .unwrap();
            let pid = dir.join("nginx.pid");
            let s = Service::start(
                Command::new(bin)
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&main)
                    .arg("-g")
                    .arg(format!(
                        "daemon off; pid {}; error_log {} notice;",
                        pid.display(),
                        dir.join("logs/error.log").display()
                    )),
                dir,
                port,
            );
            Some(s)
        },
        reload: |s| {
            format!(
                "{{ signal: {{ name: HUP, pid_file: \"{}\" }}, timeout: 10s }}",
                s.pid_file.display()
            )
        },
        verify: |s| {
            format!(
            "{{ command: [\"{}\", \"{}\", \"{{since}}\"], successes: 1, interval: 200ms, timeout: 10s }}",
            repo_root().join("contrib/nginx/reloaded").display(),
            s.pid_file.with_file_name("logs/error.log").display()
        )
        },
        // nginx -t on a main file that includes the candidate.
        validator: |env| {
            let nginx = require_tool("nginx")?;
            let main = env.dir.path().join("check.conf");
            Some(format!(
                "{{ yaml: false, command: [sh, -c, \"printf 'events {{}}\\\\nhttp {{ include %s; }}\\\\n' \\\"$1\\\" > '{main}' && '{nginx}' -t -q -c '{main}'\", _, \"{{file}}\"], timeout: 30s }}",
                main = main.display(),
                nginx = nginx.display()
            ))
        },
        yaml: false,
        version: |tag| {
            format!("server {{ listen 127.0.0.1:PORT; location /version {{ return 200 \"{tag}\\n\"; }} }}\n")
        },
        broken:
            "server { listen 127.0.0.1:PORT; location /version { retur 200 \"broken\\n\"; } }\n",
        runs: |s, tag| s.get("/version").trim() == tag,
        reloads: |s| {
            let log = std::fs::read_to_string(s.pid_file.with_file_name("logs/error.log"))
                .unwrap_or_default();
            log.matches("reconfiguring").count().to_string()
        },
    }
}

/// A spec's file for `tag`, with the service's port in it (nginx listens where the file says).
fn file(_spec: &Spec, port: u16, text: &str) -> String {
    text.replace("PORT", &port.to_string())
}

fn run(spec: Spec) {
    let env = Env::new();
    let up = env.dir.path().join("upstream");
    let port = free_port();
    let v1 = file(&spec, port, &(spec.version)("v1"));
    std::fs::write(&env.live, &v1).unwrap();
    std::fs::write(&up, &v1).unwrap();
    let Some(mut svc) = (spec.start)(&env, port) else {
        return;
    };
    let name = spec.name;
    wait_until(30, &format!("{name} serving v1"), || {
        (spec.runs)(&svc, "v1")
    });
    let pid = svc.pid();
    let Some(validator) = (spec.validator)(&env) else {
        return;
    };
    let builtin = if spec.yaml { "{}" } else { "{ yaml: false }" };
    env.write_config(
        &crate::util::file_source(&up),
        &(spec.reload)(&svc),
        &(spec.verify)(&svc),
        "",
    );
    env.set_validate(&validator);
    let o = env.once();
    assert_eq!(o.code, 0, "{name}: adopting v1: {}", o.all());

    // A good change: live, on the same process.
    std::fs::write(&up, file(&spec, port, &(spec.version)("v2"))).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{name}: v2: {}\n{}", o.all(), svc.log());
    assert!(o.stdout.contains("applied"), "{name}: {}", o.all());
    // (vmalert takes a reloaded group up at its next evaluation, here within a second.)
    wait_until(10, &format!("{name} running v2"), || {
        (spec.runs)(&svc, "v2")
    });
    assert_eq!(svc.pid(), pid, "{name}: no restart");
    assert!(svc.alive());
    assert!(o.stdout.contains("applied (live"), "{name}: {}", o.all());
    eprintln!("{name}: good change: applied, PID {pid} before and after");

    // Its validator rejects a broken file: never installed, nothing reloaded.
    let reloads = (spec.reloads)(&svc);
    std::fs::write(&up, file(&spec, port, spec.broken)).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{name}: {}", o.all());
    assert!(o.stdout.contains("rejected"), "{name}: {}", o.all());
    assert_eq!(env.live(), file(&spec, port, &(spec.version)("v2")));
    assert_eq!((spec.reloads)(&svc), reloads, "{name}: not reloaded");
    eprintln!(
        "{name}: validator: rejected, PID {} before and after",
        svc.pid()
    );

    // Validators off: the reload itself fails; rolled back, last-good reloaded and running.
    env.set_validate(builtin);
    // (Other bytes than the rejected file's: that one is quarantined.)
    std::fs::write(&up, file(&spec, port, &format!("# again\n{}", spec.broken))).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{name}: {}\n{}", o.all(), svc.log());
    assert!(o.stdout.contains("rolled_back"), "{name}: {}", o.all());
    assert_eq!(env.live(), file(&spec, port, &(spec.version)("v2")));
    wait_until(10, &format!("{name} running last-good"), || {
        (spec.runs)(&svc, "v2")
    });
    assert_eq!(svc.pid(), pid, "{name}: still no restart");
    assert!(env.state_json()["quarantine"]["sha256"].is_string());
    eprintln!(
        "{name}: failed reload: rolled back ({}), PID {pid} before and after",
        o.stdout.trim()
    );

    // A stale pid file: refused, naming the file; nothing signalled, the file put back.
    let stale = env.dir.path().join("stale.pid");
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    std::fs::write(&stale, format!("{dead}\n")).unwrap();
    env.edit(|t| {
        t.set(
            "restart",
            yaml(&format!(
                "{{ signal: {{ name: HUP, pid_file: \"{}\" }} }}",
                stale.display()
            )),
        )
    });
    let reloads = (spec.reloads)(&svc);
    std::fs::write(&up, file(&spec, port, &(spec.version)("v3"))).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{name}: {}", o.all());
    assert!(
        o.all()
            .contains(&format!("pid file {} names pid {dead}, ", stale.display()))
            && o.all()
                .contains("(a stale pid file); nothing was signalled"),
        "{name}: {}",
        o.all()
    );
    assert_eq!(
        env.live(),
        file(&spec, port, &(spec.version)("v2")),
        "{name}: the file is put back"
    );
    assert_eq!((spec.reloads)(&svc), reloads, "{name}: nothing reloaded");
    assert!(
        env.state_json()["quarantine"].is_null(),
        "{name}: the content is not at fault"
    );
    assert_eq!(svc.pid(), pid);
    eprintln!("{name}: stale pid file: refused, PID {pid} before and after");
}

#[test]
fn prometheus_reloads_rules() {
    run(prometheus());
}

#[test]
fn alertmanager_reloads_its_config() {
    run(alertmanager());
}

#[test]
fn vmalert_reloads_rules() {
    run(vmalert());
}

#[test]
fn nginx_reloads_a_server_block() {
    run(nginx());
}
