//! Flask's signed session cookie (spec section 2): itsdangerous'
//! `URLSafeTimedSerializer` with salt `cookie-session`, HMAC-SHA1 and
//! Flask's tagged JSON, compressed with zlib when that saves two bytes.

use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::json;
use crate::key::{KeyRing, SecretKey};
use crate::value::Dict;

/// The salt Flask's `SecureCookieSessionInterface` binds into every cookie MAC.
pub const COOKIE_SALT: &str = "cookie-session";

/// A cookie longer than this is refused before any work is done on it. No
/// browser stores a cookie over 4 KiB, so anything far larger is hostile.
pub const MAX_COOKIE_VALUE_LEN: usize = 16 * 1024;

/// A compressed payload may inflate to at most this many bytes. A 4 KiB
/// cookie of zlib can otherwise expand about a thousandfold.
pub const MAX_INFLATED_LEN: usize = 256 * 1024;

/// Why a session cookie was rejected. Every case gives an empty session.
///
/// The variants follow itsdangerous' exceptions so that logs read the same
/// as a Flask app's would.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieError {
    /// The cookie value is longer than [`MAX_COOKIE_VALUE_LEN`].
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// No key produced this signature (tampered, wrong key, or malformed).
    BadSignature,
    /// Validly signed, but without a timestamp segment.
    MissingTimestamp,
    /// Validly signed, but the timestamp does not decode.
    MalformedTimestamp,
    /// Signed longer ago than the maximum age (`PERMANENT_SESSION_LIFETIME`).
    Expired {
        /// Seconds since signing.
        age: u64,
        /// The maximum age in seconds.
        max_age: u64,
    },
    /// Signed in the future, e.g. by a server whose clock runs ahead.
    FutureTimestamp {
        /// Seconds ahead of this server's clock.
        ahead: u64,
    },
    /// Validly signed, but the payload cannot be read (bad base64, zlib,
    /// UTF-8 or JSON, or not a dict). Flask answers these with HTTP 500.
    BadPayload {
        /// What was wrong.
        reason: String,
    },
}

impl CookieError {
    /// A short stable name, for metrics labels and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            CookieError::TooLong { .. } => "too_long",
            CookieError::BadSignature => "bad_signature",
            CookieError::MissingTimestamp => "missing_timestamp",
            CookieError::MalformedTimestamp => "malformed_timestamp",
            CookieError::Expired { .. } => "expired",
            CookieError::FutureTimestamp { .. } => "future_timestamp",
            CookieError::BadPayload { .. } => "bad_payload",
        }
    }
}

impl fmt::Display for CookieError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CookieError::TooLong { len } => {
                write!(f, "cookie too long: {len} bytes (limit {MAX_COOKIE_VALUE_LEN})")
            }
            CookieError::BadSignature => f.write_str("bad signature"),
            CookieError::MissingTimestamp => f.write_str("signature timestamp missing"),
            CookieError::MalformedTimestamp => f.write_str("malformed timestamp"),
            CookieError::Expired { age, max_age } => {
                write!(f, "expired: signature age {age} > {max_age} seconds")
            }
            CookieError::FutureTimestamp { ahead } => {
                write!(f, "timestamp in the future: signed {ahead} seconds from now")
            }
            CookieError::BadPayload { reason } => write!(f, "bad payload: {reason}"),
        }
    }
}

impl std::error::Error for CookieError {}

/// Encodes and decodes Flask session cookies.
///
/// ```
/// use hipflask::{CookieCodec, Dict, SecretKey, Value};
///
/// let codec = CookieCodec::new(&SecretKey::new("secret")?, &[], 2_678_400);
/// let mut session = Dict::new();
/// session.insert("username".into(), Value::from("liefyuan"));
/// let cookie = codec.encode(&session, 1_700_000_000);
/// assert_eq!(cookie, "eyJ1c2VybmFtZSI6ImxpZWZ5dWFuIn0.ZVPxAA.30GR1UJkcBpgrU-BXb5LvJTqcQY");
/// assert_eq!(codec.decode(&cookie, 1_700_000_000)?, session);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CookieCodec {
    keys: KeyRing,
    max_age: u64,
}

