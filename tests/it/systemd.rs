//! rulekeeper under a real systemd (tests/it/lab.rs): the shipped `docs/rulekeeper.service`
//! and `docs/podman-powersync.override.conf` as shipped, with a lab drop-in that changes only
//! paths (binary, config, credential sources), except where a test says otherwise. The
//! managed unit, `podman-powersync.service`, runs tests/support/fakesvc.py in PowerSync's
//! place (fast, and bad, flaky or broken on demand): it reads its rules once at start and exits
//! 1 0.3 s after start on rules marked `health: flaky`, as PowerSync does on bad rules. The real
//! PowerSync as that unit, booting on the fetched file and rolled back through systemd, is
//! `powersync_real.rs`'s lab scenario.

use std::time::Instant;

use crate::lab::Lab;
use crate::util::{self, repo_root, rules, sha256, wait_until};

const LIVE: &str = "/var/lib/powersync/sync-rules.yaml";
const UNIT: &str = "podman-powersync.service";
const SECRET: &str = "lab-webhook-secret-value";

/// A lab with rulekeeper's shipped unit, the managed unit and an upstream file.
struct World {
    lab: Lab,
}

/// How a scenario wants the pieces.
struct Setup<'a> {
    /// Extra `[Service]` lines for the managed unit.
    managed: &'a str,
    /// Extra `[Service]` lines for rulekeeper.service beyond the path changes.
    rulekeeper: &'a str,
    /// The target's `source:` (flow YAML).
    source: &'a str,
    /// The target's `verify:` (flow YAML).
    verify: &'a str,
    /// The target's `restart:` (flow YAML); None: `systemd` on the managed unit.
    restart: Option<&'a str>,
}

const FILE_SOURCE: &str = "{ kind: file, path: /run/lab/upstream/sync-rules.yaml }";
/// A window the flaky service (dead after 0.3 s) cannot pass, and a timeout far longer than
/// the window, so failing fast and failing at the timeout look different.
const VERIFY: &str =
    "{ http: \"http://127.0.0.1:8080/probe\", interval: 200ms, successes: 5, timeout: 30s }";

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            managed: "Restart=no",
            rulekeeper: "",
            source: FILE_SOURCE,
            verify: VERIFY,
            restart: None,
        }
    }
}

