//! Directory targets (`tree: true`): a tree of rules or config swapped at once. Against the real
//! Prometheus (a `rule_files` glob over the live directory) and nginx (`include live/*.conf`):
//! a change touching two files is live after one reload; a tree its validator rejects for one
//! bad file is never installed. A reader hashing the live directory in a tight loop through
//! 200 swaps never sees a mix; `once` killed at random points 500 times leaves no mixed or
//! partial tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::services::Service;
use crate::util::{free_port, require_tool, wait_until, yaml, Env};

/// Writes `files` as the upstream directory `up` (replacing what was there).
fn set_tree(up: &Path, files: &BTreeMap<&str, String>) {
    let _ = std::fs::remove_dir_all(up);
    for (name, text) in files {
        let p = up.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A world with a `file` source directory `upstream/` and a tree target at `live/rules`.
fn world(restart: &str, verify: &str) -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    let up = env.dir.path().join("upstream");
    let live = env.dir.path().join("live/rules");
    env.write_config(&crate::util::file_source(&up), restart, verify, "");
    env.edit(|t| {
        t.set("path", live.display().to_string())
            .set("tree", true)
            .set("validate", yaml("{ yaml: true }"))
    });
    (env, up, live)
}

/// Applies the first tree with nothing to reload or verify (the service starts on it after),
/// then puts the target's reload and verify back.
fn first_tree_before_the_service(env: &Env) {
    let t = env
        .cfg
        .borrow()
        .as_ref()
        .map(|c| c.targets[0].1.clone())
        .unwrap();
    let (restart, verify) = (
        t.get("restart").cloned().unwrap(),
        t.get("verify").cloned().unwrap(),
    );
    env.edit(|t| {
        t.set("restart", yaml("{ none: true }"))
            .set("verify", yaml("{ none: true }"))
    });
    let o = env.once();
    assert_eq!(o.code, 0, "the first tree: {}", o.all());
    env.edit(|t| t.set("restart", restart).set("verify", verify));
}

fn rule(name: &str) -> String {
    format!("groups:\n- name: {name}\n  rules:\n  - record: rk:{name}\n    expr: vector(1)\n")
}

#[test]
fn a_prometheus_rule_files_glob_takes_two_changed_files_in_one_reload() {
    let Some(prom) = require_tool("prometheus") else {
        return;
    };
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let port = free_port();
    let (env, up, live) = world(
        &format!("{{ http: {{ url: \"http://127.0.0.1:{port}/-/reload\" }} }}"),
        &format!(
            "{{ none: true, timeout: 20s, interval: 200ms, metrics: {{ url: \"http://127.0.0.1:{port}/metrics\", success: prometheus_config_last_reload_successful, timestamp: prometheus_config_last_reload_success_timestamp_seconds }} }}"
        ),
    );
    env.set_validate(&format!(
        "{{ command: [sh, -c, \"'{}' check rules \\\"$1\\\"/*.yml\", _, \"{{file}}\"] }}",
        promtool.display()
    ));
    let v1 = BTreeMap::from([
        ("a.yml", rule("a1")),
        ("b.yml", rule("b1")),
        ("c.yml", rule("c1")),
    ]);
    set_tree(&up, &v1);
    // The first tree goes in before Prometheus starts on it (nothing to reload yet).
    first_tree_before_the_service(&env);
    let cfg = env.dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{ evaluation_interval: 1s }}\nrule_files: [\"{}/*.yml\"]\n",
            live.display()
        ),
    )
    .unwrap();
    let svc = Service::start(
        Command::new(prom)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                env.dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .arg("--log.level=warn"),
        env.dir.path(),
        port,
    );
    wait_until(30, "prometheus with three rule files", || {
        let r = svc.get("/api/v1/rules");
        ["rk:a1", "rk:b1", "rk:c1"].iter().all(|n| r.contains(n))
    });
    let pid = svc.pid();
    let reloads = |s: &Service| {
        s.get("/metrics")
            .lines()
            .find(|l| l.starts_with("prometheus_config_last_reload_success_timestamp_seconds "))
            .map(str::to_string)
    };
    let before = reloads(&svc);

    // One change, two files: both live after one reload.
    let v2 = BTreeMap::from([
        ("a.yml", rule("a2")),
        ("b.yml", rule("b2")),
        ("c.yml", rule("c1")),
    ]);
    set_tree(&up, &v2);
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    let r = svc.get("/api/v1/rules");
    assert!(
        r.contains("rk:a2") && r.contains("rk:b2") && r.contains("rk:c1"),
        "{r}"
    );
    assert!(!r.contains("rk:a1") && !r.contains("rk:b1"), "{r}");
    assert_eq!(svc.pid(), pid, "reloaded, not restarted");
    assert_ne!(reloads(&svc), before, "one reload");
    eprintln!("tree: prometheus took a.yml and b.yml in one reload, PID {pid}");

    // One bad file: promtool rejects the tree; nothing changes on disk.
    let link = std::fs::read_link(&live).unwrap();
    let versions = std::fs::read_dir(live.with_file_name(".rules.rk-tree"))
        .unwrap()
        .count();
    let mut v3 = v2.clone();
    v3.insert(
        "b.yml",
        "groups:\n- name: b3\n  rules:\n  - record: rk:b3\n    expr: vector(1\n".into(),
    );
    v3.insert("a.yml", rule("a3"));
    set_tree(&up, &v3);
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    assert!(
        o.all().contains("b.yml"),
        "the refusal names the file: {}",
        o.all()
    );
    assert_eq!(
        std::fs::read_link(&live).unwrap(),
        link,
        "the live link is untouched"
    );
    assert_eq!(
        std::fs::read_dir(live.with_file_name(".rules.rk-tree"))
            .unwrap()
            .count(),
        versions,
        "no new version on disk"
    );
    assert!(svc.get("/api/v1/rules").contains("rk:a2"));
}

