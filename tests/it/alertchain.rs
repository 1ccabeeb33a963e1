//! Every shipped alert through the chain operators run (tests/it/vmstack.rs): real
//! `rulekeeper run` daemons scraped by VictoriaMetrics, the shipped rules in vmalert, the
//! shipped routes in Alertmanager, and a stand-in for Pushover. Each alert is driven by its
//! real cause and must fire with the right labels, annotations and receiver, then resolve
//! when the cause is gone; a normal apply and a daemon restart must not alert at all.

use std::time::Instant;

use crate::forge::FakeForge;
use crate::util::{rules, wait_until, Daemon, Env};
use crate::vmstack::{find, Note, Stack};

const TOKEN: &str = "alertchain-token";

/// One rulekeeper host: its own forge, managed service and daemon, one target.
struct Host {
    env: Env,
    forge: FakeForge,
    daemon: Option<Daemon>,
}

impl Host {
    fn new(target: &'static str, first: &str) -> Host {
        let (env, forge) = crate::forge::forge_env(
            "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
            TOKEN,
            true,
        );
        env.edit_cfg(|mut c| {
            let (_, t) = c.targets.pop().expect("target ps");
            c.target(target, t.set("interval", "1s"))
        });
        forge.set(first);
        env.start_service();
        Host {
            env,
            forge,
            daemon: None,
        }
    }

    fn start(&mut self) {
        let d = self.env.daemon(None);
        d.wait_ready();
        self.daemon = Some(d);
    }

    fn stop(&mut self) {
        self.daemon = None;
    }

    fn instance(&self) -> String {
        format!("127.0.0.1:{}", self.env.listen)
    }
}

fn sha(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Waits for a notification of `alertname` with `status` and these labels; returns it.
fn wait_note(
    stack: &Stack,
    secs: u64,
    alertname: &str,
    status: &str,
    labels: &[(&str, &str)],
) -> (Note, serde_json::Value) {
    let mut found = None;
    wait_until(secs, &format!("{alertname} {status} {labels:?}"), || {
        found = find(&stack.sink.all(), alertname, status, labels);
        found.is_some()
    });
    let (note, alert) = found.expect("found");
    eprintln!(
        "NOTIFICATION to {}: {}",
        note.receiver,
        serde_json::to_string(&alert).unwrap_or_default()
    );
    (note, alert)
}

fn annotation<'a>(a: &'a serde_json::Value, key: &str) -> &'a str {
    a["annotations"][key].as_str().unwrap_or("")
}