impl World {
    fn new(setup: Setup) -> Option<World> {
        let lab = Lab::boot()?;
        let bin = lab.provide(&util::bin(), "bin/rulekeeper");
        lab.provide(&repo_root().join("tests/support/fakesvc.py"), "fakesvc.py");
        // The shipped units, as shipped.
        let shipped = std::fs::read_to_string(repo_root().join("docs/rulekeeper.service"))
            .expect("docs/rulekeeper.service");
        lab.write("/etc/systemd/system/rulekeeper.service", &shipped);
        let dropin =
            std::fs::read_to_string(repo_root().join("docs/podman-powersync.override.conf"))
                .expect("docs/podman-powersync.override.conf");
        lab.write(
            &format!("/etc/systemd/system/{UNIT}.d/rulekeeper.conf"),
            &dropin,
        );
        // Paths only: where the binary, the config and the credential sources are here.
        lab.write(
            "/etc/systemd/system/rulekeeper.service.d/lab.conf",
            &format!(
                "[Service]\nExecStart=\nExecStart={bin} run -c /run/lab/config.yaml\n\
                 LoadCredential=\nLoadCredential=webhook-secret:/run/lab/credentials/webhook-secret\n{}\n",
                setup.rulekeeper
            ),
        );
        lab.write(
            &format!("/etc/systemd/system/{UNIT}"),
            &format!(
                "[Unit]\nDescription=stand-in for PowerSync (fakesvc.py)\n\n[Service]\n\
                 ExecStart=/usr/bin/python3 /run/lab/fakesvc.py serve /run/lab/svc\n{}\n",
                setup.managed
            ),
        );
        // ReadWritePaths=/var/lib/powersync in the shipped unit: the live directory exists.
        std::fs::create_dir_all(lab.path("/var/lib/powersync")).expect("live dir");
        let d = lab.dir.path();
        std::fs::create_dir_all(d.join("svc")).unwrap();
        std::fs::write(
            d.join("svc/svc.json"),
            format!("{{\"rules\": \"{LIVE}\", \"port\": 8080}}"),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("credentials")).unwrap();
        std::fs::write(d.join("credentials/webhook-secret"), format!("{SECRET}\n")).unwrap();
        std::fs::create_dir_all(d.join("upstream")).unwrap();
        std::fs::write(
            d.join("config.yaml"),
            format!(
                "listen: 127.0.0.1:9871\nstate_dir: /var/lib/rulekeeper\nstartup_timeout: 20s\n\
                 targets:\n  powersync:\n    source: {}\n    path: {LIVE}\n    interval: 1h\n\
                 \x20   validate: {{ require_keys: [bucket_definitions, streams] }}\n\
                 \x20   restart: {{ systemd: {UNIT}, timeout: 20s }}\n    verify: {}\n\
                 \x20   webhook: {{ secret_file: /run/credentials/rulekeeper.service/webhook-secret }}\n",
                setup.source, setup.verify
            ),
        )
        .unwrap();
        if let Some(restart) = setup.restart {
            let text = std::fs::read_to_string(d.join("config.yaml"))
                .unwrap()
                .replace(
                    &format!("restart: {{ systemd: {UNIT}, timeout: 20s }}"),
                    &format!("restart: {restart}"),
                );
            std::fs::write(d.join("config.yaml"), text).unwrap();
        }
        lab.daemon_reload();
        Some(World { lab })
    }

    /// Replaces the upstream file atomically (rename), so a cycle never reads half of it.
    fn set_upstream(&self, text: &str) {
        let d = self.lab.dir.path().join("upstream");
        std::fs::write(d.join(".next"), text).unwrap();
        std::fs::rename(d.join(".next"), d.join("sync-rules.yaml")).unwrap();
    }

    /// Publishes new upstream content and pushes the webhook for it.
    fn publish(&self, text: &str) {
        self.set_upstream(text);
        assert_eq!(self.hook(SECRET), 202);
    }

    /// `rulekeeper ARGS -c <lab config> -t powersync` inside the lab, logging to the journal.
    fn rk(&self, args: &str) -> util::Out {
        self.lab.sh(&format!(
            "/run/lab/bin/rulekeeper --log-format journald {args} -c /run/lab/config.yaml -t powersync"
        ))
    }

    fn live(&self) -> String {
        std::fs::read_to_string(self.lab.path(LIVE)).unwrap_or_default()
    }

