//! Flask's signed session cookie (spec section 2): itsdangerous'
//! `URLSafeTimedSerializer` with salt `cookie-session`, HMAC-SHA1 and
//! Flask's tagged JSON, compressed with zlib when that saves two bytes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::json;
use crate::key::{KeyRing, SecretKey};
use crate::seen::IdKeyHasher;
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
    verified: Arc<VerifiedCookies>,
}

/// Cookies this codec verified recently, with what they decoded to.
///
/// A browser sends the same cookie on every request until the session
/// changes, and verifying it (HMAC, base64, zlib, JSON) is most of a read's
/// cost: for a cookie of a few kilobytes, five times what the rest of the
/// request costs. A hit needs the exact bytes of a cookie that passed
/// verification with this codec's keys, so nothing forged or altered can
/// match; the age is checked again on every hit.
///
/// Bounded by count and by bytes: each entry is charged its cookie's length
/// plus its decoded payload's (the JSON a session's entries were built from,
/// a fair measure of their size), a shard holds at most [`CACHE_SHARD_LEN`]
/// entries and [`CACHE_SHARD_BYTES`] charged bytes and starts over when
/// either is reached, and an entry charged more than [`CACHED_ENTRY_MAX`] is
/// never kept (a small cookie can inflate to a large session). That is
/// about 1,300 sessions of 3.5 KB, or 4,096 small ones.
#[derive(Default)]
struct VerifiedCookies {
    shards: [Mutex<Shard>; CACHE_SHARDS],
}

/// Cookie text -> its entry, and the bytes the entries are charged.
/// Hashed by the cookie's last bytes, its signature, instead of SipHash over
/// the whole cookie. Only verified cookies are ever stored, and the hasher is
/// keyed, so no client can choose where entries land.
#[derive(Default)]
struct Shard {
    entries: HashMap<Box<[u8]>, Cached, IdKeyHasher>,
    charged: usize,
}

/// A verified cookie's session, its timestamp, and the bytes it is charged.
struct Cached {
    data: Arc<Dict>,
    ts: u64,
    charge: usize,
}

const CACHE_SHARDS: usize = 8;
const CACHE_SHARD_LEN: usize = 512;
const CACHE_SHARD_BYTES: usize = 1024 * 1024;
const CACHED_ENTRY_MAX: usize = 32 * 1024;

impl VerifiedCookies {
    /// The shard for a cookie: its last character, part of the signature, is
    /// spread well enough and costs nothing to pick.
    fn shard(&self, cookie: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        let i = cookie.last().map_or(0, |b| usize::from(*b) % CACHE_SHARDS);
        self.shards[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, cookie: &[u8]) -> Option<(Arc<Dict>, u64)> {
        self.shard(cookie).entries.get(cookie).map(|c| (Arc::clone(&c.data), c.ts))
    }

    /// Keeps a verified cookie whose payload was `payload_len` bytes decoded.
    fn put(&self, cookie: &[u8], data: &Arc<Dict>, ts: u64, payload_len: usize) {
        let charge = cookie.len().saturating_add(payload_len);
        if charge > CACHED_ENTRY_MAX {
            return;
        }
        let mut shard = self.shard(cookie);
        if shard.entries.len() >= CACHE_SHARD_LEN || shard.charged + charge > CACHE_SHARD_BYTES {
            shard.entries.clear();
            shard.charged = 0;
        }
        let entry = Cached { data: Arc::clone(data), ts, charge };
        // Two requests decoding the same new cookie at once both put it.
        if let Some(old) = shard.entries.insert(cookie.into(), entry) {
            shard.charged -= old.charge;
        }
        shard.charged += charge;
    }

    fn forget(&self, cookie: &[u8]) {
        let mut shard = self.shard(cookie);
        if let Some(old) = shard.entries.remove(cookie) {
            shard.charged -= old.charge;
        }
    }
}

impl fmt::Debug for VerifiedCookies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifiedCookies")
    }
}

