//! Saves that Redis only has to check: the merge done in this process.
//!
//! The merge script spends most of its time splitting the stored msgpack map
//! in Lua, a cost that grows with the session (5.6 us of Redis' CPU per call
//! on the benchmark's small sessions, against 3.6 to compare two strings and
//! store one). This process usually knows the stored bytes
//! already: it read them when the request loaded the session, or stored them
//! on the previous save. So it runs the same byte-level merge here and sends
//! the bytes it expects with the result; the script stores the result when
//! the stored value is exactly those bytes and merges by itself otherwise
//! (another process wrote in between, or nothing was known). Stale bytes here
//! cost that fallback, never a wrong write: Redis compares under its own
//! atomicity, and the merge here is the script's, so both give the same
//! result from the same stored value.

use hipflask::{Changes, Error, Value, str_to_msgpack, value_to_msgpack};

/// One changed key in the script's encoding.
#[derive(Debug)]
pub(crate) struct Change {
    /// The key as msgpack bytes.
    pub(crate) key: Vec<u8>,
    /// The new value as msgpack bytes; `None` deletes the key.
    pub(crate) value: Option<Vec<u8>>,
    /// The value as the request loaded it: `a` (absent), or `p` and its bytes.
    pub(crate) loaded: Vec<u8>,
}

/// Encodes a request's changes for the script and for [`merge`]; `loaded`,
/// when given, holds one value per change (see `Update::loaded_values`).
pub(crate) fn encode(changes: &Changes, loaded: Option<&[Option<Value>]>) -> Result<Vec<Change>, Error> {
    // Buffers sized for the usual small value: grown from empty, each one was
    // reallocated on the way, a few hundred instructions per save.
    const SMALL: usize = 16;
    changes
        .keys
        .iter()
        .enumerate()
        .map(|(i, (key, value))| {
            let value = match value {
                Some(v) => {
                    let mut bytes = Vec::with_capacity(SMALL);
                    value_to_msgpack(v, &mut bytes)?;
                    Some(bytes)
                }
                None => None,
            };
            let loaded = match loaded.and_then(|l| l.get(i)?.as_ref()) {
                Some(v) => {
                    let mut bytes = Vec::with_capacity(1 + SMALL);
                    bytes.push(b'p');
                    value_to_msgpack(v, &mut bytes)?;
                    bytes
                }
                None => b"a".to_vec(),
            };
            let mut key_bytes = Vec::with_capacity(key.len() + 5);
            str_to_msgpack(key, &mut key_bytes)?;
            Ok(Change { key: key_bytes, value, loaded })
        })
        .collect()
}

/// The stored map `stored` with `changes` applied, as the script would store
/// it; `None` when the conflict check fails or `stored` is not a msgpack map
/// (the script then decides, and reports either).
pub(crate) fn merge(stored: &[u8], cleared: bool, reject: bool, changes: &[Change]) -> Option<Vec<u8>> {
    let (count, mut p) = match *stored.first()? {
        m @ 0x80..=0x8f => (usize::from(m - 0x80), 1),
        0xde => (be(stored, 1, 2)?, 3),
        0xdf => (be(stored, 1, 4)?, 5),
        _ => return None,
    };
    // Each entry takes at least two bytes: a hostile count cannot reserve much.
    let mut entries: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(count.min(stored.len() / 2) + changes.len());
    for _ in 0..count {
        let key_end = skip(stored, p)?;
        let value_end = skip(stored, key_end)?;
        entries.push((&stored[p..key_end], Some(&stored[key_end..value_end])));
        p = value_end;
    }
    // As in the script, a key stored twice is found at its last place.
    let find = |entries: &[(&[u8], Option<&[u8]>)], key: &[u8]| entries.iter().rposition(|(k, _)| *k == key);
    if reject {
        for change in changes {
            let current = find(&entries, &change.key).and_then(|at| entries[at].1);
            let unchanged = match change.loaded.split_first() {
                Some((b'p', loaded)) => current == Some(loaded),
                _ => current.is_none(),
            };
            if !unchanged {
                return None;
            }
        }
    }
    if cleared {
        entries.clear();
    }
    for change in changes {
        match find(&entries, &change.key) {
            Some(at) => entries[at].1 = change.value.as_deref(),
            None => {
                if let Some(value) = &change.value {
                    entries.push((&change.key, Some(value)));
                }
            }
        }
    }
    let kept = entries.iter().filter(|(_, v)| v.is_some()).count();
    let size: usize = entries.iter().filter_map(|(k, v)| v.map(|v| k.len() + v.len())).sum();
    // Exactly sized: the caller keeps this vector itself as the bytes last
    // seen, which costs no copy when its length is its capacity.
    let header = match kept {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    };
    let mut out = Vec::with_capacity(size + header);
    if kept <= 15 {
        out.push(0x80 + kept as u8);
    } else if let Ok(n) = u16::try_from(kept) {
        out.push(0xde);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&u32::try_from(kept).ok()?.to_be_bytes());
    }
    for (key, value) in entries {
        if let Some(value) = value {
            out.extend_from_slice(key);
            out.extend_from_slice(value);
        }
    }
    Some(out)
}

