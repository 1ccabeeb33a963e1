//! The core cycle, black-box through `rulekeeper once`: a fake Forgejo on 127.0.0.1 and a
//! real managed process (tests/support/fakesvc.py) that reads the rules at start.

use std::process::Command;

use crate::forge::FakeForge;
use crate::util::{rules, wait_until, Env};

const TOKEN: &str = "s3cr3t-forge-token-value";

fn setup() -> (Env, FakeForge) {
    let env = Env::new();
    let forge = FakeForge::start(TOKEN);
    let tf = env.write_token(TOKEN);
    env.forgejo_config(&forge.base_url(), &tf);
    (env, forge)
}

#[test]
fn first_apply_then_unchanged_then_new_content() {
    let (env, forge) = setup();
    forge.set(&rules("v1", "good"));
    env.start_service();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.restarts(), 1);
    assert_eq!(
        env.start_log().last().map(String::as_str),
        Some("start # v1")
    );
    // the token went in the documented header
    let reqs = forge.content_requests();
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("token {TOKEN}").as_str())
    );
    assert_eq!(
        reqs[0].path,
        "/api/v1/repos/owner/app/raw/powersync/sync-rules.yaml"
    );
    assert_eq!(reqs[0].query, "ref=master");
    // revision is the commit that last touched the file
    let st = env.state_json();
    assert_eq!(st["applied"]["revision"], forge.commit());

    // unchanged: one conditional request answered 304, no restart
    forge.clear_log();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("unchanged"), "{}", o.all());
    let reqs = forge.content_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].status, 304);
    assert!(reqs[0].header("if-none-match").is_some());
    assert_eq!(env.restarts(), 1);

    // new content
    forge.set(&rules("v2", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v2", "good"));
    assert_eq!(
        std::fs::read_to_string(env.live.with_extension("yaml.prev")).unwrap(),
        rules("v1", "good")
    );
    assert_eq!(env.restarts(), 2);
    assert!(env.probe_ok());
}

#[test]
fn invalid_content_is_rejected_without_restart() {
    let (env, forge) = setup();
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    for bad in [
        "bucket_definitions: [unclosed\n",
        "something_else:\n  a: 1\n",
        "",
    ] {
        forge.set(bad);
        let o = env.once();
        assert_eq!(o.code, 1, "{}", o.all());
        assert!(o.stdout.contains("rejected"), "{}", o.all());
        assert_eq!(env.live(), rules("v1", "good"));
        assert_eq!(env.restarts(), 1, "no restart for rejected content");
        // next cycle with the same content: quarantined, still no restart
        let o = env.once();
        assert_eq!(o.code, 1, "{}", o.all());
        assert!(o.stdout.contains("quarantined"), "{}", o.all());
        assert_eq!(env.restarts(), 1);
    }
    // no candidate or temp file left beside the live file
    let names: Vec<String> = std::fs::read_dir(env.live.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["sync-rules.yaml".to_string()], "{names:?}");
}

#[test]
fn unhealthy_is_rolled_back_and_quarantined_until_new_content() {
    let (env, forge) = setup();
    forge.set(&rules("good1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    assert_eq!(env.restarts(), 1);

    forge.set(&rules("bad", "bad"));
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert_eq!(env.live(), rules("good1", "good"));
    assert_eq!(env.restarts(), 3, "one restart onto bad, one back");
    assert!(
        env.probe_ok(),
        "service healthy again on the last-good file"
    );
    assert_eq!(
        env.start_log().last().map(String::as_str),
        Some("start # good1")
    );

    // same bad content upstream: no restart at all, however often
    for _ in 0..3 {
        let o = env.once();
        assert_eq!(o.code, 1, "{}", o.all());
        assert!(o.stdout.contains("quarantined"), "{}", o.all());
    }
    assert_eq!(env.restarts(), 3);

    // new content clears the quarantine
    forge.set(&rules("good2", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("good2", "good"));
    assert!(env.state_json()["quarantine"].is_null());
}

#[test]
fn healthy_then_exits_is_rolled_back() {
    let (env, forge) = setup();
    good_then_flaky_is_rolled_back(&env, &forge);
    assert_eq!(env.live(), rules("good1", "good"));
    env.wait_probe(true);
}

/// Applies a good revision, then one the service answers for 0.3 s and dies on: rolled back.
fn good_then_flaky_is_rolled_back(env: &Env, forge: &FakeForge) -> crate::util::Out {
    forge.set(&rules("good1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    forge.set(&rules("flaky", "flaky"));
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    o
}

/// docs/contract.md, "Verify": after `restart.command`, an HTTP probe that got a good answer
/// and then finds nothing listening fails the window at once. The timeout here is far longer
/// than the test may take; a window that waited for it would report "not healthy within".
#[test]
fn answered_then_refused_fails_at_that_probe_not_at_the_timeout() {
    let (env, forge) = setup();
    let tf = env.write_token(TOKEN);
    env.forgejo_config_verify(
        &forge.base_url(),
        &tf,
        &format!(
            "{{ http: \"http://127.0.0.1:{}/probe\", timeout: 10m, interval: 100ms, successes: 30 }}",
            env.port
        ),
    );
    let o = good_then_flaky_is_rolled_back(&env, &forge);
    let reason = env.state_json()["quarantine"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("the service died"), "{reason}\n{}", o.all());
    assert!(!reason.contains("not healthy within"), "{reason}");
    assert_eq!(env.live(), rules("good1", "good"));
    env.wait_probe(true);
}

#[test]
fn hand_edited_live_file_is_converged_back() {
    let (env, forge) = setup();
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    std::fs::write(&env.live, rules("hand-edit", "good")).unwrap();
    forge.clear_log();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.restarts(), 2);
    // the 304 was followed by an unconditional fetch of the body, then the file at the
    // commit that last touched it (content and revision agree)
    let reqs = forge.content_requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![304, 200, 200]);
    assert_eq!(reqs[1].query, "ref=master");
    assert_eq!(reqs[2].query, format!("ref={}", forge.commit()));
}

#[test]
fn upstream_down_with_usable_file_exits_0_without_restart() {
    let (env, forge) = setup();
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    forge.fail_with(Some(503));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert_eq!(env.restarts(), 1);
}

#[test]
fn fresh_host_with_upstream_down_exits_3() {
    let env = Env::new();
    let tf = env.write_token(TOKEN);
    // nothing listens on this port
    env.forgejo_config(
        &format!("http://127.0.0.1:{}", crate::util::free_port()),
        &tf,
    );
    let o = env.once();
    assert_eq!(o.code, 3, "{}", o.all());
    assert!(!env.live.exists());
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let env = Env::new();
    env.write_config(
        "{ kind: file, path: /nonexistent }",
        "{ none: true }",
        "{ none: true, colour: blue }",
        "",
    );
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(o.stderr.contains("targets.ps.verify"), "{}", o.stderr);
    assert!(o.stderr.contains("colour"), "{}", o.stderr);
    assert!(o.stderr.contains("ps"), "{}", o.stderr);
    assert!(
        o.stderr.contains(env.config.to_str().unwrap()),
        "{}",
        o.stderr
    );
    let o = env.once();
    assert_eq!(o.code, 2, "{}", o.all());
}

#[test]
fn token_never_printed_even_at_trace_level() {
    let (env, forge) = setup();
    forge.set(&rules("v1", "good"));
    env.start_service();
    let o = env.rk_env(&["once"], &[("RULEKEEPER_LOG", "trace")]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.len() > 1000,
        "trace logging really on: {}",
        o.stderr.len()
    );
    assert!(!o.all().contains(TOKEN), "token leaked:\n{}", o.all());
    // and with a wrong token: the error does not quote it either
    std::fs::write(env.dir.path().join("token"), "wrong-token-xyz\n").unwrap();
    forge.set(&rules("v2", "good"));
    let o = env.rk_env(&["once"], &[("RULEKEEPER_LOG", "trace")]);
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert!(!o.all().contains("wrong-token-xyz"));
    let st = env.rk(&["status", "--json"]);
    assert!(!st.all().contains(TOKEN) && !st.all().contains("wrong-token-xyz"));
}

/// SIGKILLs `once` at the moment `ready` says, then checks the next run recovers.
fn kill_mid_cycle(restart_marker: bool) {
    let (env, forge) = setup();
    forge.set(&rules("good1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    forge.set(&rules("bad", "bad"));
    let mut cmd = Command::new(crate::util::bin());
    cmd.args(["once", "-c"]).arg(&env.config);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    if restart_marker {
        // after the swap, right after the restart began
        wait_until(20, "restart of the bad file", || env.restarts() >= 2);
    } else {
        // during verification: the bad file is live and the service runs it
        wait_until(20, "service started on the bad file", || {
            env.start_log().last().map(String::as_str) == Some("start # bad")
        });
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.live(), rules("bad", "bad"), "the swap happened");
    assert!(!env.state_json()["pending"].is_null(), "pending recorded");
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert_eq!(env.live(), rules("good1", "good"));
    env.wait_probe(true);
    assert!(env.state_json()["pending"].is_null());
    // and it is quarantined now
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
}

#[test]
fn sigkill_after_swap_recovers_to_last_good() {
    kill_mid_cycle(true);
}

#[test]
fn sigkill_during_verification_recovers_to_last_good() {
    kill_mid_cycle(false);
}

#[test]
fn check_and_validate_commands() {
    let env = Env::new();
    let up = env.dir.path().join("upstream.yaml");
    env.write_config(
        &crate::util::file_source(&up),
        &env.restart_command(),
        &env.verify_http(),
        "",
    );
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 0, "{}", o.all());
    let f = env.dir.path().join("cand.yaml");
    std::fs::write(&f, rules("x", "good")).unwrap();
    let o = env.rk(&["validate", "-t", "ps", f.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    std::fs::write(&f, "nope: [").unwrap();
    let o = env.rk(&["validate", "-t", "ps", f.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("YAML"), "{}", o.all());
}

#[test]
fn validate_command_sees_the_candidate_and_its_output_is_reported() {
    let (env, up) = Env::with_file_source();
    let script = env.dir.path().join("check.sh");
    let seen = env.dir.path().join("seen");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" >> {}\ngrep -q forbidden \"$1\" && {{ echo \"found forbidden in $1\" >&2; exit 1; }}\nexit 0\n", seen.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // add a validate command
    env.set_validate(&format!(
        "{{ require_keys: [bucket_definitions], command: [\"{}\", \"{{file}}\"], timeout: 5s }}",
        script.display()
    ));
    std::fs::write(&up, rules("ok", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    std::fs::write(&up, format!("{}# forbidden\n", rules("no", "good"))).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    // The command saw the candidate beside the live file; the reason names the live path,
    // not the temp file, whose name means nothing to whoever reads it.
    let checked = std::fs::read_to_string(&seen).unwrap();
    assert!(
        checked.lines().any(|l| l.contains(".sync-rules.yaml.rk-")
            && l.starts_with(&env.live.parent().unwrap().display().to_string())),
        "validated the candidate beside the live file: {checked}"
    );
    assert!(
        o.stdout
            .contains(&format!("found forbidden in {}", env.live.display())),
        "{}",
        o.all()
    );
    assert!(!o.all().contains(".rk-"), "{}", o.all());
    assert_eq!(env.live(), rules("ok", "good"));
}