impl CookieCodec {
    /// A codec that signs with `secret`, also accepts cookies signed with any
    /// of `fallbacks` (Flask's `SECRET_KEY_FALLBACKS`, oldest first), and
    /// rejects cookies older than `max_age` seconds.
    pub fn new(secret: &SecretKey, fallbacks: &[SecretKey], max_age: u64) -> CookieCodec {
        let keys = KeyRing::new(secret, fallbacks, COOKIE_SALT.as_bytes());
        CookieCodec { keys, max_age, verified: Arc::default() }
    }

    /// The maximum age in seconds.
    pub fn max_age(&self) -> u64 {
        self.max_age
    }

    /// The cookie value Flask would write for `session` at Unix time `now`.
    pub fn encode(&self, session: &Dict, now: u64) -> String {
        self.with_value(session, now, |value| {
            let mut out = Vec::with_capacity(value.len());
            value.write_to(&mut out);
            String::from_utf8(out).expect("base64url and dots are ASCII")
        })
    }

    /// Serializes `session` (compressed when Flask's rule says so) and hands
    /// `f` the cookie value to be signed, whose length is known before its
    /// bytes: the `Set-Cookie` header around it is then allocated once, at its
    /// exact size, and the value written straight into it.
    pub(crate) fn with_value<R>(&self, session: &Dict, now: u64, f: impl FnOnce(&SignedValue<'_>) -> R) -> R {
        // The session's JSON is only an intermediate: one buffer per thread,
        // taken out of its cell for the call (so a call inside `f` finds an
        // empty one and is still correct), instead of an allocation per write.
        let mut text = JSON_SCRATCH.try_with(Cell::take).unwrap_or_default();
        text.clear();
        json::write_session(session, &mut text);
        let compressed = compress_if_smaller(text.as_bytes());
        let ts = now.to_be_bytes();
        let value = SignedValue {
            keys: &self.keys,
            payload: compressed.as_deref().unwrap_or(text.as_bytes()),
            compressed: compressed.is_some(),
            ts_from: ts.iter().position(|b| *b != 0).unwrap_or(ts.len()),
            ts,
        };
        let result = f(&value);
        // A huge session's buffer is not kept for the thread's lifetime.
        if text.capacity() <= JSON_SCRATCH_KEEP {
            let _ = JSON_SCRATCH.try_with(|cell| cell.set(text));
        }
        result
    }

    /// Verifies a cookie and reads its session, following Flask's order:
    /// signature, then age, then payload. A JSON `null` payload is an empty
    /// session, as in Flask.
    pub fn decode(&self, cookie: &str, now: u64) -> Result<Dict, CookieError> {
        self.decode_bytes(cookie.as_bytes(), now).map(Arc::unwrap_or_clone)
    }

    /// [`decode`](CookieCodec::decode) from the header's bytes, sharing the
    /// entries with the cache of verified cookies instead of copying them
    /// out. A cookie verified before is found by its bytes, without checking
    /// first that they are UTF-8 (they were, when it was verified).
    pub(crate) fn decode_bytes(&self, cookie: &[u8], now: u64) -> Result<Arc<Dict>, CookieError> {
        if let Some((data, ts)) = self.verified.get(cookie) {
            return match self.check_age(ts, now) {
                Ok(()) => Ok(data),
                Err(e) => {
                    self.verified.forget(cookie);
                    Err(e)
                }
            };
        }
        let cookie = std::str::from_utf8(cookie).map_err(|_| CookieError::BadSignature)?;
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
        self.check_age(ts, now)?;
        let (data, payload_len) = decode_payload_sized(payload)?;
        let data = Arc::new(data);
        self.verified.put(cookie.as_bytes(), &data, ts, payload_len);
        Ok(data)
    }

    /// Flask's age rule: not from the future, not older than `max_age`.
    fn check_age(&self, ts: u64, now: u64) -> Result<(), CookieError> {
        if ts > now {
            return Err(CookieError::FutureTimestamp { ahead: ts - now });
        }
        let age = now - ts;
        if age > self.max_age {
            return Err(CookieError::Expired { age, max_age: self.max_age });
        }
        Ok(())
    }

    /// Reads a cookie's session without checking the signature or age: for
    /// debugging only, never for trusting what a client sent.
    pub fn decode_unverified(cookie: &str) -> Result<Dict, CookieError> {
        let signed = cookie.rsplit_once('.').map_or(cookie, |(s, _)| s);
        let payload = signed.rsplit_once('.').map_or(signed, |(p, _)| p);
        decode_payload(payload)
    }
}

thread_local! {
    static JSON_SCRATCH: Cell<String> = const { Cell::new(String::new()) };
}

/// The largest JSON buffer kept per thread between cookie writes: a few
/// times a cookie's 4 KiB, and past it the allocation is small next to the
/// work of the encode.
const JSON_SCRATCH_KEEP: usize = 16 * 1024;

/// The length of an HMAC-SHA1 signature in unpadded base64url.
const SIGNATURE_B64_LEN: usize = 27;

/// A cookie value ready to be signed: `payload.timestamp.signature`, with a
/// leading `.` when the payload is compressed (itsdangerous' marker).
pub(crate) struct SignedValue<'a> {
    keys: &'a KeyRing,
    /// The tagged JSON, or its zlib stream.
    payload: &'a [u8],
    compressed: bool,
    /// The timestamp, big-endian, from its first non-zero byte
    /// (itsdangerous' `int_to_bytes`).
    ts: [u8; 8],
    ts_from: usize,
}

