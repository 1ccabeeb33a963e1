//! `rulekeeper run` as systemd sees it: sd_notify over a real unix datagram socket,
//! readiness rules at boot, polling, metrics (checked with promtool), signals.

use std::process::Command;

use crate::forge::FakeForge;
use crate::util::{self, metric, rules, samples, wait_until, Env};

const TOKEN: &str = "daemon-token-123";

fn file_env(interval: &str) -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let up = env.dir.path().join("upstream.yaml");
    env.write_config(
        &crate::util::file_source(&up),
        &env.restart_command(),
        &env.verify_http(),
        &format!("    interval: {interval}\n"),
    );
    (env, up)
}

fn cycles(m: &str, outcome: &str) -> f64 {
    metric(
        m,
        "rulekeeper_cycles_total",
        &[("target", "ps"), ("outcome", outcome)],
    )
    .unwrap_or(-1.0)
}

#[test]
fn ready_status_watchdog_and_stopping() {
    let (env, up) = file_env("1h");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    let d = env.daemon(Some(300_000));
    d.wait_ready();
    assert!(env.live.exists(), "usable file before READY=1");
    assert!(
        d.notes()
            .iter()
            .any(|n| n.contains("STATUS=1 of 1 targets in sync")),
        "{:?}",
        d.notes()
    );
    // pings at half the period (150 ms): wait for several
    wait_until(30, "5 watchdog pings", || {
        d.notes()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
            >= 5
    });
    let (code, body) = d.get("/healthz");
    assert_eq!(code, 200, "{body}");
    let notes = d.notes.clone();
    let code = d.terminate();
    assert_eq!(code, 0, "{}", env.daemon_log());
    let notes: Vec<String> = notes
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    assert!(notes.iter().any(|n| n.contains("STOPPING=1")), "{notes:?}");
}

#[test]
fn watchdog_stops_while_a_loop_is_stuck() {
    let Some(flock) = util::require_tool("flock") else {
        return;
    };
    let env = Env::new();
    let up = env.dir.path().join("upstream.yaml");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    // small time limits so that the cycle budget (the "stuck" threshold) is short
    env.write_config(
        &format!("{{ kind: file, path: \"{}\", timeout: 1s }}", up.display()),
        "{ none: true, timeout: 1s }",
        "{ none: true, timeout: 1s }",
        "    interval: 1s\n",
    );
    env.set_validate("{ timeout: 1s }");
    let d = env.daemon(Some(400_000));
    d.wait_ready();
    // Hold the target's lock from outside, as a hung process would.
    let lock = env.state.join("targets/ps/lock");
    // -o: the lock stays with flock itself, so killing it releases the lock
    let mut holder = Command::new(flock)
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "120"])
        .spawn()
        .unwrap();
    let pings = |d: &util::Daemon| {
        d.notes()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
    };
    // The loop blocks on the lock; past its budget the pings must stop.
    let mut last = pings(&d);
    let mut quiet_since = std::time::Instant::now();
    wait_until(60, "watchdog pings to stop for 2 s", || {
        let now = pings(&d);
        if now != last {
            last = now;
            quiet_since = std::time::Instant::now();
        }
        quiet_since.elapsed() > std::time::Duration::from_secs(2)
    });
    assert_eq!(d.get("/healthz").0, 503);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let before = pings(&d);
    wait_until(30, "watchdog pings to resume", || pings(&d) > before + 2);
    assert_eq!(d.get("/healthz").0, 200);
}

