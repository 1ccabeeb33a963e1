//! Hostile and careless input: what anyone on the network can send to the webhook port, and
//! what a careless operator can configure. Each costs at most one target, never the host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{http, metric, rules, wait_until, Daemon, Env};

const SECRET: &str = "hostile-webhook-secret";

/// A daemon with one file target `ps` (interval 1h) and a webhook secret.
fn hooked() -> (Env, Daemon) {
    let env = Env::new();
    let up = env.dir.path().join("upstream.yaml");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let secret = env.dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.write_config(
        &crate::util::file_source(&up),
        "{ none: true }",
        "{ none: true }",
        &format!(
            "    interval: 1h\n    webhook: {{ secret_file: \"{}\" }}\n",
            secret.display()
        ),
    );
    let d = env.daemon(None);
    d.wait_ready();
    (env, d)
}

/// Sends a request head (and `body_now` bytes of body), returns the open stream.
fn send_head(port: u16, headers: &[(&str, &str)], len: usize, body_now: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST /hooks/ps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len}\r\nContent-Type: application/json\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write head");
    s.write_all(body_now).expect("write body");
    s
}

/// The status code of the answer on `s` (0 if none arrived).
fn status_of(s: &mut TcpStream) -> u16 {
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn token_schemes_are_refused_before_the_body_is_read() {
    let (_env, d) = hooked();
    // A wrong bearer announcing most of a MiB, and sending none of it: the 401 comes back
    // at once, so nothing waited for (or buffered) the body.
    for creds in [
        ("Authorization", "Bearer wrong"),
        ("X-Gitlab-Token", "wrong"),
    ] {
        let mut s = send_head(d.port, &[creds], 900_000, b"");
        assert_eq!(status_of(&mut s), 401, "{creds:?}");
    }
    // The right bearer still works.
    let (code, _) = http(
        d.port,
        "POST",
        "/hooks/ps",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        b"",
    );
    assert_eq!(code, 202);
}

#[test]
fn signed_bodies_in_flight_are_bounded_and_the_rest_keeps_answering() {
    let (_env, d) = hooked();
    // Signed bodies must be read whole before the signature can be checked: 16 MiB of them
    // may be in flight, then 503. These never send their body.
    let sig = ("X-Hub-Signature-256", "sha256=00");
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(send_head(d.port, &[sig], 1024 * 1024, b"{"));
    }
    // A probe that arrives while the 16 are still being admitted may be admitted in the place
    // of one of them (which then got 503): it gets no answer, so keep it open too and try
    // again until a probe is refused.
    wait_until(
        30,
        "the budget is in use and a further signed body gets 503",
        || {
            let mut s = send_head(d.port, &[sig], 1024 * 1024, b"{");
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let code = status_of(&mut s);
            if code == 0 {
                held.push(s);
            }
            code == 503
        },
    );
    assert_eq!(d.get("/healthz").0, 200);
    assert!(d.metrics().contains("rulekeeper_webhook_requests_total"));
    let (code, _) = http(
        d.port,
        "POST",
        "/hooks/ps",
        &[("Authorization", &format!("Bearer {SECRET}"))],
        b"",
    );
    assert_eq!(
        code, 202,
        "an authenticated bearer hook does not need the budget"
    );
    let busy = metric(
        &d.metrics(),
        "rulekeeper_webhook_requests_total",
        &[("target", "ps"), ("result", "busy")],
    );
    assert!(busy >= Some(1.0), "{busy:?}");
    drop(held);
    // Once they go away, the budget is free again: a signed request is judged (401).
    wait_until(30, "budget released", || {
        let mut s = send_head(d.port, &[sig], 2, b"{}");
        status_of(&mut s) == 401
    });
}

#[test]
fn oversize_bodies_get_413_every_time_not_a_reset() {
    let (_env, d) = hooked();
    let body = vec![b' '; 2 * 1024 * 1024];
    for i in 0..20 {
        // The client writes its whole body before reading, as most do.
        let mut s = send_head(
            d.port,
            &[("Authorization", &format!("Bearer {SECRET}"))],
            body.len(),
            b"",
        );
        s.write_all(&body)
            .expect("the server reads the body it refused");
        assert_eq!(status_of(&mut s), 413, "attempt {i}");
    }
}

