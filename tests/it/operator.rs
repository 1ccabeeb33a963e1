//! The operator CLI: push, rollback, hold/release, status, completions, man page.

use std::io::Write;
use std::process::Stdio;

use crate::util::{rules, Env};

#[test]
fn push_from_stdin_goes_through_the_pipeline() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let push = |content: &str| {
        let mut c = env
            .command(&["push", "-t", "ps", "-"], &[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        let o = c.wait_with_output().unwrap();
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    // invalid: rejected, no restart
    let (code, out) = push("nope: [");
    assert_eq!(code, 1, "{out}");
    assert_eq!(env.restarts(), 1);
    // unhealthy: rolled back
    let (code, out) = push(&rules("pushed-bad", "bad"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rolled_back"), "{out}");
    assert_eq!(env.live(), rules("v1", "good"));
    // good: applied, and the CLI warns that polling will converge back unless held
    let (code, out) = push(&rules("pushed", "good"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hold"), "{out}");
    assert_eq!(env.live(), rules("pushed", "good"));
    assert!(env.probe_ok());
}

#[test]
fn hold_stops_applying_until_release() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    assert_eq!(env.rk(&["hold", "-t", "ps"]).code, 0);
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("held"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    let st = env.rk(&["status"]);
    assert!(
        st.stdout.contains("held") && st.stdout.contains("yes"),
        "{}",
        st.stdout
    );
    assert_eq!(env.rk(&["release", "-t", "ps"]).code, 0);
    assert_eq!(env.once().code, 0);
    assert_eq!(env.live(), rules("v2", "good"));
}

#[test]
fn manual_rollback_restores_prev_and_quarantines() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let o = env.rk(&["rollback", "-t", "ps"]);
    assert_eq!(o.code, 1, "nothing to roll back to yet: {}", o.all());
    assert!(o.stderr.contains("nothing to roll back to"), "{}", o.all());
    std::fs::write(&up, rules("v2", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    let o = env.rk(&["rollback", "-t", "ps"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(
        env.start_log().last().map(String::as_str),
        Some("start # v1")
    );
    // upstream still serves v2, which is now quarantined: polling leaves v1 alone
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    let j = env.rk(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert!(v[0]["quarantined_sha256"].is_string(), "{v}");
}

#[test]
fn status_table_completions_and_man_page() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let o = env.rk(&["status"]);
    assert_eq!(o.code, 0);
    // The first line says whether a daemon runs; the table's header follows.
    let header = o.stdout.lines().nth(1).unwrap();
    for col in [
        "TARGET",
        "SHA256",
        "REVISION",
        "LAST OUTCOME",
        "LAST SUCCESS",
        "QUARANTINE",
        "HELD",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(o.stdout.contains("applied"), "{}", o.stdout);
    let c = std::process::Command::new(crate::util::bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(c.status.success());
    assert!(String::from_utf8_lossy(&c.stdout).contains("rollback"));
    let m = std::process::Command::new(crate::util::bin())
        .arg("man")
        .output()
        .unwrap();
    assert!(m.status.success());
    assert!(String::from_utf8_lossy(&m.stdout).contains(".TH rulekeeper"));
}

#[test]
fn bundled_examples_pass_check() {
    let env = Env::new();
    let root = crate::util::repo_root();
    let demo = std::fs::read_to_string(root.join("examples/demo.yaml"))
        .unwrap()
        .replace("@DEMO@", env.dir.path().to_str().unwrap())
        .replace("@ROOT@", root.to_str().unwrap())
        .replace("@SVC_PORT@", "18080")
        .replace("@LISTEN@", "19871");
    std::fs::write(&env.config, demo).unwrap();
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 0, "examples/demo.yaml: {}", o.all());
    for example in [
        "powersync",
        "prometheus",
        "alertmanager",
        "vmalert",
        "nginx",
    ] {
        let o = crate::util::run(
            std::process::Command::new(crate::util::bin())
                .args(["check", "-c"])
                .arg(root.join(format!("examples/{example}.yaml"))),
        );
        assert!(o.0, "examples/{example}.yaml: {}{}", o.1, o.2);
    }
}

#[test]
fn rollback_refused_after_an_automatic_rollback_exits_1() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    std::fs::write(&up, rules("bad", "bad")).unwrap();
    assert_eq!(env.once().code, 1);
    // .prev now equals the live file: nothing to roll back to
    let o = env.rk(&["rollback", "-t", "ps"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stderr.contains("nothing to roll back to"), "{}", o.all());
}

/// A `push` waiting behind a `once` that dies mid-restart finds the interrupted apply, finishes
/// it, and then installs what it was given (not the other apply, reported as its own).
#[test]
fn push_waiting_behind_an_interrupted_apply_installs_what_it_was_given() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let mut once = env.spawn_quiet(&["once"]);
    crate::util::wait_until(30, "the restart for v2", || env.restarts() >= 2);
    let v3 = env.dir.path().join("v3.yaml");
    std::fs::write(&v3, rules("v3", "good")).unwrap();
    let push = env
        .command(&["push", "-t", "ps", v3.to_str().unwrap()], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    once.kill().unwrap();
    once.wait().unwrap();
    assert_eq!(
        env.live(),
        rules("v2", "good"),
        "the killed apply swapped v2 in"
    );
    let o = push.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(
        env.live(),
        rules("v3", "good"),
        "the push installed v3: {out}"
    );
    assert!(out.contains("applied"), "{out}");
    assert!(
        out.contains("interrupted apply was finished first"),
        "{out}"
    );
    assert!(env.state_json()["pending"].is_null());
    assert!(env.probe_ok());
}

/// One failure, one exit code: a state directory rulekeeper cannot use (here, a path through a
/// regular file) is the host's I/O trouble, 5, from every command that reads or writes it.
#[test]
fn an_unusable_state_directory_gives_the_same_code_from_every_command() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let blocker = env.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    env.edit_cfg(|mut c| {
        c.state_dir = blocker.join("state");
        c
    });
    let v2 = env.dir.path().join("v2.yaml");
    std::fs::write(&v2, rules("v2", "good")).unwrap();
    for args in [
        vec!["once"],
        vec!["push", "-t", "ps", v2.to_str().unwrap()],
        vec!["rollback", "-t", "ps"],
        vec!["hold", "-t", "ps"],
        vec!["release", "-t", "ps"],
        vec!["history", "-t", "ps"],
        vec!["status"],
    ] {
        let o = env.rk(&args);
        assert_eq!(o.code, 5, "{args:?}: {}", o.all());
        assert!(
            o.all().contains("not-a-dir"),
            "{args:?} names the path: {}",
            o.all()
        );
    }
    assert_eq!(env.live(), rules("v1", "good"), "nothing was applied");
}

/// Two targets with one name: refused by `check` (and every command), at the second one.
#[test]
fn a_target_name_given_twice_is_refused_at_its_line() {
    let (env, _up) = Env::with_managed_file_source();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let first = text.lines().position(|l| l == "  ps:").unwrap() + 1;
    let block: String = text.lines().skip(first - 1).collect::<Vec<_>>().join("\n");
    std::fs::write(&env.config, format!("{text}{block}\n")).unwrap();
    let second = text.lines().count() + 1;
    for args in [vec!["check"], vec!["once"]] {
        let o = env.rk(&args);
        assert_eq!(o.code, 2, "{}", o.all());
        assert!(
            o.stderr.contains(&format!(
                "duplicate target name `ps` at line {second} column 3"
            )),
            "{}",
            o.all()
        );
    }
}

/// A command that waits behind an apply in progress says so on stderr after a second, with
/// when that apply started, and then does its work.
#[test]
fn a_command_waiting_for_an_apply_in_progress_says_so() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let gate = env.dir.path().join("gate");
    let restart = format!(
        "{{ command: [sh, -c, \"while [ ! -e '{}' ]; do sleep 0.05; done\"], timeout: 60s }}",
        gate.display()
    );
    env.edit(|t| t.set("restart", crate::util::yaml(&restart)));
    for (round, args) in [vec!["hold", "-t", "ps"], vec!["once"]].iter().enumerate() {
        // An apply held open in its restart, until the gate file appears.
        let _ = std::fs::remove_file(&gate);
        let _ = env.rk(&["release", "-t", "ps"]);
        std::fs::write(&up, rules(&format!("round{round}"), "good")).unwrap();
        let mut apply = env.spawn_quiet(&["once"]);
        crate::util::wait_until(30, "the apply in progress", || {
            !env.state_json()["pending"].is_null()
        });
        let err = env.dir.path().join(format!("{round}.err"));
        let cmd = env
            .command(args, &[])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        crate::util::wait_until(30, "the waiting notice", || {
            std::fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("target `ps`: waiting for the apply in progress (started ")
        });
        std::fs::write(&gate, "").unwrap();
        assert_eq!(apply.wait().unwrap().code(), Some(0));
        let o = cmd.wait_with_output().unwrap();
        let said = std::fs::read_to_string(&err).unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {said}");
    }
}

/// `status` says whether a daemon runs: above the table, and per target in `--json`.
#[test]
fn status_says_whether_the_daemon_runs() {
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    let stopped = env.rk(&["status"]);
    assert_eq!(stopped.code, 0, "{}", stopped.all());
    assert!(
        stopped
            .stdout
            .lines()
            .next()
            .unwrap_or("")
            .starts_with("daemon: NOT RUNNING"),
        "{}",
        stopped.stdout
    );
    let j: serde_json::Value = serde_json::from_str(&env.rk(&["status", "--json"]).stdout).unwrap();
    assert_eq!(j[0]["daemon_running"], false, "{j}");

    let d = env.daemon(None);
    d.wait_ready();
    let running = env.rk(&["status"]);
    assert!(
        running
            .stdout
            .lines()
            .next()
            .unwrap_or("")
            .starts_with("daemon: running (holds "),
        "{}",
        running.stdout
    );
    assert!(running.stdout.contains("answers on"), "{}", running.stdout);
    let j: serde_json::Value = serde_json::from_str(&env.rk(&["status", "--json"]).stdout).unwrap();
    assert_eq!(j[0]["daemon_running"], true, "{j}");
    assert_eq!(d.terminate(), 0);
    let after = env.rk(&["status"]);
    assert!(
        after.stdout.starts_with("daemon: NOT RUNNING"),
        "{}",
        after.stdout
    );
}
