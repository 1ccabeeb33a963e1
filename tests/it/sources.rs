//! Every source kind against a real peer on 127.0.0.1: `git daemon` serving a bare repo,
//! and the fake forge speaking the GitHub, GitLab and plain-HTTP APIs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::forge::FakeForge;
use crate::util::{self, free_port, rules, wait_until, Env};

const TOKEN: &str = "src-token-987";

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    git_with(dir, args, &[])
}

/// `git -C dir args` as the committer `t@example.com`, with `envs` added; its trimmed stdout.
pub(crate) fn git_with(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(envs.iter().copied())
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `<dir>/repos/app.git` (branch `master`) for `git daemon` to serve
/// (`--base-path <dir>/repos`), and a clone of it at `<dir>/work` to commit and push from:
/// (repos, work).
pub(crate) fn bare_and_clone(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("repos");
    let bare = base.join("app.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=master"],
    );
    let work = dir.join("work");
    let out = Command::new("git")
        .args(["clone", "--quiet"])
        .arg(&bare)
        .arg(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (base, work)
}

pub(crate) struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // `git daemon` forks git-daemon: end the whole process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

pub(crate) fn git_daemon(base: &Path) -> GitDaemon {
    let port = free_port();
    let child = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon");
    wait_until(30, "git daemon listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    GitDaemon { child, port }
}

#[test]
fn git_source_over_git_daemon() {
    if util::require_tool("git").is_none() {
        return;
    }
    let env = Env::new();
    let (base, work) = bare_and_clone(env.dir.path());
    let commit = |content: &str| {
        std::fs::create_dir_all(work.join("powersync")).unwrap();
        std::fs::write(work.join("powersync/sync-rules.yaml"), content).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "rules"]);
        git(&work, &["push", "--quiet", "origin", "HEAD:master"]);
        git(&work, &["rev-parse", "HEAD"])
    };
    let c1 = commit(&rules("v1", "good"));
    let gd = git_daemon(&base);
    env.write_config(
        &format!("{{ kind: git, url: \"git://127.0.0.1:{}/app.git\", ref: master, path: powersync/sync-rules.yaml, timeout: 10s }}", gd.port),
        "{ none: true }",
        "{ none: true }",
        "",
    );
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.state_json()["applied"]["revision"], c1.as_str());
    let st = env.rk(&["status"]);
    assert!(
        st.stdout.contains(&c1[..12]),
        "status shows the commit: {}",
        st.stdout
    );

    // unchanged commit: ls-remote only, no fetch into the cache
    let fetch_head = env.state.join("targets/ps/git/FETCH_HEAD");
    let mtime = std::fs::metadata(&fetch_head).unwrap().modified().unwrap();
    let o = env.once();
    assert!(o.stdout.contains("unchanged"), "{}", o.all());
    assert_eq!(
        std::fs::metadata(&fetch_head).unwrap().modified().unwrap(),
        mtime,
        "no fetch for an unchanged commit"
    );

    // a new commit is applied, and its sha becomes the revision
    let c2 = commit(&rules("v2", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v2", "good"));
    assert_eq!(env.state_json()["applied"]["revision"], c2.as_str());

    // a missing path is a fetch failure that keeps the live file
    env.edit(|t| {
        let mut source = t.get("source").cloned().expect("source");
        source["path"] = "nope.yaml".into();
        t.set("source", source)
    });
    let c3 = commit(&rules("v3", "good"));
    assert_ne!(c3, c2);
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert_eq!(env.live(), rules("v2", "good"));
}

fn forge_env(kind_yaml: &str) -> (Env, FakeForge) {
    crate::forge::forge_env(kind_yaml, TOKEN, false)
}

#[test]
fn github_source_conditional_with_commit_revision() {
    let (env, forge) = forge_env(
        "{ kind: github, base_url: \"BASE\", repo: owner/app, path: powersync/sync-rules.yaml, ref: main, token_file: \"TOKENFILE\" }",
    );
    forge.set(&rules("gh1", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("gh1", "good"));
    let r = &forge.content_requests()[0];
    assert_eq!(
        r.path,
        "/repos/owner/app/contents/powersync/sync-rules.yaml"
    );
    assert_eq!(r.query, "ref=main");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(env.state_json()["applied"]["revision"], forge.commit());
    // the bytes applied are the file at that commit: fetched again with `ref=<commit>`
    let pinned = &forge.content_requests()[1];
    assert_eq!(pinned.query, format!("ref={}", forge.commit()));
    forge.clear_log();
    assert!(env.once().stdout.contains("unchanged"));
    assert_eq!(forge.content_requests()[0].status, 304);
}

#[test]
fn gitlab_source_conditional_with_commit_header() {
    let (env, forge) = forge_env(
        "{ kind: gitlab, base_url: \"BASE\", repo: group/sub/app, path: powersync/sync-rules.yaml, ref: main, token_file: \"TOKENFILE\" }",
    );
    forge.set(&rules("gl1", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    let r = &forge.content_requests()[0];
    // project path and file path are each one URL-encoded segment
    assert_eq!(
        r.path,
        "/api/v4/projects/group%2Fsub%2Fapp/repository/files/powersync%2Fsync-rules.yaml/raw"
    );
    assert_eq!(r.query, "ref=main");
    assert_eq!(r.header("private-token"), Some(TOKEN));
    assert_eq!(env.state_json()["applied"]["revision"], forge.commit());
    assert_eq!(
        forge.content_requests()[1].query,
        format!("ref={}", forge.commit())
    );
    forge.clear_log();
    assert!(env.once().stdout.contains("unchanged"));
    assert_eq!(forge.content_requests()[0].status, 304);
}

#[test]
fn http_source_with_bearer_and_size_cap() {
    let (env, forge) =
        forge_env("{ kind: http, url: \"BASE/plain/rules.yaml\", token_file: \"TOKENFILE\" }");
    forge.set(&rules("h1", "good"));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        forge.content_requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // over max_bytes: refused, live file untouched
    env.edit(|t| t.set("max_bytes", 100));
    forge.set(&format!("{}# {}\n", rules("h2", "good"), "x".repeat(200)));
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("max_bytes"), "{}", o.all());
    assert_eq!(env.live(), rules("h1", "good"));
}

#[test]
fn plain_http_to_a_non_loopback_host_is_refused() {
    let env = Env::new();
    env.write_config(
        "{ kind: forgejo, base_url: \"http://git.example.com\", repo: o/r, path: x.yaml }",
        "{ none: true }",
        "{ none: true }",
        "",
    );
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("targets.ps.source.base_url"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("https"), "{}", o.stderr);
}

/// Issue 22, part 1: the branch moves between the request for the file and the question
/// "which commit last touched it". The bytes applied are the file at the commit recorded,
/// never one commit's bytes under another commit's id.
#[test]
fn content_and_revision_agree_when_the_branch_moves_mid_fetch() {
    for kind in ["forgejo", "github"] {
        let (env, forge) = forge_env(&format!(
            "{{ kind: {kind}, base_url: \"BASE\", repo: owner/app, path: sync-rules.yaml, ref: main, token_file: \"TOKENFILE\" }}"
        ));
        forge.set(&rules("v1", "good"));
        forge.move_after_next_fetch(&rules("v2", "good"));
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        let st = env.state_json();
        assert_eq!(st["applied"]["revision"], forge.commit(), "{kind}");
        assert_eq!(
            env.live(),
            rules("v2", "good"),
            "{kind}: the file at the recorded commit"
        );
        // The validator of the first answer described v1: the next fetch is not
        // conditional on it, and finds upstream in sync.
        let o = env.once();
        assert!(o.stdout.contains("unchanged"), "{kind}: {}", o.all());
    }
}

/// A tree target on a git source: the directory at the fetched commit, its revision the
/// commit; a symbolic link committed into it is refused by name; `push` takes a directory or
/// a tar archive.
#[test]
fn git_tree_source_and_push_of_a_directory_or_a_tar() {
    if util::require_tool("git").is_none() || util::require_tool("tar").is_none() {
        return;
    }
    let env = Env::new();
    let (base, work) = bare_and_clone(env.dir.path());
    let push = |files: &[(&str, &str)]| {
        let _ = std::fs::remove_dir_all(work.join("rules"));
        for (name, text) in files {
            let p = work.join("rules").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "rules"]);
        git(&work, &["push", "--quiet", "origin", "HEAD:master"]);
        git(&work, &["rev-parse", "HEAD"])
    };
    let c1 = push(&[("a.yml", "a: 1\n"), ("sub/b.yml", "b: 1\n")]);
    let gd = git_daemon(&base);
    let live = env.dir.path().join("live/rules.d");
    env.write_config(
        &format!("{{ kind: git, url: \"git://127.0.0.1:{}/app.git\", ref: master, path: rules, timeout: 10s }}", gd.port),
        "{ none: true }",
        "{ none: true }",
        "",
    );
    env.edit(|t| {
        t.set("path", live.display().to_string())
            .set("tree", true)
            .set("validate", util::yaml("{}"))
    });
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        std::fs::read_to_string(live.join("a.yml")).unwrap(),
        "a: 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(live.join("sub/b.yml")).unwrap(),
        "b: 1\n"
    );
    assert_eq!(env.state_json()["applied"]["revision"], c1.as_str());
    let o = env.rk(&["check"]);
    assert_eq!(
        o.code,
        0,
        "the live link is the tree target's own: {}",
        o.all()
    );

    // A symbolic link inside the directory: refused, naming it; the live tree stays.
    std::os::unix::fs::symlink("/etc/passwd", work.join("rules/link")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "a link"]);
    git(&work, &["push", "--quiet", "origin", "HEAD:master"]);
    let o = env.once();
    assert!(o.stdout.contains("fetch_failed"), "{}", o.all());
    assert!(
        o.all().contains("entry `link`: a symbolic link"),
        "{}",
        o.all()
    );
    assert_eq!(
        std::fs::read_to_string(live.join("a.yml")).unwrap(),
        "a: 1\n"
    );

    // push: a directory, then a tar on standard input.
    let pushed = env.dir.path().join("pushed");
    std::fs::create_dir_all(pushed.join("x")).unwrap();
    std::fs::write(pushed.join("x/c.yml"), "c: 1\n").unwrap();
    let o = env.rk(&["push", "-t", "ps", pushed.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        std::fs::read_to_string(live.join("x/c.yml")).unwrap(),
        "c: 1\n"
    );
    assert!(!live.join("a.yml").exists(), "the tree is replaced whole");
    std::fs::write(pushed.join("x/c.yml"), "c: 2\n").unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&pushed)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut child = env
        .command(&["push", "-t", "ps", "-"], &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(live.join("x/c.yml")).unwrap(),
        "c: 2\n"
    );
    // diff: per file, against upstream's tree (the link still refuses it: against a file dir).
    let o = env.rk(&["diff", "-t", "ps", pushed.to_str().unwrap()]);
    assert_eq!(o.code, 0, "the pushed tree is live: {}", o.all());
}
