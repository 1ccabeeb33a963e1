//! `rulekeeper status` and `GET /status` rendered from an arbitrary state (or the error of
//! one that does not parse): JSON and the table, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn target() -> &'static rulekeeper::config::Target {
    static CFG: OnceLock<rulekeeper::config::Config> = OnceLock::new();
    let cfg = CFG.get_or_init(|| {
        rulekeeper::config::parse(
            "targets:\n  ps:\n    source: { kind: file, path: /nonexistent/up.yaml }\n    path: /nonexistent/live.yaml\n    restart: { none: true }\n    verify: { none: true }\n",
            std::path::Path::new("fuzz.yaml"),
        )
        .expect("the fixed config parses")
    });
    &cfg.targets["ps"]
}

fuzz_target!(|data: &[u8]| {
    let state = rulekeeper::store::state::parse(data).map_err(|e| rulekeeper::store::state::StateError::Corrupt {
        path: "state.json".into(),
        message: e.to_string(),
    });
    let live = data
        .first()
        .map(|b| rulekeeper::Sha256::from(format!("{b:064x}")));
    let s = rulekeeper::observe::status::of(target(), state, live, data.len() % 2 == 0);
    let json = serde_json::to_vec(&s).expect("status serialises");
    assert!(!json.is_empty());
    let table = rulekeeper::observe::status::table(&[s]);
    assert!(table.starts_with("TARGET"));
});
