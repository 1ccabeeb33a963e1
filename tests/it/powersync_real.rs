//! rulekeeper against PowerSync (tests/it/pservice.rs: the real 1.25.0 on a private Postgres,
//! or the stand-in held to it): a good change applied with one restart and active, fatal rules rejected by the
//! offline validator and by the service's validate API, a crashing revision rolled back, an
//! unknown table under `warnings: allow` and `reject`, and what a rollback costs PowerSync
//! (docs/powersync.md "When a rollback is expensive").
//!
//! rulekeeper restarts the service with `tests/support/psctl restart DIR` and verifies it on
//! `/probes/liveness`. Skipped loudly without `contrib/powersync/node_modules` (the stand-in's
//! Node and parser, and the offline validator).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::pservice::{fatal_errors, PowerSync, Rules};
use crate::util::{bin, repo_root, sha256, Env, Out};

pub const V1: &str =
    "# v1\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n";
pub const V2: &str = "# v2\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n      - SELECT * FROM todos\n";
/// Valid YAML, but the service exits on it: `Function 'nosuchfunc' is not defined`.
pub const FATAL: &str = "# fatal\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists WHERE nosuchfunc(name)\n";
/// A warning only: the table does not exist in the source database.
pub const UNKNOWN_TABLE: &str = "# unknown table\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n      - SELECT * FROM nosuchtable\n";

/// A test's world: rulekeeper's temp dirs (`Env`), the real service reading `env.live`, and the
/// upstream file (a `file` source).
struct World {
    env: Env,
    ps: PowerSync,
    up: PathBuf,
}

impl World {
    /// PowerSync started on `initial` (also upstream), waiting until it is active.
    fn new(initial: &str) -> Option<World> {
        let env = Env::new();
        let ps = PowerSync::new(Rules::File(env.live.clone()))?;
        std::fs::write(&env.live, initial).unwrap();
        let up = env.dir.path().join("upstream.yaml");
        std::fs::write(&up, initial).unwrap();
        let t = Instant::now();
        ps.start();
        ps.wait_active(initial);
        eprintln!("PowerSync live and rules active after {:?}", t.elapsed());
        Some(World { env, ps, up })
    }