#[test]
fn nginx_includes_a_tree_of_server_blocks() {
    let Some(nginx) = require_tool("nginx") else {
        return;
    };
    let port = free_port();
    let dir;
    let (env, up, live) = {
        let env = Env::new();
        dir = env.dir.path().to_path_buf();
        let pid_file = dir.join("nginx.pid");
        let up = dir.join("upstream");
        let live = dir.join("live/conf.d");
        env.write_config(
            &crate::util::file_source(&up),
            &format!("{{ signal: {{ name: HUP, pid_file: \"{}\" }} }}", pid_file.display()),
            &format!(
                "{{ command: [\"{}\", \"{}\", \"{{since}}\"], successes: 1, interval: 100ms, timeout: 10s }}",
                crate::util::repo_root().join("contrib/nginx/reloaded").display(),
                dir.join("error.log").display()
            ),
            "",
        );
        env.edit(|t| {
            t.set("path", live.display().to_string())
                .set("tree", true)
                .set("validate", yaml("{ yaml: false }"))
        });
        (env, up, live)
    };
    let server =
        |path: &str, tag: &str| format!("location /{path} {{ return 200 \"{tag}\\n\"; }}\n");
    let v1 = BTreeMap::from([("a.conf", server("a", "a1")), ("b.conf", server("b", "b1"))]);
    set_tree(&up, &v1);
    first_tree_before_the_service(&env);
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "events {{}}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{port}; include {}/*.conf; }} }}\n",
            live.display()
        ),
    )
    .unwrap();
    let svc = Service::start(
        Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-g")
            .arg(format!(
                "daemon off; pid {}; error_log {} notice;",
                dir.join("nginx.pid").display(),
                dir.join("error.log").display()
            )),
        &dir,
        port,
    );
    wait_until(10, "nginx serving a1", || svc.get("/a").trim() == "a1");
    let pid = svc.pid();
    let v2 = BTreeMap::from([("a.conf", server("a", "a2")), ("b.conf", server("b", "b2"))]);
    set_tree(&up, &v2);
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(
        (
            svc.get("/a").trim().to_string(),
            svc.get("/b").trim().to_string()
        ),
        ("a2".into(), "b2".into())
    );
    assert_eq!(svc.pid(), pid);
    eprintln!("tree: nginx took a.conf and b.conf in one reload, PID {pid}");
}