    /// Lines of the managed service's starts.log ("start <first line of its rules>").
    fn starts(&self) -> Vec<String> {
        std::fs::read_to_string(self.lab.dir.path().join("svc/starts.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn start(&self, unit: &str) {
        let o = self.lab.systemctl(&["start", unit]);
        assert_eq!(o.code, 0, "start {unit}: {}", o.all());
    }

    /// SIGKILLs the unit's main process, as a crash would.
    fn kill_main(&self, unit: &str) {
        let pid = self.lab.prop(unit, "MainPID");
        let o = self.lab.sh(&format!("kill -KILL {pid}"));
        assert_eq!(o.code, 0, "kill {unit} ({pid}): {}", o.all());
    }

    fn active(&self, unit: &str) -> String {
        self.lab.prop(unit, "ActiveState")
    }

    /// An HTTP request to the daemon on the lab's loopback.
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.lab
            .in_net(|| util::http(9871, method, path, headers, b""))
    }

    fn hook(&self, secret: &str) -> u16 {
        let auth = format!("Bearer {secret}");
        self.http("POST", "/hooks/powersync", &[("Authorization", &auth)])
            .0
    }

    fn cycles(&self, outcome: &str) -> f64 {
        let m = self.http("GET", "/metrics", &[]).1;
        util::metric(
            &m,
            "rulekeeper_cycles_total",
            &[("target", "powersync"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    }

    fn wait_cycles(&self, outcome: &str, n: f64) {
        wait_until(60, &format!("{n} cycle(s) with outcome {outcome}"), || {
            self.cycles(outcome) >= n
        });
    }

    /// Boots the managed unit the way a host boots: its start pulls in rulekeeper (Wants=)
    /// and waits for READY=1 (After=), so its first start reads the fetched file.
    fn boot_with(&self, tag: &str) {
        self.set_upstream(&rules(tag, "good"));
        self.start(UNIT);
        wait_until(20, "the managed service answers", || {
            self.lab
                .in_net(|| util::http(8080, "GET", "/probe", &[], b"").0 == 200)
        });
        assert_eq!(self.active("rulekeeper.service"), "active");
    }

    /// The rulekeeper journal entries of cycles with this outcome.
    fn cycle_entries(&self, outcome: &str) -> Vec<serde_json::Value> {
        self.lab.journal(&format!(
            "-u rulekeeper.service TARGET_NAME=powersync OUTCOME={outcome}"
        ))
    }
}

fn field<'a>(e: &'a serde_json::Value, name: &str) -> &'a str {
    e[name].as_str().unwrap_or("")
}

/// Microseconds since the epoch of a journal entry.
fn usec(e: &serde_json::Value) -> u64 {
    field(e, "__REALTIME_TIMESTAMP").parse().unwrap_or(0)
}

#[test]
fn shipped_units_boot_order_webhook_credential_and_try_restart() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    w.boot_with("v1");
    // The managed unit's first start read the file rulekeeper fetched: it was ordered after
    // READY=1, and nothing restarted it.
    assert_eq!(w.starts(), vec!["start # v1"]);
    assert_eq!(w.live(), rules("v1", "good"));
    let first = w.lab.prop(UNIT, "InvocationID");

    // The webhook secret arrives through LoadCredential (the config points into
    // /run/credentials/rulekeeper.service).
    w.set_upstream(&rules("v2", "good"));
    assert_eq!(w.hook("wrong"), 401);
    assert_eq!(w.hook(SECRET), 202);
    w.wait_cycles("applied", 2.0);
    assert_eq!(w.starts(), vec!["start # v1", "start # v2"]);
    assert_eq!(w.active(UNIT), "active");
    assert_ne!(w.lab.prop(UNIT, "InvocationID"), first, "restarted");
    // try-restart is a restart job of the running unit, not a stop plus a start by us.
    let jobs = w.lab.journal(&format!("-u {UNIT} -t systemd"));
    assert!(
        jobs.iter().any(|e| field(e, "JOB_TYPE") == "restart"),
        "a restart job ran: {jobs:?}"
    );
    assert_eq!(w.cycles("rolled_back"), 0.0);
}

#[test]
fn crash_revision_with_restart_no_is_rolled_back_and_running() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    w.boot_with("good1");
    w.publish(&rules("crash", "flaky"));
    w.wait_cycles("rolled_back", 1.0);
    // Restart=no: the bad revision left the unit failed; the rollback started it again on
    // last-good and verified it.
    assert_eq!(w.active(UNIT), "active");
    assert_eq!(
        w.starts(),
        vec!["start # good1", "start # crash", "start # good1"]
    );
    assert_eq!(w.live(), rules("good1", "good"));
    assert_eq!(w.cycles("rollback_failed"), 0.0);
    let entries = w.cycle_entries("rolled_back");
    assert_eq!(entries.len(), 1, "{entries:?}");
    let reason = field(&entries[0], "REASON");
    // Found at once by watching the unit, not when the 30 s verify timeout ran out.
    assert!(
        reason.contains("did not stay up") && !reason.contains("not healthy within"),
        "{reason}"
    );
    assert_eq!(
        field(&entries[0], "SHA256"),
        sha256(&rules("good1", "good"))
    );
    assert_eq!(field(&entries[0], "RESTARTS"), "2");

