//! `restart: {powersync_deploy: ...}` against PowerSync (tests/it/pservice.rs: the real service
//! when `RULEKEEPER_POWERSYNC_DIR` names a build, else the stand-in held to it):
//! PowerSync with no `sync_config:` block keeps its rules in bucket storage and takes new ones
//! through `POST /api/sync-rules/v1/deploy`, without a restart. Each test is one scenario of
//! docs/powersync.md, "Restart or deploy": a fresh instance gets the live file, a good change
//! is active with the same process, a slow initial replication is followed and not rolled
//! back, a refused revision changes nothing, a revision that fails once deployed is rolled
//! back to last-good, drift is converged, and the daemon's webhook path works end to end.

use std::path::PathBuf;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pservice::{fatal_errors, PowerSync, Rules};
use crate::util::{http, sha256, wait_until, Env, Out};

const V1: &str = "# v1\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n";
const V2: &str = "# v2\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n      - SELECT * FROM todos\n";
/// PowerSync cannot parse it: the deploy answers 422 PSYNC_R0001.
const UNPARSABLE: &str = "# unparsable\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists WHERE nosuchfunc(name)\n";
/// Parses, and deploys, but the table has no primary key: PowerSync reports a fatal error on
/// the deploying version (docs/powersync.md).
const NO_PK: &str = "# no pk\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n      - SELECT * FROM no_pk\n";
const SECRET: &str = "deploy-webhook-secret";
/// Reads `big` (see `World::big_table`): an initial replication of tens of seconds.
const BIG: &str = "# big\nbucket_definitions:\n  global:\n    data:\n      - SELECT * FROM lists\n      - SELECT * FROM big\n";

/// PowerSync in API mode, rulekeeper's temp dirs, a `file` source at `up`.
struct World {
    env: Env,
    ps: PowerSync,
    up: PathBuf,
}

impl World {
    /// PowerSync started with no rules; upstream holds `upstream`.
    fn new(upstream: &str) -> Option<World> {
        let env = Env::new();
        let ps = PowerSync::new(Rules::Api)?;
        let up = env.dir.path().join("upstream.yaml");
        std::fs::write(&up, upstream).unwrap();
        ps.start();
        Some(World { env, ps, up })
    }

    /// The target's config: deploy restarter; `verify` extra keys (timeout, interval).
    fn config(&self, verify: &str, extra: &str) {
        let restart = format!(
            "{{ powersync_deploy: {{ url: \"{}\", token_file: \"{}\" }}, timeout: 20s }}",
            self.ps.url(),
            self.ps.token_file().display()
        );
        self.env.write_config(
            &crate::util::file_source(&self.up),
            &restart,
            verify,
            &format!("    interval: 1s\n{extra}"),
        );
    }

    fn default_config(&self) {
        self.config("{ none: true, timeout: 60s, interval: 500ms }", "");
    }

    fn once(&self) -> Out {
        let t = Instant::now();
        let o = self.env.once();
        eprintln!(
            "rulekeeper once: exit {} after {:?}: {}",
            o.code,
            t.elapsed(),
            o.stdout.trim()
        );
        o
    }

    fn diagnostics(&self) -> serde_json::Value {
        self.ps.diagnostics()["data"].clone()
    }

    fn active_content(&self) -> Option<String> {
        self.diagnostics()["active_sync_rules"]["content"]
            .as_str()
            .map(str::to_string)
    }

    fn slot(&self) -> Option<String> {
        self.diagnostics()["active_sync_rules"]["connections"][0]["slot_name"]
            .as_str()
            .map(str::to_string)
    }
}

#[test]
fn fresh_powersync_gets_the_live_file_deployed_without_a_restart() {
    let Some(w) = World::new(V1) else { return };
    w.default_config();
    assert_eq!(w.active_content(), None, "a fresh PowerSync has no rules");
    let pid = w.ps.pid();
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(w.env.live(), V1);
    assert_eq!(w.active_content().as_deref(), Some(V1));
    assert_eq!(w.ps.pid(), pid, "PowerSync was not restarted");
    assert!(fatal_errors(&w.diagnostics()["active_sync_rules"]).is_empty());
    assert_eq!(w.env.state_json()["applied"]["sha256"], sha256(V1));
    // In sync: the next cycle deploys nothing (a deploy would be a new version and slot).
    let slot = w.slot();
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("unchanged"), "{}", o.all());
    assert_eq!(w.slot(), slot, "no new version for content PowerSync runs");
}

