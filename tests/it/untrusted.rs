//! Nothing bad gets installed, nothing bad is called good: what rulekeeper accepts as a rules
//! file (one YAML mapping), as upstream bytes (what the forge's own digest describes), as a
//! live path (a regular file, not another target's file), and never adopting content that
//! failed verification.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::forge::{raw_http_server, FakeForge, Tamper};
use crate::util::{metric, rules, wait_until, Env, Out};

const TOKEN: &str = "untrusted-test-token";

/// A target on the fake forge, the fake service restarted by command and probed over HTTP.
fn forge_env(kind_yaml: &str) -> (Env, FakeForge) {
    crate::forge::forge_env(kind_yaml, TOKEN, true)
}

/// Runs `rulekeeper ARGS`, failing the test if it does not finish within `secs` (the
/// special-file cases used to hang forever).
fn rk_within(env: &Env, args: &[&str], secs: u64) -> Out {
    let mut child = env
        .command(args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rulekeeper");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`rulekeeper {args:?}` did not finish within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output").into()
}

#[test]
fn only_one_yaml_mapping_is_a_rules_file_even_without_required_keys() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, token_file: \"TOKENFILE\" }",
    );
    // Only the built-in checks: no require_keys.
    env.set_validate("{}");
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    let restarts = env.restarts();
    for (body, why) in [
        ("<html><body>Sign in</body></html>\n", "a string"),
        ("plain words\n", "a string"),
        ("- bucket_definitions\n- streams\n", "a list"),
        ("---\n", "empty"),
        ("a: 1\n---\nb: 2\n", "2 YAML documents"),
    ] {
        forge.set(body);
        let o = env.once();
        assert_eq!(o.code, 1, "{body:?}: {}", o.all());
        assert!(o.stdout.contains("rejected"), "{body:?}: {}", o.all());
        assert!(o.stdout.contains(why), "{body:?}: {}", o.all());
        assert_eq!(env.live(), rules("v1", "good"), "{body:?} not installed");
        assert_eq!(env.restarts(), restarts, "{body:?}: no restart");
    }
}

/// Each forge kind, each way the bytes can differ from what the forge describes.
#[test]
fn bytes_that_differ_from_the_forges_digest_are_never_installed() {
    for kind in [
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, token_file: \"TOKENFILE\" }",
        "{ kind: github, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, token_file: \"TOKENFILE\" }",
        "{ kind: gitlab, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, token_file: \"TOKENFILE\" }",
    ] {
        let (env, forge) = forge_env(kind);
        forge.set(&rules("v1", "good"));
        env.start_service();
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        let restarts = env.restarts();
        for t in [Tamper::Alter, Tamper::Truncate] {
            forge.set(&rules(&format!("v2-{t:?}"), "good"));
            forge.tamper(Some(t));
            let o = env.once();
            // The live file is still usable: exit 0, like any failed fetch.
            assert_eq!(o.code, 0, "{kind} {t:?}: {}", o.all());
            assert!(o.stdout.contains("fetch_failed"), "{kind} {t:?}: {}", o.all());
            assert!(
                o.stdout.contains("cut short or altered"),
                "{kind} {t:?}: {}",
                o.all()
            );
            assert_eq!(env.live(), rules("v1", "good"), "{kind} {t:?}");
            assert_eq!(env.restarts(), restarts, "{kind} {t:?}: no restart");
        }
        // Whole bytes again: applied.
        forge.tamper(None);
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert!(o.stdout.contains("applied"), "{kind}: {}", o.all());
    }
}

#[test]
fn forgejo_behind_a_proxy_with_weak_etags_checks_the_contents_api() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, ref: main, token_file: \"TOKENFILE\" }",
    );
    forge.set(&rules("v1", "good"));
    forge.tamper(Some(Tamper::WeakEtag));
    env.start_service();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    let meta = forge
        .log()
        .into_iter()
        .find(|r| r.path.contains("/contents/"))
        .expect("asked the contents API for the blob id");
    assert_eq!(
        meta.path,
        "/api/v1/repos/owner/app/contents/sync-rules.yaml"
    );
    assert_eq!(meta.query, "ref=main");
}

