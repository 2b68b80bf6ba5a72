//! Reading the request's `Cookie` header as Werkzeug does.

use std::borrow::Cow;

/// The value of the first cookie called `name` across the `Cookie` header
/// values, unquoted. Werkzeug (and so Flask) lets the first one win; browsers
/// send the most specific path first. Borrowed unless it was quoted: every
/// request reads it.
pub(crate) fn find_cookie<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &[u8]) -> Option<Cow<'a, [u8]>> {
    for header in headers {
        // The usual header starts with the session cookie: its first pair is
        // then this one, whatever follows, with no name to search for.
        if let Some(value) = header.strip_prefix(name).and_then(|rest| rest.strip_prefix(b"=")) {
            let value = find_semicolon(value).map_or(value, |i| &value[..i]);
            return Some(unquote(value.trim_ascii()));
        }
        let mut rest = Some(header);
        while let Some(text) = rest {
            let (pair, after) = match find_semicolon(text) {
                Some(i) => (&text[..i], Some(&text[i + 1..])),
                None => (text, None),
            };
            rest = after;
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if pair[..eq].trim_ascii() == name {
                return Some(unquote(pair[eq + 1..].trim_ascii()));
            }
        }
    }
    None
}

/// The index of the first `;`, eight bytes at a time: the session cookie
/// is most of the header, and splitting it byte by byte cost twice as much.
fn find_semicolon(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const SEMICOLONS: u64 = u64::from_ne_bytes([b';'; 8]);
    let (words, tail) = bytes.as_chunks::<8>();
    for (n, word) in words.iter().enumerate() {
        // Bytes equal to `;` become zero; the classic zero-byte test marks
        // the first of them exactly (later marks may be false, never earlier).
        let x = u64::from_le_bytes(*word) ^ SEMICOLONS;
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(n * 8 + zero.trailing_zeros() as usize / 8);
        }
    }
    tail.iter().position(|b| *b == b';').map(|i| words.len() * 8 + i)
}

/// Removes double quotes and Werkzeug's backslash escapes (`\"`, `\\`, and
/// three-digit octal such as `\054`).
fn unquote(value: &[u8]) -> Cow<'_, [u8]> {
    let inner = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => return Cow::Borrowed(value),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == b'\\' && i + 1 < inner.len() {
            let octal = inner.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
            if let Some(d) = octal {
                let n = d.iter().fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0'));
                out.push(n as u8);
                i += 4;
            } else {
                out.push(inner[i + 1]);
                i += 2;
            }
        } else {
            out.push(inner[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_cookie_wins_across_headers() {
        let h: [&[u8]; 2] = [b"a=1; session=first; session=second", b"session=third"];
        assert_eq!(find_cookie(h, b"session").as_deref(), Some(&b"first"[..]));
        assert_eq!(find_cookie([&b"xsession=1; session_x=2"[..]], b"session"), None);
    }

    #[test]
    fn a_header_that_starts_with_the_cookie_reads_as_any_other() {
        // Each header both as it is and behind another cookie, which the
        // general path reads: the two must agree.
        for h in [
            &b"session=abc"[..],
            b"session=abc; other=1",
            b"session= abc ;x=2",
            b"session=",
            b"session=;session=second",
            b"session=\"a\\054b\"; x=1",
            b"session==x",
            b"sessionx=1; session=2",
            b"session =1; session=2",
        ] {
            let behind = [&b"a=b; "[..], h].concat();
            assert_eq!(find_cookie([h], b"session"), find_cookie([&behind[..]], b"session"), "{h:?}");
        }
        assert_eq!(find_cookie([&b"session=abc ; x=1"[..]], b"session").as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let h: [&[u8]; 1] = [br#"session="a\054b\"c""#];
        assert_eq!(find_cookie(h, b"session").as_deref(), Some(&b"a,b\"c"[..]));
    }

    #[test]
    fn semicolons_are_found_where_a_byte_scan_finds_them() {
        // Every position in and around a word, with bytes that differ from
        // `;` by one bit (`:` and `{`) and high bytes nearby.
        for len in 0..40 {
            for at in 0..=len {
                let mut bytes: Vec<u8> = (0..len).map(|i| [b':', b'{', 0xBB, b'a', 0x3A][i % 5]).collect();
                if at < len {
                    bytes[at] = b';';
                    if at + 3 < len {
                        bytes[at + 3] = b';';
                    }
                }
                let want = bytes.iter().position(|b| *b == b';');
                assert_eq!(find_semicolon(&bytes), want, "{bytes:?}");
            }
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for h in [&b""[..], b";;;", b"=", b"session", b"session=\"", b"\xff\xfe=\xff"] {
            let _ = find_cookie([h], b"session");
        }
    }
}
