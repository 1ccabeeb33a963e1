//! `rulekeeper history` and `rollback --to`: the last applied versions, and going back to any
//! of them through the whole pipeline with the forge down, held there until `release`, with
//! what it rolled back from quarantined.

use crate::forge::forge_env;
use crate::util::{rules, sha256};

const TOKEN: &str = "history-forge-token";

#[test]
fn history_lists_versions_and_rollback_to_goes_back_with_the_forge_down() {
    let (env, forge) = forge_env(
        "{ kind: forgejo, base_url: \"BASE\", repo: owner/app, path: rules.yaml, token_file: \"TOKENFILE\" }",
        TOKEN,
        true,
    );
    env.start_service();
    let mut commits = Vec::new();
    for v in ["v1", "v2", "v3"] {
        forge.set(&rules(v, "good"));
        let o = env.once();
        assert_eq!(o.code, 0, "{}", o.all());
        commits.push(forge.commit());
    }
    let h = env.rk(&["history", "-t", "ps", "--json"]);
    assert_eq!(h.code, 0, "{}", h.all());
    let list: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    let revs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(revs, commits.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["outcome"] == "applied" && e["kept"] == true && e["restarts"] == 1));
    let table = env.rk(&["history", "-t", "ps"]);
    assert!(table.stdout.contains(&commits[0][..12]), "{}", table.all());

    // The forge is down; go back to v1 by a prefix of its revision.
    forge.fail_with(Some(503));
    let restarts = env.restarts();
    let o = env.rk(&["rollback", "-t", "ps", "--to", &commits[0][..8]]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert!(o.stdout.contains("held there"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.restarts(), restarts + 1, "through restart + verify");
    let st = env.state_json();
    assert_eq!(st["hold"], true, "{st}");
    assert_eq!(
        st["quarantine"]["sha256"],
        sha256(&rules("v3", "good")),
        "{st}"
    );
    // The forge back, the next poll does not bring v3 again (quarantined, and held).
    forge.fail_with(None);
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    let s = env.rk(&["status"]);
    assert!(s.stdout.contains("yes"), "held: {}", s.all());
    // Released: v3 is what it rolled back from, quarantined.
    assert_eq!(env.rk(&["release", "-t", "ps"]).code, 0);
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));

    // Names that do not pick one kept version are refused.
    let o = env.rk(&["rollback", "-t", "ps", "--to", "ffffffffffff"]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.all().contains("no kept version matches"), "{}", o.all());
    let o = env.rk(&[
        "rollback",
        "-t",
        "ps",
        "--to",
        &sha256(&rules("v1", "good"))[..10],
    ]);
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.all().contains("live file already"), "{}", o.all());
}

/// An unreadable history list is moved aside (`history.json.broken`), never overwritten: the
/// next apply starts a new list from the kept versions, and `rollback --to` still reaches them.
#[test]
fn an_unreadable_history_is_moved_aside_not_lost() {
    let (env, up) = crate::util::Env::with_file_source();
    std::fs::write(&up, rules("v1", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    let dir = env.state.join("targets/ps/history");
    let list = dir.join("history.json");
    std::fs::write(&list, b"[{\"at\": ").unwrap();
    let h = env.rk(&["history", "-t", "ps"]);
    assert_ne!(h.code, 0, "{}", h.all());
    assert!(
        h.stderr.contains(&list.display().to_string()),
        "{}",
        h.all()
    );

    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.all().contains("history.json.broken"), "{}", o.all());
    assert_eq!(
        std::fs::read(dir.join("history.json.broken")).unwrap(),
        b"[{\"at\": "
    );
    let h = env.rk(&["history", "-t", "ps", "--json"]);
    assert_eq!(h.code, 0, "{}", h.all());
    let v: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    let shas: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sha256"].as_str().unwrap_or(""))
        .collect();
    let v1 = sha256(&rules("v1", "good"));
    // v1 from its kept content (no revision any more), then the new apply.
    assert_eq!(shas, vec![v1.as_str(), &sha256(&rules("v2", "good"))]);
    assert!(v[0]["revision"].is_null(), "{v}");
    let o = env.rk(&["rollback", "-t", "ps", "--to", &v1[..12]]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
}

/// `history: { keep, max_bytes }` from the config bounds the list and the kept contents.
#[test]
fn history_limits_come_from_the_config() {
    let (env, up) = crate::util::Env::with_file_source();
    env.edit(|t| {
        t.set(
            "history",
            crate::util::yaml("{ keep: 3, max_bytes: 1048576 }"),
        )
    });
    for v in ["v1", "v2", "v3", "v4"] {
        std::fs::write(&up, rules(v, "good")).unwrap();
        assert_eq!(env.once().code, 0);
    }
    let h = env.rk(&["history", "-t", "ps", "--json"]);
    assert_eq!(h.code, 0, "{}", h.all());
    let v: serde_json::Value = serde_json::from_str(&h.stdout).unwrap();
    let shas: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sha256"].as_str().unwrap_or("").to_string())
        .collect();
    let want: Vec<String> = ["v2", "v3", "v4"]
        .iter()
        .map(|t| sha256(&rules(t, "good")))
        .collect();
    assert_eq!(shas, want);
    // Below the target's own max_bytes: refused, naming the key.
    env.edit(|t| t.set_in("history", "max_bytes", 1000));
    let o = env.rk(&["check"]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.all().contains("targets.ps.history.max_bytes"),
        "{}",
        o.all()
    );
}