impl SignedValue<'_> {
    /// The value's length in bytes, before it is written.
    pub(crate) fn len(&self) -> usize {
        let b64 = |n| base64::encoded_len(n, false).expect("a slice's base64 length fits in usize");
        usize::from(self.compressed)
            + b64(self.payload.len())
            + 1
            + b64(self.ts.len() - self.ts_from)
            + 1
            + SIGNATURE_B64_LEN
    }

    /// Appends the signed value to `out`: exactly [`len`](SignedValue::len)
    /// bytes, all ASCII.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        if self.compressed {
            out.push(b'.');
        }
        push_base64url(out, self.payload);
        out.push(b'.');
        push_base64url(out, &self.ts[self.ts_from..]);
        let signature = self.keys.sign(&out[start..]);
        out.push(b'.');
        push_base64url(out, &signature);
        debug_assert_eq!(out.len() - start, self.len());
    }
}

/// Appends `bytes` in unpadded base64url. The bytes are built as bytes and
/// checked as text once, at the end: `Engine::encode_string` zeroes a 1 KiB
/// buffer and checks it as UTF-8 on each call, which was 450 of the 1,200
/// instructions a cookie's three encodings cost.
pub(crate) fn push_base64url(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), false).expect("a slice's base64 length fits in usize");
    out.resize(start + len, 0);
    let written = URL_SAFE_NO_PAD.encode_slice(bytes, &mut out[start..]);
    debug_assert_eq!(written.ok(), Some(len));
}

fn bad_payload(reason: impl Into<String>) -> CookieError {
    CookieError::BadPayload { reason: reason.into() }
}

fn decode_payload(segment: &str) -> Result<Dict, CookieError> {
    decode_payload_sized(segment).map(|(dict, _)| dict)
}

/// [`decode_payload`], and the length of the JSON it parsed.
fn decode_payload_sized(segment: &str) -> Result<(Dict, usize), CookieError> {
    let (compressed, data) = match segment.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, segment),
    };
    let raw = b64decode_lenient(data.as_bytes()).map_err(bad_payload)?;
    let raw = if compressed { inflate_capped(&raw, MAX_INFLATED_LEN)? } else { raw };
    // Python decodes the payload as strict UTF-8 before parsing.
    std::str::from_utf8(&raw).map_err(|_| bad_payload("payload is not valid UTF-8"))?;
    match json::parse_session(&raw) {
        Ok(Some(dict)) => Ok((dict, raw.len())),
        Ok(None) => Ok((Dict::new(), raw.len())),
        Err(e) => Err(bad_payload(format!("{} at byte {}", e.message, e.offset))),
    }
}

