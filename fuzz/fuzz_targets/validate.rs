//! The built-in checks every candidate goes through first (UTF-8, one YAML mapping, required
//! keys), with and without required keys.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rulekeeper::config::Validate;

fuzz_target!(|data: &[u8]| {
    let plain = Validate::default();
    let keyed = Validate {
        require_keys: vec!["bucket_definitions".into(), "streams".into()],
        ..Validate::default()
    };
    let a = rulekeeper::service::validate::builtin(&plain, data);
    let b = rulekeeper::service::validate::builtin(&keyed, data);
    // Required keys only ever narrow what passes.
    assert!(b.is_err() || a.is_ok());
});
