//! `POST /hooks/<target>` against the running daemon: the authentication matrix, the order of
//! answers, branch filter, `after` pre-check, and coalescing of a burst.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::forge::FakeForge;
use crate::util::{http, metric, rules, wait_until, Daemon, Env};

const TOKEN: &str = "forge-token-wh";
const SECRET: &str = "webhook-secret-0123456789abcdef";

struct World {
    env: Env,
    forge: FakeForge,
    d: Daemon,
}

fn world() -> World {
    let env = Env::new();
    let forge = FakeForge::start(TOKEN);
    let tf = env.write_token(TOKEN);
    let secret = env.dir.path().join("hook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let live2 = env.dir.path().join("live/other.yaml");
    let text = format!(
        "state_dir: {state}\nlisten: 127.0.0.1:{port}\ntargets:\n  ps:\n    source: {{ kind: forgejo, base_url: \"{base}\", repo: owner/app, path: rules.yaml, ref: master, token_file: \"{tf}\" }}\n    path: {live}\n    interval: 1h\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n    webhook: {{ secret_file: \"{secret}\" }}\n  nosecret:\n    source: {{ kind: forgejo, base_url: \"{base}\", repo: owner/app, path: rules.yaml, ref: master, token_file: \"{tf}\" }}\n    path: {live2}\n    interval: 1h\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n",
        state = env.state.display(),
        port = env.listen,
        base = forge.base_url(),
        tf = tf.display(),
        live = env.live.display(),
        secret = secret.display(),
        live2 = live2.display(),
    );
    std::fs::write(&env.config, text).unwrap();
    forge.set(&rules("v1", "good"));
    let d = env.daemon(None);
    d.wait_ready();
    World { env, forge, d }
}

fn post(w: &World, target: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    http(w.d.port, "POST", &format!("/hooks/{target}"), headers, body)
}

fn hmac_hex(body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

fn push_body(r#ref: &str, after: &str) -> Vec<u8> {
    format!(
        "{{\"ref\":\"{}\",\"after\":\"{after}\",\"repository\":{{\"full_name\":\"owner/app\"}}}}",
        r#ref
    )
    .into_bytes()
}

fn cycles_total(w: &World) -> f64 {
    let m = w.d.metrics();
    crate::util::CYCLE_OUTCOMES
        .iter()
        .map(|o| {
            metric(
                &m,
                "rulekeeper_cycles_total",
                &[("target", "ps"), ("outcome", o)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

#[test]
fn authentication_matrix_and_order_of_answers() {
    let w = world();
    let body = push_body(
        "refs/heads/master",
        "1111111111111111111111111111111111111111",
    );
    let bearer = format!("Bearer {SECRET}");
    // no credentials at all -> 401, for a known or unknown target alike
    let (c, unauth_body) = post(&w, "ps", &[], &body);
    assert_eq!(c, 401);
    assert_eq!(post(&w, "nope", &[], &body).0, 401);
    // unknown target with credentials -> 404
    assert_eq!(
        post(&w, "nope", &[("Authorization", &bearer)], &body).0,
        404
    );
    // credentials but no secret configured -> 503
    assert_eq!(
        post(&w, "nosecret", &[("Authorization", &bearer)], &body).0,
        503
    );
    // wrong credentials -> 401 with the same body as no credentials
    for h in [
        ("Authorization", "Bearer wrong".to_string()),
        ("Authorization", "Basic Zm9vOmJhcg==".to_string()),
        ("X-Forgejo-Signature", "00".repeat(32)),
        ("X-Gitea-Signature", "zz-not-hex".to_string()),
        ("X-Hub-Signature-256", format!("sha256={}", "ab".repeat(32))),
        ("X-Hub-Signature-256", hmac_hex(&body)), // missing the sha256= prefix
        ("X-Gitlab-Token", "wrong".to_string()),
    ] {
        let (c, b) = post(&w, "ps", &[(h.0, &h.1)], &body);
        assert_eq!(c, 401, "{h:?}");
        assert_eq!(b, unauth_body, "{h:?}");
    }
    // right credentials of every kind -> 202
    let sig = hmac_hex(&body);
    let gh = format!("sha256={sig}");
    for h in [
        ("Authorization", bearer.as_str()),
        ("X-Forgejo-Signature", sig.as_str()),
        ("X-Gitea-Signature", sig.as_str()),
        ("X-Hub-Signature-256", gh.as_str()),
        ("X-Gitlab-Token", SECRET),
    ] {
        let (c, b) = post(&w, "ps", &[h], &body);
        assert_eq!(c, 202, "{h:?}: {b}");
        assert!(b.contains("triggered"), "{b}");
    }
    // a signature over another body does not verify
    let (c, _) = post(
        &w,
        "ps",
        &[("X-Forgejo-Signature", &sig)],
        b"{\"ref\":\"refs/heads/master\"}",
    );
    assert_eq!(c, 401);
    let m = w.d.metrics();
    assert!(
        metric(
            &m,
            "rulekeeper_webhook_requests_total",
            &[("target", "ps"), ("result", "unauthorized")]
        )
        .unwrap()
            >= 8.0
    );
    assert!(
        metric(
            &m,
            "rulekeeper_webhook_requests_total",
            &[("target", "ps"), ("result", "triggered")]
        )
        .unwrap()
            >= 5.0
    );
    // no secret in the logs
    let log = w.env.daemon_log();
    assert!(!log.contains(SECRET) && !log.contains(&sig), "{log}");
}

#[test]
fn oversize_body_is_413() {
    let w = world();
    let big = vec![b' '; 1024 * 1024 + 1];
    let (c, _) = post(
        &w,
        "ps",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        &big,
    );
    assert_eq!(c, 413);
}

#[test]
fn branch_filter_after_precheck_and_trigger() {
    let w = world();
    let bearer = format!("Bearer {SECRET}");
    // another branch: ignored
    let (c, b) = post(
        &w,
        "ps",
        &[("Authorization", &bearer)],
        &push_body("refs/heads/feature", "abc"),
    );
    assert_eq!(c, 202);
    assert!(b.contains("ignored"), "{b}");
    // the applied revision: unchanged, no cycle
    let applied = w.forge.commit();
    wait_until(30, "revision recorded", || {
        w.env.state_json()["applied"]["revision"] == applied
    });
    let (c, b) = post(
        &w,
        "ps",
        &[("Authorization", &bearer)],
        &push_body("refs/heads/master", &applied),
    );
    assert_eq!(c, 200, "{b}");
    assert!(b.contains("unchanged"), "{b}");
    // a new commit: triggers a cycle that applies it well before the 1h poll
    w.forge.set(&rules("v2", "good"));
    let (c, _) = post(
        &w,
        "ps",
        &[("Authorization", &bearer)],
        &push_body("refs/heads/master", &w.forge.commit()),
    );
    assert_eq!(c, 202);
    wait_until(30, "v2 live", || w.env.live() == rules("v2", "good"));
}

#[test]
fn burst_of_50_pushes_runs_at_most_2_cycles() {
    let w = world();
    let before = cycles_total(&w);
    let port = w.d.port;
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let body = push_body("refs/heads/master", &format!("{i:040}"));
                http(
                    port,
                    "POST",
                    "/hooks/ps",
                    &[("Authorization", &format!("Bearer {SECRET}"))],
                    &body,
                )
                .0
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 202);
    }
    wait_until(30, "the burst's first cycle", || {
        cycles_total(&w) >= before + 1.0
    });
    // A negative can only be checked over a window: the trailing cycle comes at most one
    // cooldown (0.5 s) after the first; give it three.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let ran = cycles_total(&w) - before;
    assert!((1.0..=2.0).contains(&ran), "burst ran {ran} cycles");
    // One log line per trigger that asked for a cycle; the rest are summed up (the summary
    // is written at the latest when the daemon stops).
    let World {
        env,
        forge: _forge,
        d,
    } = w;
    assert_eq!(d.terminate(), 0);
    let log = env.daemon_log();
    let lines = log.matches("webhook triggered a cycle").count();
    assert!(
        (1..=4).contains(&lines),
        "{lines} trigger lines for 50 pushes:\n{log}"
    );
    assert!(
        log.contains("more webhook trigger(s) in the last 60s joined a cycle already asked for"),
        "{log}"
    );
}

#[test]
fn secret_rotation_needs_no_restart() {
    let w = world();
    let secret = w.env.dir.path().join("hook-secret");
    std::fs::write(&secret, "rotated-secret\n").unwrap();
    // the file changed: the next request uses the new secret
    let body = push_body("refs/heads/master", "x");
    wait_until(20, "new secret accepted", || {
        post(
            &w,
            "ps",
            &[("Authorization", "Bearer rotated-secret")],
            &body,
        )
        .0 == 202
    });
    assert_eq!(
        post(
            &w,
            "ps",
            &[("Authorization", &format!("Bearer {SECRET}"))],
            &body
        )
        .0,
        401
    );
}