/// An `http` target on a server that sends exactly `raw`.
fn raw_env(raw: Vec<u8>, extra_source: &str) -> Env {
    let port = raw_http_server(raw);
    let env = Env::new();
    env.write_config(
        &format!("{{ kind: http, url: \"http://127.0.0.1:{port}/rules.yaml\"{extra_source} }}"),
        "{ none: true }",
        "{ none: true }",
        "",
    );
    env
}

#[test]
fn http_bodies_cut_short_or_not_matching_their_digest_are_refused() {
    let whole = rules("h1", "good");
    let cut = &whole[..whole.rfind("  global").unwrap()];
    // Delimited only by the server closing the connection: refused unless opted in.
    let close = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{cut}").into_bytes();
    let env = raw_env(close.clone(), "");
    let o = env.once();
    assert_eq!(o.code, 3, "no usable file on a fresh host: {}", o.all());
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert!(o.stdout.contains("closing the connection"), "{}", o.all());
    assert!(!env.live.exists());
    let env = raw_env(close, ", allow_close_delimited: true");
    let o = env.once();
    assert_eq!(o.code, 0, "opted in: {}", o.all());
    assert_eq!(env.live(), cut);

    // Shorter than its Content-Length.
    let short = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
        whole.len(),
        &whole[..30]
    );
    let env = raw_env(short.into_bytes(), "");
    let o = env.once();
    assert!(
        o.stdout
            .contains(&format!("got 30 of {} bytes", whole.len())),
        "{}",
        o.all()
    );
    assert!(!env.live.exists());

    // A Content-Digest that does not match.
    use base64::Engine;
    use sha2::Digest;
    let other = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"other"));
    let digest = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Digest: sha-256=:{other}:\r\n\r\n{whole}",
        whole.len()
    );
    let env = raw_env(digest.into_bytes(), "");
    let o = env.once();
    assert!(o.stdout.contains("content-digest says"), "{}", o.all());
    assert!(!env.live.exists());
}

#[test]
fn integrity_failures_are_counted_with_their_reason() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, token_file: \"TOKENFILE\" }",
    );
    env.edit(|t| t.set("interval", "1h"));
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    forge.set(&rules("v2", "good"));
    forge.tamper(Some(Tamper::Alter));
    let d = env.daemon(None);
    d.wait_ready();
    wait_until(20, "an integrity failure counted", || {
        metric(
            &d.metrics(),
            "rulekeeper_fetch_failures_total",
            &[("target", "ps"), ("reason", "integrity")],
        ) == Some(1.0)
    });
    assert_eq!(env.live(), rules("v1", "good"));
}

#[test]
fn content_that_failed_verification_is_never_adopted_on_a_fresh_host() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, token_file: \"TOKENFILE\" }",
    );
    // A fresh host: no live file, no .prev; the first revision is unhealthy.
    forge.set(&rules("bad", "bad"));
    env.start_service();
    let o = env.once();
    assert_eq!(o.code, 4, "nothing to roll back to: {}", o.all());
    assert!(o.stdout.contains("rollback_failed"), "{}", o.all());
    // Live now equals upstream, but that content failed: not `unchanged`, not success.
    for _ in 0..2 {
        let o = env.once();
        assert_eq!(o.code, 1, "{}", o.all());
        assert!(o.stdout.contains("quarantined"), "{}", o.all());
        assert!(!o.stdout.contains("unchanged"), "{}", o.all());
    }
    let st = env.state_json();
    assert!(st["quarantine"]["sha256"].is_string(), "{st}");
    assert!(st["last_success"].is_null(), "{st}");
    assert!(st["applied"].is_null(), "{st}");
    let o = env.rk(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(s[0]["last_outcome"], "quarantined");
    assert!(s[0]["quarantined_sha256"].is_string());
    // The daemon reports it too, so the alert fires.
    env.edit(|t| t.set("interval", "1h"));
    {
        let d = env.daemon(None);
        d.wait_ready();
        wait_until(30, "quarantined gauge", || {
            metric(&d.metrics(), "rulekeeper_quarantined", &[("target", "ps")]) == Some(1.0)
        });
        assert_eq!(
            metric(
                &d.metrics(),
                "rulekeeper_last_success_timestamp_seconds",
                &[("target", "ps")]
            ),
            None
        );
    }
    // New content clears it.
    forge.set(&rules("good", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert!(env.state_json()["quarantine"].is_null());
}

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in the test's own temp dir.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn special_files_are_refused_without_blocking() {
    // A FIFO at the live path.
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.edit_cfg(|c| c.top("startup_timeout", "2s"));
    mkfifo(&env.live);
    let o = rk_within(&env, &["once"], 20);
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(o.all().contains("FIFO"), "{}", o.all());
    let o = rk_within(&env, &["status"], 20);
    assert_eq!(o.code, 0, "{}", o.all());
    let o = rk_within(&env, &["check"], 20);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stderr.contains("targets.ps.path"), "{}", o.all());
    assert!(o.stderr.contains("FIFO"), "{}", o.all());
    // `run` binds, says why, and gives up at startup_timeout instead of hanging.
    let o = rk_within(&env, &["run"], 30);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("FIFO"), "{}", o.all());
    assert!(o.stderr.contains("no usable rules file"), "{}", o.all());

    // A FIFO as a `file` source; a directory as the live path.
    let env = Env::new();
    let fifo = env.dir.path().join("upstream.fifo");
    mkfifo(&fifo);
    env.write_config(
        &crate::util::file_source(&fifo),
        "{ none: true }",
        "{ none: true }",
        "",
    );
    let o = rk_within(&env, &["once"], 20);
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert!(o.stdout.contains("FIFO"), "{}", o.all());
    std::fs::create_dir_all(&env.live).unwrap();
    let o = rk_within(&env, &["check"], 20);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stderr.contains("directory"), "{}", o.all());
}

