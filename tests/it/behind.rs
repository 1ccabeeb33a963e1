//! The unchanged poll's shortcuts (issue 32) against files changed behind the daemon's back:
//! a daemon does not read again what it knows by a file's stamp (the live file, its own
//! state file, a token file) and does not write times-only state, so each test here changes
//! one of those files the way an operator, an editor or a command would, keeping what it can
//! of the stamp (size, inode, mtime), and waits for the daemon to act on the change.

use std::io::{Seek, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::forge::forge_env;
use crate::util::{metric, rules, wait_until, Daemon, Env};

/// Cycles of target `ps` with `outcome` so far.
fn cycles(d: &Daemon, outcome: &str) -> f64 {
    metric(
        &d.metrics(),
        "rulekeeper_cycles_total",
        &[("target", "ps"), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// Waits for `n` more unchanged cycles: enough for the daemon to trust the stamps of files
/// it read (they settle 2 s after their last change; polls are 1 s apart).
fn wait_unchanged(d: &Daemon, n: f64) {
    let from = cycles(d, "unchanged");
    wait_until(60, &format!("{n} more unchanged cycles"), || {
        cycles(d, "unchanged") >= from + n
    });
}

/// Rewrites `path` in place (same inode) with `bytes`, then sets its mtime back to what it
/// was: only the ctime still tells, as with an editor that preserves times.
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    let before = std::fs::metadata(path).expect("stat");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    f.set_len(0).expect("truncate");
    f.seek(std::io::SeekFrom::Start(0)).expect("seek");
    f.write_all(bytes).expect("write");
    f.set_modified(before.modified().expect("mtime"))
        .expect("set mtime");
    drop(f);
    let after = std::fs::metadata(path).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(after.ino(), before.ino(), "rewritten in place");
    assert_eq!(after.modified().ok(), before.modified().ok(), "mtime kept");
}

/// One letter of `text` changed: the same size, other content.
fn same_size_other(text: &str) -> String {
    text.replacen("lists", "liste", 1)
}

fn one_second_daemon(env: &Env) -> Daemon {
    env.edit(|t| t.set("interval", "1s"));
    let d = env.daemon(None);
    d.wait_ready();
    d
}

#[test]
fn a_live_file_edited_in_place_keeping_size_and_mtime_is_put_back() {
    let (env, up) = Env::with_file_source();
    let good = rules("v1", "good");
    std::fs::write(&up, &good).unwrap();
    let d = one_second_daemon(&env);
    wait_unchanged(&d, 5.0);
    let edited = same_size_other(&good);
    assert_eq!(edited.len(), good.len());
    rewrite_in_place(&env.live, edited.as_bytes());
    wait_until(20, "the hand edit undone", || env.live() == good);
    let drift = metric(
        &d.metrics(),
        "rulekeeper_drift_corrections_total",
        &[("target", "ps")],
    );
    assert_eq!(drift, Some(1.0), "{}", env.daemon_log());
}

#[test]
fn a_hold_written_by_a_command_between_polls_is_obeyed() {
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let d = one_second_daemon(&env);
    wait_unchanged(&d, 5.0);
    let out = env.rk(&["hold", "--target", "ps"]);
    assert_eq!(out.code, 0, "{}", out.all());
    std::fs::write(&up, rules("v2", "good")).unwrap();
    wait_until(20, "a held cycle", || cycles(&d, "held") >= 1.0);
    assert_eq!(env.live(), rules("v1", "good"), "held content was applied");
    let out = env.rk(&["release", "--target", "ps"]);
    assert_eq!(out.code, 0, "{}", out.all());
    wait_until(20, "v2 applied after release", || {
        env.live() == rules("v2", "good")
    });
}

#[test]
fn a_state_file_edited_in_place_keeping_its_mtime_is_read_again() {
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let d = one_second_daemon(&env);
    wait_unchanged(&d, 5.0);
    let path = env.state.join("targets/ps/state.json");
    let was = std::fs::read(&path).unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(&was).unwrap();
    st["hold"] = serde_json::Value::Bool(true);
    // The same size as before (JSON allows trailing blanks): only the ctime tells.
    let mut text = serde_json::to_string_pretty(&st).unwrap();
    while text.len() < was.len() {
        text.push(' ');
    }
    assert_eq!(text.len(), was.len(), "{text}");
    rewrite_in_place(&path, text.as_bytes());
    std::fs::write(&up, rules("v2", "good")).unwrap();
    wait_until(20, "a held cycle", || cycles(&d, "held") >= 1.0);
    assert_eq!(env.live(), rules("v1", "good"), "held content was applied");
}

#[test]
fn a_token_rotated_in_place_is_sent_from_the_next_request_on() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
        "token-aaaa",
        false,
    );
    forge.set(&rules("v1", "good"));
    let d = one_second_daemon(&env);
    wait_unchanged(&d, 5.0);
    let tf = env.dir.path().join("token");
    rewrite_in_place(&tf, b"token-bbbb\n");
    forge.state.lock().unwrap().token = "token-bbbb".into();
    let sent_new = || {
        forge
            .content_requests()
            .iter()
            .any(|r| r.header("authorization") == Some("token token-bbbb") && r.status < 400)
    };
    wait_until(20, "a request with the rotated token answered", sent_new);
    assert_eq!(env.live(), rules("v1", "good"));
}

#[test]
fn unchanged_polls_leave_the_state_file_alone_and_a_stop_writes_their_times() {
    use std::os::unix::fs::MetadataExt;
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let d = one_second_daemon(&env);
    // The first unchanged cycle after the apply writes its new outcome.
    wait_unchanged(&d, 2.0);
    let path = env.state.join("targets/ps/state.json");
    let before = std::fs::metadata(&path).unwrap();
    wait_unchanged(&d, 3.0);
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec()),
        "state.json was rewritten by unchanged polls"
    );
    // The daemon's /status has the times the file does not have yet.
    let (code, body) = d.get("/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let served = time_of(&status["targets"][0]["last_outcome_at"]);
    let on_disk = time_of(&env.state_json()["last_outcome_at"]);
    assert!(
        served > on_disk && served + Duration::from_secs(3) >= SystemTime::now(),
        "/status says the last cycle was at {served:?}, the file {on_disk:?}"
    );
    let stopping = SystemTime::now();
    assert_eq!(d.terminate(), 0, "{}", env.daemon_log());
    let at = time_of(&env.state_json()["last_outcome_at"]);
    // The last cycle ran within an interval (1 s, jittered) of the stop.
    assert!(
        at + Duration::from_secs(2) >= stopping,
        "the times written at the stop are old: {at:?}, stopped at {stopping:?}"
    );
}

fn time_of(v: &serde_json::Value) -> SystemTime {
    let t = v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not a time: {v}"));
    SystemTime::from(t)
}