#[test]
fn good_change_is_active_with_the_same_process() {
    let Some(w) = World::new(V1) else { return };
    w.default_config();
    assert_eq!(w.once().code, 0);
    let pid = w.ps.pid();
    assert!(pid.is_some());
    std::fs::write(&w.up, V2).unwrap();
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(w.ps.pid(), pid, "the same process serves the new rules");
    assert_eq!(w.active_content().as_deref(), Some(V2));
    assert!(w.diagnostics()["deploying_sync_rules"].is_null());
    assert_eq!(
        std::fs::read_to_string(w.env.live.with_file_name("sync-rules.yaml.prev")).unwrap(),
        V1,
        "the live file is still the record: .prev is last-good"
    );
}

#[test]
fn refused_revision_changes_nothing() {
    let Some(w) = World::new(V1) else { return };
    w.default_config();
    assert_eq!(w.once().code, 0);
    let slot = w.slot();
    std::fs::write(&w.up, UNPARSABLE).unwrap();
    let o = w.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    // PowerSync's own words reach the reason.
    let reason = w.env.state_json()["quarantine"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("Function 'nosuchfunc' is not defined"),
        "{reason}"
    );
    assert_eq!(w.env.live(), V1, "the file is put back");
    let d = w.diagnostics();
    assert!(d["deploying_sync_rules"].is_null(), "{d}");
    assert_eq!(w.active_content().as_deref(), Some(V1));
    assert_eq!(w.slot(), slot, "no new version: nothing changed");
    // Quarantined: the next poll leaves it alone.
    let o = w.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(w.slot(), slot);
}

#[test]
fn revision_failing_once_deployed_is_rolled_back_to_last_good() {
    let Some(w) = World::new(V1) else { return };
    w.default_config();
    assert_eq!(w.once().code, 0);
    std::fs::write(&w.up, NO_PK).unwrap();
    let o = w.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert_eq!(w.env.live(), V1);
    let st = w.env.state_json();
    assert_eq!(st["quarantine"]["sha256"], sha256(NO_PK), "{st}");
    // Last-good is active again: what clients sync.
    w.ps.wait_active(V1);
    assert!(fatal_errors(&w.diagnostics()["active_sync_rules"]).is_empty());
}

#[test]
fn drift_is_converged_back_to_the_live_file() {
    let Some(w) = World::new(V1) else { return };
    w.default_config();
    assert_eq!(w.once().code, 0);
    // Someone deploys by hand (the `powersync` CLI, a dashboard).
    let (code, answer) = w.ps.deploy(V2);
    assert_eq!(code, 200, "{answer}");
    w.ps.wait_active(V2);
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert!(o.all().contains("PowerSync ran other rules"), "{}", o.all());
    w.ps.wait_active(V1);
    assert_eq!(w.env.live(), V1);
    let m = w.env.rk(&["status", "--json"]);
    assert_eq!(m.code, 0, "{}", m.all());
}

