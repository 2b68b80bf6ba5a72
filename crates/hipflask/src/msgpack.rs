//! Flask-Session's storage format (spec 6.5): msgpack as msgspec writes it,
//! so a Flask app with Flask-Session and a hipflask app share stored sessions.
//!
//! Flask-Session's format is lossier than Flask's cookies: tuples come back
//! as lists, UUIDs and `Markup` as strings, datetimes keep only their time
//! (as a msgpack timestamp). Integers beyond 64 bits cannot be stored.

use crate::error::{Error, ErrorKind};
use crate::value::{DateTime, Dict, Value};

const MAX_DEPTH: usize = crate::json::MAX_DEPTH;

fn encode_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Encode, message.into())
}

fn decode_error(message: &str, at: usize) -> Error {
    Error::new(ErrorKind::Decode, format!("bad msgpack session: {message} at byte {at}"))
}

/// Encodes a session as Flask-Session stores it (keys in sorted order; any
/// order reads the same in Python).
///
/// ```
/// let d = hipflask::parse_tagged_json(r#"{"_permanent":true,"username":"liefyuan"}"#)?;
/// let bytes = hipflask::to_msgpack(&d)?;
/// assert_eq!(bytes[0], 0x82); // a map of two entries
/// assert_eq!(hipflask::from_stored_session(&bytes)?, d);
/// # Ok::<(), hipflask::Error>(())
/// ```
pub fn to_msgpack(dict: &Dict) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64);
    write_map(dict, &mut out)?;
    Ok(out)
}

/// Encodes one value (used by stores that merge changes key by key).
pub fn value_to_msgpack(value: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    write_value(value, out, 0)
}

/// Encodes a string as [`value_to_msgpack`] encodes `Value::Str` (a
/// session key, for stores that merge key by key), without copying it into
/// a `Value` first.
///
/// ```
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// hipflask::str_to_msgpack("visits", &mut a)?;
/// hipflask::value_to_msgpack(&hipflask::Value::from("visits"), &mut b)?;
/// assert_eq!(a, b);
/// assert_eq!(a[0], 0xa6); // a string of six bytes
/// # Ok::<(), hipflask::Error>(())
/// ```
pub fn str_to_msgpack(text: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    write_str(text, out)
}

fn write_len(
    out: &mut Vec<u8>,
    len: usize,
    fix: Option<(u8, usize)>,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) -> Result<(), Error> {
    match (fix, m8) {
        (Some((base, max)), _) if len <= max => out.push(base | len as u8),
        (_, Some(marker)) if len <= 0xff => out.extend_from_slice(&[marker, len as u8]),
        _ if len <= 0xffff => {
            out.push(m16);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            let len = u32::try_from(len).map_err(|_| encode_error("value too large for msgpack"))?;
            out.push(m32);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    write_len(out, s.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn write_int(i: i64, out: &mut Vec<u8>) {
    if i >= 0 {
        write_uint(i as u64, out);
    } else if i >= -32 {
        out.push(i as i8 as u8);
    } else if i >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, i as i8 as u8]);
    } else if i >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_uint(u: u64, out: &mut Vec<u8>) {
    if u <= 0x7f {
        out.push(u as u8);
    } else if u <= 0xff {
        out.extend_from_slice(&[0xcc, u as u8]);
    } else if u <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

fn write_map(dict: &Dict, out: &mut Vec<u8>) -> Result<(), Error> {
    write_map_at(dict, out, 0)
}

fn write_map_at(dict: &Dict, out: &mut Vec<u8>, depth: usize) -> Result<(), Error> {
    write_len(out, dict.len(), Some((0x80, 15)), None, 0xde, 0xdf)?;
    for (k, v) in dict {
        write_str(k, out)?;
        write_value(v, out, depth + 1)?;
    }
    Ok(())
}

fn write_value(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(encode_error("session value nested too deeply"));
    }
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => write_int(*i, out),
        Value::BigInt(b) => match b.as_str().parse::<u64>() {
            Ok(u) => write_uint(u, out),
            Err(_) => {
                return Err(encode_error(format!(
                    "the integer {b} does not fit in 64 bits, which Flask-Session's msgpack format requires"
                )));
            }
        },
        Value::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) | Value::Markup(s) => write_str(s, out)?,
        Value::Bytes(b) => {
            write_len(out, b.len(), None, Some(0xc4), 0xc5, 0xc6)?;
            out.extend_from_slice(b);
        }
        Value::List(items) | Value::Tuple(items) => {
            write_len(out, items.len(), Some((0x90, 15)), None, 0xdc, 0xdd)?;
            for item in items {
                write_value(item, out, depth + 1)?;
            }
        }
        Value::Dict(d) => write_map_at(d, out, depth)?,
        Value::Uuid(u) => write_str(&u.hyphenated().to_string(), out)?,
        Value::DateTime(d) => {
            let secs = d.unix();
            if (0..1 << 32).contains(&secs) {
                out.extend_from_slice(&[0xd6, 0xff]);
                out.extend_from_slice(&(secs as u32).to_be_bytes());
            } else if (0..1 << 34).contains(&secs) {
                out.extend_from_slice(&[0xd7, 0xff]);
                out.extend_from_slice(&(secs as u64).to_be_bytes());
            } else {
                out.extend_from_slice(&[0xc7, 12, 0xff, 0, 0, 0, 0]);
                out.extend_from_slice(&secs.to_be_bytes());
            }
        }
    }
    Ok(())
}