    // Bad revision installed -> healthy on last-good, from rulekeeper's own journal.
    let bad = sha256(&rules("crash", "flaky"));
    let installed = w
        .lab
        .journal(&format!("-u rulekeeper.service SHA256={bad}"))
        .into_iter()
        .find(|e| field(e, "MESSAGE") == "installed new content")
        .expect("the install of the bad revision is in the journal");
    let ms = (usec(&entries[0]) - usec(&installed)) / 1000;
    eprintln!("LAB MEASURE: crash revision installed -> healthy on last-good: {ms} ms (restart + fail-fast detection + restore + restart + 5 x 200 ms window)");
    // And the quarantine holds: the same revision is not applied again.
    assert_eq!(w.hook(SECRET), 202);
    w.wait_cycles("quarantined", 1.0);
    assert_eq!(w.starts().len(), 3);
}

#[test]
fn crash_loop_past_the_start_limit_is_rolled_back() {
    let Some(w) = World::new(Setup {
        // Boot start + our try-restart use up the burst; the first automatic restart after
        // the crash is refused and the unit ends `failed` (start-limit-hit).
        managed:
            "Restart=always\nRestartSec=0\n[Unit]\nStartLimitIntervalSec=120\nStartLimitBurst=2",
        ..Setup::default()
    }) else {
        return;
    };
    w.boot_with("good1");
    w.publish(&rules("crash", "flaky"));
    w.wait_cycles("rolled_back", 1.0);
    assert_eq!(w.active(UNIT), "active");
    assert_eq!(w.live(), rules("good1", "good"));
    assert_eq!(w.starts().last().map(String::as_str), Some("start # good1"));
    let unit_log: Vec<String> = w
        .lab
        .journal(&format!("-u {UNIT}"))
        .iter()
        .map(|e| field(e, "MESSAGE").to_string())
        .collect();
    assert!(
        unit_log
            .iter()
            .any(|m| m.contains("Start request repeated too quickly")),
        "the crash loop hit the start limit: {unit_log:?}"
    );
    assert_eq!(w.cycles("rollback_failed"), 0.0);
}

#[test]
fn operator_stopped_unit_is_not_started() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    w.boot_with("v1");
    let o = w.lab.systemctl(&["stop", UNIT]);
    assert_eq!(o.code, 0, "{}", o.all());
    w.publish(&rules("v2", "good"));
    w.wait_cycles("applied", 2.0);
    assert_eq!(w.live(), rules("v2", "good"));
    assert_eq!(w.active(UNIT), "inactive", "still stopped");
    assert_eq!(w.starts(), vec!["start # v1"]);
    let (_, status) = w.http("GET", "/status", &[]);
    assert!(status.contains("not active"), "{status}");
}

#[test]
fn frozen_daemon_is_killed_by_the_watchdog_and_restarted_alone() {
    // The one change beyond paths: the shipped WatchdogSec=60s would make this test a minute
    // longer without showing anything more.
    let Some(w) = World::new(Setup {
        rulekeeper: "WatchdogSec=2s",
        ..Setup::default()
    }) else {
        return;
    };
    w.boot_with("v1");
    let managed = w.lab.prop(UNIT, "InvocationID");
    let pid = w.lab.prop("rulekeeper.service", "MainPID");
    let o = w.lab.sh(&format!("kill -STOP {pid}"));
    assert_eq!(o.code, 0, "{}", o.all());
    wait_until(60, "systemd restarts the frozen daemon", || {
        let now = w.lab.prop("rulekeeper.service", "MainPID");
        now != pid && now != "0" && w.active("rulekeeper.service") == "active"
    });
    let log: Vec<String> = w
        .lab
        .journal("-u rulekeeper.service")
        .iter()
        .map(|e| field(e, "MESSAGE").to_string())
        .collect();
    assert!(
        log.iter().any(|m| m.contains("Watchdog timeout")),
        "{log:?}"
    );
    assert_eq!(w.lab.prop("rulekeeper.service", "NRestarts"), "1");
    // The managed service was not touched: same invocation, one start.
    assert_eq!(w.lab.prop(UNIT, "InvocationID"), managed);
    assert_eq!(w.starts(), vec!["start # v1"]);
}

