//! Server-side session ids as Flask-Session makes them (spec section 6).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::key::{MacKey, SecretKey};

/// The salt Flask-Session binds into a signed session id.
pub const SID_SALT: &str = "flask-session";

/// A session id: 32 random bytes from the OS CSPRNG in unpadded base64url,
/// 43 characters, as `secrets.token_urlsafe(32)` makes them.
///
/// Ids only come from [`generate`](SessionId::generate) or a successful
/// [`parse`](SessionId::parse), so a storage key or query never sees text a
/// client made up.
///
/// ```
/// use hipflask::SessionId;
/// let id = SessionId::generate();
/// assert_eq!(id.as_str().len(), 43);
/// assert_eq!(SessionId::parse(id.as_str()), Some(id));
/// assert_eq!(SessionId::parse("../../etc/passwd"), None);
/// ```
///
/// The id is held inline, not on the heap: copying one costs no allocation,
/// and a map keyed by ids compares them without following a pointer.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; SESSION_ID_LEN]);

/// Hashes the first eight characters only. Ids are 256 random bits, so 48
/// of them (eight base64 characters) already spread a table evenly; the
/// hasher's key still stops anyone from predicting buckets, and the rest of
/// the id is compared on a hit. The whole id cost SipHash three times as long.
impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// Each byte's base64url value, or `INVALID`: a table, because every
/// server-side request parses an id.
const SEXTETS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xFF;

/// Characters in an id made from 32 bytes.
pub const SESSION_ID_LEN: usize = 43;

impl SessionId {
    /// A new random id.
    pub fn generate() -> SessionId {
        let mut id = [0u8; SESSION_ID_LEN];
        // 32 bytes always encode to exactly 43 characters.
        let written = URL_SAFE_NO_PAD.encode_slice(crate::random_bytes::<32>(), &mut id);
        debug_assert_eq!(written.ok(), Some(SESSION_ID_LEN));
        SessionId(id)
    }

    /// Validates text as an id: exactly 43 characters of `[A-Za-z0-9_-]`
    /// whose last one carries no stray bits (so each id has one spelling).
    pub fn parse(text: &str) -> Option<SessionId> {
        SessionId::parse_bytes(text.as_bytes())
    }

    /// [`parse`](SessionId::parse) on a cookie's raw bytes: the alphabet
    /// check admits ASCII only, so no UTF-8 check is needed first.
    pub(crate) fn parse_bytes(bytes: &[u8]) -> Option<SessionId> {
        // 43 characters carry 258 bits for 32 bytes: the last character's two
        // low bits must be zero. Checked on the character, without decoding.
        let ok = bytes.len() == SESSION_ID_LEN
            && bytes.iter().all(|&b| SEXTETS[usize::from(b)] != INVALID)
            && SEXTETS[usize::from(bytes[SESSION_ID_LEN - 1])] & 0b11 == 0;
        let mut id = [0u8; SESSION_ID_LEN];
        if ok {
            id.copy_from_slice(bytes);
        }
        ok.then_some(SessionId(id))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        // Only `generate` and `parse` make ids, and both hold base64url
        // characters only, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Shows only a prefix: a whole id in a log is a stolen session.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}..)", self.as_str().get(..6).unwrap_or_default())
    }
}

/// Signs and verifies session ids as Flask-Session's `SESSION_USE_SIGNER`
/// does: `sid + "." + b64url(HMAC-SHA1(HMAC-SHA1(SECRET_KEY, "flask-session"), sid))`,
/// with no timestamp.
///
/// ```
/// use hipflask::{SecretKey, SidSigner};
/// let signer = SidSigner::new(&SecretKey::new("secret")?);
/// let signed = signer.sign("BTzuHkEBfgAVnvdLzueR0JuUnsVucD3WrUTpbyhVl70");
/// assert_eq!(signed, "BTzuHkEBfgAVnvdLzueR0JuUnsVucD3WrUTpbyhVl70.bp_hyIiqexbxcDYA5EnctJ8FI4A");
/// assert_eq!(signer.unsign(&signed), Some("BTzuHkEBfgAVnvdLzueR0JuUnsVucD3WrUTpbyhVl70"));
/// # Ok::<(), hipflask::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SidSigner {
    key: MacKey,
}

