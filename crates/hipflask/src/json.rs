//! Flask's tagged JSON (spec section 3), both ways, in one pass each.
//!
//! Writing produces exactly `json.dumps(tag(v), separators=(",", ":"),
//! sort_keys=True, ensure_ascii=True)`; reading accepts what `json.loads`
//! accepts (including `NaN`/`Infinity`) and untags bottom-up while parsing,
//! so no intermediate tree is built.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::value::{BigInt, DateTime, Dict, Value};

/// Flask's registered tag names. Every one starts with a space, so ordinary
/// keys never collide unless a dict is built to look like a tag.
const TAGS: [&str; 6] = [" di", " t", " b", " m", " u", " d"];

/// Deeper nesting than this is refused. Python's own recursion limit refuses
/// a little under 1000 levels; a lower bound keeps our stack use small on any
/// runtime's worker threads.
pub(crate) const MAX_DEPTH: usize = 256;

pub(crate) fn is_tag(key: &str) -> bool {
    TAGS.contains(&key)
}

/// Whether a dict would read back as a tag: Flask then wraps it in `" di"`.
pub(crate) fn looks_like_tag(d: &Dict) -> bool {
    d.len() == 1 && d.keys().next().is_some_and(|k| is_tag(k))
}

/// Writes a whole session dict.
pub(crate) fn write_session(dict: &Dict, out: &mut String) {
    write_dict(dict, out);
}

/// The tagged JSON text of a session dict.
pub(crate) fn session_to_string(dict: &Dict) -> String {
    let mut out = String::with_capacity(64);
    write_session(dict, &mut out);
    out
}

pub(crate) fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(b) => out.push_str(b.as_str()),
        Value::Float(f) => write_float(*f, out),
        Value::Str(s) => write_str(s, out),
        Value::List(items) => write_list(items, out),
        Value::Tuple(items) => {
            out.push_str("{\" t\":");
            write_list(items, out);
            out.push('}');
        }
        Value::Dict(d) => write_dict(d, out),
        Value::Bytes(b) => {
            out.push_str("{\" b\":\"");
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push_str("\"}");
        }
        Value::Markup(s) => {
            out.push_str("{\" m\":");
            write_str(s, out);
            out.push('}');
        }
        Value::Uuid(u) => {
            out.push_str("{\" u\":\"");
            let _ = write!(out, "{}", u.simple());
            out.push_str("\"}");
        }
        Value::DateTime(d) => {
            out.push_str("{\" d\":\"");
            crate::date::write_http_date(out, d.unix());
            out.push_str("\"}");
        }
    }
}

fn write_list(items: &[Value], out: &mut String) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(item, out);
    }
    out.push(']');
}

fn write_dict(dict: &Dict, out: &mut String) {
    // A one-key dict whose key is a tag name would read back as that tag, so
    // Flask wraps it in " di" with the key suffixed by "__" (rule 1 of 3.2).
    if let Some((k, v)) = dict.iter().next().filter(|_| looks_like_tag(dict)) {
        out.push_str("{\" di\":{");
        let mut key = String::with_capacity(k.len() + 2);
        key.push_str(k);
        key.push_str("__");
        write_str(&key, out);
        out.push(':');
        write_value(v, out);
        out.push_str("}}");
        return;
    }
    out.push('{');
    for (i, (k, v)) in dict.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(k, out);
        out.push(':');
        write_value(v, out);
    }
    out.push('}');
}

/// Python's `ensure_ascii` string escaping.
pub(crate) fn write_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            continue;
        }
        if b >= 0x80 && !s.is_char_boundary(i) {
            continue;
        }
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                // A control character, DEL, or the first byte of a non-ASCII char.
                let c = s[i..].chars().next().unwrap_or('\u{fffd}');
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
                start = i + c.len_utf8();
                continue;
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Python's float `repr`, plus `json`'s spelling of the non-finite values.
pub(crate) fn write_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // `{:e}` gives the shortest digits that round-trip, like Python's repr.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// Why a payload that passed the signature check could not be read. Flask
/// answers these with HTTP 500; hipflask starts an empty session instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) message: &'static str,
    pub(crate) offset: usize,
}

type Parsed<T> = Result<T, ParseError>;

/// Parses a session payload. `Ok(None)` is JSON `null`, which Flask loads as
/// an empty session; any other non-object is an error.
pub(crate) fn parse_session(text: &[u8]) -> Parsed<Option<Dict>> {
    match parse_value(text)? {
        Value::Dict(d) => Ok(Some(d)),
        Value::Null => Ok(None),
        _ => Err(ParseError { message: "the session payload is not a JSON object", offset: 0 }),
    }
}