#[test]
fn journal_fields_are_queryable_without_prefix() {
    let Some(git) = util::require_tool("git") else {
        return;
    };
    let Some(w) = World::new(Setup {
        source:
            "{ kind: git, url: \"file:///run/lab/repo.git\", ref: main, path: sync-rules.yaml }",
        ..Setup::default()
    }) else {
        return;
    };
    // A git source gives a revision; the repository is a host directory seen in the lab.
    let d = w.lab.dir.path();
    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let g = |args: &[&str], dir: &std::path::Path| {
        let (ok, _, err) = util::run(
            std::process::Command::new(&git)
                .args(args)
                .current_dir(dir)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com"),
        );
        assert!(ok, "git {args:?}: {err}");
    };
    g(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("sync-rules.yaml"), rules("v1", "good")).unwrap();
    g(&["add", "."], &work);
    g(&["commit", "-q", "-m", "v1"], &work);
    g(&["clone", "-q", "--bare", ".", "../repo.git"], &work);
    let (_, head, _) = util::run(
        std::process::Command::new(&git)
            .args(["rev-parse", "HEAD"])
            .current_dir(&work),
    );
    let head = head.trim().to_string();
    w.start(UNIT);
    w.wait_cycles("applied", 1.0);
    let sha = sha256(&rules("v1", "good"));
    let found = w.lab.journal(&format!(
        "-u rulekeeper.service OUTCOME=applied TARGET_NAME=powersync SHA256={sha} REVISION={head}"
    ));
    assert_eq!(found.len(), 1, "one entry per cycle: {found:?}");
    let e = &found[0];
    assert_eq!(field(e, "MESSAGE"), "cycle");
    assert!(field(e, "DURATION_MS").parse::<u64>().is_ok(), "{e}");
    assert_eq!(field(e, "RESTARTS"), "0");
    assert!(e.get("REASON").is_some(), "{e}");
    assert!(
        e.as_object()
            .map(|o| o.keys().all(|k| !k.starts_with("F_")))
            .unwrap_or(false),
        "no F_ prefix: {e}"
    );
}

#[test]
fn once_from_a_real_timer() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    // Timer-driven use (no daemon): a oneshot service and its timer.
    let bin = "/run/lab/bin/rulekeeper";
    w.lab.write(
        "/etc/systemd/system/rulekeeper-once.service",
        &format!(
            "[Service]\nType=oneshot\nStateDirectory=rulekeeper\n\
             ExecStart={bin} once -c /run/lab/config.yaml\n"
        ),
    );
    w.lab.write(
        "/etc/systemd/system/rulekeeper-once.timer",
        "[Timer]\nOnActiveSec=1s\nOnUnitInactiveSec=1s\nAccuracySec=50ms\n",
    );
    // The managed unit here has no drop-in: it does not pull in the daemon.
    let _ = std::fs::remove_file(
        w.lab
            .path(&format!("/etc/systemd/system/{UNIT}.d/rulekeeper.conf")),
    );
    w.lab.daemon_reload();
    w.set_upstream(&rules("v1", "good"));
    w.start("rulekeeper-once.timer");
    wait_until(30, "the timer's first run installs v1", || {
        w.live() == rules("v1", "good")
    });
    w.start(UNIT);
    wait_until(20, "managed service up", || w.starts().len() == 1);
    w.set_upstream(&rules("v2", "good"));
    wait_until(
        30,
        "a later timer run applies v2 through try-restart",
        || w.starts().last().map(String::as_str) == Some("start # v2"),
    );
    wait_until(20, "two applied runs in the once service's journal", || {
        w.lab
            .journal(
                "-u rulekeeper-once.service TARGET_NAME=powersync OUTCOME=applied MESSAGE=cycle",
            )
            .len()
            >= 2
    });
    assert_eq!(w.active("rulekeeper.service"), "inactive", "no daemon here");
    assert_eq!(w.active(UNIT), "active");
    assert_eq!(w.starts(), vec!["start # v1", "start # v2"]);
}

