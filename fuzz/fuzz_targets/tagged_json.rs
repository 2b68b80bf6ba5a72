//! Any text as Flask's tagged JSON: what parses writes back and parses the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(d) = hipflask::parse_tagged_json(data) {
        let text = hipflask::to_tagged_json(&d);
        let again = hipflask::parse_tagged_json(&text).expect("our own output parses");
        assert_eq!(hipflask::to_tagged_json(&again), text);
    }
});