/// A table large enough that initial replication takes tens of seconds: verification passes
/// with the version deploying, `status` and the metric follow it, and it is never rolled back
/// for being slow.
#[test]
fn slow_initial_replication_is_followed_until_active_not_rolled_back() {
    let Some(w) = World::new(V1) else { return };
    w.ps.big_table();
    w.config("{ none: true, timeout: 3s, interval: 500ms }", "");
    assert_eq!(w.once().code, 0);
    let big = BIG;
    std::fs::write(&w.up, big).unwrap();
    let t = Instant::now();
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert!(o.all().contains("deploying"), "{}", o.all());
    let st = w.env.state_json();
    assert_eq!(st["deploying"]["sha256"], sha256(big), "{st}");
    let s = w.env.rk(&["status"]);
    assert!(s.stdout.contains("PowerSync is deploying"), "{}", s.all());
    // Old rules serve meanwhile.
    assert_eq!(w.active_content().as_deref(), Some(V1));
    let mut cycles = 0;
    wait_until(
        600,
        "the big version active, followed by rulekeeper",
        || {
            let o = w.env.once();
            cycles += 1;
            assert_eq!(o.code, 0, "{}", o.all());
            assert!(!o.stdout.contains("rolled_back"), "{}", o.all());
            w.env.state_json()["deploying"].is_null()
        },
    );
    eprintln!(
        "MEASURED: 200k-row table deployed -> active after {:.1} s ({cycles} follow cycles)",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(w.active_content().as_deref(), Some(big));
    assert_eq!(w.env.live(), big);
}

#[test]
fn webhook_triggers_a_deploy_through_the_daemon() {
    let Some(w) = World::new(V1) else { return };
    let secret = w.env.dir.path().join("hook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    w.config(
        "{ none: true, timeout: 60s, interval: 500ms }",
        &format!("    webhook: {{ secret_file: \"{}\" }}\n", secret.display()),
    );
    // A long interval: only the webhook can make the second change happen soon.
    w.env.edit(|t| t.set("interval", "1h"));
    let d = w.env.daemon(None);
    d.wait_ready();
    wait_until(60, "v1 active after the daemon's first cycle", || {
        w.active_content().as_deref() == Some(V1)
    });
    let pid = w.ps.pid();
    std::fs::write(&w.up, V2).unwrap();
    let body =
        b"{\"ref\":\"refs/heads/main\",\"after\":\"0123456789abcdef0123456789abcdef01234567\"}";
    let mut m = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body);
    let sig = format!("sha256={}", hex::encode(m.finalize().into_bytes()));
    let (code, answer) = http(
        d.port,
        "POST",
        "/hooks/ps",
        &[
            ("X-Hub-Signature-256", sig.as_str()),
            ("X-GitHub-Event", "push"),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    assert!((200..300).contains(&code), "{code} {answer}");
    wait_until(60, "v2 active after the webhook", || {
        w.active_content().as_deref() == Some(V2)
    });
    assert_eq!(w.ps.pid(), pid, "no restart");
    assert_eq!(w.env.live(), V2);
    let code = d.terminate();
    assert_eq!(code, 0);
}

/// PowerSync still reading its rules from a file (`sync_config:` in its config) refuses API
/// deploys with 422 PSYNC_S4105: the reason names the fix, the file is put back, nothing is
/// quarantined (the content is not at fault).
#[test]
fn api_disabled_names_the_fix_and_quarantines_nothing() {
    let env = Env::new();
    std::fs::write(&env.live, V1).unwrap();
    let Some(ps) = PowerSync::new(Rules::File(env.live.clone())) else {
        return;
    };
    let up = env.dir.path().join("upstream.yaml");
    std::fs::write(&up, V2).unwrap();
    ps.start();
    ps.wait_active(V1);
    let w = World { env, ps, up };
    w.default_config();
    let o = w.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    assert!(
        o.all().contains("PSYNC_S4105") && o.all().contains("remove the `sync_config:`"),
        "{}",
        o.all()
    );
    assert_eq!(w.env.live(), V1, "the file is put back");
    assert!(w.env.state_json()["quarantine"].is_null());
    assert_eq!(w.active_content().as_deref(), Some(V1));
}

/// At boot PowerSync may not answer yet: the apply deploys nothing and says so, and the first
/// cycle after PowerSync answers deploys the live file (drift from "no rules").
#[test]
fn powersync_not_answering_yet_gets_the_live_file_once_it_does() {
    let Some(w) = World::new(V1) else { return };
    w.default_config();
    w.ps.stop();
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert!(o.all().contains("does not answer"), "{}", o.all());
    assert_eq!(w.env.live(), V1);
    w.ps.start();
    assert_eq!(w.active_content(), None);
    let o = w.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.all().contains("PowerSync ran no rules"), "{}", o.all());
    assert_eq!(w.active_content().as_deref(), Some(V1));
}

/// What deploying last-good does while another version is still deploying (measured for
/// docs/powersync.md): PowerSync replaces the deploying version with the new one; the old
/// active version serves until that one is active. Here an operator's `rollback` during a
/// long initial replication.
#[test]
fn rollback_while_another_version_deploys_replaces_it() {
    let Some(w) = World::new(V1) else { return };
    w.ps.big_table();
    w.config("{ none: true, timeout: 2s, interval: 500ms }", "");
    assert_eq!(w.once().code, 0);
    let v1_slot = w.slot();
    let big = BIG;
    std::fs::write(&w.up, big).unwrap();
    let o = w.once();
    assert!(o.all().contains("deploying"), "{}", o.all());
    let t = Instant::now();
    let o = w.env.rk(&["rollback", "-t", "ps"]);
    eprintln!(
        "rollback: exit {} after {:?}: {}",
        o.code,
        t.elapsed(),
        o.stdout.trim()
    );
    assert_eq!(w.env.live(), V1);
    wait_until(120, "last-good active again, nothing deploying", || {
        let d = w.diagnostics();
        d["deploying_sync_rules"].is_null()
            && d["active_sync_rules"]["content"].as_str() == Some(V1)
    });
    eprintln!(
        "MEASURED: rollback during a deploy -> last-good active again after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Last-good came back as a new version (a new slot): the big one was replaced, never active.
    assert_ne!(w.slot(), v1_slot, "a new version of last-good");
}