#[test]
fn wrong_credentials_are_summarised_not_logged_one_by_one() {
    let (env, d) = hooked();
    for _ in 0..200 {
        let (code, _) = http(
            d.port,
            "POST",
            "/hooks/ps",
            &[("Authorization", "Bearer nope")],
            b"",
        );
        assert_eq!(code, 401);
    }
    assert_eq!(
        metric(
            &d.metrics(),
            "rulekeeper_webhook_requests_total",
            &[("target", "ps"), ("result", "unauthorized")]
        ),
        Some(200.0)
    );
    assert_eq!(d.terminate(), 0);
    let log = env.daemon_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wrong credentials"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one summary line, not one per request: {lines:?}"
    );
    assert!(lines[0].contains("200 webhook request(s)"), "{}", lines[0]);
}

#[test]
fn credentials_in_urls_never_leave_the_process() {
    let env = Env::new();
    let port = crate::util::free_port(); // nothing listens: every fetch fails
    let url = format!(
        "http://deploy:pa55word-XYZ@127.0.0.1:{port}/rules.yaml?ref=main&access_token=tok-SECRET-42"
    );
    env.write_config(
        &format!("{{ kind: http, url: \"{url}\" }}"),
        "{ none: true }",
        "{ none: true }",
        "    interval: 1h\n",
    );
    std::fs::write(&env.live, rules("v1", "good")).unwrap();
    let secrets = ["pa55word-XYZ", "tok-SECRET-42"];
    let clean = |what: &str, text: &str| {
        for s in secrets {
            assert!(!text.contains(s), "{what} leaks {s}: {text}");
        }
    };
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stderr.contains("carries a credential"), "{}", o.all());
    assert!(o.stderr.contains("token_file"), "{}", o.all());
    clean("check", &o.all());
    let o = env.rk_env(&["once"], &[("RULEKEEPER_LOG", "trace")]);
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert!(
        o.all().contains("***"),
        "redacted, not dropped: {}",
        o.all()
    );
    clean("once at trace level", &o.all());
    clean(
        "state.json",
        &std::fs::read_to_string(env.state.join("targets/ps/state.json")).unwrap(),
    );
    clean("status", &env.rk(&["status"]).all());
    clean("status --json", &env.rk(&["status", "--json"]).all());
    let d = env.daemon(None);
    d.wait_ready();
    clean("/status", &d.get("/status").1);
    clean("/metrics", &d.metrics());
    drop(d);
    clean("daemon log", &env.daemon_log());
}