#[test]
fn concurrent_push_waits_for_the_daemons_cycle() {
    // A long window (15 x 200 ms), so the push arrives while the daemon verifies.
    let Some(w) = World::new(Setup {
        verify: "{ http: \"http://127.0.0.1:8080/probe\", interval: 200ms, successes: 15, timeout: 30s }",
        ..Setup::default()
    }) else {
        return;
    };
    w.boot_with("v1");
    w.set_upstream(&rules("v2", "good"));
    std::fs::write(w.lab.dir.path().join("v3.yaml"), rules("v3", "good")).unwrap();
    assert_eq!(w.hook(SECRET), 202);
    wait_until(20, "the daemon restarted onto v2", || {
        w.starts().last().map(String::as_str) == Some("start # v2")
    });
    // The daemon is inside its verify window now, holding the target's lock.
    let started = Instant::now();
    let o = w.rk("push /run/lab/v3.yaml");
    let took = started.elapsed();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    // Without the lock, the push's restart inside the daemon's window would have changed
    // the InvocationID and the daemon would have rolled v2 back.
    w.wait_cycles("applied", 2.0);
    assert_eq!(w.cycles("rolled_back"), 0.0);
    assert_eq!(
        w.starts(),
        vec!["start # v1", "start # v2", "start # v3"],
        "one restart at a time, in order"
    );
    assert_eq!(w.live(), rules("v3", "good"));
    let daemon_done = w
        .cycle_entries("applied")
        .iter()
        .map(usec)
        .max()
        .unwrap_or(0);
    let push_installed = w
        .lab
        .journal(&format!("SHA256={}", sha256(&rules("v3", "good"))))
        .iter()
        .filter(|e| field(e, "MESSAGE") == "installed new content")
        .map(usec)
        .min()
        .unwrap_or(0);
    assert!(
        push_installed > daemon_done,
        "the push swapped only after the daemon's cycle ended (push took {took:?})"
    );
}

