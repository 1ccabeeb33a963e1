//! The live file's owner, group and mode across every way content is put in place: an
//! apply, a rollback, a `push`, a recovery after a kill. A service user (`nobody`) that reads
//! its file `0640` must go on reading it, and nobody else may start to. Needs root (to chown);
//! skipped loudly otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{rules, skip, wait_until, Env, Need};

const NOBODY: u32 = 65534;

fn owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// `nobody` can read `p` (what the managed service's user does).
fn nobody_reads(p: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn as_root() -> bool {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return crate::util::require_tool("setpriv").is_some();
    }
    skip::<()>(Need::Tool, "the ownership tests need root (chown)");
    false
}

fn assert_kept(env: &Env, when: &str) {
    let prev = env.live.with_file_name("sync-rules.yaml.prev");
    for p in [&env.live, &prev] {
        assert_eq!(
            owner(p),
            (NOBODY, NOBODY, 0o640),
            "{when}: {} keeps nobody:nogroup 0640",
            p.display()
        );
    }
    assert!(
        nobody_reads(&env.live),
        "{when}: the service user reads its file"
    );
}

#[test]
fn owner_group_and_mode_survive_apply_rollback_push_and_recovery() {
    if !as_root() {
        return;
    }
    let (env, up) = Env::with_managed_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    assert_eq!(env.once().code, 0);
    std::os::unix::fs::chown(&env.live, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(
        &env.live,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();

    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v2", "good"));
    assert_kept(&env, "apply");

    let o = env.rk(&["rollback", "-t", "ps"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_kept(&env, "rollback");

    let pushed = env.dir.path().join("v3.yaml");
    std::fs::write(&pushed, rules("v3", "good")).unwrap();
    let o = env.rk(&["push", "-t", "ps", pushed.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_kept(&env, "push");

    // A run killed mid-restart, and the next one finishing the apply.
    std::fs::write(&up, rules("v4", "good")).unwrap();
    let mut once = env.spawn_quiet(&["once"]);
    let before = env.restarts();
    wait_until(30, "the restart for v4", || env.restarts() > before);
    once.kill().unwrap();
    once.wait().unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v4", "good"));
    assert_kept(&env, "recovery");

    // `mode:` alone changes the mode, never the owner.
    env.edit(|t| t.set("mode", "0600"));
    std::fs::write(&up, rules("v5", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(owner(&env.live), (NOBODY, NOBODY, 0o600));
}

#[test]
fn a_new_file_gets_its_directorys_owner_and_owner_keys_are_checked() {
    if !as_root() {
        return;
    }
    let (env, up) = Env::with_managed_file_source();
    let dir = env.live.parent().unwrap();
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    env.start_service();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(owner(&env.live), (NOBODY, NOBODY, 0o644));

    // Named owner and group, checked when the config is read.
    env.edit(|t| t.set("owner", "no-such-user-rk"));
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.all().contains("targets.ps.owner") || o.all().contains("owner"),
        "{}",
        o.all()
    );
    assert!(o.all().contains("no-such-user-rk"), "{}", o.all());
    env.edit(|t| t.set("owner", "root").set("group", "0"));
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(owner(&env.live), (0, 0, 0o644));
}
