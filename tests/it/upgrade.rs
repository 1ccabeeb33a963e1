//! State across versions: the state a past rulekeeper wrote (`tests/fixtures/state-format*`,
//! kept for good) is read by this one, and a file from a newer rulekeeper is refused, named,
//! and never rewritten.

use std::path::Path;

use crate::util::{self, Env};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A world holding the format-1 fixture: its state, live file and upstream.
fn format1() -> Env {
    let (env, upstream) = Env::with_file_source();
    let fx = util::repo_root().join("tests/fixtures/state-format1");
    copy_dir(&fx.join("targets"), &env.state.join("targets"));
    std::fs::copy(fx.join("live.yaml"), &env.live).unwrap();
    std::fs::copy(fx.join("upstream.yaml"), &upstream).unwrap();
    env.set_validate("{ require_keys: [bucket_definitions] }");
    env
}

const V1: &str = "15a9554e81c6b91402a053642159efbec49d960e14dc0cac94da772a48c257ca";
const V2: &str = "72af3b820f2983caeab7a96066b735b41a223c6ae22ce24d81584bc10f47a6fe";
const BAD: &str = "d093fbc049847dc6c6ab2d612d36b06bb73e59e62bd17b02417f77bd940e20b7";

#[test]
fn the_state_of_format_1_is_read_whole() {
    let env = format1();
    let st = env.rk(&["status", "--json"]);
    assert_eq!(st.code, 0, "{}", st.all());
    let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status --json");
    let t = &v[0];
    assert_eq!(t["applied_sha256"], V2, "{v}");
    assert_eq!(t["quarantined_sha256"], BAD, "{v}");
    assert_eq!(t["held"], true, "{v}");
    let h = env.rk(&["history", "-t", "ps"]);
    assert_eq!(h.code, 0, "{}", h.all());
    assert!(
        h.stdout.contains(&V1[..12]) && h.stdout.contains(&V2[..12]),
        "{}",
        h.stdout
    );

    // the quarantined upstream is still not applied; the hold is still there to release
    let o = env.once();
    assert!(o.stdout.contains("quarantined"), "{}", o.all());
    assert_eq!(util::sha256(&env.live()), V2);
    assert_eq!(env.state_json()["hold"], true);
    assert_eq!(env.rk(&["release", "-t", "ps"]).code, 0);
    assert_eq!(env.state_json()["hold"], false);

    // rolling back to a version the old history kept works, and the files are rewritten in
    // today's formats, still readable
    let r = env.rk(&["rollback", "-t", "ps", "--to", &V1[..12]]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(util::sha256(&env.live()), V1);
    let state = env.state_json();
    assert_eq!(state["format"], 1, "{state}");
    let hist: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.state.join("targets/ps/history/history.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(hist["format"], 2, "{hist}");
    assert_eq!(hist["entries"].as_array().map(Vec::len), Some(3), "{hist}");
    let h = env.rk(&["history", "-t", "ps"]);
    assert_eq!(h.code, 0, "{}", h.all());
}

#[test]
fn a_state_file_from_a_newer_rulekeeper_is_refused_and_left_alone() {
    let env = format1();
    let state = env.state.join("targets/ps/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    v["format"] = 99.into();
    v["something_new"] = "x".into();
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    std::fs::write(&state, &bytes).unwrap();
    let want = format!(
        "state file {} has format 99; this rulekeeper knows formats up to 1",
        state.display()
    );
    for args in [&["once"][..], &["status"], &["rollback", "-t", "ps"]] {
        let o = env.rk(args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.all());
        assert!(o.all().contains(&want), "{args:?}: {}", o.all());
    }
    assert_eq!(std::fs::read(&state).unwrap(), bytes, "never rewritten");

    let hist = env.state.join("targets/ps/history/history.json");
    std::fs::write(
        &state,
        serde_json::to_vec(&serde_json::json!({"format": 1})).unwrap(),
    )
    .unwrap();
    let newer = br#"{"format": 7, "entries": [], "more": true}"#;
    std::fs::write(&hist, newer).unwrap();
    let o = env.rk(&["history", "-t", "ps"]);
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.all()
            .contains("has format 7; this rulekeeper knows formats up to 2"),
        "{}",
        o.all()
    );
    assert_eq!(std::fs::read(&hist).unwrap(), newer);
}

#[test]
fn version_names_the_commit() {
    let env = Env::new();
    let o = env.rk(&["--version"]);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.starts_with(&format!(
            "rulekeeper {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        o.stdout
    );
}