#[test]
fn metrics_pass_promtool_and_polling_applies_new_revision() {
    let (env, up) = file_env("1s");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    let d = env.daemon(None);
    d.wait_ready();
    let m = d.metrics();
    let histogram_bucket = "rulekeeper_cycle_duration_seconds_bucket";
    for name in util::METRICS
        .iter()
        // webhook series exist only for targets with a webhook (this one has none), and
        // quarantined_info only while something is quarantined
        .filter(|n| {
            **n != "rulekeeper_webhook_requests_total" && **n != "rulekeeper_quarantined_info"
        })
        .map(|n| {
            if *n == "rulekeeper_cycle_duration_seconds" {
                histogram_bucket
            } else {
                n
            }
        })
        .chain(["process_resident_memory_bytes"])
    {
        assert!(!samples(&m, name).is_empty(), "{name} missing:\n{m}");
    }
    if let Some(promtool) = util::require_tool("promtool") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let old = samples(&m, "rulekeeper_rules_info");
    assert_eq!(old.len(), 1, "{old:?}");
    // a new upstream revision is applied by polling alone
    std::fs::write(&up, rules("v2", "good")).unwrap();
    wait_until(20, "v2 applied", || env.live() == rules("v2", "good"));
    wait_until(30, "metrics updated", || {
        cycles(&d.metrics(), "applied") >= 2.0
    });
    let new = samples(&d.metrics(), "rulekeeper_rules_info");
    assert_eq!(new.len(), 1, "exactly one series per target: {new:?}");
    assert_ne!(new, old);
    assert!(env.start_log().last().unwrap().ends_with("v2"));
}