#[test]
fn a_symlinked_live_file_is_refused_and_left_alone() {
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let real = env.dir.path().join("real-rules.yaml");
    std::fs::write(&real, rules("v1", "good")).unwrap();
    std::os::unix::fs::symlink(&real, &env.live).unwrap();
    let o = env.once();
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(o.all().contains("symbolic link"), "{}", o.all());
    assert!(o.all().contains("real-rules.yaml"), "{}", o.all());
    assert!(
        std::fs::symlink_metadata(&env.live)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still a link"
    );
    assert_eq!(std::fs::read_to_string(&real).unwrap(), rules("v1", "good"));
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stderr.contains("symbolic link"), "{}", o.all());
    // A symlink as a `file` source is fine: the source is only read.
    std::fs::remove_file(&env.live).unwrap();
    let link = env.dir.path().join("upstream-link.yaml");
    std::os::unix::fs::symlink(&up, &link).unwrap();
    env.edit(|t| {
        t.set(
            "source",
            crate::util::yaml(&crate::util::file_source(&link)),
        )
    });
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v2", "good"));
}

#[test]
fn aliased_live_paths_fail_check_naming_both_targets() {
    let env = Env::new();
    let dir = env.dir.path();
    std::fs::create_dir_all(dir.join("x")).unwrap();
    std::fs::create_dir_all(dir.join("y")).unwrap();
    let target = |name: &str, live: String| {
        format!(
            "  {name}:\n    source: {{ kind: file, path: /srv/{name}.yaml }}\n    path: {live}\n    restart: {{ none: true }}\n    verify: {{ none: true }}\n"
        )
    };
    for (b, want) in [
        (
            format!("{}/y/../x/r.yaml", dir.display()),
            "the same live file",
        ),
        (format!("{}/x/r.yaml.prev", dir.display()), "`.prev`"),
    ] {
        std::fs::write(
            &env.config,
            format!(
                "state_dir: {}\ntargets:\n{}{}",
                env.state.display(),
                target("one", format!("{}/x/r.yaml", dir.display())),
                target("two", b.clone())
            ),
        )
        .unwrap();
        let o = env.rk(&["check"]);
        assert_eq!(o.code, 2, "{b}: {}", o.all());
        assert!(o.stderr.contains(want), "{b}: {}", o.all());
        assert!(
            o.stderr.contains("`one`") && o.stderr.contains("`two`"),
            "both named: {}",
            o.all()
        );
        // `run` refuses the same config before touching anything.
        let o = env.rk(&["once"]);
        assert_eq!(o.code, 2, "{}", o.all());
    }
}
