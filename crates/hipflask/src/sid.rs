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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(Box<str>);

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
        SessionId(URL_SAFE_NO_PAD.encode(crate::random_bytes::<32>()).into())
    }

    /// Validates text as an id: exactly 43 characters of `[A-Za-z0-9_-]`
    /// whose last one carries no stray bits (so each id has one spelling).
    pub fn parse(text: &str) -> Option<SessionId> {
        // 43 characters carry 258 bits for 32 bytes: the last character's two
        // low bits must be zero. Checked on the character, without decoding.
        let bytes = text.as_bytes();
        let ok = bytes.len() == SESSION_ID_LEN
            && bytes.iter().all(|&b| SEXTETS[usize::from(b)] != INVALID)
            && SEXTETS[usize::from(bytes[SESSION_ID_LEN - 1])] & 0b11 == 0;
        ok.then(|| SessionId(text.into()))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Shows only a prefix: a whole id in a log is a stolen session.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}..)", &self.0[..6])
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
        let mut out = String::with_capacity(sid.len() + 28);
        out.push_str(sid);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(self.key.sign(sid.as_bytes()), &mut out);
        out
    }

    /// The id inside a signed value, or `None` when the signature does not
    /// match (decoded with itsdangerous' leniency, compared in constant time).
    pub fn unsign<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (sid, sig) = value.rsplit_once('.')?;
        let sig = crate::cookie::b64decode_lenient(sig.as_bytes()).ok()?;
        self.key.verify(sid.as_bytes(), &sig).then_some(sid)
    }
}
