//! `rulekeeper diff`: what the next apply would change (a unified diff and the validators'
//! verdict), with `git diff --exit-code`'s codes, installing nothing.

use crate::forge::forge_env;
use crate::util::{rules, Env};

#[test]
fn diff_shows_the_next_change_and_the_verdict_and_installs_nothing() {
    let (env, up) = Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    let state = std::fs::read(env.state.join("targets/ps/state.json")).unwrap();

    let o = env.rk(&["diff", "-t", "ps"]);
    assert_eq!(o.code, 0, "no change: {}", o.all());
    assert!(o.stdout.contains("no change"), "{}", o.all());

    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.rk(&["diff", "-t", "ps"]);
    assert_eq!(o.code, 1, "a change: {}", o.all());
    assert!(
        o.stdout
            .contains(&format!("--- live {}", env.live.display())),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("+++ upstream"), "{}", o.stdout);
    assert!(
        o.stdout.contains("-# v1") && o.stdout.contains("+# v2"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("validators on upstream: valid"),
        "{}",
        o.stdout
    );

    // The validators' verdict on a broken new side, from a file.
    let broken = env.dir.path().join("broken.yaml");
    std::fs::write(&broken, "other_key: 1\n").unwrap();
    let o = env.rk(&["diff", "-t", "ps", broken.to_str().unwrap()]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stdout.contains("invalid") && o.stdout.contains("require_keys"),
        "{}",
        o.stdout
    );

    // Nothing installed, nothing recorded, nothing left beside the live file.
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(
        std::fs::read(env.state.join("targets/ps/state.json")).unwrap(),
        state
    );
    let beside: Vec<_> = std::fs::read_dir(env.live.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, vec!["sync-rules.yaml".to_string()], "{beside:?}");

    // Errors have the project's own codes.
    let o = env.rk(&["diff", "-t", "ps", "--rev", "abc"]);
    assert_eq!(o.code, 2, "a file source has no revisions: {}", o.all());
    let o = env.rk(&["diff", "-t", "ps", "/nonexistent/file"]);
    assert_eq!(o.code, 5, "{}", o.all());
}

#[test]
fn diff_against_a_revision_of_a_forge() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
        "diff-token",
        false,
    );
    forge.set(&rules("v1", "good"));
    let c1 = forge.commit();
    assert_eq!(env.once().code, 0);
    forge.set(&rules("v2", "good"));
    let o = env.rk(&["diff", "-t", "ps", "--rev", &c1]);
    assert_eq!(o.code, 0, "the live file is c1's: {}", o.all());
    let o = env.rk(&["diff", "-t", "ps"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(
        o.stdout
            .contains(&format!("+++ upstream at {}", forge.commit())),
        "{}",
        o.stdout
    );
    assert_eq!(env.live(), rules("v1", "good"));
}