/// Parses one tagged JSON value, the whole text.
pub(crate) fn parse_value(text: &[u8]) -> Parsed<Value> {
    let mut p = Parser { s: text, pos: 0, depth: 0 };
    p.skip_ws();
    let value = p.value()?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("extra data after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, message: &'static str) -> ParseError {
        ParseError { message, offset: self.pos }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Parsed<Value> {
        Ok(self.value_with_first_key()?.0)
    }

    /// A value, plus the first key in document order when it was a plain
    /// object: `" di"` needs it, and a `BTreeMap` forgets it.
    fn value_with_first_key(&mut self) -> Parsed<(Value, Option<String>)> {
        match self.s.get(self.pos) {
            None => Err(self.err("unexpected end of JSON")),
            Some(b'{') => self.object(),
            Some(b'[') => {
                self.enter()?;
                self.pos += 1;
                let items = self.array_items()?;
                self.depth -= 1;
                Ok((Value::List(items), None))
            }
            Some(b'"') => Ok((Value::Str(self.string()?), None)),
            Some(b'n') if self.eat(b"null") => Ok((Value::Null, None)),
            Some(b't') if self.eat(b"true") => Ok((Value::Bool(true), None)),
            Some(b'f') if self.eat(b"false") => Ok((Value::Bool(false), None)),
            Some(b'N') if self.eat(b"NaN") => Ok((Value::Float(f64::NAN), None)),
            Some(b'I') if self.eat(b"Infinity") => Ok((Value::Float(f64::INFINITY), None)),
            Some(b'-') if self.s[self.pos..].starts_with(b"-Infinity") => {
                self.pos += 9;
                Ok((Value::Float(f64::NEG_INFINITY), None))
            }
            Some(b'-' | b'0'..=b'9') => Ok((self.number()?, None)),
            Some(_) => Err(self.err("expected a JSON value")),
        }
    }

    fn enter(&mut self) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("JSON nested too deeply"));
        }
        Ok(())
    }

    fn array_items(&mut self) -> Parsed<Vec<Value>> {
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(items);
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.s.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self) -> Parsed<(Value, Option<String>)> {
        self.enter()?;
        self.pos += 1;
        let mut dict = Dict::new();
        let mut first_key: Option<String> = None;
        // The member of a " di" tag, with its own first key, kept for untagging.
        let mut di_first: Option<String> = None;
        self.skip_ws();
        if !self.eat(b"}") {
            loop {
                self.skip_ws();
                if self.s.get(self.pos) != Some(&b'"') {
                    return Err(self.err("expected a string key"));
                }
                let key = self.string()?;
                self.skip_ws();
                if !self.eat(b":") {
                    return Err(self.err("expected ':'"));
                }
                self.skip_ws();
                let (value, inner_first) = self.value_with_first_key()?;
                if key == " di" {
                    di_first = inner_first;
                }
                if first_key.is_none() {
                    first_key = Some(key.clone());
                }
                dict.insert(key, value);
                self.skip_ws();
                match self.s.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.err("expected ',' or '}'")),
                }
            }
        }
        self.depth -= 1;
        if dict.len() == 1 {
            let only_key = dict.keys().next().map(String::as_str).unwrap_or("");
            if is_tag(only_key) {
                let (key, value) = dict.pop_first().unwrap_or_default();
                return untag(&key, value, di_first).map(|v| (v, None)).map_err(|message| self.err(message));
            }
        }
        Ok((Value::Dict(dict), first_key))
    }

    fn string(&mut self) -> Parsed<String> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(&b) = self.s.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let chunk =
                std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("invalid UTF-8 in a string"))?;
            out.push_str(chunk);
            match self.s.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Parsed<()> {
        let Some(&b) = self.s.get(self.pos) else {
            return Err(self.err("unterminated escape"));
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                if (0xd800..0xdc00).contains(&hi) && self.s[self.pos..].starts_with(b"\\u") {
                    let save = self.pos;
                    self.pos += 2;
                    let lo = self.hex4()?;
                    if (0xdc00..0xe000).contains(&lo) {
                        let cp = 0x10000 + ((u32::from(hi) - 0xd800) << 10) + (u32::from(lo) - 0xdc00);
                        out.push(char::from_u32(cp).ok_or_else(|| self.err("bad surrogate pair"))?);
                        return Ok(());
                    }
                    self.pos = save;
                }
                // Python keeps lone surrogates; a Rust string cannot hold them.
                char::from_u32(u32::from(hi)).ok_or_else(|| self.err("lone surrogate in a string"))?
            }
            _ => return Err(self.err("invalid escape")),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Parsed<u16> {
        let digits = self.s.get(self.pos..self.pos + 4).ok_or_else(|| self.err("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.err("bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        self.pos += 4;
        u16::from_str_radix(text, 16).map_err(|_| self.err("bad \\u escape"))
    }

    fn number(&mut self) -> Parsed<Value> {
        let start = self.pos;
        let s = self.s;
        let digits = |p: &mut usize| {
            let from = *p;
            while s.get(*p).is_some_and(u8::is_ascii_digit) {
                *p += 1;
            }
            *p - from
        };
        let mut p = self.pos;
        if s[p] == b'-' {
            p += 1;
        }
        match s.get(p) {
            Some(b'0') => p += 1,
            Some(b'1'..=b'9') => {
                digits(&mut p);
            }
            _ => return Err(self.err("expected a digit")),
        }
        let mut is_float = false;
        if s.get(p) == Some(&b'.') && s.get(p + 1).is_some_and(u8::is_ascii_digit) {
            p += 1;
            digits(&mut p);
            is_float = true;
        }
        if matches!(s.get(p), Some(b'e' | b'E')) {
            let mut q = p + 1;
            if matches!(s.get(q), Some(b'+' | b'-')) {
                q += 1;
            }
            if digits(&mut q) > 0 {
                p = q;
                is_float = true;
            }
        }
        self.pos = p;
        // ASCII digits only, so this cannot fail.
        let text = std::str::from_utf8(&s[start..p]).unwrap_or("0");
        if is_float {
            return text.parse::<f64>().map(Value::Float).map_err(|_| self.err("bad number"));
        }
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        BigInt::parse(text).map(Value::BigInt).ok_or_else(|| self.err("bad number"))
    }
}

/// Decodes one tag over its already-untagged member, as Flask's `to_python`
/// methods do. Errors here are the cases where Flask answers 500.
pub(crate) fn untag(tag: &str, value: Value, di_first: Option<String>) -> Result<Value, &'static str> {
    match tag {
        " di" => {
            let Value::Dict(mut inner) = value else {
                return Err("\" di\" tag without an object");
            };
            let key = di_first.ok_or("empty \" di\" tag")?;
            let v = inner.remove(&key).ok_or("empty \" di\" tag")?;
            // Python's key[:-2]: drop two characters without checking them.
            let cut = key.char_indices().rev().nth(1).map_or(0, |(i, _)| i);
            let mut d = Dict::new();
            d.insert(key[..cut].to_owned(), v);
            Ok(Value::Dict(d))
        }
        " t" => match value {
            Value::List(items) | Value::Tuple(items) => Ok(Value::Tuple(items)),
            Value::Str(s) | Value::Markup(s) => {
                Ok(Value::Tuple(s.chars().map(|c| Value::Str(c.to_string())).collect()))
            }
            Value::Dict(d) => Ok(Value::Tuple(d.into_keys().map(Value::Str).collect())),
            Value::Bytes(b) => Ok(Value::Tuple(b.into_iter().map(Value::from).collect())),
            _ => Err("\" t\" tag over a value that is not iterable"),
        },
        " b" => match value {
            Value::Str(s) => python_b64decode(s.as_bytes(), false).map(Value::Bytes),
            Value::Bytes(b) => python_b64decode(&b, false).map(Value::Bytes),
            _ => Err("\" b\" tag over a value that is not a string"),
        },
        " m" => match value {
            Value::Str(s) | Value::Markup(s) => Ok(Value::Markup(s)),
            Value::Null => Ok(Value::Markup("None".into())),
            Value::Bool(b) => Ok(Value::Markup(if b { "True" } else { "False" }.into())),
            Value::Int(i) => Ok(Value::Markup(i.to_string())),
            Value::BigInt(b) => Ok(Value::Markup(b.to_string())),
            _ => Err("\" m\" tag over an unsupported value"),
        },
        " u" => match value {
            Value::Str(s) => parse_python_uuid(&s).map(Value::Uuid).ok_or("badly formed UUID"),
            _ => Err("\" u\" tag over a value that is not a string"),
        },
        " d" => match value {
            // Werkzeug's parse_date turns an unparsable date into None, silently.
            Value::Str(s) => Ok(DateTime::parse_http(&s).map_or(Value::Null, Value::DateTime)),
            Value::Null => Ok(Value::Null),
            _ => Err("\" d\" tag over a value that is not a string"),
        },
        _ => Err("unknown tag"),
    }
}

/// `uuid.UUID(text)`: hyphens, braces and a `urn:uuid:` prefix are allowed.
fn parse_python_uuid(text: &str) -> Option<uuid::Uuid> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let hex: String = text.trim_matches(|c| c == '{' || c == '}').chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok().map(uuid::Uuid::from_u128)
}