/// itsdangerous' `base64_decode`: drop non-ASCII, pad with `=`, then decode
/// with Python's non-strict URL-safe decoder.
pub(crate) fn b64decode_lenient(text: &[u8]) -> Result<Vec<u8>, &'static str> {
    // What itsdangerous writes, and so nearly every cookie: only URL-safe
    // base64 characters, no padding, a valid length. Python ignores the unused
    // low bits of the last character, and so does this engine.
    let plain = text.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if plain
        && text.len() % 4 != 1
        && let Ok(bytes) = ITSDANGEROUS_B64.decode(text)
    {
        return Ok(bytes);
    }
    let mut ascii: Vec<u8> = text.iter().copied().filter(u8::is_ascii).collect();
    let pad = (4 - ascii.len() % 4) % 4;
    ascii.extend(std::iter::repeat_n(b'=', pad));
    json::python_b64decode(&ascii, true)
}

/// URL-safe base64 without padding, accepting nonzero trailing bits as
/// Python's `base64.urlsafe_b64decode` does.
const ITSDANGEROUS_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

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
    if deflate_cannot_win(data) {
        return None;
    }
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

/// Largest input [`deflate_cannot_win`] reasons about: well inside one deflate
/// block (zlib ends a block after 16383 symbols), and past it zlib is cheap
/// relative to the rest of the work anyway.
const PROOF_MAX_LEN: usize = 1024;

/// Whether no deflate stream zlib could write for `data` is short enough for
/// Flask's rule (zlib's 6 bytes of header and checksum plus deflate data at
/// most `len - 8` bytes), proven from a lower bound on the deflate bits. Only
/// "true" skips zlib, so the bound must never be above what zlib can reach;
/// `tests::skipping_never_changes_the_decision` checks it against zlib.
///
/// Running zlib costs microseconds per write (resetting its state clears a
/// 64 KiB table), the bulk of a small cookie's encode, and small sessions such
/// as `{"visits":2}` can never compress: the bound settles them in nanoseconds.
fn deflate_cannot_win(data: &[u8]) -> bool {
    let n = data.len();
    if n <= 8 {
        return true;
    }
    if n > PROOF_MAX_LEN {
        return false;
    }
    let budget = 8 * (n as u32 - 8);
    if distinct_literals_cannot_win(data, budget) {
        return true;
    }
    // Everything below is sized by the input, not by the alphabet or the
    // limit: this runs on every cookie write, mostly on a few dozen bytes.
    //
    // A byte can be part of a match only if one of the three 3-byte strings
    // holding it occurred earlier (a match copies at least 3 earlier bytes, and
    // every 3-byte string inside a match is such a repeat). Hash collisions only
    // mark more bytes as matchable, which keeps the bound sound.
    let mut seen = [0u64; 64];
    let mut repeat = [0u64; PROOF_MAX_LEN / 64];
    for i in 0..n - 2 {
        let key = u32::from_be_bytes([0, data[i], data[i + 1], data[i + 2]]);
        let slot = (key.wrapping_mul(0x9E37_79B1) >> 20) as usize;
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if seen[word] & bit != 0 {
            repeat[i / 64] |= 1 << (i % 64);
        }
        seen[word] |= bit;
    }
    let is_repeat = |i: usize| repeat[i / 64] >> (i % 64) & 1 != 0;
    // Bytes that must be sent as literals, by value, and which values occur.
    let mut counts = [0u16; 256];
    let mut symbols = [0u8; 256];
    let mut distinct = 0;
    let mut literals = 0u32;
    // Fixed Huffman: 3 header bits, 8 or 9 bits a literal, 7 bits end of block.
    let mut fixed = 10u32;
    for (p, &byte) in data.iter().enumerate() {
        let matchable = is_repeat(p) || (p >= 1 && is_repeat(p - 1)) || (p >= 2 && is_repeat(p - 2));
        if !matchable {
            let count = &mut counts[usize::from(byte)];
            if *count == 0 {
                symbols[distinct] = byte;
                distinct += 1;
            }
            *count += 1;
            literals += 1;
            fixed += if byte < 144 { 8 } else { 9 };
        }
    }
    if fixed <= budget {
        return false;
    }
    let symbols = &mut symbols[..distinct];
    symbols.sort_unstable();
    // Dynamic Huffman: 17 header bits, at least 4 code-length codes of 3 bits,
    // at least one distance code length (1 bit), the end-of-block code (1 bit),
    // the literal/length code lengths, then the literals themselves, which no
    // prefix code sends in fewer bits than their empirical entropy.
    let header = 17 + 12 + 1 + 1 + code_lengths_bits(symbols);
    // Every value but the most frequent one has at most half the literals, so
    // costs at least a bit each: a bound that settles most inputs without a log.
    let most = symbols.iter().map(|&b| u32::from(counts[usize::from(b)])).max().unwrap_or(0);
    if header + (literals - most) > budget + 1 {
        return true;
    }
    let total = f64::from(literals);
    let mut dynamic = f64::from(header);
    for &b in symbols.iter() {
        let c = f64::from(counts[usize::from(b)]);
        dynamic += c * (total / c).log2();
    }
    // Stored blocks always take n + 5 bytes or more, so they never win. Keep a
    // margin of one bit for floating-point rounding in the entropy.
    dynamic - 1.0 > f64::from(budget)
}

