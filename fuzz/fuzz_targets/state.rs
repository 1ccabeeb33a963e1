//! `state.json` loading: any bytes parse to a state or an error; a parsed state serialises
//! back and parses to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = rulekeeper::store::state::parse(data) {
        let again = serde_json::to_vec(&st).expect("a parsed state serialises");
        let back = rulekeeper::store::state::parse(&again).expect("and parses back");
        assert_eq!(st, back);
    }
});
