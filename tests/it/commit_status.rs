//! `commit_status:` against the fake forge's statuses API (tests/it/forge.rs speaks Forgejo's,
//! GitHub's and GitLab's; the real write APIs cannot run here): what one commit receives from
//! a host (pending, then success only after verification, or failure with the reason), each
//! state once, a forge that fails the post never failing the cycle, the fleet case (two hosts
//! on one commit give two contexts, one success and one failure), and an operator's rollback
//! marking the commit it took off.

use crate::forge::{forge_env, FakeForge, STATUS_TOKEN};
use crate::util::{rules, Env};

const TOKEN: &str = "read-only-forge-token";

/// A host: its own managed service and config on `forge`'s `kind` source, with commit
/// statuses under `context` (None: the default).
fn host(kind: &str, context: Option<&str>) -> (Env, FakeForge) {
    let source = match kind {
        "forgejo" => "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
        "github" => "{ kind: github, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
        _ => "{ kind: gitlab, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
    };
    let (env, forge) = forge_env(source, TOKEN, true);
    add_status(&env, context);
    (env, forge)
}

fn add_status(env: &Env, context: Option<&str>) {
    let tf = env.dir.path().join("status-token");
    std::fs::write(&tf, format!("{STATUS_TOKEN}\n")).unwrap();
    let ctx = context
        .map(|c| format!(", context: \"{c}\""))
        .unwrap_or_default();
    let status = format!("{{ token_file: \"{}\"{ctx} }}", tf.display());
    env.edit(|t| t.set("commit_status", crate::util::yaml(&status)));
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// (state, context, description) of each status posted for `commit`.
fn posted(forge: &FakeForge, commit: &str) -> Vec<(String, String, String)> {
    forge
        .statuses()
        .into_iter()
        .filter(|(p, _)| p.ends_with(&format!("/statuses/{commit}")))
        .map(|(_, v)| {
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            let ctx = if v["context"].is_string() {
                s("context")
            } else {
                s("name")
            };
            (s("state"), ctx, s("description"))
        })
        .collect()
}

#[test]
fn a_commit_gets_pending_then_success_after_verification_once() {
    let (env, forge) = host("forgejo", None);
    forge.set(&rules("v1", "good"));
    env.start_service();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    let commit = forge.commit();
    let ctx = format!("rulekeeper/{}/ps", hostname());
    let host = hostname();
    assert_eq!(
        posted(&forge, &commit),
        vec![
            ("pending".into(), ctx.clone(), format!("applying on {host}")),
            (
                "success".into(),
                ctx.clone(),
                format!("live on {host}, verified")
            ),
        ]
    );
    // The Forgejo API, with the write token, never the read one.
    let paths: Vec<String> = forge.statuses().into_iter().map(|(p, _)| p).collect();
    assert!(
        paths
            .iter()
            .all(|p| *p == format!("/api/v1/repos/owner/app/statuses/{commit}")),
        "{paths:?}"
    );
    // An unchanged poll posts nothing.
    let o = env.once();
    assert!(o.stdout.contains("unchanged"), "{}", o.all());
    assert_eq!(posted(&forge, &commit).len(), 2);
    assert!(!o.all().contains(STATUS_TOKEN), "{}", o.all());
}

#[test]
fn a_rolled_back_commit_gets_failure_with_the_reason_once() {
    let (env, forge) = host("github", Some("rulekeeper/web-arm/ps"));
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    forge.set(&rules("bad", "bad"));
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    let bad = forge.commit();
    let got = posted(&forge, &bad);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "pending");
    assert_eq!(got[1].0, "failure");
    assert_eq!(got[1].1, "rulekeeper/web-arm/ps");
    assert!(
        got[1].2.starts_with("rolled back: ") && got[1].2.contains("answered 500"),
        "{got:?}"
    );
    assert!(got[1].2.chars().count() <= 140, "{got:?}");
    // GitHub refuses API requests without a User-Agent: the forge client's is sent.
    let post = forge
        .log()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.contains("/statuses/"))
        .unwrap();
    assert!(
        post.header("user-agent")
            .is_some_and(|u| u.starts_with("rulekeeper/")),
        "{:?}",
        post.headers
    );
    // Upstream keeps serving it: quarantined polls post nothing more for that commit.
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(posted(&forge, &bad).len(), 2);
}

#[test]
fn gitlab_gets_its_own_words_and_a_forge_failing_posts_fails_no_cycle() {
    let (env, forge) = host("gitlab", Some("rk/host-a/ps"));
    forge.fail_statuses(Some(500));
    forge.set(&rules("v1", "good"));
    env.start_service();
    let o = env.once();
    assert_eq!(
        o.code,
        0,
        "the cycle does not depend on the status post: {}",
        o.all()
    );
    assert!(o.stdout.contains("applied"), "{}", o.all());
    assert!(
        o.all().contains("cannot post the commit status"),
        "given up, logged: {}",
        o.all()
    );
    assert!(posted(&forge, &forge.commit()).is_empty());
    // Working again: the next commit's statuses arrive, in GitLab's words (`name`, `failed`).
    forge.fail_statuses(None);
    forge.set(&rules("bad", "bad"));
    assert_eq!(env.once().code, 1);
    let got = posted(&forge, &forge.commit());
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        vec!["pending", "failed"],
        "{got:?}"
    );
    assert!(got.iter().all(|g| g.1 == "rk/host-a/ps"), "{got:?}");
    let paths: Vec<String> = forge.statuses().into_iter().map(|(p, _)| p).collect();
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("/api/v4/projects/owner%2Fapp/statuses/")),
        "{paths:?}"
    );
}

