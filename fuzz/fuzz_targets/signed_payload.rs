//! Any bytes as a payload *signed with the known key*, plain or compressed,
//! so the fuzzer gets past the signature into base64, zlib (with its size
//! cap), UTF-8, JSON and untagging.
#![no_main]
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha1::Sha1;

fn sign(signed: &str) -> String {
    let mut derive = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
    derive.update(b"cookie-session");
    let key = derive.finalize().into_bytes();
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).unwrap();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fuzz_target!(|input: (bool, &[u8])| {
    let (compressed, data) = input;
    let payload = URL_SAFE_NO_PAD.encode(data);
    let signed = if compressed { format!(".{payload}.ZVPxAA") } else { format!("{payload}.ZVPxAA") };
    let codec = hipflask::CookieCodec::new(&hipflask::SecretKey::new("secret").unwrap(), &[], u64::MAX);
    let _ = codec.decode(&sign(&signed), 1_700_000_000);
});
