//! Properties that must hold for any input, checked with proptest.

use hipflask::{Changes, CookieCodec, DateTime, Dict, SecretKey, Session, Value, apply_changes};
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000;

/// Any Flask session value, nested up to three levels.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u128>().prop_map(Value::from_u128),
        any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan()).prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Bytes),
        ".{0,12}".prop_map(Value::Markup),
        any::<u128>().prop_map(|u| Value::Uuid(uuid::Uuid::from_u128(u))),
        (-62_135_596_800i64..=253_402_300_799).prop_map(|s| Value::DateTime(DateTime::from_unix(s).unwrap())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Tuple),
            proptest::collection::btree_map(key(), inner, 0..4).prop_map(Value::Dict),
        ]
    })
}

/// Keys, including the awkward ones: empty, tag names, spaces, non-ASCII.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,8}",
        Just(" t".to_owned()),
        Just(" di".to_owned()),
        Just(" b".to_owned()),
        Just("_permanent".to_owned())
    ]
}

fn session() -> impl Strategy<Value = Dict> {
    proptest::collection::btree_map(key(), value(), 0..6)
}

fn codec(secret: &[u8]) -> CookieCodec {
    CookieCodec::new(&SecretKey::new(secret).unwrap(), &[], 2_678_400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// An id parses exactly when it is the one spelling of 32 bytes in
    /// unpadded base64url: the table-driven check against a real decode.
    #[test]
    fn session_ids_parse_exactly_when_they_are_canonical_base64url_of_32_bytes(
        text in prop_oneof!["[A-Za-z0-9_-]{43}", "[A-Za-z0-9_+/=.-]{42,44}", ".{0,44}"]
    ) {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let canonical = engine.decode(&text).is_ok_and(|b| b.len() == 32 && engine.encode(&b) == text);
        prop_assert_eq!(hipflask::SessionId::parse(&text).is_some(), canonical);
    }

    #[test]
    fn any_session_survives_the_cookie_and_reencodes_to_the_same_bytes(d in session()) {
        let codec = codec(b"secret");
        let cookie = codec.encode(&d, NOW);
        let back = codec.decode(&cookie, NOW).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(codec.encode(&back, NOW), cookie);
    }

    #[test]
    fn sign_then_verify_holds_for_any_key_and_payload(
        secret in proptest::collection::vec(any::<u8>(), 1..100),
        text in ".{0,40}",
    ) {
        let codec = codec(&secret);
        let d: Dict = [("k".to_owned(), Value::Str(text))].into();
        prop_assert_eq!(codec.decode(&codec.encode(&d, NOW), NOW).unwrap(), d);
    }

    #[test]
    fn any_single_byte_change_fails_verification(d in session(), at in any::<prop::sample::Index>(), to in 0x20u8..0x7f) {
        let codec = codec(b"secret");
        let cookie = codec.encode(&d, NOW);
        let i = at.index(cookie.len());
        prop_assume!(cookie.as_bytes()[i] != to);
        let mut bytes = cookie.clone().into_bytes();
        bytes[i] = to;
        let changed = String::from_utf8(bytes).unwrap();
        match codec.decode(&changed, NOW) {
            Err(_) => {}
            // itsdangerous' leniency: the last signature character carries two
            // unused bits, and characters outside base64 are skipped. Such a
            // change may still verify, but only to the very same session.
            Ok(back) => {
                let sig_start = cookie.rfind('.').unwrap() + 1;
                prop_assert!(i >= sig_start, "a change at {} of {:?} verified", i, changed);
                prop_assert_eq!(back, d);
            }
        }
    }

    #[test]
    fn concurrent_changes_merge_like_a_serial_order(
        base in proptest::collection::btree_map("[a-e]", any::<i8>().prop_map(|i| Value::Int(i.into())), 0..5),
        a in ops(), b in ops(),
    ) {
        // Two requests load the same session and change it; each save applies
        // only its own changes to the session as stored.
        let changes = |ops: &[Op]| {
            let s = Session::from_dict(base.clone());
            run(&s, ops, &base);
            s.changes()
        };
        let (ca, cb): (Changes, Changes) = (changes(&a), changes(&b));
        let mut merged = base.clone();
        apply_changes(&mut merged, &ca, None).unwrap();
        apply_changes(&mut merged, &cb, None).unwrap();
        // The same requests one after the other.
        let serial = Session::from_dict(base.clone());
        run(&serial, &a, &base);
        let serial = Session::from_dict(serial.to_dict());
        run(&serial, &b, &base);
        prop_assert_eq!(merged, serial.to_dict());
    }
}

#[derive(Clone, Debug)]
enum Op {
    Set(String, i8),
    Remove(String),
    Clear,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            4 => ("[a-g]", any::<i8>()).prop_map(|(k, v)| Op::Set(k, v)),
            2 => "[a-e]".prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ],
        0..6,
    )
}

/// Runs blind writes. A remove only counts for keys the request could see
/// in the session it loaded (a request cannot remove what it never saw).
fn run(s: &Session, ops: &[Op], base: &Dict) {
    for op in ops {
        match op {
            Op::Set(k, v) => s.insert_value(k.clone(), Value::Int((*v).into())),
            Op::Remove(k) if base.contains_key(k) => {
                s.remove(k);
            }
            Op::Remove(_) => {}
            Op::Clear => s.clear(),
        }
    }
}