#[test]
fn daemon_restart_with_moved_upstream_applies_only_after_ready() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    w.boot_with("v1");
    // Wants=, not Requires=: stopping rulekeeper leaves the managed service running.
    let o = w.lab.systemctl(&["stop", "rulekeeper.service"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(w.active(UNIT), "active");
    w.set_upstream(&rules("v2", "good"));
    // The managed unit is ordered After= rulekeeper: a restart job for it issued before our
    // READY=1 would wait behind this very start job until the restart timeout, then be rolled
    // back. The start returns promptly and v2 is applied right after READY=1 instead.
    w.start("rulekeeper.service");
    w.wait_cycles("applied", 1.0);
    assert_eq!(w.starts(), vec!["start # v1", "start # v2"]);
    assert_eq!(w.cycles("rolled_back"), 0.0);
    let started = w
        .lab
        .journal("-u rulekeeper.service -t systemd")
        .into_iter()
        .filter(|e| field(e, "MESSAGE").starts_with("Started "))
        .map(|e| usec(&e))
        .max()
        .expect("rulekeeper started");
    let restart_job = w
        .lab
        .journal(&format!("-u {UNIT} -t systemd"))
        .into_iter()
        .filter(|e| field(e, "JOB_TYPE") == "restart")
        .map(|e| usec(&e))
        .min()
        .expect("a restart job");
    assert!(
        restart_job > started,
        "the managed unit's restart job ran after rulekeeper's start job finished"
    );
}

#[test]
fn interrupted_apply_found_at_start_up_brings_the_unit_back() {
    // Long enough to kill rulekeeper inside the window, and for last-good's own window (1 s of
    // successes) on a loaded CI machine: at 4 s, last-good's verify once ran out and the
    // outcome was rollback_failed.
    let Some(w) = World::new(Setup {
        verify:
            "{ http: \"http://127.0.0.1:8080/probe\", interval: 200ms, successes: 5, timeout: 10s }",
        ..Setup::default()
    }) else {
        return;
    };
    w.boot_with("good1");
    w.publish(&rules("bad", "bad"));
    wait_until(20, "the bad revision is running", || {
        w.starts().last().map(String::as_str) == Some("start # bad")
    });
    // rulekeeper dies inside the verify window, and the service dies too before it is back.
    for unit in ["rulekeeper.service", UNIT] {
        w.kill_main(unit);
    }
    wait_until(20, "the managed unit is failed", || {
        w.active(UNIT) == "failed"
    });
    // Restart=on-failure brings rulekeeper back; the pending record says the unit ran before
    // the apply, so recovery starts it, verifies the new content, and rolls back to
    // last-good with the unit running.
    // Wait for either terminal outcome, so a rollback_failed is reported as itself.
    wait_until(90, "recovery reached an outcome", || {
        w.active("rulekeeper.service") == "active"
            && w.cycles("rolled_back") + w.cycles("rollback_failed") >= 1.0
    });
    assert_eq!(
        w.cycles("rollback_failed"),
        0.0,
        "{:?}",
        w.cycle_entries("rollback_failed")
    );
    assert_eq!(w.active(UNIT), "active");
    assert_eq!(w.live(), rules("good1", "good"));
    assert_eq!(w.starts().last().map(String::as_str), Some("start # good1"));
    let e = w.cycle_entries("rolled_back");
    assert!(
        field(&e[0], "REASON").contains("interrupted apply"),
        "{e:?}"
    );
}

#[test]
fn manual_rollback_brings_back_a_crashed_unit_but_not_a_stopped_one() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    w.boot_with("v1");
    w.publish(&rules("v2", "good"));
    w.wait_cycles("applied", 2.0);
    let rollback = || w.rk("rollback");
    // The service died (Restart=no leaves it failed); the operator rolls back.
    w.kill_main(UNIT);
    wait_until(20, "the managed unit is failed", || {
        w.active(UNIT) == "failed"
    });
    let o = rollback();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert_eq!(w.active(UNIT), "active");
    assert_eq!(w.live(), rules("v1", "good"));
    assert_eq!(w.starts().last().map(String::as_str), Some("start # v1"));

    // Stopped by the operator: the file goes back, the unit stays stopped.
    let o = w.lab.systemctl(&["stop", UNIT]);
    assert_eq!(o.code, 0, "{}", o.all());
    let starts = w.starts().len();
    let o = rollback();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("not active"), "{}", o.all());
    assert_eq!(w.live(), rules("v2", "good"));
    assert_eq!(w.active(UNIT), "inactive");
    assert_eq!(w.starts().len(), starts);
}

