//! Secret keys and itsdangerous' `hmac` key derivation.

use std::fmt;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq as _;

use crate::Error;

pub(crate) type HmacSha1 = Hmac<Sha1>;

/// A secret key (`SECRET_KEY` or one of `SECRET_KEY_FALLBACKS`).
///
/// Its bytes never appear in `Debug` output or logs. A `&str` key is used as
/// its UTF-8 bytes, as Flask does.
///
/// ```
/// use hipflask::SecretKey;
/// let key = SecretKey::new("a long random secret").unwrap();
/// assert_eq!(format!("{key:?}"), "SecretKey(..)");
/// assert!(SecretKey::new("").is_err());
/// ```
#[derive(Clone)]
pub struct SecretKey(Box<[u8]>);

impl SecretKey {
    /// A key from text or raw bytes. Fails on an empty key, which in Flask
    /// disables sessions altogether; here it is a configuration error instead.
    pub fn new(key: impl AsRef<[u8]>) -> Result<SecretKey, Error> {
        let bytes = key.as_ref();
        if bytes.is_empty() {
            return Err(Error::config(
                "SECRET_KEY is empty: set it to a long random value, e.g. the output of \
                 `python -c 'import secrets; print(secrets.token_hex())'`",
            ));
        }
        Ok(SecretKey(bytes.into()))
    }

    /// 32 random bytes from the operating system, for apps that have no key
    /// configured and accept that sessions end when the process does.
    pub fn generate() -> SecretKey {
        SecretKey(crate::random_bytes::<32>().to_vec().into())
    }

    /// Derives the signing key for `salt` with itsdangerous' `hmac` method:
    /// `HMAC-SHA1(key = secret, message = salt)`.
    pub(crate) fn derive(&self, salt: &[u8]) -> MacKey {
        let mut mac = HmacSha1::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(salt);
        let derived = mac.finalize().into_bytes();
        MacKey(HmacSha1::new_from_slice(&derived).expect("HMAC takes keys of any length"))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A derived signing key with its HMAC state already keyed, so signing costs
/// one clone instead of re-hashing the key each time.
#[derive(Clone)]
pub(crate) struct MacKey(HmacSha1);

impl MacKey {
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 20] {
        let mut mac = self.0.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison of a candidate signature of any length.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let expected = self.sign(message);
        signature.len() == expected.len() && bool::from(expected.ct_eq(signature))
    }

    #[cfg(test)]
    pub(crate) fn raw_derived(secret: &[u8], salt: &[u8]) -> [u8; 20] {
        let mut mac = HmacSha1::new_from_slice(secret).expect("any length");
        mac.update(salt);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// Signing with the current key, verification with it and then the fallbacks.
#[derive(Clone, Debug)]
pub(crate) struct KeyRing {
    /// `keys[0]` signs; all verify, current first, then fallbacks newest first.
    keys: Vec<MacKey>,
}

impl KeyRing {
    pub(crate) fn new(current: &SecretKey, fallbacks: &[SecretKey], salt: &[u8]) -> KeyRing {
        let mut keys = Vec::with_capacity(1 + fallbacks.len());
        keys.push(current.derive(salt));
        keys.extend(fallbacks.iter().rev().map(|k| k.derive(salt)));
        KeyRing { keys }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 20] {
        self.keys[0].sign(message)
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // Each comparison is constant-time; stopping at the first match reveals
        // only which key matched, which is not secret.
        self.keys.iter().any(|k| k.verify(message, signature))
    }
}