impl CookieCodec {
    /// A codec that signs with `secret`, also accepts cookies signed with any
    /// of `fallbacks` (Flask's `SECRET_KEY_FALLBACKS`, oldest first), and
    /// rejects cookies older than `max_age` seconds.
    pub fn new(secret: &SecretKey, fallbacks: &[SecretKey], max_age: u64) -> CookieCodec {
        CookieCodec { keys: KeyRing::new(secret, fallbacks, COOKIE_SALT.as_bytes()), max_age }
    }

    /// The maximum age in seconds.
    pub fn max_age(&self) -> u64 {
        self.max_age
    }

    /// The cookie value Flask would write for `session` at Unix time `now`.
    pub fn encode(&self, session: &Dict, now: u64) -> String {
        let mut text = String::with_capacity(128);
        json::write_session(session, &mut text);
        self.sign_payload(text.as_bytes(), now)
    }

    /// Signs an already serialized tagged-JSON payload.
    pub(crate) fn sign_payload(&self, json: &[u8], now: u64) -> String {
        let mut out = String::with_capacity(json.len() * 4 / 3 + 48);
        match compress_if_smaller(json) {
            Some(compressed) => {
                out.push('.');
                URL_SAFE_NO_PAD.encode_string(&compressed, &mut out);
            }
            None => URL_SAFE_NO_PAD.encode_string(json, &mut out),
        }
        out.push('.');
        let ts = now.to_be_bytes();
        let first = ts.iter().position(|b| *b != 0).unwrap_or(ts.len());
        URL_SAFE_NO_PAD.encode_string(&ts[first..], &mut out);
        let signature = self.keys.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        out
    }

    /// Verifies a cookie and reads its session, following Flask's order:
    /// signature, then age, then payload. A JSON `null` payload is an empty
    /// session, as in Flask.
    pub fn decode(&self, cookie: &str, now: u64) -> Result<Dict, CookieError> {
        if cookie.len() > MAX_COOKIE_VALUE_LEN {
            return Err(CookieError::TooLong { len: cookie.len() });
        }
        let (signed, signature) = cookie.rsplit_once('.').ok_or(CookieError::BadSignature)?;
        let signature = b64decode_lenient(signature.as_bytes()).map_err(|_| CookieError::BadSignature)?;
        if !self.keys.verify(signed.as_bytes(), &signature) {
            return Err(CookieError::BadSignature);
        }
        let (payload, ts) = signed.rsplit_once('.').ok_or(CookieError::MissingTimestamp)?;
        let ts = decode_timestamp(ts).ok_or(CookieError::MalformedTimestamp)?;
        if ts > now {
            return Err(CookieError::FutureTimestamp { ahead: ts - now });
        }
        let age = now - ts;
        if age > self.max_age {
            return Err(CookieError::Expired { age, max_age: self.max_age });
        }
        decode_payload(payload)
    }

    /// Reads a cookie's session without checking the signature or age: for
    /// debugging only, never for trusting what a client sent.
    pub fn decode_unverified(cookie: &str) -> Result<Dict, CookieError> {
        let signed = cookie.rsplit_once('.').map_or(cookie, |(s, _)| s);
        let payload = signed.rsplit_once('.').map_or(signed, |(p, _)| p);
        decode_payload(payload)
    }
}

fn bad_payload(reason: impl Into<String>) -> CookieError {
    CookieError::BadPayload { reason: reason.into() }
}

fn decode_payload(segment: &str) -> Result<Dict, CookieError> {
    let (compressed, data) = match segment.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, segment),
    };
    let raw = b64decode_lenient(data.as_bytes()).map_err(bad_payload)?;
    let raw = if compressed { inflate_capped(&raw, MAX_INFLATED_LEN)? } else { raw };
    // Python decodes the payload as strict UTF-8 before parsing.
    std::str::from_utf8(&raw).map_err(|_| bad_payload("payload is not valid UTF-8"))?;
    match json::parse_session(&raw) {
        Ok(Some(dict)) => Ok(dict),
        Ok(None) => Ok(Dict::new()),
        Err(e) => Err(bad_payload(format!("{} at byte {}", e.message, e.offset))),
    }
}

/// itsdangerous' `base64_decode`: drop non-ASCII, pad with `=`, then decode
/// with Python's non-strict URL-safe decoder.
pub(crate) fn b64decode_lenient(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut ascii: Vec<u8> = text.iter().copied().filter(u8::is_ascii).collect();
    let pad = (4 - ascii.len() % 4) % 4;
    ascii.extend(std::iter::repeat_n(b'=', pad));
    json::python_b64decode(&ascii, true)
}