#[test]
fn last_good_failing_too_is_rollback_failed() {
    let Some(w) = World::new(Setup::default()) else {
        return;
    };
    w.boot_with("v1");
    w.publish(&rules("v2", "good"));
    w.wait_cycles("applied", 2.0);
    // Something outside the rules breaks (a dependency down): the service now dies on any
    // rules, last-good included.
    let broken = w.lab.dir.path().join("svc/broken");
    std::fs::write(&broken, "").unwrap();
    w.publish(&rules("v3", "good"));
    w.wait_cycles("rollback_failed", 1.0);
    assert_eq!(w.cycles("rolled_back"), 0.0, "never reported as healed");
    // The last-good file is back in place, and rulekeeper tried it: started, watched it die.
    assert_eq!(w.live(), rules("v2", "good"));
    assert_eq!(
        w.starts(),
        vec!["start # v1", "start # v2", "start # v3", "start # v2"]
    );
    let e = w.cycle_entries("rollback_failed");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(field(&e[0], "SHA256"), sha256(&rules("v2", "good")));
    assert!(
        !field(&e[0], "REASON").contains("not healthy within"),
        "found by watching the unit, not at the timeout: {e:?}"
    );
    let m = w.http("GET", "/metrics", &[]).1;
    assert_eq!(
        util::metric(&m, "rulekeeper_rollbacks_total", &[("target", "powersync")]),
        Some(1.0),
        "{m}"
    );
    // The operator mends the dependency and starts the unit: it runs last-good.
    std::fs::remove_file(&broken).unwrap();
    w.start(UNIT);
    wait_until(20, "the unit started by hand", || w.starts().len() == 5);
    assert_eq!(w.starts()[4], "start # v2");
    // It breaks again, and someone pushes more content by hand: the same end, as exit 4.
    std::fs::write(&broken, "").unwrap();
    std::fs::write(w.lab.dir.path().join("v4.yaml"), rules("v4", "good")).unwrap();
    let o = w.rk("push /run/lab/v4.yaml");
    assert_eq!(o.code, 4, "{}", o.all());
    assert!(o.stdout.contains("rollback_failed"), "{}", o.all());
    assert_eq!(w.live(), rules("v2", "good"));
    assert_eq!(
        w.starts()[5..],
        ["start # v4", "start # v2"].map(String::from)
    );
}

/// `systemd_reload`: `systemctl reload` keeps the unit's process (the same InvocationID and
/// MainPID; the service took the file on SIGHUP), and a reload that turns into a restart fails
/// verification, saying so.
#[test]
fn systemd_reload_keeps_the_process_and_a_reload_that_restarts_fails() {
    let Some(w) = World::new(Setup {
        managed: "Restart=no\nExecReload=/bin/kill -HUP $MAINPID",
        restart: Some(&format!("{{ systemd_reload: {UNIT}, timeout: 20s }}")),
        ..Setup::default()
    }) else {
        return;
    };
    w.boot_with("good1");
    let (inv, pid) = (
        w.lab.prop(UNIT, "InvocationID"),
        w.lab.prop(UNIT, "MainPID"),
    );
    w.publish(&rules("good2", "good"));
    w.wait_cycles("applied", 2.0);
    assert_eq!(w.lab.prop(UNIT, "InvocationID"), inv, "no restart");
    assert_eq!(w.lab.prop(UNIT, "MainPID"), pid);
    assert_eq!(w.starts(), vec!["start # good1"]);
    let reloads =
        std::fs::read_to_string(w.lab.dir.path().join("svc/reloads.log")).unwrap_or_default();
    assert_eq!(reloads.lines().last(), Some("reload # good2"), "{reloads}");
    let entries = w.cycle_entries("applied");
    assert_eq!(
        field(entries.last().unwrap(), "RESTARTS"),
        "0",
        "a reload is no restart"
    );
    eprintln!(
        "LAB: systemd_reload applied good2 on InvocationID {inv}, MainPID {pid} before and after"
    );

    // A unit whose "reload" restarts it: not a reload, and verification says so.
    w.lab.write(
        &format!("/etc/systemd/system/{UNIT}.d/restarting-reload.conf"),
        &format!("[Service]\nExecReload=\nExecReload=/bin/systemctl --no-block restart {UNIT}\n"),
    );
    w.lab.daemon_reload();
    w.publish(&rules("good3", "good"));
    w.wait_cycles("rollback_failed", 1.0);
    let e = w.cycle_entries("rollback_failed");
    let reason = field(e.last().unwrap(), "REASON");
    assert!(reason.contains("the reload became a restart"), "{reason}");
    assert_eq!(w.live(), rules("good2", "good"), "rolled back to last-good");
}