impl SidSigner {
    /// A signer keyed by `SECRET_KEY` (Flask-Session ignores the fallbacks).
    pub fn new(secret: &SecretKey) -> SidSigner {
        SidSigner { key: secret.derive(SID_SALT.as_bytes()) }
    }

    /// The signed cookie value of `sid`.
    pub fn sign(&self, sid: &str) -> String {
        let mut out = Vec::with_capacity(sid.len() + 28);
        out.extend_from_slice(sid.as_bytes());
        out.push(b'.');
        crate::cookie::push_base64url(&mut out, &self.key.sign(sid.as_bytes()));
        String::from_utf8(out).expect("an id, a dot and base64url are ASCII")
    }

    /// The id inside a signed value, or `None` when the signature does not
    /// match (decoded with itsdangerous' leniency, compared in constant time).
    pub fn unsign<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (sid, sig) = value.rsplit_once('.')?;
        let sig = crate::cookie::b64decode_lenient(sig.as_bytes()).ok()?;
        self.key.verify(sid.as_bytes(), &sig).then_some(sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn generated_ids_are_distinct_canonical_and_round_trip() {
        let ids: Vec<SessionId> = (0..10_000).map(|_| SessionId::generate()).collect();
        let set: HashSet<&SessionId> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        for id in &ids {
            assert_eq!(id.as_str().len(), SESSION_ID_LEN);
            assert_eq!(SessionId::parse(id.as_str()).as_ref(), Some(id));
            assert!(set.contains(&SessionId::parse(id.as_str()).unwrap()), "found by a parsed copy");
        }
    }

    #[test]
    fn ids_sharing_a_prefix_hash_alike_but_stay_different_keys() {
        let a = SessionId::parse("AAAAAAAAbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbA").unwrap();
        let b = SessionId::parse("AAAAAAAAccccccccccccccccccccccccccccccccccA").unwrap();
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        let set: HashSet<SessionId> = [a.clone(), b.clone()].into();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&a) && set.contains(&b));
        assert_eq!(format!("{a:?}"), "SessionId(AAAAAA..)", "logs show a prefix only");
    }

    #[test]
    fn raw_cookie_bytes_outside_the_id_alphabet_are_never_an_id() {
        let id = SessionId::generate();
        assert_eq!(SessionId::parse_bytes(id.as_str().as_bytes()), Some(id.clone()));
        for bad in [0x80u8, 0xC3, 0xFF, b'=', b'+', b'/', 0] {
            let mut bytes = id.as_str().as_bytes().to_vec();
            bytes[7] = bad;
            assert_eq!(SessionId::parse_bytes(&bytes), None, "byte {bad:#x}");
        }
    }

    proptest::proptest! {
        /// Bytes straight from a cookie give the id that checking them as
        /// UTF-8 first would: none for anything but a canonical id.
        #[test]
        fn parsing_bytes_agrees_with_parsing_text(
            // Mostly id characters (a few percent of cases are canonical
            // ids), sometimes any byte, sometimes a length off by one.
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    19 => proptest::sample::select(b"AQgw_-09azAZ".to_vec()),
                    1 => proptest::arbitrary::any::<u8>(),
                ],
                SESSION_ID_LEN + 1,
            ),
            len in proptest::prop_oneof![8 => proptest::strategy::Just(SESSION_ID_LEN), 1 => 42..=44usize],
        ) {
            let bytes = &bytes[..len];
            let via_text = std::str::from_utf8(bytes).ok().and_then(SessionId::parse);
            proptest::prop_assert_eq!(SessionId::parse_bytes(bytes), via_text);
        }
    }
}
