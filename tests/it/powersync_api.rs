//! `validate.powersync_api` and `verify.powersync_api` against a fake PowerSync admin API
//! (the documented request and response shapes, Bearer token auth).
//!
//! The service itself is tested in `powersync_real.rs` (tests/it/pservice.rs: the real service
//! or the stand-in held to it); the fake stays only
//! for what the real service cannot be made to do on demand: an HTTP error (a 500), a malformed
//! answer, a fatal error in the diagnostics of rules that came up healthy, an unreachable API at
//! a chosen moment. Do not add here what the real service can show.

use crate::forge::FakeForge;
use crate::util::{rules, Env};

const API_TOKEN: &str = "ps-api-token-42";

fn setup(
    validate_extra: &str,
    verify_extra: &str,
    api_port: Option<u16>,
) -> (Env, FakeForge, std::path::PathBuf) {
    let env = Env::new();
    let api = FakeForge::start(API_TOKEN);
    let tf = env.write_token(API_TOKEN);
    let up = env.dir.path().join("upstream.yaml");
    let url = match api_port {
        Some(p) => format!("http://127.0.0.1:{p}"),
        None => api.base_url(),
    };
    let verify = env.verify_http().replace(
        " }",
        &format!(
            ", powersync_api: {{ url: \"{url}\", token_file: \"{}\"{verify_extra} }} }}",
            tf.display()
        ),
    );
    let verify = if verify_extra == "-" {
        env.verify_http()
    } else {
        verify
    };
    env.write_config(
        &crate::util::file_source(&up),
        &env.restart_command(),
        &verify,
        "",
    );
    env.set_validate(&format!(
            "{{ require_keys: [bucket_definitions], powersync_api: {{ url: \"{url}\", token_file: \"{}\", timeout: 2s{validate_extra} }} }}",
            tf.display()
        ));
    api.state.lock().unwrap().ps_live = Some(env.live.clone());
    env.start_service();
    (env, api, up)
}

fn set_validate(api: &FakeForge, errors: &[(&str, &str)]) {
    api.state.lock().unwrap().ps_validate = errors
        .iter()
        .map(|(l, m)| (l.to_string(), m.to_string()))
        .collect();
}

#[test]
fn fatal_error_rejects_without_restart() {
    let (env, api, up) = setup("", "-", None);
    std::fs::write(&up, rules("v1", "good")).unwrap();
    assert_eq!(env.once().code, 0);
    let validate = api
        .log()
        .into_iter()
        .find(|r| r.path == "/api/admin/v1/validate")
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&validate.body).unwrap();
    assert_eq!(body["sync_rules"], rules("v1", "good"));
    assert_eq!(
        validate.header("authorization"),
        Some(format!("Bearer {API_TOKEN}").as_str())
    );

    set_validate(&api, &[("fatal", "Table public.nope not found")]);
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
    assert!(
        o.stdout.contains("Table public.nope not found"),
        "{}",
        o.all()
    );
    assert_eq!(env.restarts(), 1);
    assert_eq!(env.live(), rules("v1", "good"));
}

#[test]
fn warnings_allowed_by_default_rejected_when_asked() {
    let (env, api, up) = setup("", "-", None);
    set_validate(&api, &[("warning", "Unused parameter")]);
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());

    let (env, api, up) = setup(", warnings: reject", "-", None);
    set_validate(&api, &[("warning", "Unused parameter")]);
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 3, "rejected on a fresh host: {}", o.all());
    assert!(o.stdout.contains("Unused parameter"), "{}", o.all());
    assert_eq!(env.restarts(), 0);
}

#[test]
fn service_down_skips_unless_required() {
    let down = crate::util::free_port();
    let (env, _api, up) = setup("", "-", Some(down));
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "skipped with a warning: {}", o.all());
    assert!(o.stderr.contains("skipped"), "{}", o.stderr);

    let (env, _api, up) = setup(", required: true", "-", Some(down));
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 3, "{}", o.all());
    assert!(o.stdout.contains("rejected"), "{}", o.all());
}

#[test]
fn diagnostics_errors_after_restart_roll_back() {
    let (env, api, up) = setup("", "", None);
    std::fs::write(&up, rules("v1", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(api
        .log()
        .iter()
        .any(|r| r.path == "/api/admin/v1/diagnostics"));
    // v2 comes up healthy on the probe but PowerSync reports its rules broken
    api.state.lock().unwrap().ps_diag_bad =
        Some(("# v2".into(), "replication error: bad rules".into()));
    std::fs::write(&up, rules("v2", "good")).unwrap();
    let o = env.once();
    assert_eq!(o.code, 1, "{}", o.all());
    assert!(o.stdout.contains("rolled_back"), "{}", o.all());
    assert!(o.stdout.contains("bad rules"), "{}", o.all());
    assert_eq!(env.live(), rules("v1", "good"));
    assert_eq!(env.restarts(), 3);
}