#[test]
fn one_bad_revision_costs_one_rollback_and_two_restarts() {
    let env = Env::new();
    let forge = FakeForge::start(TOKEN);
    let tf = env.write_token(TOKEN);
    env.forgejo_config(&forge.base_url(), &tf);
    env.edit(|t| t.set("interval", "1s"));
    forge.set(&rules("good", "good"));
    env.start_service();
    let d = env.daemon(None);
    d.wait_ready();
    let restarts_before = env.restarts();
    forge.set(&rules("bad", "bad"));
    wait_until(30, "rolled back", || {
        cycles(&d.metrics(), "rolled_back") >= 1.0
    });
    // let several intervals pass with the same bad upstream
    wait_until(30, "4 quarantined cycles", || {
        cycles(&d.metrics(), "quarantined") >= 4.0
    });
    let m = d.metrics();
    assert_eq!(
        env.restarts() - restarts_before,
        2,
        "one onto bad, one back"
    );
    assert_eq!(
        metric(&m, "rulekeeper_rollbacks_total", &[("target", "ps")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "rulekeeper_quarantined", &[("target", "ps")]),
        Some(1.0)
    );
    assert_eq!(env.live(), rules("good", "good"));
    // new content clears it
    forge.set(&rules("good2", "good"));
    wait_until(30, "good2 applied", || env.live() == rules("good2", "good"));
    wait_until(30, "quarantine gauge cleared", || {
        metric(&d.metrics(), "rulekeeper_quarantined", &[("target", "ps")]) == Some(0.0)
    });
}

#[test]
fn daemon_restarts_with_unchanged_upstream_restart_nothing() {
    let (env, up) = file_env("1h");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let restarts = env.restarts();
    for _ in 0..3 {
        let d = env.daemon(None);
        d.wait_ready();
        wait_until(30, "first cycle recorded", || {
            cycles(&d.metrics(), "unchanged") >= 1.0
        });
        assert_eq!(d.terminate(), 0);
    }
    assert_eq!(env.restarts(), restarts, "no managed-service restart");
}

#[test]
fn boot_with_forge_down_and_usable_file_is_ready() {
    let env = Env::new();
    let tf = env.write_token(TOKEN);
    env.forgejo_config(&format!("http://127.0.0.1:{}", util::free_port()), &tf);
    std::fs::write(&env.live, rules("persisted", "good")).unwrap();
    let d = env.daemon(None);
    d.wait_ready();
    let m = d.metrics();
    assert!(cycles(&m, "fetch_failed") >= 1.0, "{m}");
    assert_eq!(env.restarts(), 0);
}

#[test]
fn boot_with_forge_down_and_no_file_fails_without_ready() {
    let env = Env::new();
    let tf = env.write_token(TOKEN);
    env.forgejo_config(&format!("http://127.0.0.1:{}", util::free_port()), &tf);
    env.edit_cfg(|c| c.top("startup_timeout", "2s"));
    let mut d = env.daemon(None);
    let status = d.child.wait().unwrap();
    assert_ne!(status.code(), Some(0), "{}", env.daemon_log());
    assert!(!d.has_note("READY=1"), "{:?}", d.notes());
    assert!(
        env.daemon_log().contains("no usable rules file"),
        "{}",
        env.daemon_log()
    );
}

#[test]
fn listen_failure_is_a_clear_startup_error() {
    let (env, up) = file_env("1h");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let _busy = std::net::TcpListener::bind(("127.0.0.1", env.listen)).unwrap();
    let out = env.rk(&["run"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("listen"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&env.listen.to_string()),
        "{}",
        out.stderr
    );
}

#[test]
fn sigterm_mid_cycle_stops_before_the_swap() {
    let (env, up) = file_env("1h");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let marker = env.dir.path().join("validating");
    env.set_validate(&format!(
            "{{ command: [sh, -c, \"grep -q v2 \\\"$0\\\" || exit 0; touch {}; sleep 2\", \"{{file}}\"], timeout: 10s }}",
            marker.display()
        ));
    env.start_service();
    assert_eq!(env.once().code, 0);
    let restarts = env.restarts();
    // upstream moves to a revision whose validation is slow; the daemon's first cycle
    // validates it, and SIGTERM arrives meanwhile
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let d = env.daemon(None);
    wait_until(20, "validation of v2 started", || marker.exists());
    let notes = d.notes.clone();
    let code = d.terminate();
    assert_eq!(code, 0, "{}", env.daemon_log());
    assert!(notes
        .lock()
        .unwrap()
        .iter()
        .any(|(_, m)| m.contains("STOPPING=1")));
    assert_eq!(env.live(), rules("v1", "good"), "nothing swapped");
    assert!(env.state_json()["pending"].is_null());
    assert_eq!(env.restarts(), restarts);
    assert!(
        env.daemon_log().contains("stopped before the swap"),
        "{}",
        env.daemon_log()
    );
}

#[test]
fn json_logs_carry_structured_fields() {
    let (env, up) = file_env("1h");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    let o = env.rk(&["--log-format", "json", "once"]);
    assert_eq!(o.code, 0, "{}", o.all());
    let line = o
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "cycle")
        .unwrap_or_else(|| panic!("no JSON cycle line in {}", o.stderr));
    assert_eq!(line["fields"]["target_name"], "ps");
    assert_eq!(line["fields"]["outcome"], "applied");
    assert_eq!(line["fields"]["sha256"].as_str().unwrap().len(), 64);
}

/// The quarantined content is on `/metrics` while the rollback still runs, before the rollback
/// counter moves: an alert the counter fires (RulekeeperRolledBack) then renders its `rules`
/// annotation from a series already stored, not one first seen in that same scrape.
#[test]
fn quarantine_is_published_before_the_rollback_counts() {
    let (env, up) = file_env("1s");
    let gate = env.dir.path().join("gate");
    // The restart back onto good content (the live file has no `health:` line) waits for
    // the gate, once the bad content has been published upstream.
    let armed = env.dir.path().join("armed");
    let restart = format!(
        "{{ command: [sh, -c, \"python3 '{}' restart '{}' && if [ -e '{}' ] && ! grep -q health: '{}'; then while [ ! -e '{}' ]; do sleep 0.05; done; fi\"], timeout: 60s }}",
        Env::fakesvc(),
        env.svc.display(),
        armed.display(),
        env.live.display(),
        gate.display()
    );
    env.edit(|t| t.set("restart", crate::util::yaml(&restart)));
    std::fs::write(&up, rules("good", "good")).unwrap();
    env.start_service();
    let d = env.daemon(None);
    d.wait_ready();
    std::fs::write(&armed, "").unwrap();
    std::fs::write(&up, rules("bad", "bad")).unwrap();
    let bad = util::sha256(&rules("bad", "bad"));
    wait_until(30, "the quarantine on /metrics", || {
        metric(
            &d.metrics(),
            "rulekeeper_quarantined_info",
            &[("target", "ps"), ("sha256", &bad)],
        ) == Some(1.0)
    });
    let m = d.metrics();
    assert_eq!(
        metric(&m, "rulekeeper_rollbacks_total", &[("target", "ps")]),
        Some(0.0),
        "the rollback is held open by its restart"
    );
    assert_eq!(cycles(&m, "rolled_back"), 0.0);
    std::fs::write(&gate, "").unwrap();
    wait_until(30, "rolled back", || {
        cycles(&d.metrics(), "rolled_back") >= 1.0
    });
    let m = d.metrics();
    assert_eq!(
        metric(&m, "rulekeeper_rollbacks_total", &[("target", "ps")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "rulekeeper_quarantined_info",
            &[("target", "ps"), ("sha256", &bad)]
        ),
        Some(1.0)
    );
    assert_eq!(env.live(), rules("good", "good"));
}

/// A forge that is down when the daemon starts is asked again within the backoff's seconds,
/// not after a whole `interval` (here an hour): the boot cycle's failure counts as the first.
#[test]
fn a_fetch_failing_at_boot_is_retried_within_seconds() {
    let (env, forge) = crate::forge::forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
        TOKEN,
        false,
    );
    env.edit(|t| t.set("interval", "1h"));
    std::fs::write(&env.live, rules("persisted", "good")).unwrap();
    forge.set(&rules("v2", "good"));
    forge.fail_with(Some(503));
    let d = env.daemon(None);
    d.wait_ready();
    assert!(cycles(&d.metrics(), "fetch_failed") >= 1.0);
    forge.fail_with(None);
    let t = std::time::Instant::now();
    wait_until(20, "v2 applied after the forge came back", || {
        env.live() == rules("v2", "good")
    });
    eprintln!(
        "retried and applied {:?} after the forge came back",
        t.elapsed()
    );
    assert_eq!(d.terminate(), 0);
}

/// Logs written to a file or a pipe (not a terminal) carry no ANSI escape codes.
#[test]
fn logs_to_a_pipe_or_file_are_plain_text() {
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let o = env.rk_env(&["once"], &[("RULEKEEPER_LOG", "debug")]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.contains("cycle"),
        "logs were written: {}",
        o.stderr
    );
    assert!(
        !o.stderr.contains('\u{1b}'),
        "escape codes in: {:?}",
        o.stderr
    );
    let d = env.daemon(None);
    d.wait_ready();
    assert_eq!(d.terminate(), 0);
    let log = env.daemon_log();
    assert!(log.contains("ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the daemon's log file: {log:?}"
    );
}

/// A forge that says "slow down" is not asked again before the time it names, whatever the
/// interval: a 429 with `Retry-After`, and GitHub's 403 with `X-RateLimit-Remaining: 0` (a rate
/// limit, not a bad token). Counted as `rate_limited`; `status` says when the next try is due.
#[test]
fn a_forge_that_says_slow_down_is_not_asked_before_the_time_it_names() {
    for (kind, status, headers) in [
        ("forgejo", 429, vec![("Retry-After", "30".to_string())]),
        (
            "github",
            403,
            vec![
                ("X-RateLimit-Remaining", "0".to_string()),
                (
                    "X-RateLimit-Reset",
                    (chrono::Utc::now().timestamp() + 30).to_string(),
                ),
            ],
        ),
    ] {
        let (env, forge) = crate::forge::forge_env(
            &format!("{{ kind: {kind}, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }}"),
            TOKEN,
            false,
        );
        env.edit(|t| t.set("interval", "1s"));
        std::fs::write(&env.live, rules("persisted", "good")).unwrap();
        forge.set(&rules("v2", "good"));
        forge.fail_with_headers(Some(status), &headers);
        forge.clear_log();
        let d = env.daemon(None);
        d.wait_ready();
        let limited = || {
            metric(
                &d.metrics(),
                "rulekeeper_fetch_failures_total",
                &[("target", "ps"), ("reason", "rate_limited")],
            )
            .unwrap_or(0.0)
        };
        assert!(limited() >= 1.0, "{kind}: counted as rate_limited");
        let auth = metric(
            &d.metrics(),
            "rulekeeper_fetch_failures_total",
            &[("target", "ps"), ("reason", "auth")],
        );
        assert_eq!(auth, Some(0.0), "{kind}: not an auth failure");
        let asked = forge.log().len();
        // A negative can only be checked over a window: five intervals, in which a poll each
        // second would have asked five more times.
        let t = std::time::Instant::now();
        wait_until(10, "five intervals", || t.elapsed().as_secs() >= 5);
        assert_eq!(
            forge.log().len(),
            asked,
            "{kind}: no request before the named time"
        );
        let s = env.rk(&["status"]);
        assert!(
            s.stdout.contains("no request to it before"),
            "{kind}: {}",
            s.stdout
        );
        assert_eq!(d.terminate(), 0);
    }
}
