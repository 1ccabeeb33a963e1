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
