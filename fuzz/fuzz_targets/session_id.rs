//! Any text as a session id or a signed id: only valid ids get through.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Some(id) = hipflask::SessionId::parse(data) {
        assert_eq!(id.as_str().len(), hipflask::SESSION_ID_LEN);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    let signer = hipflask::SidSigner::new(&hipflask::SecretKey::new("secret").unwrap());
    if let Some(sid) = signer.unsign(data) {
        assert!(data.starts_with(sid));
    }
});
