//! Storage faults with real files in a private mount namespace (`unshare -m`, root): a live
//! file that cannot be renamed over (a single-file bind mount: EBUSY), a full file system (a
//! 64 KiB tmpfs), a read-only state directory. Each must leave the live file whole and
//! last-good (`.prev`) intact, end the cycle `failed` with a reason naming the stage and the
//! file, exit 5, and converge once the fault is gone (docs/reliability.md, "Storage faults").

use std::process::Command;

use crate::util::{require_tool, rules, sha256, Env, Out};

/// Root and `unshare`, or a loud skip (a failure under `RULEKEEPER_REQUIRE_TOOLS=1`).
fn can_unshare() -> bool {
    let Some(_) = require_tool("unshare") else {
        return false;
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        crate::util::skip::<()>(
            crate::util::Need::Tool,
            "the storage fault tests need root (`unshare -m`)",
        );
    }
    root
}

/// Runs `rulekeeper ARGS -c CONFIG` after `setup` (shell) in a private mount namespace: the
/// mounts vanish with it.
fn in_ns(env: &Env, setup: &str, args: &str) -> Out {
    let script = format!(
        "set -e\n{setup}\nexec \"{}\" {args} -c \"{}\"",
        crate::util::bin().display(),
        env.config.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run unshare");
    out.into()
}

/// `restart:` that runs `first` (shell), then returns only once `gate` exists: a restart the
/// test holds open.
fn restart_waiting_for(gate: &std::path::Path, first: &str) -> serde_yaml::Value {
    crate::util::yaml(&format!(
        "{{ command: [sh, -c, \"{first}while [ ! -e '{}' ]; do sleep 0.05; done\"], timeout: 60s }}",
        gate.display()
    ))
}

fn prev(env: &Env) -> String {
    std::fs::read_to_string(env.live.with_file_name("sync-rules.yaml.prev")).unwrap_or_default()
}

fn temps(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.live.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".rk-"))
        .collect()
}

