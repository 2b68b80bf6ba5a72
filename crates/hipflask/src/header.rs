//! Reading the request's `Cookie` header as Werkzeug does.

use std::borrow::Cow;

/// The value of the first cookie called `name` across the `Cookie` header
/// values, unquoted. Werkzeug (and so Flask) lets the first one win; browsers
/// send the most specific path first. Borrowed unless it was quoted: every
/// request reads it.
pub(crate) fn find_cookie<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &[u8]) -> Option<Cow<'a, [u8]>> {
    for header in headers {
        for pair in header.split(|b| *b == b';') {
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
    fn quoted_values_are_unquoted() {
        let h: [&[u8]; 1] = [br#"session="a\054b\"c""#];
        assert_eq!(find_cookie(h, b"session").as_deref(), Some(&b"a,b\"c"[..]));
    }

    #[test]
    fn garbage_does_not_panic() {
        for h in [&b""[..], b";;;", b"=", b"session", b"session=\"", b"\xff\xfe=\xff"] {
            let _ = find_cookie([h], b"session");
        }
    }
}