fn decode_timestamp(text: &str) -> Option<u64> {
    let bytes = b64decode_lenient(text.as_bytes()).ok()?;
    if bytes.len() > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

thread_local! {
    // A deflate state costs about 256 KiB of allocations to set up; reusing one
    // per thread keeps cookie writes cheap.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(6), true));
}

/// `zlib.compress(data)` (level 6, zlib wrapper), returned only when it is at
/// least two bytes shorter than `data`, Flask's rule.
fn compress_if_smaller(data: &[u8]) -> Option<Vec<u8>> {
    // Compression can only win when len(C) <= len(B) - 2, so a buffer of that
    // size either holds the finished stream or proves compression does not pay.
    let limit = data.len().checked_sub(2)?;
    let mut out = Vec::with_capacity(limit);
    DEFLATE.with(|cell| {
        let mut z = cell.borrow_mut();
        let status = z.compress_vec(data, &mut out, FlushCompress::Finish);
        let finished = matches!(status, Ok(Status::StreamEnd)) && z.total_in() == data.len() as u64;
        // Reset once, after use, so the state is fresh for the next call: a
        // reset clears a 64 KiB hash table, the main cost of a small encode.
        z.reset();
        finished.then_some(out)
    })
}

/// Inflates a zlib stream, failing once the output would pass `cap` bytes.
pub(crate) fn inflate_capped(data: &[u8], cap: usize) -> Result<Vec<u8>, CookieError> {
    let mut z = Decompress::new(true);
    let mut out = Vec::with_capacity((data.len() * 4).clamp(64, cap));
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(bad_payload(format!("compressed payload inflates past {cap} bytes")));
            }
            // Grow by at least 64 bytes: a buffer that never grows would spin.
            let target = (out.capacity() * 2).max(64).min(cap);
            out.reserve_exact(target - out.len());
        }
        let (before_in, before_out) = (z.total_in(), z.total_out());
        let consumed = before_in as usize;
        let status = z
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Finish)
            .map_err(|_| bad_payload("could not zlib decompress the payload"))?;
        match status {
            Status::StreamEnd => return Ok(out),
            Status::Ok | Status::BufError => {
                // No input taken and no output made while there was room for
                // output: the stream is truncated or cannot go on.
                let stuck = z.total_in() == before_in && z.total_out() == before_out && out.len() < out.capacity();
                if stuck || (z.total_in() as usize == data.len() && out.len() < out.capacity()) {
                    return Err(bad_payload("could not zlib decompress the payload: truncated"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MacKey;

    #[test]
    fn derived_key_matches_spec_example() {
        let d = MacKey::raw_derived(b"secret", b"cookie-session");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "76bf4b286c860f1c747b43f516ab8a80afc83484");
    }

    #[test]
    fn inflate_cap_stops_zip_bombs() {
        let bomb = {
            let mut z = Compress::new(Compression::new(9), true);
            let zeros = vec![0u8; 4 * 1024 * 1024];
            let mut out = Vec::with_capacity(64 * 1024);
            z.compress_vec(&zeros, &mut out, FlushCompress::Finish).unwrap();
            out
        };
        assert!(bomb.len() < 8 * 1024);
        let err = inflate_capped(&bomb, MAX_INFLATED_LEN).unwrap_err();
        assert_eq!(err.reason(), "bad_payload");
    }

    // Found by the signed_payload fuzzer: an empty compressed payload made a
    // zero-capacity buffer that never grew, and the inflate loop spun forever.
    #[test]
    fn empty_compressed_payload_is_an_error_not_a_hang() {
        assert!(inflate_capped(&[], MAX_INFLATED_LEN).is_err());
        assert!(inflate_capped(&[0x78], MAX_INFLATED_LEN).is_err());
        assert!(CookieCodec::decode_unverified("..ZVPxAA.x").is_err());
    }

    #[test]
    fn truncated_zlib_is_an_error() {
        let text = "{\"data\":\"".to_owned() + &"x".repeat(200) + "\"}";
        let c = compress_if_smaller(text.as_bytes()).unwrap();
        assert!(inflate_capped(&c[..c.len() - 3], MAX_INFLATED_LEN).is_err());
        assert!(inflate_capped(&c, MAX_INFLATED_LEN).is_ok());
    }
}