#[test]
fn every_alert_fires_from_its_cause_and_resolves() {
    let mut steady = Host::new("steady", &rules("s1", "good"));
    let mut poison = Host::new("poison", &rules("p1", "good"));
    let mut fresh = Host::new("fresh", &rules("f-bad", "bad"));
    let mut stale = Host::new("stale", &rules("st1", "good"));
    let mut fleet1 = Host::new("fleet", &rules("fleet-a", "good"));
    let mut fleet2 = Host::new("fleet", &rules("fleet-b", "good"));
    let mut damaged = Host::new("damaged", &rules("d1", "good"));
    let ports: Vec<u16> = [&steady, &poison, &fresh, &stale, &fleet1, &fleet2, &damaged]
        .iter()
        .map(|h| h.env.listen)
        .collect();
    let Some(stack) = Stack::start(&ports) else {
        return;
    };
    for h in [
        &mut steady,
        &mut poison,
        &mut fresh,
        &mut stale,
        &mut fleet1,
        &mut fleet2,
        &mut damaged,
    ] {
        h.start();
    }
    wait_until(30, "every daemon scraped", || {
        stack.vm.query("up{job=\"rulekeeper\"} == 1").len() == ports.len()
    });

    // The causes.
    let t_poison = Instant::now();
    poison.forge.set(&rules("p2-bad", "bad"));
    stale.forge.fail_with(Some(503));
    steady.forge.set(&rules("s2", "good")); // a normal apply: must not alert

    // Outside damage to one target's state file (a bad restore from backup, a disk error).
    let state_file = damaged.env.state.join("targets/damaged/state.json");
    std::fs::write(&state_file, "{\"applied\": {\"sha256\": ").unwrap();

    // RulekeeperRolledBack: the poisoned revision was applied, failed, rolled back.
    let (note, a) = wait_note(
        &stack,
        90,
        "RulekeeperRolledBack",
        "firing",
        &[("target", "poison")],
    );
    eprintln!(
        "MEASURED: bad revision published -> RolledBack notification leaving Alertmanager: {:.1} s",
        note.at.duration_since(t_poison).as_secs_f64()
    );
    assert_eq!(note.receiver, "normal");
    assert_eq!(a["labels"]["severity"], "warning");
    assert_eq!(a["labels"]["instance"], poison.instance());
    assert_eq!(
        annotation(&a, "summary"),
        "rulekeeper rolled back target poison"
    );
    // The live file, then why the bad one was quarantined, in the daemon's words.
    let text = annotation(&a, "rules");
    let live = format!(
        "live sha256 {}, revision {}; quarantined sha256 {}: verification failed: ",
        sha(&rules("p1", "good")),
        commit_of(&rules("p1", "good")),
        sha(&rules("p2-bad", "bad"))
    );
    assert!(text.starts_with(&live), "{text}");
    assert!(text.contains("/probe answered 500"), "{text}");
    // RulekeeperUpstreamQuarantined: upstream keeps serving it.
    let (note, a) = wait_note(
        &stack,
        60,
        "RulekeeperUpstreamQuarantined",
        "firing",
        &[("target", "poison")],
    );
    assert_eq!(note.receiver, "normal");
    let text = annotation(&a, "rules");
    assert!(
        text.starts_with(&format!(
            "quarantined sha256 {}: verification failed: ",
            sha(&rules("p2-bad", "bad"))
        )) && text.contains("/probe answered 500"),
        "{text}"
    );
    assert!(annotation(&a, "description").contains("still serves content that failed"));
    // RulekeeperRollbackFailed: a fresh host whose first revision is unhealthy has nothing
    // to roll back to. Critical: the emergency receiver.
    let (note, a) = wait_note(
        &stack,
        60,
        "RulekeeperRollbackFailed",
        "firing",
        &[("target", "fresh")],
    );
    assert_eq!(note.receiver, "emergency");
    assert_eq!(a["labels"]["severity"], "critical");
    assert!(annotation(&a, "summary").starts_with("EMERGENCY: rollback failed for fresh"));
    // Nothing was ever applied on this host, so the live file has no known revision.
    let live = format!("live sha256 {}, revision -", sha(&rules("f-bad", "bad")));
    // The live file's series is born with this outcome, and an emergency page does not wait
    // for it to be searchable (docs/alerting.md): the first page may say `no live file`, and
    // vmalert's next evaluations name it. RolledBack's exact `live sha256 …, revision …`
    // above proves the same query template against this VictoriaMetrics.
    let first = annotation(&a, "rules");
    assert!(first == live || first == "no live file", "{first}");
    // RulekeeperSyncStale: upstream unreachable past 3 intervals.
    let (note, a) = wait_note(
        &stack,
        60,
        "RulekeeperSyncStale",
        "firing",
        &[("target", "stale")],
    );
    assert_eq!(note.receiver, "normal");
    assert!(annotation(&a, "summary").starts_with("rulekeeper target stale has not synced for"));
    // RulekeeperFleetDrift: two hosts on different content for one target.
    let (note, a) = wait_note(
        &stack,
        60,
        "RulekeeperFleetDrift",
        "firing",
        &[("target", "fleet")],
    );
    assert_eq!(note.receiver, "normal");
    assert_eq!(
        annotation(&a, "summary"),
        "hosts disagree on the live rules of target fleet"
    );

    // RulekeeperStateError: that target's cycles end state_error.
    let (note, a) = wait_note(
        &stack,
        60,
        "RulekeeperStateError",
        "firing",
        &[("target", "damaged")],
    );
    assert_eq!(note.receiver, "normal");
    assert_eq!(a["labels"]["severity"], "warning");
    assert_eq!(
        annotation(&a, "summary"),
        "rulekeeper cannot read the state of target damaged"
    );
    assert!(annotation(&a, "description").contains("mv state.json state.json.broken"));

    // Take the causes away.
    // The documented recovery: move the state file aside.
    std::fs::rename(&state_file, state_file.with_extension("json.broken")).unwrap();
    poison.forge.set(&rules("p3", "good"));
    fresh.forge.set(&rules("f2", "good"));
    stale.forge.fail_with(None);
    fleet2.forge.set(&rules("fleet-a", "good"));
    // A daemon restart with unchanged upstream: must not alert.
    steady.stop();
    steady.start();

    wait_note(
        &stack,
        60,
        "RulekeeperUpstreamQuarantined",
        "resolved",
        &[("target", "poison")],
    );
    wait_note(
        &stack,
        60,
        "RulekeeperSyncStale",
        "resolved",
        &[("target", "stale")],
    );
    wait_note(
        &stack,
        60,
        "RulekeeperFleetDrift",
        "resolved",
        &[("target", "fleet")],
    );
    // Counter alerts resolve when the event leaves their window (20 s in the test copy).
    wait_note(
        &stack,
        90,
        "RulekeeperRolledBack",
        "resolved",
        &[("target", "poison")],
    );
    wait_note(
        &stack,
        90,
        "RulekeeperRollbackFailed",
        "resolved",
        &[("target", "fresh")],
    );
    wait_note(
        &stack,
        90,
        "RulekeeperStateError",
        "resolved",
        &[("target", "damaged")],
    );
    assert_eq!(damaged.env.live(), rules("d1", "good"));

    // RulekeeperDown: the daemon is killed; critical, the emergency receiver.
    stale.stop();
    let (note, a) = wait_note(
        &stack,
        60,
        "RulekeeperDown",
        "firing",
        &[("instance", &stale.instance())],
    );
    assert_eq!(note.receiver, "emergency");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(
        annotation(&a, "summary"),
        format!("rulekeeper is down or not scraped on {}", stale.instance())
    );
    stale.start();
    wait_note(
        &stack,
        60,
        "RulekeeperDown",
        "resolved",
        &[("instance", &stale.instance())],
    );

    // What must not alert: the host with a normal apply and a restart.
    let steady_inst = steady.instance();
    let noisy: Vec<String> = stack
        .sink
        .all()
        .iter()
        .flat_map(|n| n.body["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| {
            a["labels"]["target"] == "steady" || a["labels"]["instance"] == steady_inst.as_str()
        })
        .map(|a| a.to_string())
        .collect();
    assert!(
        noisy.is_empty(),
        "a normal apply and a restart alerted: {noisy:?}"
    );
    assert_eq!(steady.env.live(), rules("s2", "good"));
}

/// The fake forge's commit for some content (it derives one from the content).
fn commit_of(content: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(content.as_bytes()))[..40].to_string()
}
