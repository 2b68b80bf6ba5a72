//! Any text as a cookie value: never a panic, and what verifies re-encodes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let codec = hipflask::CookieCodec::new(&hipflask::SecretKey::new("secret").unwrap(), &[], u64::MAX);
    if let Ok(d) = codec.decode(data, 1_700_000_000) {
        let again = codec.encode(&d, 1_700_000_000);
        assert!(codec.decode(&again, 1_700_000_000).is_ok());
    }
    let _ = hipflask::CookieCodec::decode_unverified(data);
});