/// Two hosts of a fleet on one commit: two contexts on that commit, one success (its service
/// runs the rules) and one failure (its service cannot: a broken dependency).
#[test]
fn two_hosts_on_one_commit_post_two_contexts() {
    let forge = FakeForge::start(TOKEN);
    let mk = |name: &str| {
        let env = Env::new();
        let tf = env.write_token(TOKEN);
        env.forgejo_config(&forge.base_url(), &tf);
        add_status(&env, Some(&format!("rulekeeper/{name}/ps")));
        env
    };
    let a = mk("web-arm");
    let b = mk("web-x86");
    forge.set(&rules("v1", "good"));
    a.start_service();
    b.start_service();
    assert_eq!(a.once().code, 0);
    assert_eq!(b.once().code, 0);
    // v2 for both; host B's service has lost a dependency and dies on any rules.
    forge.set(&rules("v2", "good"));
    std::fs::write(b.svc.join("broken"), "").unwrap();
    assert_eq!(a.once().code, 0);
    let ob = b.once();
    assert_ne!(ob.code, 0, "{}", ob.all());
    let got = posted(&forge, &forge.commit());
    let last = |ctx: &str| {
        got.iter()
            .rev()
            .find(|g| g.1 == ctx)
            .map(|g| g.0.clone())
            .unwrap_or_default()
    };
    eprintln!("statuses of commit {}:", forge.commit());
    for g in &got {
        eprintln!("  {} {}: {}", g.1, g.0, g.2);
    }
    assert_eq!(last("rulekeeper/web-arm/ps"), "success", "{got:?}");
    assert_eq!(last("rulekeeper/web-x86/ps"), "failure", "{got:?}");
}

/// An operator's `rollback` (or `rollback --to`) takes a commit off this host: that commit's
/// line says so, once; what the rollback put back posts nothing, nor do the quarantined polls
/// after it.
#[test]
fn an_operators_rollback_marks_the_commit_it_took_off() {
    let (env, forge) = host("forgejo", None);
    let host = hostname();
    forge.set(&rules("v1", "good"));
    env.start_service();
    assert_eq!(env.once().code, 0);
    let c1 = forge.commit();
    forge.set(&rules("v2", "good"));
    assert_eq!(env.once().code, 0);
    let c2 = forge.commit();
    assert_eq!(posted(&forge, &c2).len(), 2);

    let o = env.rk(&["rollback", "-t", "ps"]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    let got = posted(&forge, &c2);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[2],
        (
            "failure".to_string(),
            format!("rulekeeper/{host}/ps"),
            format!("rolled back by an operator on {host}")
        )
    );
    assert_eq!(
        posted(&forge, &c1).len(),
        2,
        "the content put back posts nothing"
    );
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(posted(&forge, &c2).len(), 3);

    // `rollback --to` a version from the history: the same for the commit it replaced.
    forge.set(&rules("v3", "good"));
    assert_eq!(env.once().code, 0);
    let c3 = forge.commit();
    let o = env.rk(&["rollback", "-t", "ps", "--to", &c1[..8]]);
    assert_eq!(o.code, 0, "{}", o.all());
    let got = posted(&forge, &c3);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].0, "failure");
    assert_eq!(got[2].2, format!("rolled back by an operator on {host}"));
    assert_eq!(posted(&forge, &c1).len(), 2);
}

/// The daemon stops right after an apply whose `success` is still on its way to a slow forge:
/// SIGTERM waits for it (bounded), so the commit does not stay `pending` for ever.
#[test]
fn a_status_in_flight_is_delivered_when_the_daemon_gets_sigterm() {
    let (env, forge) = host("forgejo", None);
    forge.set(&rules("v1", "good"));
    env.start_service();
    forge.delay_statuses(Some(std::time::Duration::from_secs(2)));
    let d = env.daemon(None);
    // READY=1 comes after the first cycle: v1 applied and verified, its statuses sent.
    d.wait_ready();
    assert_eq!(env.live(), rules("v1", "good"));
    let commit = forge.commit();
    assert!(
        !posted(&forge, &commit)
            .iter()
            .any(|(s, _, _)| s == "success"),
        "the success is still in flight"
    );
    assert_eq!(d.terminate(), 0);
    let got = posted(&forge, &commit);
    assert!(
        got.iter().any(|(s, _, _)| s == "success"),
        "the success reached the commit before the daemon exited: {got:?}\n{}",
        env.daemon_log()
    );
}