/// CPython's non-strict `binascii.a2b_base64`: characters outside the
/// alphabet are skipped, a complete pad sequence ends the input, and a final
/// character's unused bits are ignored. With `urlsafe`, `-` and `_` are read
/// as `+` and `/` first, as `base64.urlsafe_b64decode` does.
pub(crate) fn python_b64decode(input: &[u8], urlsafe: bool) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut quad_pos = 0u8;
    let mut left: u8 = 0;
    let mut pads = 0u8;
    for &raw in input {
        let ch = match raw {
            b'-' if urlsafe => b'+',
            b'_' if urlsafe => b'/',
            other => other,
        };
        if ch == b'=' {
            pads += 1;
            if quad_pos >= 2 && quad_pos + pads >= 4 {
                return Ok(out);
            }
            continue;
        }
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        pads = 0;
        match quad_pos {
            0 => {
                left = v;
                quad_pos = 1;
            }
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
                quad_pos = 2;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
                quad_pos = 3;
            }
            _ => {
                out.push((left << 6) | v);
                quad_pos = 0;
            }
        }
    }
    match quad_pos {
        0 => Ok(out),
        1 => Err("base64 data is one character too long"),
        _ => Err("incorrect base64 padding"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(f: f64) -> String {
        let mut s = String::new();
        write_float(f, &mut s);
        s
    }

    #[test]
    fn float_repr_follows_python() {
        let cases = [
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (123.456, "123.456"),
            (-1.5e-7, "-1.5e-07"),
            (1.2345e20, "1.2345e+20"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(repr(f), want);
        }
    }

    #[test]
    fn strings_escape_like_ensure_ascii() {
        let mut s = String::new();
        write_str("q\"b\\n\nt\tr\rb\u{8}f\u{c}/\0\u{1}\u{1f}\u{7f}\u{80}\u{2028}😀你", &mut s);
        assert_eq!(s, r#""q\"b\\n\nt\tr\rb\bf\f/\u0000\u0001\u001f\u007f\u0080\u2028\ud83d\ude00\u4f60""#);
    }

    #[test]
    fn python_b64_leniency() {
        assert_eq!(python_b64decode(b"AP#8=", false), Ok(vec![0, 0xff]));
        assert_eq!(python_b64decode(b"AAH+//vv", false), Ok(vec![0, 1, 0xfe, 0xff, 0xfb, 0xef]));
        assert!(python_b64decode(b"A", false).is_err());
        assert!(python_b64decode(b"AAA", false).is_err());
        assert_eq!(python_b64decode(b"AAA=====junk", false), Ok(vec![0, 0]));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        assert!(parse_value(deep.as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_value(ok.as_bytes()).is_ok());
    }

    #[test]
    fn di_uses_first_key_in_document_order() {
        let v = parse_value(br#"{" di":{"zz__":1,"aa__":2}}"#).unwrap();
        assert_eq!(v, Value::Dict(Dict::from([("zz".to_owned(), Value::Int(1))])));
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let d = parse_session(br#"{"a":1,"a":2}"#).unwrap().unwrap();
        assert_eq!(d["a"], Value::Int(2));
    }

    #[test]
    fn python_uuid_forms() {
        let want = parse_python_uuid("f47ac10b58cc4372a5670e02b2c3d479").unwrap();
        for form in [
            "F47AC10B-58CC-4372-A567-0E02B2C3D479",
            "{f47ac10b-58cc-4372-a567-0e02b2c3d479}",
            "urn:uuid:f47ac10b-58cc-4372-a567-0e02b2c3d479",
        ] {
            assert_eq!(parse_python_uuid(form), Some(want), "{form}");
        }
        assert_eq!(parse_python_uuid("xyz"), None);
    }
}