/// The first test of [`deflate_cannot_win`], which settles the small
/// sessions of most writes (`{"visits":12}`, a user id) in a few dozen
/// instructions where the whole proof takes over a thousand: the first
/// occurrence of each byte value can only be sent as a literal (a match
/// copies earlier bytes, and none of them has that value), so a stream
/// sends at least one literal per distinct value, and the end of block.
///
/// Fixed Huffman codes take 10 bits of header and end of block and at least
/// 8 bits a literal. A dynamic block (zlib writes one block for inputs this
/// small) takes 30 bits of header at least (as in `deflate_cannot_win`), its
/// literal code lengths (one run at best: see [`code_lengths_bits`]), and
/// at least once each of `k` = distinct + 1 codes of a prefix code, whose
/// lengths sum to at least what a balanced tree of `k` leaves gives.
fn distinct_literals_cannot_win(data: &[u8], budget: u32) -> bool {
    let mut seen = [0u64; 4];
    for &byte in data {
        seen[usize::from(byte >> 6)] |= 1 << (byte & 63);
    }
    let distinct: u32 = seen.iter().map(|w| w.count_ones()).sum();
    let fixed = 10 + 8 * distinct;
    let k = distinct + 1;
    let depth = k.ilog2();
    let leaves = k * depth + 2 * (k - (1 << depth));
    let dynamic = 30 + 1 + distinct.div_ceil(2) + leaves;
    fixed.min(dynamic) > budget
}