/// Reads a session stored by Flask-Session or hipflask: msgpack first, then
/// JSON, as Flask-Session tries them. (Pickle, its last resort, is never
/// read: unpickling stored data would run code.)
pub fn from_stored_session(bytes: &[u8]) -> Result<Dict, Error> {
    match from_msgpack(bytes) {
        Ok(d) => Ok(d),
        Err(e) if bytes.first() == Some(&b'{') => crate::parse_tagged_json(std::str::from_utf8(bytes).map_err(|_| e)?),
        Err(e) => Err(e),
    }
}

/// Decodes a msgpack session (a map at the top).
pub fn from_msgpack(bytes: &[u8]) -> Result<Dict, Error> {
    let mut r = Reader { b: bytes, pos: 0 };
    let value = r.value(0)?;
    if r.pos != bytes.len() {
        return Err(decode_error("extra bytes after the session", r.pos));
    }
    match value {
        Value::Dict(d) => Ok(d),
        _ => Err(decode_error("the session is not a map", 0)),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| decode_error("truncated", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, Error> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn text(&mut self, n: usize) -> Result<String, Error> {
        let at = self.pos;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| decode_error("invalid UTF-8 in a string", at))
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(decode_error("nested too deeply", self.pos));
        }
        let at = self.pos;
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => Value::Int(i64::from(m)),
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth)?,
            0xa0..=0xbf => Value::Str(self.text(usize::from(m & 0x1f))?),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.be(1 << (m - 0xc4))? as usize;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xc7..=0xc9 => {
                let n = self.be(1 << (m - 0xc7))? as usize;
                self.ext(n, at)?
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Value::from(self.be(1 << (m - 0xcc))?),
            0xd0 => Value::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Value::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Value::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Value::Int(self.be(8)? as i64),
            0xd4..=0xd8 => self.ext(1 << (m - 0xd4), at)?,
            0xd9..=0xdb => {
                let n = self.be(1 << (m - 0xd9))? as usize;
                Value::Str(self.text(n)?)
            }
            0xdc | 0xdd => {
                let n = self.be(2 << (m - 0xdc))? as usize;
                self.array(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.be(2 << (m - 0xde))? as usize;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::Int(i64::from(m as i8)),
            0xc1 => return Err(decode_error("reserved marker 0xc1", at)),
        })
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, Error> {
        // Each item takes at least one byte: a length beyond the input is a lie.
        if n > self.b.len() - self.pos {
            return Err(decode_error("array longer than the input", self.pos));
        }
        (0..n).map(|_| self.value(depth + 1)).collect::<Result<_, _>>().map(Value::List)
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, Error> {
        if n > self.b.len() - self.pos {
            return Err(decode_error("map longer than the input", self.pos));
        }
        let mut d = Dict::new();
        for _ in 0..n {
            let at = self.pos;
            let key = match self.value(depth + 1)? {
                Value::Str(s) => s,
                // Python code can store int keys; they read back as text, as in Flask's cookies.
                Value::Int(i) => i.to_string(),
                Value::BigInt(b) => b.to_string(),
                _ => return Err(decode_error("a map key that is not a string or integer", at)),
            };
            let value = self.value(depth + 1)?;
            d.insert(key, value);
        }
        Ok(Value::Dict(d))
    }

    fn ext(&mut self, n: usize, at: usize) -> Result<Value, Error> {
        let kind = self.byte()? as i8;
        let data = self.take(n)?;
        if kind != -1 {
            return Err(decode_error("an extension type other than the timestamp", at));
        }
        let be = |s: &[u8]| s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let secs: i64 = match n {
            4 => be(data) as i64,
            8 => (be(data) & ((1 << 34) - 1)) as i64,
            12 => be(&data[4..]) as i64,
            _ => return Err(decode_error("a timestamp of unexpected size", at)),
        };
        // Sub-second precision is dropped, as Flask's cookies drop it.
        DateTime::from_unix(secs)
            .map(Value::DateTime)
            .ok_or_else(|| decode_error("a timestamp outside years 1-9999", at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::BigInt;

    #[test]
    fn big_unsigned_ints_round_trip_and_bigger_ones_are_refused() {
        let d: Dict = [("u".to_owned(), Value::BigInt(BigInt::parse("18446744073709551615").unwrap()))].into();
        assert_eq!(from_msgpack(&to_msgpack(&d).unwrap()).unwrap(), d);
        let too_big: Dict = [("u".to_owned(), Value::BigInt(BigInt::parse("18446744073709551616").unwrap()))].into();
        assert_eq!(to_msgpack(&too_big).unwrap_err().kind(), ErrorKind::Encode);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\xc1",
            b"\xdf\xff\xff\xff\xff",
            b"\xdd\xff\xff\xff\xff",
            b"\x81\xa1",
            b"\xc6\xff\xff\xff\xff",
            b"\x81\xc0\xc0",
            b"\xd4\x01\x00",
        ] {
            assert!(from_msgpack(bad).is_err(), "{bad:?}");
        }
        let deep = [[0x81u8, 0xa1, b'a']; 300].concat();
        assert!(from_msgpack(&deep).is_err());
    }
}
