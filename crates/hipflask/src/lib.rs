//! Flask's session system for Rust, byte-compatible with Flask.
//!
//! This crate is the vocabulary: the dict-like [`Session`], the [`Value`]s
//! it holds (Flask's tagged types included), [`Config`] with Flask's setting
//! names and defaults, and the signed-cookie [`CookieCodec`]. It knows no
//! HTTP framework and no runtime; `hipflask-tower` puts it in front of
//! tower and axum services.
//!
//! ```
//! use hipflask::{Config, Session};
//!
//! let config = Config::builder().secret_key("secret").build()?;
//! // A request without a cookie: a new, empty session.
//! let session = config.open([]);
//! session.insert("username", "liefyuan")?;
//! let outcome = config.save(&session)?;
//! let set_cookie = outcome.set_cookie.unwrap();
//! assert!(set_cookie.starts_with("session=eyJ1c2VybmFtZSI6ImxpZWZ5dWFuIn0."));
//! assert!(set_cookie.ends_with("; HttpOnly; Path=/"));
//!
//! // The next request sends it back.
//! let cookie = &set_cookie["session=".len()..set_cookie.find(';').unwrap()];
//! let next = config.open([format!("session={cookie}").as_bytes()]);
//! assert_eq!(next.get::<String>("username").as_deref(), Some("liefyuan"));
//! # Ok::<(), hipflask::Error>(())
//! ```
//!
//! # Compatibility
//!
//! Cookies are Flask 3.1's exactly: itsdangerous' HMAC-SHA1 signature with
//! salt `cookie-session`, the timestamp, zlib compression whenever it saves
//! two bytes (with the same deflater as CPython, so even compressed cookies
//! are byte-identical), and Flask's tagged JSON with sorted keys, Python's
//! float `repr` and `\uXXXX` escaping. A Flask app and a hipflask app with the
//! same `SECRET_KEY` read and write each other's sessions, flashed messages
//! included.
//!
//! # Security
//!
//! - Cookies are signed, not encrypted: the user can read the session but
//!   not change it. Keep secrets out of it, or use a server-side store.
//! - Signatures are compared in constant time; keys never appear in `Debug`
//!   output; an empty or missing key is an error when the config is built.
//! - Any cookie that fails verification, is older than
//!   `PERMANENT_SESSION_LIFETIME`, is signed in the future, or cannot be
//!   read gives an empty session and a `tracing` warning. Where Flask answers
//!   HTTP 500 (a validly signed but unreadable payload) hipflask also starts
//!   an empty session.
//! - A compressed payload inflates to at most [`MAX_INFLATED_LEN`] bytes,
//!   JSON nesting is limited, and over-long cookies are refused unread.
//! - Flask's defaults are kept (`Secure` off, no `SameSite`) so a migrating
//!   app behaves the same; set `SESSION_COOKIE_SECURE` and
//!   `SESSION_COOKIE_SAMESITE=Lax` for sites served over HTTPS.
//!
//! # Concurrency
//!
//! A [`Session`] is a cheap handle (`Clone + Send + Sync`) to one request's
//! data. With the cookie backend, two concurrent requests each send back
//! their own whole cookie and the browser keeps the last one: a change made
//! by the other request is lost. That is inherent to cookies (Flask behaves
//! the same); server-side stores avoid it.
//!
//! # Limitations
//!
//! - Python-only values (sets, dataclasses, `Decimal`) cannot come from
//!   Rust; Flask itself stores `date` and `Decimal` as plain strings.
//! - A string holding a lone UTF-16 surrogate, which Python allows, cannot be
//!   held by a Rust `String`: such a cookie reads as an empty session.
//! - Dict keys that Python code wrote as integers come back as strings, as in
//!   Flask.
//! - Cookie domains are IDNA-encoded with lowercasing and Punycode, without
//!   the full Nameprep tables.

mod config;
mod cookie;
mod date;
mod de;
mod error;
mod header;
mod json;
mod key;
mod memory;
mod msgpack;
mod punycode;
mod seen;
mod ser;
mod server;
mod session;
mod sid;
mod store;
mod thread;
mod value;

pub use config::{Clock, Config, ConfigBuilder, DEFAULT_LIFETIME, DEFAULT_MAX_COOKIE_SIZE, SameSite, SaveOutcome};
pub use cookie::{COOKIE_SALT, CookieCodec, CookieError, MAX_COOKIE_VALUE_LEN, MAX_INFLATED_LEN};
pub use de::from_value;
pub use error::{Error, ErrorKind};
pub use key::SecretKey;
pub use memory::MemoryStore;
pub use msgpack::{from_msgpack, from_stored_session, str_to_msgpack, to_msgpack, value_to_msgpack};
pub use seen::{IdKeyHasher, LastSeen, TailHasher};
pub use ser::to_value;
pub use server::{LoadSession, SaveSession};
pub use session::{FLASHES_KEY, Flash, PERMANENT_KEY, Session};
pub use sid::{SESSION_ID_LEN, SID_SALT, SessionId, SidSigner};
pub use store::{
    Changes, ConflictPolicy, Record, Store, StoreFuture, Update, Updated, apply_changes, sql_like_prefix, user_of,
};
pub use thread::StoreThread;
pub use value::{BigInt, DateTime, Dict, Value};

/// Parses Flask's tagged JSON text (what Flask's session serializer writes)
/// into a session dict.
///
/// ```
/// let d = hipflask::parse_tagged_json(r#"{"cart":{" t":[1,2]},"user":"Tom"}"#)?;
/// assert_eq!(hipflask::to_tagged_json(&d), r#"{"cart":{" t":[1,2]},"user":"Tom"}"#);
/// # Ok::<(), hipflask::Error>(())
/// ```
pub fn parse_tagged_json(text: &str) -> Result<Dict, Error> {
    match json::parse_session(text.as_bytes()) {
        Ok(d) => Ok(d.unwrap_or_default()),
        Err(e) => Err(Error::new(ErrorKind::Decode, format!("{} at byte {}", e.message, e.offset))),
    }
}

/// Writes a session dict as Flask's tagged JSON text, byte for byte.
pub fn to_tagged_json(dict: &Dict) -> String {
    json::session_to_string(dict)
}

/// `N` random bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // Without an OS random source no secure session id or key can exist; this
    // is unrecoverable and happens only on exotic, misconfigured systems.
    getrandom::fill(&mut buf).expect("the operating system's random source is unavailable");
    buf
}