/// The fewest bits that can send the code lengths of literals 0..=256 when
/// the `used` byte values (sorted, distinct) and end-of-block (256) have
/// nonzero lengths: a run of `m` nonzero lengths takes at least
/// `1 + (m - 1) / 2` bits (one explicit length, then at best code 16
/// repeating it six times for 3 bits), a run of `g` zeros at least
/// `min(g, 4)` bits (single zeros of 1 bit, or codes 17/18 with 3 or 7 extra
/// bits; code 16 cannot start a zero run after a nonzero length).
fn code_lengths_bits(used: &[u8]) -> u32 {
    let nonzero_run = |m: u32| 1 + (m - 1).div_ceil(2);
    let (mut bits, mut next, mut run) = (0u32, 0usize, 0u32);
    for symbol in used.iter().map(|&b| usize::from(b)).chain([256]) {
        if symbol > next {
            if run > 0 {
                bits += nonzero_run(run);
                run = 0;
            }
            bits += ((symbol - next) as u32).min(4);
        }
        run += 1;
        next = symbol + 1;
    }
    bits + nonzero_run(run)
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

    /// Flask's decision made with zlib alone.
    fn zlib_wins(data: &[u8]) -> bool {
        let mut z = Compress::new(Compression::new(6), true);
        let mut out = Vec::with_capacity(data.len() * 2 + 64);
        z.compress_vec(data, &mut out, FlushCompress::Finish).unwrap();
        out.len() + 2 <= data.len()
    }

    /// A seeded xorshift: `next(m)` is a number below `m`.
    fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |m| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        }
    }

    /// Inputs shaped like sessions and like what breaks bounds: JSON with
    /// repeated keys, short alphabets, runs, random bytes, all lengths to 1100.
    fn samples() -> Vec<Vec<u8>> {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut out = Vec::new();
        for case in 0..30_000u64 {
            let len = next(1100) as usize + 1;
            let data: Vec<u8> = match case % 5 {
                // A small alphabet: skewed entropy, many repeats.
                0 => (0..len).map(|_| b"ab"[next(2) as usize]).collect(),
                1 => (0..len).map(|_| (next(95) + 32) as u8).collect(),
                2 => (0..len).map(|_| next(256) as u8).collect(),
                3 => {
                    let alphabet = next(20) + 2;
                    (0..len).map(|_| (b'a' as u64 + next(alphabet)) as u8).collect()
                }
                _ => {
                    let mut json = String::from("{");
                    while json.len() < len {
                        let key = next(1000);
                        json.push_str(&format!("\"k{key}\":{},", next(1 << 20)));
                    }
                    json.push('}');
                    json.into_bytes()
                }
            };
            out.push(data);
        }
        for n in 0..40 {
            out.push(format!("{{\"visits\":{n}}}").into_bytes());
            out.push(vec![b'a'; n * 7]);
        }
        out
    }

    #[test]
    fn skipping_never_changes_the_decision() {
        let mut skipped = 0;
        for data in samples() {
            if deflate_cannot_win(&data) {
                skipped += 1;
                assert!(!zlib_wins(&data), "the bound skipped a payload zlib compresses: {data:?}");
            }
        }
        // The bound must also be useful, or the fast path is dead code.
        assert!(skipped > 1000, "only {skipped} skipped");
        assert!(deflate_cannot_win(br#"{"visits":2}"#));
        assert!(deflate_cannot_win(br#"{"_permanent":true,"visits":12}"#));
    }

    /// The distinct-literals rule alone, on the short inputs it is for,
    /// including the repetitive ones zlib does shrink: it must never skip a
    /// payload zlib compresses by Flask's rule, and must settle small
    /// sessions by itself.
    #[test]
    fn the_distinct_literals_rule_never_skips_what_zlib_compresses() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        let (mut skipped, mut compressible) = (0, 0);
        for case in 0..40_000u64 {
            let len = 9 + next(if case % 2 == 0 { 40 } else { 150 }) as usize;
            let alphabet = 1 + next(if case % 4 == 0 { 8 } else { 90 });
            // Random values, some starting with a run of one value, some ending
            // with a copy of their start: what zlib needs to win on short input.
            let mut data: Vec<u8> = (0..len).map(|_| (b' ' as u64 + next(alphabet)) as u8).collect();
            if case % 5 == 0 {
                let run = next(len as u64) as usize;
                data[..run].fill(b'x');
            }
            if case % 3 == 0 {
                let copy = next(len as u64 / 2 + 1) as usize;
                data.copy_within(..copy, len - copy);
            }
            let wins = zlib_wins(&data);
            compressible += usize::from(wins);
            if distinct_literals_cannot_win(&data, 8 * (len as u32 - 8)) {
                skipped += 1;
                assert!(!wins, "the rule skipped a payload zlib compresses: {data:?}");
            }
        }
        assert!(skipped > 5_000 && compressible > 5_000, "{skipped} skipped, {compressible} compressible");
        for visits in (0..2_000_000).step_by(997) {
            let json = format!("{{\"visits\":{visits}}}");
            assert!(distinct_literals_cannot_win(json.as_bytes(), 8 * (json.len() as u32 - 8)), "{json}");
        }
    }

    /// The code-length bound walked symbol by symbol over all 257, the plain
    /// reading of its rule, against the sparse walk the encoder uses.
    #[test]
    fn sparse_code_lengths_bound_matches_the_dense_walk() {
        let dense = |used: &[u8]| {
            let is_used = |s: usize| s == 256 || used.contains(&(s as u8));
            let (mut bits, mut s) = (0u32, 0usize);
            while s <= 256 {
                let (start, nonzero) = (s, is_used(s));
                while s <= 256 && is_used(s) == nonzero {
                    s += 1;
                }
                let run = (s - start) as u32;
                bits += if nonzero { 1 + (run - 1).div_ceil(2) } else { run.min(4) };
            }
            bits
        };
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for case in 0..5_000 {
            let mut used: Vec<u8> = (0..case % 300)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Mostly a narrow band, so runs and short gaps both occur.
                    if state.is_multiple_of(3) { (state >> 8) as u8 } else { 90 + (state >> 8) as u8 % 40 }
                })
                .collect();
            used.sort_unstable();
            used.dedup();
            assert_eq!(code_lengths_bits(&used), dense(&used), "{used:?}");
        }
        assert_eq!(code_lengths_bits(&[]), dense(&[]));
        assert_eq!(code_lengths_bits(&[255]), dense(&[255]));
        assert_eq!(code_lengths_bits(&[0, 1, 2, 250]), dense(&[0, 1, 2, 250]));
    }

    #[test]
    fn verified_cookies_are_remembered_but_rules_still_hold() {
        let codec = CookieCodec::new(&SecretKey::new("secret").unwrap(), &[], 100);
        let other = CookieCodec::new(&SecretKey::new("other").unwrap(), &[], 100);
        let mut session = Dict::new();
        session.insert("user".into(), crate::Value::from("alice"));
        let cookie = codec.encode(&session, 1000);
        assert!(codec.verified.get(cookie.as_bytes()).is_none(), "encoding alone caches nothing");
        assert_eq!(codec.decode(&cookie, 1000).unwrap(), session);
        assert!(codec.verified.get(cookie.as_bytes()).is_some());
        // A hit is still subject to the age rules, in both directions.
        assert_eq!(codec.decode(&cookie, 1100).unwrap(), session);
        assert!(matches!(codec.decode(&cookie, 999), Err(CookieError::FutureTimestamp { ahead: 1 })));
        assert!(matches!(codec.decode(&cookie, 1101), Err(CookieError::Expired { age: 101, .. })));
        assert!(codec.verified.get(cookie.as_bytes()).is_none(), "an expired cookie is forgotten");
        // Another key never sees this codec's cache; altered bytes never hit it.
        assert_eq!(codec.decode(&cookie, 1000).unwrap(), session);
        assert!(matches!(other.decode(&cookie, 1000), Err(CookieError::BadSignature)));
        let mut altered = cookie.clone().into_bytes();
        altered[2] ^= 1;
        assert!(codec.decode(std::str::from_utf8(&altered).unwrap(), 1000).is_err());
        // Bounded by count: a shard that fills up starts over.
        for i in 0..(CACHE_SHARDS * CACHE_SHARD_LEN * 2) {
            let mut s = Dict::new();
            s.insert("i".into(), crate::Value::from(i as i64));
            codec.decode(&codec.encode(&s, 1000), 1000).unwrap();
        }
        let cached: usize = codec.verified.shards.iter().map(|s| s.lock().unwrap().entries.len()).sum();
        assert!(cached <= CACHE_SHARDS * CACHE_SHARD_LEN, "{cached}");
    }

    /// The per-thread JSON buffer: a value signed inside another's callback
    /// (which finds the buffer taken) is still right, both values match
    /// `encode` made apart, and a huge session's buffer is not kept.
    #[test]
    fn the_shared_json_buffer_survives_nesting_and_drops_huge_sessions() {
        let codec = CookieCodec::new(&SecretKey::new("secret").unwrap(), &[], 100);
        let session = |text: String| Dict::from([("user".to_owned(), crate::Value::from(text))]);
        let (outer, inner) = (session("alice".into()), session(letters(3000, 7)));
        let write = |v: &SignedValue<'_>| {
            let mut out = Vec::new();
            v.write_to(&mut out);
            assert_eq!(out.len(), v.len());
            String::from_utf8(out).unwrap()
        };
        let (a, b) = codec.with_value(&outer, 1000, |v| (write(v), codec.with_value(&inner, 1000, write)));
        assert_eq!(codec.decode(&a, 1000).unwrap(), outer);
        assert_eq!(codec.decode(&b, 1000).unwrap(), inner);
        assert_eq!((codec.encode(&outer, 1000), codec.encode(&inner, 1000)), (a, b));

        let kept = || JSON_SCRATCH.with(|cell| cell.replace(String::new()).capacity());
        codec.encode(&session("x".repeat(JSON_SCRATCH_KEEP * 2)), 1000);
        assert!(kept() <= JSON_SCRATCH_KEEP, "a huge session's buffer was kept");
        codec.encode(&outer, 1000);
        assert!(kept() > 0, "a small session's buffer was not kept");
    }

    /// Letters that zlib shrinks only somewhat, as a real session's text.
    fn letters(n: usize, seed: u64) -> String {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    }

    /// Cookies of a few kilobytes are kept too, but never past a shard's byte
    /// budget, and a session too large for an entry is not kept at all,
    /// however small its (compressed) cookie.
    #[test]
    fn verified_cookies_are_bounded_by_bytes() {
        let codec = CookieCodec::new(&SecretKey::new("secret").unwrap(), &[], 100);
        let session = |pad: String| -> Dict { [("pad".to_owned(), crate::Value::from(pad))].into() };
        let big = codec.encode(&session(letters(3500, 7)), 1000);
        assert!(big.len() > 2000 && big.starts_with('.'), "a compressed cookie of {} bytes", big.len());
        assert_eq!(codec.decode(&big, 1000).unwrap(), session(letters(3500, 7)));
        assert!(codec.verified.get(big.as_bytes()).is_some(), "a 3.5 KB session is kept");

        let bomb = codec.encode(&session("a".repeat(CACHED_ENTRY_MAX)), 1000);
        assert!(bomb.len() < 1024, "zlib shrinks it to {} bytes", bomb.len());
        assert_eq!(codec.decode(&bomb, 1000).unwrap(), session("a".repeat(CACHED_ENTRY_MAX)));
        assert!(codec.verified.get(bomb.as_bytes()).is_none(), "what it inflates to is charged");

        for seed in 0..3000 {
            let cookie = codec.encode(&session(letters(3500, seed * 2 + 11)), 1000);
            codec.decode(&cookie, 1000).unwrap();
        }
        let mut total = 0;
        for shard in &codec.verified.shards {
            let shard = shard.lock().unwrap();
            let charged: usize = shard.entries.values().map(|c| c.charge).sum();
            assert_eq!(shard.charged, charged, "the running count matches the entries");
            assert!(shard.charged <= CACHE_SHARD_BYTES, "{}", shard.charged);
            total += shard.entries.len();
        }
        assert!(total > 100, "big cookies are still cached: {total}");
        // Forgetting and putting the same cookie twice keep the count right.
        codec.verified.forget(big.as_bytes());
        let data = Arc::new(session(String::new()));
        codec.verified.put(b"x.y.z", &data, 1000, 10);
        codec.verified.put(b"x.y.z", &data, 1000, 10);
        let shard = codec.verified.shard(b"x.y.z");
        assert_eq!(shard.charged, shard.entries.values().map(|c| c.charge).sum::<usize>());
    }

    /// Appended after whatever the buffer holds, every length's padding
    /// case, the same characters as the engine's own string encoding.
    #[test]
    fn appended_base64url_matches_the_engine() {
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for len in 0..70 {
            let mut out = b"prefix.".to_vec();
            push_base64url(&mut out, &bytes[..len]);
            let want = format!("prefix.{}", URL_SAFE_NO_PAD.encode(&bytes[..len]));
            assert_eq!(String::from_utf8(out).unwrap(), want, "length {len}");
        }
    }

    #[test]
    fn base64_fast_path_agrees_with_python_rules() {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..64 {
            for _ in 0..200 {
                let text: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        alphabet[(state >> 58) as usize]
                    })
                    .collect();
                let mut padded = text.clone();
                padded.extend(std::iter::repeat_n(b'=', (4 - len % 4) % 4));
                assert_eq!(b64decode_lenient(&text), json::python_b64decode(&padded, true), "{text:?}");
            }
        }
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
