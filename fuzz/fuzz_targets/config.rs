//! The config parser and every check after it: any text gives a config or an error naming
//! the file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = rulekeeper::config::parse(text, std::path::Path::new("fuzz.yaml")) {
            assert!(e.to_string().starts_with("fuzz.yaml"), "{e}");
        }
    }
});