/// The big-endian number of `n` bytes at `at`.
fn be(bytes: &[u8], at: usize, n: usize) -> Option<usize> {
    let field = bytes.get(at..at.checked_add(n)?)?;
    Some(field.iter().fold(0usize, |v, &b| (v << 8) | usize::from(b)))
}

/// The position just after the msgpack object at `p`. Nested objects are
/// counted, not recursed into, so no input can exhaust the stack.
fn skip(bytes: &[u8], mut p: usize) -> Option<usize> {
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let m = *bytes.get(p)?;
        // (marker and length bytes, payload bytes, nested objects)
        let (head, body, nested) = match m {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (1, 0, 0),
            0x80..=0x8f => (1, 0, usize::from(m - 0x80) * 2),
            0x90..=0x9f => (1, 0, usize::from(m - 0x90)),
            0xa0..=0xbf => (1, usize::from(m - 0xa0), 0),
            0xc4 | 0xd9 => (2, be(bytes, p + 1, 1)?, 0),
            0xc5 | 0xda => (3, be(bytes, p + 1, 2)?, 0),
            0xc6 | 0xdb => (5, be(bytes, p + 1, 4)?, 0),
            // ext 8/16/32: a length, a type byte, then the payload
            0xc7 => (3, be(bytes, p + 1, 1)?, 0),
            0xc8 => (4, be(bytes, p + 1, 2)?, 0),
            0xc9 => (6, be(bytes, p + 1, 4)?, 0),
            0xca => (5, 0, 0),
            0xcb => (9, 0, 0),
            0xcc | 0xd0 => (2, 0, 0),
            0xcd | 0xd1 => (3, 0, 0),
            0xce | 0xd2 => (5, 0, 0),
            0xcf | 0xd3 => (9, 0, 0),
            0xd4 => (3, 0, 0),
            0xd5 => (4, 0, 0),
            0xd6 => (6, 0, 0),
            0xd7 => (10, 0, 0),
            0xd8 => (18, 0, 0),
            0xdc => (3, 0, be(bytes, p + 1, 2)?),
            0xdd => (5, 0, be(bytes, p + 1, 4)?),
            0xde => (3, 0, be(bytes, p + 1, 2)?.checked_mul(2)?),
            0xdf => (5, 0, be(bytes, p + 1, 4)?.checked_mul(2)?),
            0xc1 => return None,
        };
        p = p.checked_add(head)?.checked_add(body)?;
        if p > bytes.len() {
            return None;
        }
        pending = pending.checked_add(nested)?;
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the cases are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const KEYS: [&[u8]; 5] = [b"\xa1a", b"\xa1x", b"\xa1y", b"\xaa_permanent", b"\xa6visits"];

    /// A msgpack value of one of the shapes Flask-Session stores.
    fn value(rng: &mut Rng) -> Vec<u8> {
        match rng.below(8) {
            0 => vec![rng.below(128) as u8],
            1 => vec![0xcd, 0x01, rng.below(256) as u8],
            2 => [&[0xa3][..], b"abc"].concat(),
            3 => vec![0xc3],
            4 => [&[0xcb][..], &1.5f64.to_be_bytes()].concat(),
            // {'k': [1, 2]}
            5 => vec![0x81, 0xa1, b'k', 0x92, 0x01, 0x02],
            // a datetime as msgpack's timestamp extension
            6 => vec![0xd7, 0xff, 0xa1, 0xdc, 0xd4, 0x20, 0x65, 0x93, 0x7d, 0x25],
            _ => vec![0xc4, 0x02, 0x00, 0xff],
        }
    }

    fn map(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0x80 + entries.len() as u8];
        for (k, v) in entries {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }

    /// A stored map and one request's changes to it, with the conflict check
    /// passing or failing.
    fn case(rng: &mut Rng) -> (Vec<u8>, bool, bool, Vec<Change>) {
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            (0..rng.below(5)).map(|_| (KEYS[rng.below(KEYS.len())].to_vec(), value(rng))).collect();
        let stored = map(&entries);
        let changes = (0..rng.below(4))
            .map(|_| {
                let key = KEYS[rng.below(KEYS.len())].to_vec();
                let current = entries.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
                let loaded = match (rng.below(4), current) {
                    (0, _) => b"a".to_vec(),
                    (1, _) => [&b"p"[..], &value(rng)].concat(),
                    (_, Some(v)) => [&b"p"[..], &v].concat(),
                    (_, None) => b"a".to_vec(),
                };
                let value = (rng.below(3) > 0).then(|| value(rng));
                Change { key, value, loaded }
            })
            .collect();
        (stored, rng.below(5) == 0, rng.below(2) == 0, changes)
    }

    async fn redis() -> Option<redis::aio::MultiplexedConnection> {
        let Ok(url) = std::env::var("REDIS_URL") else {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipped: set REDIS_URL");
            return None;
        };
        let client = redis::Client::open(url).expect("REDIS_URL parses");
        Some(client.get_multiplexed_async_connection().await.expect("REDIS_URL is reachable"))
    }

    /// The script's arguments for a save to `key` that keeps nothing back:
    /// 60 seconds to live, no clear, no conflict check, no read-back.
    fn args<'a>(key: &'a str, expected: &'a [u8], merged: &'a [u8], changes: &'a [Change]) -> crate::MergeArgs<'a> {
        crate::MergeArgs {
            key,
            ttl: 60,
            cleared: false,
            reject: false,
            read_back: false,
            omit_changes: false,
            expected,
            merged,
            changes,
        }
    }

    /// Runs the script on `stored`; `fast` is the caller's (expected, merged) pair.
    async fn script(
        conn: &mut redis::aio::MultiplexedConnection,
        key: &str,
        (stored, cleared, reject, changes): &(Vec<u8>, bool, bool, Vec<Change>),
        fast: Option<(&[u8], &[u8])>,
    ) -> (redis::Value, Option<Vec<u8>>) {
        let () = redis::cmd("SET").arg(key).arg(stored).arg("EX").arg(60).query_async(conn).await.unwrap();
        let (expected, merged) = fast.unwrap_or((b"", b""));
        // The store's own command, so that its encoding is tested too.
        let args = crate::MergeArgs { cleared: *cleared, reject: *reject, ..args(key, expected, merged, changes) };
        // An error reply as its text, for the cases that expect one.
        let answer = args.command("EVAL", crate::MERGE).query_async(conn).await;
        let answer = answer.unwrap_or_else(|e| redis::Value::SimpleString(e.to_string()));
        let now: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
        (answer, now)
    }

    #[tokio::test]
    async fn the_merge_here_is_the_scripts_merge() {
        let Some(mut conn) = redis().await else { return };
        let key = format!("hipflask-test:merge:{}", std::process::id());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut merged, mut refused) = (0, 0);
        for _ in 0..600 {
            let case = case(&mut rng);
            let here = merge(&case.0, case.1, case.2, &case.3);
            // With nothing known, and with wrong bytes believed stored (the
            // script stores the caller's merge, sees the mismatch and takes
            // it back): the same outcome either way.
            let stale = [&case.0[..], b"\xc0"].concat();
            for fast in [None, Some((&stale[..], &b"\xa5wrong"[..]))] {
                let (answer, stored) = script(&mut conn, &key, &case, fast).await;
                match &here {
                    Some(bytes) => {
                        assert!(matches!(answer, redis::Value::Array(_)), "{answer:?} for {case:?}");
                        assert_eq!(stored.as_deref(), Some(&bytes[..]), "for {case:?}");
                        merged += 1;
                    }
                    None => {
                        assert_eq!(answer, redis::Value::Int(-1), "for {case:?}");
                        assert_eq!(stored.as_deref(), Some(&case.0[..]), "nothing written on a conflict");
                        refused += 1;
                    }
                }
            }
        }
        // Both outcomes were exercised, each many times.
        assert!(merged > 200 && refused > 200, "{merged} merged, {refused} refused");
        let () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }

    #[tokio::test]
    async fn the_script_stores_the_callers_merge_only_over_the_expected_bytes() {
        let Some(mut conn) = redis().await else { return };
        let key = format!("hipflask-test:fast:{}", std::process::id());
        let stored = map(&[(KEYS[0].to_vec(), vec![0x01])]);
        let change = Change { key: KEYS[1].to_vec(), value: Some(vec![0x02]), loaded: b"a".to_vec() };
        let case = (stored.clone(), false, false, vec![change]);
        // A marker no merge could produce shows which path stored the value.
        let marker = map(&[(KEYS[2].to_vec(), vec![0x07])]);
        let (answer, now) = script(&mut conn, &key, &case, Some((&stored, &marker))).await;
        assert_eq!(answer, redis::Value::Int(2), "the caller's merge was stored");
        assert_eq!(now, Some(marker.clone()), "stored as sent, without merging");
        let other = map(&[(KEYS[0].to_vec(), vec![0x05])]);
        let (answer, now) = script(&mut conn, &key, &case, Some((&other, &marker))).await;
        let merged = merge(&stored, false, false, &case.3);
        let want = redis::Value::Array(vec![redis::Value::Int(1), redis::Value::BulkString(merged.clone().unwrap())]);
        assert_eq!(answer, want, "merged by the script, which answers with what it stored");
        assert_eq!(now, merged, "another value is stored: merged by the script");
        // Stored bytes the script cannot read are left as they were.
        let bad = (b"\x01not a map".to_vec(), false, false, case.3);
        let (answer, now) = script(&mut conn, &key, &bad, Some((&stored, &marker))).await;
        let refused = matches!(&answer, redis::Value::SimpleString(e) if e.contains("not a msgpack map"));
        assert!(refused, "{answer:?}");
        assert_eq!(now.as_deref(), Some(&bad.0[..]), "an unreadable value is not replaced");
        // A session gone in between stays gone.
        let () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
        let gone = args(&key, &stored, &marker, &bad.3);
        let answer: redis::Value = gone.command("EVAL", crate::MERGE).query_async(&mut conn).await.unwrap();
        assert_eq!(answer, redis::Value::Int(0), "a missing session is reported gone");
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(!exists, "and not created by the save");
        let () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }

    /// With the changes left out, the script stores the caller's merge over
    /// the expected bytes, and otherwise changes nothing and asks for them.
    #[tokio::test]
    async fn without_the_changes_the_script_stores_the_merge_or_asks_for_them() {
        let Some(mut conn) = redis().await else { return };
        let key = format!("hipflask-test:omit:{}", std::process::id());
        let stored = map(&[(KEYS[0].to_vec(), vec![0x01])]);
        let merged = map(&[(KEYS[0].to_vec(), vec![0x02])]);
        let changes = [Change { key: KEYS[0].to_vec(), value: Some(vec![0x02]), loaded: b"p\x01".to_vec() }];
        let other = map(&[(KEYS[0].to_vec(), vec![0x05])]);
        for (now, want, after) in [(&stored, 2, &merged), (&other, 3, &other)] {
            let () = redis::cmd("SET").arg(&key).arg(now).arg("EX").arg(60).query_async(&mut conn).await.unwrap();
            let args = crate::MergeArgs { reject: true, omit_changes: true, ..args(&key, &stored, &merged, &changes) };
            let answer: redis::Value = args.command("EVAL", crate::MERGE).query_async(&mut conn).await.unwrap();
            assert_eq!(answer, redis::Value::Int(want));
            let value: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
            assert_eq!(&value, after);
        }
        let () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }

    #[test]
    fn any_bytes_give_a_result_or_none_never_a_panic() {
        let mut rng = Rng(42);
        let change = Change { key: KEYS[0].to_vec(), value: Some(vec![0x01]), loaded: b"a".to_vec() };
        for _ in 0..20_000 {
            let bytes: Vec<u8> = (0..rng.below(24)).map(|_| rng.below(256) as u8).collect();
            let _ = merge(&bytes, rng.below(2) == 0, rng.below(2) == 0, std::slice::from_ref(&change));
        }
        // Deep nesting is counted, not recursed into.
        let mut deep = vec![0x81, 0xa1, b'a'];
        deep.extend(std::iter::repeat_n(0x91, 1_000_000));
        deep.push(0x01);
        assert!(merge(&deep, false, false, std::slice::from_ref(&change)).is_some());
        // A count far beyond the bytes present is refused, not allocated.
        assert_eq!(merge(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01], false, false, &[]), None);
    }
}