    /// A rulekeeper config `name.yaml` with its own state dir: one target `ps` on the live file.
    fn config(&self, name: &str, validate: &str, verify: &str) -> PathBuf {
        let state = self.env.dir.path().join(format!("state-{name}"));
        let path = self.env.dir.path().join(format!("{name}.yaml"));
        let text = format!(
            "state_dir: {}\ntargets:\n  ps:\n    source: {{ kind: file, path: \"{}\" }}\n    path: {}\n    restart: {}\n    verify: {verify}\n    validate: {validate}\n",
            state.display(),
            self.up.display(),
            self.env.live.display(),
            self.ps.restart_command(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The liveness window: 6 good answers 1 s apart (5 s, longer than the ~4.6 s PowerSync
    /// takes to die on fatal rules), within 60 s.
    fn verify(&self) -> String {
        format!(
            "{{ http: \"{}/probes/liveness\", timeout: 60s, interval: 1s, successes: 6 }}",
            self.ps.url()
        )
    }

    fn api(&self, extra: &str) -> String {
        format!(
            "{{ url: \"{}\", token_file: \"{}\", timeout: 10s{extra} }}",
            self.ps.url(),
            self.ps.token_file().display()
        )
    }

    fn rk(&self, config: &Path, args: &[&str]) -> Out {
        let t = Instant::now();
        let out = Command::new(bin())
            .args(args)
            .arg("-c")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .output()
            .expect("run rulekeeper");
        let o = Out::from(out);
        eprintln!(
            "rulekeeper {args:?}: exit {} after {:?}: {}",
            o.code,
            t.elapsed(),
            o.stdout.trim()
        );
        o
    }

    fn state(&self, name: &str) -> serde_json::Value {
        let p = self
            .env
            .dir
            .path()
            .join(format!("state-{name}/targets/ps/state.json"));
        serde_json::from_slice(&std::fs::read(p).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    }

    fn slot(&self) -> String {
        self.ps.active()["connections"][0]["slot_name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

const BUILTIN: &str = "{ require_keys: [bucket_definitions, streams] }";

#[test]
fn good_change_applied_with_one_restart_and_active() {
    let Some(w) = World::new(V1) else { return };
    let before = w.ps.pid();
    std::fs::write(&w.up, V2).unwrap();
    let cfg = w.config("rk", BUILTIN, &w.verify());
    let o = w.rk(&cfg, &["once"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(w.ps.restarts(), 1, "exactly one restart");
    assert!(
        w.ps.pid().is_some() && w.ps.pid() != before,
        "a new process"
    );
    assert_eq!(w.env.live(), V2);
    let t = Instant::now();
    w.ps.wait_active(&w.env.live());
    eprintln!("v2 active {:?} after rulekeeper returned", t.elapsed());
    let active = w.ps.active();
    assert!(fatal_errors(&active).is_empty(), "{active}");
    assert_eq!(w.state("rk")["applied"]["sha256"], sha256(V2));

    // Rolling back valid rules PowerSync has taken up is no return to the old version: the
    // restored file differs from the active one, so it is a new version on a new slot.
    let before = w.ps.versions();
    assert_eq!(before.len(), 2, "{before:?}");
    let o = w.rk(&cfg, &["rollback", "-t", "ps"]);
    assert_eq!(o.code, 0, "{}", o.all());
    w.ps.wait_active(V1);
    let after = w.ps.versions();
    eprintln!("versions after rolling back active rules: {after:?}");
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[2].state, "ACTIVE");
    assert_ne!(after[2].slot, before[0].slot);
    assert!(created_slots(&w.ps.log()).contains(&after[2].slot));
}

fn validator() -> Option<PathBuf> {
    let dir = repo_root().join("contrib/powersync");
    if dir.join("node_modules").is_dir() {
        return Some(dir.join("validate"));
    }
    crate::util::skip(
        crate::util::Need::Tool,
        "contrib/powersync/node_modules is missing (npm ci --prefix contrib/powersync)",
    )
}

#[test]
fn fatal_rules_rejected_offline_and_by_the_api_without_restart() {
    let Some(validate) = validator() else { return };
    let Some(w) = World::new(V1) else { return };
    let pid = w.ps.pid();
    assert!(pid.is_some());
    std::fs::write(&w.up, FATAL).unwrap();

    // The offline validator (PowerSync's parser, no service).
    let cfg = w.config(
        "offline",
        &format!(
            "{{ require_keys: [bucket_definitions, streams], command: [\"{}\", \"{{file}}\"] }}",
            validate.display()
        ),
        &w.verify(),
    );
    let o = w.rk(&cfg, &["once"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    // PowerSync's own words, with line and column, naming the live path (never the temp file).
    let want = format!(
        "{}:5:35: fatal: Function 'nosuchfunc' is not defined",
        w.env.live.display()
    );
    let reason = w.state("offline")["quarantine"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains(&want), "{reason}");
    assert!(!o.all().contains(".rk-"), "{}", o.all());
    assert_eq!(w.state("offline")["quarantine"]["sha256"], sha256(FATAL));

    // The service's own validate API (required: a skipped check would not prove anything).
    let cfg = w.config(
        "api",
        &format!(
            "{{ require_keys: [bucket_definitions, streams], powersync_api: {} }}",
            w.api(", required: true")
        ),
        &w.verify(),
    );
    let o = w.rk(&cfg, &["once"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    let reason = w.state("api")["quarantine"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        // The service gives this error no location: the live path, then its message.
        reason.contains(&format!(
            "{}: fatal: Function 'nosuchfunc' is not defined",
            w.env.live.display()
        )),
        "{reason}"
    );
    assert_eq!(w.state("api")["quarantine"]["sha256"], sha256(FATAL));

    assert_eq!(w.ps.restarts(), 0, "never restarted");
    assert_eq!(w.ps.pid(), pid, "the same process serves");
    assert_eq!(w.env.live(), V1);
    assert_eq!(w.ps.active()["content"].as_str(), Some(V1));
}

#[test]
fn crashing_revision_rolled_back_and_last_good_served() {
    let Some(w) = World::new(V1) else { return };
    let slot = w.slot();
    std::fs::write(&w.up, FATAL).unwrap();
    // Validators off: only the built-in checks, which FATAL passes.
    let cfg = w.config("rk", BUILTIN, &w.verify());
    let o = w.rk(&cfg, &["once"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    // Seen answering, then seen dead: verification failed at that probe, not at the timeout.
    let reason = w.state("rk")["quarantine"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("the service died"), "{reason}");
    assert!(!reason.contains("not healthy within"), "{reason}");
    assert_eq!(w.ps.restarts(), 2, "the apply and the rollback");
    assert!(
        w.ps.log().contains("nosuchfunc"),
        "PowerSync died on the rules: {}",
        w.ps.log_tail()
    );
    assert_eq!(w.env.live(), V1);
    assert!(w.ps.live_ok());
    w.ps.wait_active(V1);
    let active = w.ps.active();
    assert!(fatal_errors(&active).is_empty(), "{active}");
    // Invalid rules stored nothing: last-good resumes on its own replication slot, no
    // re-replication (docs/powersync.md "When a rollback is expensive").
    assert_eq!(w.slot(), slot, "last-good kept its version");
    assert_eq!(w.state("rk")["quarantine"]["sha256"], sha256(FATAL));
    assert_eq!(w.state("rk")["applied"]["sha256"], sha256(V1));
}

#[test]
fn unknown_table_is_a_warning_allowed_or_rejected() {
    let Some(w) = World::new(V1) else { return };
    let pid = w.ps.pid();
    std::fs::write(&w.up, UNKNOWN_TABLE).unwrap();

    let reject = w.config(
        "reject",
        &format!(
            "{{ require_keys: [bucket_definitions], powersync_api: {} }}",
            w.api(", warnings: reject, required: true")
        ),
        &w.verify(),
    );
    let o = w.rk(&reject, &["once"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    assert!(o.all().contains("nosuchtable"), "{}", o.all());
    assert_eq!(w.ps.restarts(), 0);
    assert_eq!(w.ps.pid(), pid);
    assert_eq!(w.env.live(), V1);

    let allow = w.config(
        "allow",
        &format!(
            "{{ require_keys: [bucket_definitions], powersync_api: {} }}",
            w.api(", warnings: allow, required: true")
        ),
        &w.verify(),
    );
    let o = w.rk(&allow, &["once"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(w.ps.restarts(), 1);
    w.ps.wait_active(UNKNOWN_TABLE);
    let active = w.ps.active();
    eprintln!("diagnostics of the active rules: {active}");
    assert!(fatal_errors(&active).is_empty(), "{active}");
    assert!(active.to_string().contains("nosuchtable"), "{active}");
}

/// The slot names PowerSync's log says it created, in order.
fn created_slots(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("Created replication slot ").nth(1))
        .map(|s| s.trim().to_string())
        .collect()
}

/// docs/powersync.md "When a rollback is expensive", on the file path: valid new rules still
/// deploying (their initial snapshot held up by a lock), then restored to last-good. The file
/// PowerSync reads at start is compared with the deploying version only, so last-good comes
/// back as a new version: a new replication slot and a full initial replication.
#[test]
fn rollback_of_deploying_valid_rules_costs_a_new_version() {
    let Some(w) = World::new(V1) else { return };
    let first = w.slot();
    // Hold up the initial snapshot of `todos` (V2 reads it).
    let mut hold = w.ps.hold_table("todos");
    std::fs::write(&w.up, V2).unwrap();
    let cfg = w.config("rk", BUILTIN, &w.verify());
    let o = w.rk(&cfg, &["once"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    // (The real admin API can hang on the lock too: read PowerSync's storage instead.)
    let v = w.ps.versions();
    eprintln!("versions while v2 deploys: {v:?}");
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(
        (v[0].state.as_str(), v[1].state.as_str()),
        ("ACTIVE", "PROCESSING"),
        "{v:?}"
    );
    assert!(!v[1].snapshot_done, "{v:?}");

    let o = w.rk(&cfg, &["rollback", "-t", "ps"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert_eq!(w.env.live(), V1);
    hold.release();
    let t = Instant::now();
    crate::util::wait_until(60, "a third version, active", || {
        let v = w.ps.versions();
        v.len() == 3 && v[2].state == "ACTIVE"
    });
    eprintln!(
        "last-good active again {:?} after the lock went",
        t.elapsed()
    );
    w.ps.wait_active(V1);
    let v = w.ps.versions();
    eprintln!("versions after the rollback: {v:?}");
    assert_eq!(v.len(), 3, "a third version: {v:?}");
    assert_eq!(v[2].state, "ACTIVE", "{v:?}");
    assert!(v[2].snapshot_done, "{v:?}");
    assert_ne!(
        v[2].slot, first,
        "last-good is not the version it had before"
    );
    assert_eq!(
        w.slot(),
        v[2].slot,
        "last-good is active on the third version's slot"
    );
    let slots = created_slots(&w.ps.log());
    assert!(
        slots.contains(&v[2].slot),
        "a fresh slot, replicated from scratch: {slots:?}"
    );
    let back = v[2].slot.clone();

    // Restarting on the same file is free: nothing deploying, the active content matches.
    std::process::Command::new(crate::pservice::psctl())
        .arg("restart")
        .arg(&w.ps.dir)
        .status()
        .unwrap();
    w.ps.wait_live();
    w.ps.wait_active(V1);
    assert_eq!(w.slot(), back);
    assert_eq!(w.ps.versions().len(), 3, "no fourth version");
}

/// The deploy API path (no `sync_config:` block): every deploy is a new version on a new slot,
/// redeploying identical content included, and each replicates from scratch.
#[test]
fn every_deploy_through_the_api_is_a_new_version() {
    let Some(ps) = PowerSync::new(Rules::Api) else {
        return;
    };
    ps.start();
    let mut slots = Vec::new();
    for (i, rules) in [V1, V2, V1, V1].iter().enumerate() {
        let t = Instant::now();
        let (code, answer) = ps.deploy(rules);
        assert_eq!(code, 200, "deploy {i}: {answer}");
        ps.wait_active(rules);
        let active = ps.active();
        eprintln!(
            "deploy {i}: active after {:?} on {}, answer {answer}",
            t.elapsed(),
            active["connections"][0]["slot_name"]
        );
        assert_eq!(active["connections"][0]["initial_replication_done"], true);
        slots.push(
            active["connections"][0]["slot_name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        assert!(ps.live_ok(), "liveness stays 200 through a deploy");
    }
    let mut distinct = slots.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "four deploys, four slots: {slots:?}");
    assert_eq!(created_slots(&ps.log()), slots, "each created its slot");
    assert_eq!(
        ps.current()["data"]["current"]["content"].as_str(),
        Some(V1)
    );
    // A parse error changes nothing.
    let (code, answer) = ps.deploy("bucket_definitions: [");
    assert_eq!(code, 422, "{answer}");
    assert_eq!(
        ps.active()["connections"][0]["slot_name"].as_str(),
        slots.last().map(String::as_str)
    );
}

// ---- PowerSync as a systemd unit, in the lab (tests/it/lab.rs) ----

const LAB_UNIT: &str = "podman-powersync.service";
const LAB_LIVE: &str = "/var/lib/powersync/sync-rules.yaml";
const LAB_SECRET: &str = "lab-webhook-secret-value";

/// A lab with its own Postgres (a unit, as `nobody`, on the lab's loopback), the real PowerSync
/// as `podman-powersync.service` (with the shipped drop-in: After=/Wants=rulekeeper) reading
/// `LAB_LIVE`, and rulekeeper's shipped unit restarting it through systemd.
struct LabWorld {
    lab: crate::lab::Lab,
}

impl LabWorld {
    fn new() -> Option<LabWorld> {
        let backend = crate::pservice::backend()?;
        let bindir = match backend.is_real() {
            true => match crate::pservice::pg_bindir() {
                Some(b) => Some(b),
                None => {
                    return crate::util::skip(
                        crate::util::Need::Tool,
                        "no Postgres (apt-get install postgresql)",
                    )
                }
            },
            false => None,
        };
        let lab = crate::lab::Lab::boot()?;
        let bin = lab.provide(&bin(), "bin/rulekeeper");
        if let Some(bindir) = bindir {
            Self::postgres(&lab, &bindir);
        }
        // PowerSync, in podman's place, with the shipped drop-in.
        let db = crate::pservice::Db {
            n: 0,
            app: "app_0".into(),
            store: "psstore_0".into(),
        };
        let config = crate::pservice::config_yaml(5432, &db, 8080, &Rules::File(LAB_LIVE.into()));
        std::fs::write(lab.dir.path().join("powersync.yaml"), config).unwrap();
        if !backend.is_real() {
            std::fs::write(
                lab.dir.path().join("standin.json"),
                crate::pservice::standin_knobs(None),
            )
            .unwrap();
        }
        lab.write(
            &format!("/etc/systemd/system/{LAB_UNIT}"),
            &format!(
                "[Unit]\nDescription={} in podman's place\n\
                 After=postgresql-lab.service\nWants=postgresql-lab.service\n\n[Service]\n\
                 ExecStart={} {} start -c /run/lab/powersync.yaml\nRestart=no\n",
                backend.name(),
                backend.node().display(),
                backend.entry().display()
            ),
        );
        let dropin =
            std::fs::read_to_string(repo_root().join("docs/podman-powersync.override.conf"))
                .expect("docs/podman-powersync.override.conf");
        lab.write(
            &format!("/etc/systemd/system/{LAB_UNIT}.d/rulekeeper.conf"),
            &dropin,
        );

        // rulekeeper's shipped unit; the lab drop-in changes paths only.
        let shipped = std::fs::read_to_string(repo_root().join("docs/rulekeeper.service"))
            .expect("docs/rulekeeper.service");
        lab.write("/etc/systemd/system/rulekeeper.service", &shipped);
        lab.write(
            "/etc/systemd/system/rulekeeper.service.d/lab.conf",
            &format!(
                "[Service]\nExecStart=\nExecStart={bin} run -c /run/lab/config.yaml\n\
                 LoadCredential=\nLoadCredential=webhook-secret:/run/lab/credentials/webhook-secret\n"
            ),
        );
        std::fs::create_dir_all(lab.path("/var/lib/powersync")).expect("live dir");
        let d = lab.dir.path();
        std::fs::create_dir_all(d.join("credentials")).unwrap();
        std::fs::write(
            d.join("credentials/webhook-secret"),
            format!("{LAB_SECRET}\n"),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("upstream")).unwrap();
        std::fs::write(
            d.join("config.yaml"),
            format!(
                "listen: 127.0.0.1:9871\nstate_dir: /var/lib/rulekeeper\nstartup_timeout: 20s\n\
                 targets:\n  powersync:\n    source: {{ kind: file, path: /run/lab/upstream/sync-rules.yaml }}\n\
                 \x20   path: {LAB_LIVE}\n    interval: 1h\n\
                 \x20   validate: {{ require_keys: [bucket_definitions, streams] }}\n\
                 \x20   restart: {{ systemd: {LAB_UNIT}, timeout: 60s }}\n\
                 \x20   verify: {{ http: \"http://127.0.0.1:8080/probes/liveness\", interval: 2s, successes: 3, timeout: 90s }}\n\
                 \x20   webhook: {{ secret_file: /run/credentials/rulekeeper.service/webhook-secret }}\n"
            ),
        )
        .unwrap();
        lab.daemon_reload();
        Some(LabWorld { lab })
    }

    /// Postgres inside the lab for the real service (a unit, as `nobody`, data on the lab's
    /// tmpfs `/var/lib`), with the databases `app_0` ([`SCHEMA`]) and `psstore_0`.
    fn postgres(lab: &crate::lab::Lab, bindir: &Path) {
        let bindir = bindir.display();
        let o = lab.sh(&format!(
            "mkdir -p /var/lib/pg && echo {pw} > /var/lib/pg/pw && chown -R nobody:nogroup /var/lib/pg && \
             setpriv --reuid=nobody --regid=nogroup --clear-groups {bindir}/initdb -D /var/lib/pg/data \
             -U postgres -A scram-sha-256 --pwfile=/var/lib/pg/pw --no-sync -E UTF8 >/dev/null",
            pw = crate::pservice::PASSWORD
        ));
        assert_eq!(o.code, 0, "initdb in the lab: {}", o.all());
        lab.write(
            "/etc/systemd/system/postgresql-lab.service",
            &format!(
                "[Unit]\nDescription=Postgres for PowerSync (lab)\n\n[Service]\nUser=nobody\nGroup=nogroup\n\
                 ExecStart={bindir}/postgres -D /var/lib/pg/data -c wal_level=logical -c port=5432 \
                 -c listen_addresses=127.0.0.1 -c unix_socket_directories=/var/lib/pg -c fsync=off\n"
            ),
        );
        lab.daemon_reload();
        let o = lab.systemctl(&["start", "postgresql-lab.service"]);
        assert_eq!(o.code, 0, "{}", o.all());
        let psql = |db: &str, args: &str| {
            lab.sh(&format!(
                "PGPASSWORD={} {bindir}/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres -d {db} {args}",
                crate::pservice::PASSWORD
            ))
        };
        crate::util::wait_until(30, "Postgres in the lab", || {
            psql("postgres", "-c 'select 1'").code == 0
        });
        std::fs::write(lab.dir.path().join("schema.sql"), crate::pservice::SCHEMA).unwrap();
        for sql in [
            "-c 'create database app_0'",
            "-c 'create database psstore_0'",
        ] {
            let o = psql("postgres", sql);
            assert_eq!(o.code, 0, "{}", o.all());
        }
        let o = psql("app_0", "-f /run/lab/schema.sql");
        assert_eq!(o.code, 0, "{}", o.all());
    }

    fn set_upstream(&self, text: &str) {
        let d = self.lab.dir.path().join("upstream");
        std::fs::write(d.join(".next"), text).unwrap();
        std::fs::rename(d.join(".next"), d.join("sync-rules.yaml")).unwrap();
    }

    fn live(&self) -> String {
        std::fs::read_to_string(self.lab.path(LAB_LIVE)).unwrap_or_default()
    }

    /// PowerSync's admin API on the lab's loopback.
    fn diagnostics(&self) -> serde_json::Value {
        let answer = self.lab.in_net(|| {
            crate::pservice::request(
                8080,
                "POST",
                "/api/admin/v1/diagnostics",
                Some(("application/json", r#"{"sync_rules_content": true}"#)),
            )
        });
        answer
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait_active(&self, content: &str) {
        crate::util::wait_until(90, "rules active in the lab's PowerSync", || {
            let d = self.diagnostics();
            d["data"]["deploying_sync_rules"].is_null()
                && d["data"]["active_sync_rules"]["content"].as_str() == Some(content)
        });
    }

    fn cycles(&self, outcome: &str) -> f64 {
        let m = self
            .lab
            .in_net(|| crate::util::http(9871, "GET", "/metrics", &[], b""))
            .1;
        crate::util::metric(
            &m,
            "rulekeeper_cycles_total",
            &[("target", "powersync"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    }

    /// How many times systemd started PowerSync (its "Started" job results).
    fn starts(&self) -> usize {
        self.lab
            .journal(&format!("-u {LAB_UNIT} -t systemd"))
            .iter()
            .filter(|e| {
                e["JOB_TYPE"].as_str() == Some("start") || e["JOB_TYPE"].as_str() == Some("restart")
            })
            .filter(|e| e["JOB_RESULT"].as_str() == Some("done"))
            .count()
    }
}

/// A fresh host boots PowerSync (ordered after rulekeeper), which starts on the file rulekeeper
/// fetched; then a crashing revision is rolled back through systemd and PowerSync serves
/// last-good on its old version.
#[test]
fn lab_powersync_unit_boots_on_the_fetched_file_and_a_crash_is_rolled_back() {
    let Some(w) = LabWorld::new() else { return };
    w.set_upstream(V1);
    assert!(!w.lab.path(LAB_LIVE).exists(), "a fresh host: no live file");
    let t = Instant::now();
    let o = w.lab.systemctl(&["start", LAB_UNIT]);
    assert_eq!(o.code, 0, "{}", o.all());
    w.wait_active(V1);
    eprintln!(
        "LAB: PowerSync started and V1 active {:?} after the boot job",
        t.elapsed()
    );
    assert_eq!(w.lab.prop("rulekeeper.service", "ActiveState"), "active");
    let ready: u64 = w
        .lab
        .prop("rulekeeper.service", "ActiveEnterTimestampMonotonic")
        .parse()
        .unwrap();
    let started: u64 = w
        .lab
        .prop(LAB_UNIT, "ExecMainStartTimestampMonotonic")
        .parse()
        .unwrap();
    assert!(
        ready > 0 && started >= ready,
        "PowerSync started after READY=1 ({started} < {ready})"
    );
    assert_eq!(w.starts(), 1, "one start, on the fetched file");
    assert_eq!(w.live(), V1);
    let slot = w.diagnostics()["data"]["active_sync_rules"]["connections"][0]["slot_name"].clone();
    let first = w.lab.prop(LAB_UNIT, "InvocationID");

    // A crashing revision, pushed by the webhook.
    w.set_upstream(FATAL);
    let auth = format!("Bearer {LAB_SECRET}");
    let code = w.lab.in_net(|| {
        crate::util::http(
            9871,
            "POST",
            "/hooks/powersync",
            &[("Authorization", &auth)],
            b"",
        )
        .0
    });
    assert_eq!(code, 202);
    let t = Instant::now();
    crate::util::wait_until(150, "the crashing revision rolled back", || {
        w.cycles("rolled_back") >= 1.0
    });
    eprintln!("LAB: webhook -> rolled_back in {:?}", t.elapsed());
    assert_eq!(w.cycles("rollback_failed"), 0.0);
    assert_eq!(w.lab.prop(LAB_UNIT, "ActiveState"), "active");
    assert_ne!(w.lab.prop(LAB_UNIT, "InvocationID"), first);
    assert_eq!(w.live(), V1);
    w.wait_active(V1);
    let d = w.diagnostics();
    assert_eq!(
        d["data"]["active_sync_rules"]["connections"][0]["slot_name"], slot,
        "{d}"
    );
    assert!(
        fatal_errors(&d["data"]["active_sync_rules"]).is_empty(),
        "{d}"
    );
    // (`-o cat`: PowerSync colours its log, which journalctl's JSON gives as byte arrays.)
    let said = w
        .lab
        .sh(&format!("journalctl --no-pager -o cat -u {LAB_UNIT}"))
        .stdout;
    assert!(
        said.contains("nosuchfunc"),
        "PowerSync died on the revision: {said}"
    );
    let entries = w
        .lab
        .journal("-u rulekeeper.service TARGET_NAME=powersync OUTCOME=rolled_back");
    assert_eq!(entries.len(), 1);
    let reason = entries[0]["REASON"].as_str().unwrap_or("");
    eprintln!("LAB: rolled_back reason: {reason}");
    // The unit watch saw PowerSync exit: no waiting for the 60 s verify timeout.
    assert!(!reason.contains("not healthy within"), "{reason}");
    assert_eq!(entries[0]["SHA256"].as_str(), Some(sha256(V1).as_str()));
}