#[test]
fn a_restart_command_that_backgrounds_the_service_is_done_when_it_exits() {
    let env = Env::new();
    let up = env.dir.path().join("upstream.yaml");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    // Starts the service in the background, which inherits stdout/stderr, and exits.
    let restart = format!(
        "{{ command: [sh, -c, 'python3 {f} stop {d}; python3 {f} serve {d} & echo $! > {d}/pid; echo started', restart], timeout: 10s }}",
        f = Env::fakesvc(),
        d = env.svc.display()
    );
    env.write_config(
        &crate::util::file_source(&up),
        &restart,
        &env.verify_http(),
        "",
    );
    let started = std::time::Instant::now();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    // The service it started is alive: its process group was left alone.
    assert!(env.probe_ok());
    assert_eq!(env.start_log(), vec!["start # v1"]);
    eprintln!(
        "apply with a backgrounding restart command took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_corrupt_state_file_costs_its_target_only() {
    let env = Env::new();
    let dir = env.dir.path();
    let (up_a, up_b) = (dir.join("a.yaml"), dir.join("b.yaml"));
    std::fs::write(&up_a, rules("a1", "good")).unwrap();
    std::fs::write(&up_b, rules("b1", "good")).unwrap();
    let (live_a, live_b) = (dir.join("live/a.yaml"), dir.join("live/b.yaml"));
    std::fs::write(
        &env.config,
        format!(
            "state_dir: {state}\nlisten: 127.0.0.1:{port}\ntargets:\n  broken:\n    source: {{ kind: file, path: \"{ua}\" }}\n    path: {la}\n    interval: 1s\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n  fine:\n    source: {{ kind: file, path: \"{ub}\" }}\n    path: {lb}\n    interval: 1s\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n",
            state = env.state.display(),
            port = env.listen,
            ua = up_a.display(),
            la = live_a.display(),
            ub = up_b.display(),
            lb = live_b.display(),
        ),
    )
    .unwrap();
    assert_eq!(env.once().code, 0);
    let bad = env.state.join("targets/broken/state.json");
    std::fs::write(&bad, b"{\"applied\": {\"sha256\": ").unwrap();
    let broken_bytes = std::fs::read(&bad).unwrap();

    let o = env.rk(&["once", "-t", "broken"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("state_error"), "{}", o.all());
    assert!(
        o.stdout.contains("targets/broken/state.json"),
        "{}",
        o.all()
    );
    let o = env.rk(&["status"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("broken: STATE ERROR"), "{}", o.all());
    let o = env.rk(&["status", "--json"]);
    assert_eq!(o.code, 1, "{}", o.all());
    let s: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        s[0]["state_error"].as_str().unwrap().contains("corrupt"),
        "{s}"
    );
    assert_eq!(s[0]["last_outcome"], "state_error");
    assert!(s[1]["state_error"].is_null(), "{s}");

    // The daemon starts, and the other target keeps applying.
    let d = env.daemon(None);
    d.wait_ready();
    std::fs::write(&up_b, rules("b2", "good")).unwrap();
    std::fs::write(&up_a, rules("a2", "good")).unwrap();
    wait_until(20, "the fine target applies b2", || {
        std::fs::read_to_string(&live_b).unwrap_or_default() == rules("b2", "good")
    });
    wait_until(20, "state_error counted", || {
        metric(
            &d.metrics(),
            "rulekeeper_cycles_total",
            &[("target", "broken"), ("outcome", "state_error")],
        ) >= Some(2.0)
    });
    let st: serde_json::Value = serde_json::from_str(&d.get("/status").1).unwrap();
    assert_eq!(st["targets"][0]["last_outcome"], "state_error", "{st}");
    assert_eq!(d.get("/healthz").0, 200);
    // Nothing was applied to the broken target, and its state file was not reset.
    assert_eq!(
        std::fs::read_to_string(&live_a).unwrap(),
        rules("a1", "good")
    );
    assert_eq!(std::fs::read(&bad).unwrap(), broken_bytes);
    drop(d);
    // Recovery as documented: move the file aside.
    std::fs::rename(&bad, bad.with_extension("json.broken")).unwrap();
    let o = env.rk(&["once", "-t", "broken"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        std::fs::read_to_string(&live_a).unwrap(),
        rules("a2", "good")
    );
}

#[test]
fn secret_files_readable_by_others_are_warned_about() {
    let env = Env::new();
    let up = env.dir.path().join("upstream.yaml");
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let secret = env.dir.path().join("hook-secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    env.write_config(
        &crate::util::file_source(&up),
        "{ none: true }",
        "{ none: true }",
        &format!("    webhook: {{ secret_file: \"{}\" }}\n", secret.display()),
    );
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 0, "a warning, not an error: {}", o.all());
    assert!(
        o.stderr.contains("readable by group or others"),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains("targets.ps.webhook.secret_file"),
        "{}",
        o.all()
    );
    let d = env.daemon(None);
    d.wait_ready();
    drop(d);
    assert!(
        env.daemon_log().contains("readable by group or others"),
        "{}",
        env.daemon_log()
    );
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = env.rk(&["check"]);
    assert!(!o.stderr.contains("readable"), "{}", o.all());
}
