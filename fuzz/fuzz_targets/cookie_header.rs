//! Any bytes as a request's Cookie header: the session opens or is empty,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = hipflask::Config::builder().secret_key("secret").build().unwrap();
    let session = config.open([data]);
    let _ = config.save(&session);
});
