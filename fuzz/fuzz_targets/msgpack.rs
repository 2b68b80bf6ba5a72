//! Any bytes as a stored Flask-Session value: never a panic; what decodes
//! and fits the format encodes and decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = hipflask::from_stored_session(data) {
        if let Ok(bytes) = hipflask::to_msgpack(&d) {
            let _ = hipflask::from_msgpack(&bytes).expect("our own output decodes");
        }
    }
});