/// Issue 21, item 2: from live v2 and `.prev` v1, a rename of v3 over the live path that fails
/// must not cost v1.
#[test]
fn failed_live_rename_keeps_last_good_and_is_a_failed_outcome() {
    if !can_unshare() {
        return;
    }
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    std::fs::write(&up, rules("v2", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    assert_eq!(prev(&env), rules("v1", "good"));
    std::fs::write(&up, rules("v3", "good")).unwrap();
    // A single-file bind mount over the live path: renaming over a mount point is EBUSY.
    let pin = env.dir.path().join("pinned.yaml");
    std::fs::write(&pin, rules("v2", "good")).unwrap();
    let o = in_ns(
        &env,
        &format!(
            "mount --bind \"{}\" \"{}\"",
            pin.display(),
            env.live.display()
        ),
        "once",
    );
    assert_eq!(o.code, 5, "{}", o.all());
    assert!(o.stdout.contains("failed"), "{}", o.all());
    let live = env.live.display().to_string();
    assert!(
        o.all()
            .contains(&format!("install: cannot rename into place {live}")),
        "the reason names the stage and the live file: {}",
        o.all()
    );
    assert_eq!(env.live(), rules("v2", "good"), "the live file is whole");
    assert_eq!(prev(&env), rules("v1", "good"), "last-good survived");
    assert!(temps(&env).is_empty(), "{:?}", temps(&env));
    let st = env.state_json();
    assert_eq!(st["last_outcome"], "failed", "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .starts_with("install: "),
        "{st}"
    );
    let s = env.rk(&["status"]);
    assert!(s.stdout.contains("failed"), "{}", s.all());
    // The fault gone, the next cycle converges, and last-good still rolls back.
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v3", "good"));
    assert_eq!(prev(&env), rules("v2", "good"));
}

/// A full file system: the candidate cannot be staged. Nothing partial, no temp file, the live
/// file as it was, `failed` naming the file.
#[test]
fn full_file_system_leaves_nothing_partial() {
    if !can_unshare() {
        return;
    }
    let (env, up) = Env::with_file_source();
    let dir = env.live.parent().unwrap().to_path_buf();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    // The big revision does not fit in 64 KiB; a small one does.
    let big = format!("{}# {}\n", rules("big", "good"), "x".repeat(200_000));
    std::fs::write(&up, &big).unwrap();
    env.edit(|t| t.set("max_bytes", 1_048_576));
    let small = rules("small", "good");
    let o = in_ns(
        &env,
        &format!(
            "mount -t tmpfs -o size=64k tmpfs \"{d}\"\nprintf '%s' '{small}' > \"{live}\"",
            d = dir.display(),
            live = env.live.display(),
            small = small.replace('\'', "'\\''"),
        ),
        "once",
    );
    assert_eq!(o.code, 5, "{}", o.all());
    assert!(o.all().contains("install: "), "{}", o.all());
    assert!(
        o.all().contains(&dir.display().to_string()),
        "names the directory's file: {}",
        o.all()
    );
    assert!(!o.all().contains("panicked"), "{}", o.all());
    assert_eq!(env.state_json()["last_outcome"], "failed");
}

/// A state directory that cannot be written: the cycle's work stands, and the failure is an
/// outcome (counted, exit 5), not only a log line.
#[test]
fn unwritable_state_directory_is_a_failed_outcome() {
    if !can_unshare() {
        return;
    }
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let st = env.state.display().to_string();
    let o = in_ns(
        &env,
        &format!("mount --bind \"{st}\" \"{st}\"\nmount -o remount,ro,bind \"{st}\""),
        "once",
    );
    assert_eq!(o.code, 5, "{}", o.all());
    assert!(o.stdout.contains("failed"), "{}", o.all());
    assert!(o.all().contains("state: "), "{}", o.all());
    assert!(o.all().contains(&st), "names the state file: {}", o.all());
}

/// Issue 21, item 1: the state directory removed while a cycle restarts (docs/operations.md
/// calls removing it safe). The cycle must notice that its lock is gone, save nothing into a
/// directory another cycle may now own, and end `failed` (exit 5).
#[test]
fn state_directory_removed_under_a_running_cycle_fails_it_cleanly() {
    let (env, up) = Env::with_file_source();
    let gate = env.dir.path().join("restart-may-finish");
    env.edit(|t| t.set("restart", restart_waiting_for(&gate, "")));
    std::fs::write(&up, rules("v1", "good")).unwrap();
    std::fs::write(&gate, "").unwrap();
    assert_eq!(env.once().code, 0);
    std::fs::remove_file(&gate).unwrap();
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let child = env
        .command(&["once"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The apply is under way: its pending record is on disk and the restart waits.
    crate::util::wait_until(30, "the apply's pending record", || {
        !env.state_json()["pending"].is_null()
    });
    let target_dir = env.state.join("targets/ps");
    std::fs::remove_dir_all(&target_dir).unwrap();
    std::fs::write(&gate, "").unwrap();
    let out = Out::from(child.wait_with_output().unwrap());
    let all = out.all();
    assert_eq!(out.code, 5, "{all}");
    assert!(all.contains("was removed or replaced"), "{all}");
    assert!(
        !target_dir.join("state.json").exists(),
        "the cycle wrote state into a directory it no longer owns"
    );
}

/// tests/support/faultshim.c, built once per test process with `cc`.
fn shim() -> Option<std::path::PathBuf> {
    static SHIM: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        require_tool("cc")?;
        let out = std::env::temp_dir().join(format!("rk-faultshim-{}.so", std::process::id()));
        let src = crate::util::repo_root().join("tests/support/faultshim.c");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .ok()?;
        assert!(st.success(), "cc failed on {}", src.display());
        Some(out)
    })
    .clone()
}

/// Issue 21, item 4: the directory fsync after the swap fails (EIO). The apply must not be
/// called durable until that fsync has succeeded: the next cycle redoes it first.
#[test]
fn failed_directory_fsync_is_redone_before_the_apply_counts() {
    let Some(shim) = shim() else { return };
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let dir = env.live.parent().unwrap().display().to_string();
    let faulty = [
        ("LD_PRELOAD", shim.to_str().unwrap()),
        ("RK_FAULT_FSYNC_PATH", dir.as_str()),
    ];
    let o = env.rk_env(&["once"], &faulty);
    assert_eq!(o.code, 5, "{}", o.all());
    assert!(
        o.all()
            .contains(&format!("install: cannot fsync directory {dir}")),
        "{}",
        o.all()
    );
    assert!(
        !env.state_json()["pending"].is_null(),
        "the apply is not done"
    );
    // Still failing: the interrupted apply is not adopted while its rename is not durable.
    let o = env.rk_env(&["once"], &faulty);
    assert_eq!(o.code, 5, "{}", o.all());
    assert!(o.all().contains("cannot fsync directory"), "{}", o.all());
    assert!(!o.stdout.contains("applied"), "{}", o.all());
    // The disk is well again: the fsync is redone, then the apply is verified.
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert!(env.state_json()["pending"].is_null());
    assert_eq!(env.live(), rules("v2", "good"));
}

/// Issue 21, item 5: the final state save of a verified apply fails (the state file cannot be
/// written). The daemon shows it (`failed`, `/status`), and its next cycle starts from what
/// happened, not from the older file: no second restart.
#[test]
fn failed_final_save_costs_no_second_restart() {
    let Some(shim) = shim() else { return };
    let (env, up) = Env::with_file_source();
    let gate = env.dir.path().join("restart-may-finish");
    let switch = env.dir.path().join("disk-broken");
    let restarts = env.dir.path().join("restarts.log");
    env.edit(|t| {
        t.set(
            "restart",
            restart_waiting_for(&gate, &format!("echo x >> '{}'; ", restarts.display())),
        )
        .set("interval", "1s")
    });
    std::fs::write(&up, rules("v1", "good")).unwrap();
    std::fs::write(&gate, "").unwrap();
    let prefix = env
        .state
        .join("targets/ps/.state.json")
        .display()
        .to_string();
    let mut cmd = env.command(&["run"], &[]);
    cmd.env("LD_PRELOAD", &shim)
        .env("RK_FAULT_WRITE_PREFIX", &prefix)
        .env("RK_FAULT_SWITCH", &switch)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.dir.path().join("daemon.log")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    crate::util::wait_until(30, "v1 applied", || {
        env.state_json()["applied"]["sha256"].is_string() && env.state_json()["pending"].is_null()
    });
    assert_eq!(lines(&restarts), 1);
    std::fs::remove_file(&gate).unwrap();
    std::fs::write(&up, rules("v2", "good")).unwrap();
    crate::util::wait_until(30, "v2's pending record", || {
        !env.state_json()["pending"].is_null()
    });
    // The disk breaks while the restart runs: the save after it fails.
    std::fs::write(&switch, "").unwrap();
    std::fs::write(&gate, "").unwrap();
    let status = || crate::util::http(env.listen, "GET", "/status", &[], b"");
    crate::util::wait_until(30, "/status showing the unsaved state", || {
        let (code, body) = status();
        code == 200
            && (body.contains("\"state_unsaved\": true") || body.contains("\"state_unsaved\":true"))
    });
    let (_, body) = status();
    assert!(body.contains("\"failed\""), "{body}");
    let metrics = crate::util::http(env.listen, "GET", "/metrics", &[], b"").1;
    assert!(
        crate::util::metric(
            &metrics,
            "rulekeeper_cycles_total",
            &[("outcome", "failed")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // The disk is well again: the next cycle saves what happened, without restarting.
    std::fs::remove_file(&switch).unwrap();
    crate::util::wait_until(30, "v2 recorded as applied on disk", || {
        let st = env.state_json();
        st["pending"].is_null() && st["applied"]["sha256"] == sha256(&rules("v2", "good"))
    });
    assert_eq!(lines(&restarts), 2, "v1 and v2, no second restart of v2");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Issue 21, item 1, the other half: a second cycle started on a fresh state directory while
/// the first still restarts waits for it (the live file's directory is locked too), and never
/// adopts the first one's unverified file as `unchanged`. Here the first one's verification
/// fails, so the live file goes back to v1 before the second one looks.
#[test]
fn a_cycle_on_a_fresh_state_directory_waits_for_the_one_still_restarting() {
    let (env, up) = Env::with_file_source();
    let gate = env.dir.path().join("restart-may-finish");
    let ok = env.dir.path().join("healthy");
    let verify = format!(
        "{{ command: [test, -e, \"{}\"], timeout: 1s, interval: 100ms, successes: 1 }}",
        ok.display()
    );
    env.edit(|t| {
        t.set("restart", restart_waiting_for(&gate, ""))
            .set("verify", crate::util::yaml(&verify))
    });
    std::fs::write(&up, rules("v1", "good")).unwrap();
    std::fs::write(&gate, "").unwrap();
    std::fs::write(&ok, "").unwrap();
    assert_eq!(env.once().code, 0);
    // v2 will fail verification.
    std::fs::remove_file(&gate).unwrap();
    std::fs::remove_file(&ok).unwrap();
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let spawn = || {
        env.command(&["once"], &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    crate::util::wait_until(30, "the first apply's pending record", || {
        !env.state_json()["pending"].is_null()
    });
    std::fs::remove_dir_all(env.state.join("targets/ps")).unwrap();
    let second = spawn();
    // The second one has its fresh state lock, and then cannot go on while the first holds
    // the live file's directory (the assertions after the gate are what prove it: run beside
    // the first, it would report the unverified v2 as `unchanged`).
    crate::util::wait_until(30, "the second cycle's fresh state lock", || {
        env.state.join("targets/ps/lock").exists()
    });
    let mut second = second;
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second cycle ran beside the first"
    );
    std::fs::write(&gate, "").unwrap();
    let first = Out::from(first.wait_with_output().unwrap());
    let second = Out::from(second.wait_with_output().unwrap());
    assert_eq!(first.code, 5, "{}", first.all());
    assert!(
        !second.stdout.contains("unchanged"),
        "the second cycle adopted unverified content: {}",
        second.all()
    );
    assert_eq!(env.live(), rules("v1", "good"), "{}", second.all());
}
