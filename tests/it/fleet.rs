//! Staged rollout with the metrics store as the only coordinator: VictoriaMetrics scrapes two
//! real daemons, a canary (no gate) and a production host whose gate asks VictoriaMetrics
//! whether the canary runs the candidate (with the fleet-wide known-bad guard of
//! docs/fleet.md). Both poll the same upstream.

use crate::forge::FakeForge;
use crate::util::{metric, rules, wait_until, Daemon, Env};
use crate::vmstack::Vm;

const TOKEN: &str = "fleet-token";

struct Host {
    env: Env,
    daemon: Option<Daemon>,
}

fn sha(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

impl Host {
    /// A host on `forge`; `extra` is appended at the target's level (gate, verify tweaks).
    fn new(forge: &FakeForge, extra: &str, verify_successes: u32) -> Host {
        let env = Env::new();
        let tf = env.write_token(TOKEN);
        let verify = format!(
            "{{ http: \"http://127.0.0.1:{}/probe\", timeout: 5s, interval: 100ms, successes: {verify_successes} }}",
            env.port
        );
        env.write_config(
            &format!(
                "{{ kind: forgejo, base_url: \"{}\", repo: owner/app, path: rules.yaml, token_file: \"{}\" }}",
                forge.base_url(),
                tf.display()
            ),
            &env.restart_command(),
            &verify,
            &format!("    interval: 1s\n{extra}"),
        );
        env.start_service();
        Host { env, daemon: None }
    }

    fn start(&mut self) {
        let d = self.env.daemon(None);
        d.wait_ready();
        self.daemon = Some(d);
    }

    fn metrics(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.metrics())
            .unwrap_or_default()
    }

    fn cycles(&self, outcome: &str) -> f64 {
        metric(
            &self.metrics(),
            "rulekeeper_cycles_total",
            &[("target", "ps"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    }

    fn status(&self) -> serde_json::Value {
        let body = self
            .daemon
            .as_ref()
            .map(|d| d.get("/status").1)
            .unwrap_or_default();
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }
}

/// The production gate of docs/fleet.md, with the soak time left out (the test has no
/// minutes to spare): open when a canary runs the candidate, and no host has quarantined it.
fn gate(vm_port: u16) -> String {
    format!(
        "    gate:\n      url: http://127.0.0.1:{vm_port}\n      interval: 1s\n      timeout: 2s\n      query: >-\n        rulekeeper_rules_info{{target=\"ps\", role=\"canary\", sha256=\"{{sha256}}\"}}\n        unless on () rulekeeper_quarantined_info{{sha256=\"{{sha256}}\"}}\n"
    )
}

#[test]
fn canary_first_then_the_gated_host_and_never_a_bad_revision() {
    let forge = FakeForge::start(TOKEN);
    forge.set(&rules("v1", "good"));
    // A slow canary window (3 s), so the production host sees v2 before the canary runs it.
    let mut canary = Host::new(&forge, "", 30);
    let mut prod = Host::new(&forge, "", 6);
    // Both on v1 first (a fresh gated host would wait too: fail closed).
    assert_eq!(canary.env.once().code, 0);
    assert_eq!(prod.env.once().code, 0);
    let Some(vm) = Vm::start(&[
        (canary.env.listen, Some("canary")),
        (prod.env.listen, Some("production")),
    ]) else {
        return;
    };
    let text = std::fs::read_to_string(&prod.env.config).unwrap() + &gate(vm.port);
    std::fs::write(&prod.env.config, text).unwrap();
    assert_eq!(prod.env.rk(&["check"]).code, 0);
    canary.start();
    prod.start();
    wait_until(30, "both hosts scraped", || {
        vm.query("up{job=\"rulekeeper\"} == 1").len() == 2
    });

    // 1. A good revision: the canary applies at once; production waits, then follows.
    let prod_restarts = prod.env.restarts();
    forge.set(&rules("v2", "good"));
    wait_until(30, "production waits on the gate", || {
        prod.cycles("gated") >= 1.0
    });
    let st = prod.status();
    let t = &st["targets"][0];
    assert_eq!(t["gated_sha256"], sha(&rules("v2", "good")), "{st}");
    assert!(t["gated_since"].is_string(), "{st}");
    assert_eq!(t["gate_reason"], "query returned nothing", "{st}");
    assert_eq!(
        metric(&prod.metrics(), "rulekeeper_gated", &[("target", "ps")]),
        Some(1.0)
    );
    assert_eq!(
        prod.env.live(),
        rules("v1", "good"),
        "nothing swapped while gated"
    );
    assert_eq!(prod.env.restarts(), prod_restarts, "no restart while gated");
    wait_until(60, "production applies v2 once the canary runs it", || {
        prod.cycles("applied") >= 1.0
    });
    assert_eq!(prod.env.live(), rules("v2", "good"));
    assert_eq!(canary.env.live(), rules("v2", "good"));
    assert_eq!(prod.env.restarts(), prod_restarts + 1);
    wait_until(30, "gated gauge back to 0", || {
        metric(&prod.metrics(), "rulekeeper_gated", &[("target", "ps")]) == Some(0.0)
    });
    let st = prod.status();
    assert!(st["targets"][0]["gated_sha256"].is_null(), "{st}");

    // 2. A revision that fails verification on the canary: the canary rolls back and
    // quarantines it; production never applies it and never restarts.
    let prod_restarts = prod.env.restarts();
    let gated_before = prod.cycles("gated");
    forge.set(&rules("v3-bad", "bad"));
    wait_until(60, "the canary rolled back", || {
        canary.cycles("rolled_back") >= 1.0
    });
    wait_until(
        30,
        "the canary's quarantine is in the metrics store",
        || {
            !vm.query(&format!(
                "rulekeeper_quarantined_info{{sha256=\"{}\"}}",
                sha(&rules("v3-bad", "bad"))
            ))
            .is_empty()
        },
    );
    wait_until(30, "production keeps waiting", || {
        prod.cycles("gated") >= gated_before + 5.0
    });
    assert_eq!(prod.env.live(), rules("v2", "good"));
    assert_eq!(
        prod.env.restarts(),
        prod_restarts,
        "production never restarted for v3"
    );
    assert_eq!(prod.cycles("rolled_back"), 0.0);

    // 3. The query API down: production stays gated, with the reason, and applies nothing.
    drop(vm);
    forge.set(&rules("v4", "good"));
    wait_until(30, "the canary applies v4", || {
        canary.env.live() == rules("v4", "good")
    });
    wait_until(30, "production says why it waits", || {
        prod.status()["targets"][0]["gate_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("query API unreachable"))
    });
    assert_eq!(prod.env.live(), rules("v2", "good"));
    assert_eq!(prod.env.restarts(), prod_restarts);
    let o = prod.env.rk(&["status"]);
    assert!(o.stdout.contains("waits on the gate"), "{}", o.all());

    // 4. `push` bypasses the gate.
    let v4 = prod.env.dir.path().join("v4.yaml");
    std::fs::write(&v4, rules("v4", "good")).unwrap();
    let o = prod.env.rk(&["push", "-t", "ps", v4.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(prod.env.live(), rules("v4", "good"));
}