/// Every file of a version carries its tag: a listing whose files disagree is a mix.
fn tagged(tag: u64, files: usize) -> BTreeMap<String, String> {
    (0..files)
        .map(|i| {
            (
                format!("d{}/f{i}.yml", i % 3),
                format!("tag: {tag}\nfile: {i}\n"),
            )
        })
        .collect()
}

fn write_tree(up: &Path, files: &BTreeMap<String, String>) {
    let next = up.with_extension("next");
    let _ = std::fs::remove_dir_all(&next);
    for (name, text) in files {
        let p = next.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let _ = std::fs::remove_dir_all(up);
    std::fs::rename(&next, up).unwrap();
}

/// The tags of every file under the live path, read as a service that resolves the path once
/// and then reads the directory it names (a version directory never changes once in place).
fn tags(live: &Path) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![std::fs::canonicalize(live).ok()?];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()? {
            let e = e.ok()?;
            if e.file_type().ok()?.is_dir() {
                stack.push(e.path());
            } else {
                let text = std::fs::read_to_string(e.path()).ok()?;
                out.push(text.lines().next()?.to_string());
            }
        }
    }
    Some(out)
}

#[test]
fn a_reader_never_sees_a_mixed_tree_through_200_swaps() {
    let (env, up, live) = world("{ none: true }", "{ none: true }");
    write_tree(&up, &tagged(0, 12));
    assert_eq!(env.once().code, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, mixed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, reads, mixed, live) = (stop.clone(), reads.clone(), mixed.clone(), live.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // A listing that fails (the old version removed under a reader that was
                // still walking it) is no mix; one that completes must be one version.
                if let Some(t) = tags(&live) {
                    reads.fetch_add(1, Ordering::SeqCst);
                    if t.len() != 12 || t.iter().any(|x| *x != t[0]) {
                        mixed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    for i in 1..=200 {
        write_tree(&up, &tagged(i, 12));
        let o = env.once();
        assert_eq!(o.code, 0, "swap {i}: {}", o.all());
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let (reads, mixed) = (reads.load(Ordering::SeqCst), mixed.load(Ordering::SeqCst));
    eprintln!("MEASURED: 200 swaps, {reads} whole-tree reads, {mixed} mixed");
    assert!(reads > 200, "the reader read ({reads})");
    assert_eq!(mixed, 0, "no reader saw a mix of two versions");
}

#[test]
fn once_killed_500_times_leaves_no_mixed_or_partial_tree() {
    let (env, up, live) = world("{ none: true }", "{ none: true }");
    write_tree(&up, &tagged(0, 30));
    assert_eq!(env.once().code, 0);
    // How long a whole `once` takes here: the kills are spread over it.
    write_tree(&up, &tagged(1, 30));
    let t = std::time::Instant::now();
    assert_eq!(env.once().code, 0);
    let mut whole = t.elapsed().as_micros() as u64;
    let mut seen = std::collections::BTreeSet::new();
    for i in 1..=500u64 {
        // A machine busier than when `whole` was measured makes every kill land before the
        // swap: while only one version has been seen, time a whole run again now and then.
        if i % 50 == 0 && seen.len() < 2 {
            write_tree(&up, &tagged(i % 2, 30));
            let t = std::time::Instant::now();
            assert_eq!(env.once().code, 0);
            whole = whole.max(t.elapsed().as_micros() as u64);
        }
        write_tree(&up, &tagged(i % 2, 30));
        let mut child = env.spawn_quiet(&["once"]);
        let at = std::time::Duration::from_micros((i * 7919) % (whole + whole / 5));
        let t = std::time::Instant::now();
        while t.elapsed() < at && matches!(child.try_wait(), Ok(None)) {
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let _ = child.wait();
        let t = tags(&live).unwrap_or_else(|| panic!("kill {i}: no readable live tree"));
        assert_eq!(t.len(), 30, "kill {i}: a partial tree");
        assert!(t.iter().all(|x| *x == t[0]), "kill {i}: a mixed tree {t:?}");
        seen.insert(t[0].clone());
    }
    // The next run finishes or undoes whatever was left, and converges.
    let o = env.once();
    assert!(o.code == 0, "{}", o.all());
    assert_eq!(tags(&live).unwrap()[0], format!("tag: {}", 500 % 2));
    assert!(
        std::fs::read_dir(live.with_file_name(".rules.rk-tree"))
            .unwrap()
            .all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".stage-")),
        "no staging directory left"
    );
    eprintln!("MEASURED: 500 kills over a {whole} us cycle, every live tree whole; versions seen live: {seen:?}");
    assert_eq!(seen.len(), 2, "kills landed before and after swaps");
}

/// The fake forge serves each forge's tree API (Forgejo's and GitHub's trees and blobs,
/// GitLab's tree and raw blobs): a tree target on each kind takes the directory at the commit
/// that last touched it, each blob checked against its id; an unchanged poll is one commits
/// query; a symbolic link is refused by name.
#[test]
fn each_forge_kind_serves_a_tree() {
    for kind in ["forgejo", "github", "gitlab"] {
        let (env, forge) = crate::forge::forge_env(
            &format!("{{ kind: {kind}, base_url: \"BASE\", repo: owner/app, path: rules, ref: main, token_file: \"TOKENFILE\" }}"),
            "tree-token",
            false,
        );
        let live = env.dir.path().join("live/rules");
        env.edit(|t| {
            t.set("path", live.display().to_string())
                .set("tree", true)
                .set("validate", yaml("{}"))
        });
        forge.set_tree(&[
            ("rules/a.yml", "a: 1\n"),
            ("rules/sub/b.yml", "b: 1\n"),
            ("other/x.yml", "x: 1\n"),
        ]);
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert_eq!(
            std::fs::read_to_string(live.join("a.yml")).unwrap(),
            "a: 1\n",
            "{kind}"
        );
        assert_eq!(
            std::fs::read_to_string(live.join("sub/b.yml")).unwrap(),
            "b: 1\n",
            "{kind}"
        );
        assert!(
            !live.join("x.yml").exists() && !live.join("other").exists(),
            "{kind}: only the directory"
        );
        assert_eq!(
            env.state_json()["applied"]["revision"],
            forge.commit().as_str(),
            "{kind}"
        );

        // Unchanged: one request, the commits query.
        forge.clear_log();
        let o = env.once();
        assert!(o.stdout.contains("unchanged"), "{kind}: {}", o.all());
        let asked: Vec<String> = forge.log().iter().map(|r| r.path.clone()).collect();
        assert_eq!(asked.len(), 1, "{kind}: {asked:?}");
        assert!(asked[0].ends_with("/commits"), "{kind}: {asked:?}");

        // Two files change in one commit: both live at once.
        forge.set_tree(&[("rules/a.yml", "a: 2\n"), ("rules/sub/b.yml", "b: 2\n")]);
        let o = env.once();
        assert_eq!(o.code, 0, "{kind}: {}", o.all());
        assert_eq!(
            std::fs::read_to_string(live.join("a.yml")).unwrap(),
            "a: 2\n"
        );
        assert_eq!(
            std::fs::read_to_string(live.join("sub/b.yml")).unwrap(),
            "b: 2\n"
        );
        eprintln!(
            "tree on {kind}: applied at {}, unchanged poll = 1 request",
            forge.commit()
        );
    }
}
