//! Every signed-cookie vector and tagged-JSON vector that the real Flask
//! produced (`fixtures/flask-vectors.json`, copied from the spec) as a test.

use hipflask::{CookieCodec, CookieError, Dict, SecretKey, Value, parse_tagged_json, to_tagged_json};
use serde_json::Value as Json;

fn vectors() -> Json {
    serde_json::from_str(include_str!("fixtures/flask-vectors.json")).expect("fixture parses")
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn secret(v: &Json) -> SecretKey {
    match (v.get("secret_key"), v.get("secret_key_hex")) {
        (Some(Json::String(s)), _) => SecretKey::new(s).unwrap(),
        (_, Some(Json::String(h))) => SecretKey::new(hex(h)).unwrap(),
        _ => panic!("vector {} has no key", v["id"]),
    }
}

fn codec(v: &Json) -> CookieCodec {
    let fallbacks: Vec<SecretKey> = v["secret_key_fallbacks"]
        .as_array()
        .map(|a| a.iter().map(|k| SecretKey::new(k.as_str().unwrap()).unwrap()).collect())
        .unwrap_or_default();
    CookieCodec::new(&secret(v), &fallbacks, v["max_age"].as_u64().unwrap())
}

/// The session a vector describes, from its neutral tagged description.
fn described(v: &Json) -> Dict {
    let value: Value = serde_json::from_value(v["session_tagged"].clone()).unwrap();
    value.as_dict().cloned().unwrap()
}

fn cookie_vectors(kind: &str) -> Vec<Json> {
    let all = vectors();
    let list: Vec<Json> =
        all["cookie_vectors"].as_array().unwrap().iter().filter(|v| v["kind"] == kind).cloned().collect();
    assert!(!list.is_empty(), "no vectors of kind {kind}");
    list
}

#[test]
fn every_positive_cookie_decodes_and_reencodes_byte_identically() {
    let mut encoded = 0;
    for v in cookie_vectors("cookie") {
        let id = v["id"].as_str().unwrap();
        let cookie = v["cookie"].as_str().unwrap();
        let now = v["now"].as_u64().unwrap();
        let codec = codec(&v);
        let session = codec.decode(cookie, now).unwrap_or_else(|e| panic!("{id}: {e}"));
        let payload = v["payload_json"].as_str().unwrap();
        let stable = v["reencode_stable"].as_bool().unwrap_or(true);
        let expected_json = if stable {
            payload.to_owned()
        } else {
            // Flask itself changes this JSON on re-save; the note gives its output.
            let note = v["reencode_note"].as_str().unwrap();
            note[note.find('{').unwrap()..].to_owned()
        };
        assert_eq!(to_tagged_json(&session), expected_json, "{id}: re-encoded JSON");
        // serde_json reads integers past 64 bits as floats, so the neutral
        // description of `ints` cannot be compared; its exact JSON is, above.
        if !v["session_tagged"].is_null() && id != "ints" {
            assert_eq!(session, described(&v), "{id}: decoded session");
        }
        // Signing the same session at the same time gives Flask's exact cookie,
        // compressed ones included (unless another key signed it).
        if stable && v.get("signed_with").is_none() {
            let ts = v["timestamp"].as_u64().unwrap();
            let parsed = parse_tagged_json(payload).unwrap();
            assert_eq!(codec.encode(&parsed, ts), cookie, "{id}: encoded cookie");
            encoded += 1;
        }
        if let Some(compressed) = v["compressed"].as_bool() {
            assert_eq!(cookie.starts_with('.'), compressed, "{id}: compression decision");
        }
    }
    assert!(encoded >= 45, "only {encoded} vectors were re-encoded");
}

#[test]
fn lenient_cookies_that_flask_accepts_are_accepted() {
    for v in cookie_vectors("cookie_lenient") {
        let id = v["id"].as_str().unwrap();
        let got = codec(&v).decode(v["cookie"].as_str().unwrap(), v["now"].as_u64().unwrap());
        assert_eq!(got.unwrap_or_else(|e| panic!("{id}: {e}")), described(&v), "{id}");
    }
}

#[test]
fn negative_cookies_are_rejected_for_flasks_reason() {
    for v in cookie_vectors("cookie_negative") {
        let id = v["id"].as_str().unwrap();
        let got = codec(&v).decode(v["cookie"].as_str().unwrap(), v["now"].as_u64().unwrap());
        let flask = v["itsdangerous_result"].as_str().unwrap();
        let err = got.expect_err(id);
        let ok = match flask.split(':').next().unwrap() {
            "BadSignature" | "BadTimeSignature" => err == CookieError::BadSignature,
            "SignatureExpired" if flask.contains("< 0") => {
                matches!(err, CookieError::FutureTimestamp { .. })
            }
            "SignatureExpired" => matches!(err, CookieError::Expired { .. }),
            other => panic!("{id}: unexpected itsdangerous result {other}"),
        };
        assert!(ok, "{id}: got {err:?}, Flask said {flask}");
    }
}

#[test]
fn validly_signed_bad_payloads_never_load_garbage() {
    for v in cookie_vectors("cookie_signed_bad_payload") {
        let id = v["id"].as_str().unwrap();
        let got = codec(&v).decode(v["cookie"].as_str().unwrap(), v["now"].as_u64().unwrap());
        match v["expected"].as_str().unwrap() {
            // Flask answers 500; hipflask rejects the cookie (an empty session).
            "error" => assert!(matches!(got, Err(CookieError::BadPayload { .. })), "{id}: {got:?}"),
            "empty_session" => assert_eq!(got.unwrap(), Dict::new(), "{id}"),
            "ok" => assert_eq!(got.unwrap(), described(&v), "{id}"),
            other => panic!("{id}: unknown expectation {other}"),
        }
    }
}

#[test]
fn tagged_json_texts_round_trip() {
    let all = vectors();
    for v in all["tagged_json_vectors"].as_array().unwrap() {
        let id = v["id"].as_str().unwrap();
        let text = v["json"].as_str().unwrap();
        let parsed = parse_tagged_json(text).unwrap_or_else(|e| panic!("{id}: {e}"));
        if id == "non_str_keys" {
            // Integer keys sorted numerically by Python come back as strings.
            assert!(to_tagged_json(&parsed).contains(r#""h":{"10":"x","9":"y"}"#));
        } else {
            assert_eq!(to_tagged_json(&parsed), text, "{id}");
        }
    }
}

#[test]
fn raw_signatures_verify() {
    let all = vectors();
    for v in all["primitives"]["signatures"].as_array().unwrap() {
        let input = v["signed_input"].as_str().unwrap();
        let cookie = format!("{input}.{}", v["signature_b64"].as_str().unwrap());
        let codec = CookieCodec::new(&secret(v), &[], u64::MAX);
        // Verification passes, so what fails is what comes after it.
        let err = codec.decode(&cookie, 0).expect_err("these inputs are not sessions");
        assert_ne!(err, CookieError::BadSignature, "{input}");
    }
}

#[test]
fn typed_values_come_out_as_rust_types() {
    let all = vectors();
    let find = |id: &str| all["cookie_vectors"].as_array().unwrap().iter().find(|v| v["id"] == id).unwrap().clone();
    let decode = |id: &str| {
        let v = find(id);
        codec(&v).decode(v["cookie"].as_str().unwrap(), v["now"].as_u64().unwrap()).unwrap()
    };
    let s = hipflask::Session::from_dict(decode("bytes"));
    assert_eq!(s.get::<Vec<u8>>("b"), Some(vec![0, 1, 0xfe, 0xff, 0xfb, 0xef]));
    let s = hipflask::Session::from_dict(decode("uuid"));
    assert_eq!(
        s.get::<uuid::Uuid>("id2"),
        Some(uuid::Uuid::parse_str("f47ac10b-58cc-4372-a567-0e02b2c3d479").unwrap())
    );
    let s = hipflask::Session::from_dict(decode("datetime_naive"));
    let dt = s.get_value("dt").unwrap().as_datetime().unwrap();
    assert_eq!((dt.year(), dt.hour(), dt.second()), (2024, 3, 5));
    assert_eq!(s.get::<String>("dt").as_deref(), Some("2024-01-02T03:04:05Z"));
    let s = hipflask::Session::from_dict(decode("ints"));
    assert_eq!(s.get::<u128>("huge"), Some(18_446_744_073_709_551_617));
    assert_eq!(s.get::<f64>("n"), Some(1_234_567_890_123.0));
    let s = hipflask::Session::from_dict(decode("tuple"));
    assert_eq!(s.get::<(i32, String, (i32, i32))>("t"), Some((1, "a".into(), (2, 3))));
    let s = hipflask::Session::from_dict(decode("flashes"));
    let flashes = s.get_flashed_messages(&[]);
    assert_eq!(flashes.len(), 3);
    assert_eq!((flashes[2].category.as_str(), flashes[2].text()), ("info", Some("中文")));
}

#[test]
fn flask_session_signed_ids() {
    let all = vectors();
    let list = all["flask_session"]["signed_sid"].as_array().unwrap();
    assert!(!list.is_empty());
    for v in list {
        let signer = hipflask::SidSigner::new(&secret(v));
        let sid = v["sid"].as_str().unwrap();
        let cookie = v["cookie_value"].as_str().unwrap();
        assert_eq!(signer.sign(sid), cookie);
        assert_eq!(signer.unsign(cookie), Some(sid));
        let mut tampered = cookie.to_owned();
        tampered.replace_range(0..1, if cookie.starts_with('A') { "B" } else { "A" });
        assert_eq!(signer.unsign(&tampered), None);
    }
}

#[test]
fn flask_session_ids_from_the_vectors_parse() {
    let all = vectors();
    for v in all["flask_session"]["redis"].as_array().unwrap() {
        let sid = v["sid"].as_str().unwrap();
        assert!(hipflask::SessionId::parse(sid).is_some(), "{sid}");
    }
    for bad in ["", "abc", "*", "../../../../etc/passwd", "' OR 1=1 --", &"A".repeat(44), &"é".repeat(43)] {
        assert!(hipflask::SessionId::parse(bad).is_none(), "{bad}");
    }
    // The last character's two low bits are padding: only one spelling per id.
    let stem = "A".repeat(42);
    for (last, ok) in [('A', true), ('E', true), ('w', true), ('B', false), ('D', false), ('_', false)] {
        assert_eq!(hipflask::SessionId::parse(&format!("{stem}{last}")).is_some(), ok, "{last}");
    }
}

fn unhex(text: &str) -> Vec<u8> {
    hex(text)
}

#[test]
fn flask_session_redis_values_decode() {
    let all = vectors();
    let list = all["flask_session"]["redis"].as_array().unwrap();
    assert_eq!(list.len(), 11);
    for v in list {
        let id = v["id"].as_str().unwrap();
        let bytes = unhex(v["redis_value_hex"].as_str().unwrap());
        let d = hipflask::from_stored_session(&bytes).unwrap_or_else(|e| panic!("{id}: {e}"));
        let permanent = v["config"]["SESSION_PERMANENT"] != false;
        assert_eq!(d.get("_permanent") == Some(&Value::Bool(true)), permanent, "{id}");
        // What hipflask writes reads back the same.
        let again = hipflask::from_msgpack(&hipflask::to_msgpack(&d).unwrap()).unwrap();
        assert_eq!(again, d, "{id}: round trip");
        // Where Python's insertion order is also sorted order, the bytes are identical.
        let sorted = matches!(
            id,
            "fs_username"
                | "fs_visits"
                | "fs_ints"
                | "fs_not_permanent"
                | "fs_lifetime_7d"
                | "fs_custom_prefix"
                | "fs_signed"
        );
        if sorted {
            assert_eq!(hipflask::to_msgpack(&d).unwrap(), bytes, "{id}: bytes");
        }
    }
}

#[test]
fn flask_session_types_decode_as_flask_session_returns_them() {
    let all = vectors();
    let find = |id: &str| {
        let v = all["flask_session"]["redis"].as_array().unwrap().iter().find(|v| v["id"] == id).unwrap().clone();
        hipflask::from_stored_session(&unhex(v["redis_value_hex"].as_str().unwrap())).unwrap()
    };
    let d = find("fs_types");
    assert_eq!(d["i"], Value::Int(-1));
    assert_eq!(d["big"], Value::Int(1_099_511_627_776));
    assert_eq!(d["f"], Value::Float(1.5));
    assert_eq!(d["tup"], Value::List(vec![1.into(), 2.into()]), "tuples come back as lists");
    assert_eq!(d["b"], Value::Bytes(vec![0, 255]));
    assert_eq!(d["cn"], Value::from("中文"));
    assert_eq!(d["dt_aware"], Value::DateTime(hipflask::DateTime::from_unix(1_704_164_645).unwrap()));
    assert_eq!(d["dt_naive"], Value::from("2024-01-02T03:04:05"));
    assert_eq!(d["uuid"], Value::from("12345678-1234-5678-1234-567812345678"));
    assert_eq!(d["intkey"], Value::Dict([("1".to_owned(), Value::from("a"))].into()));
    let d = find("fs_ints");
    assert_eq!(d["k"], Value::Int(-2_147_483_649));
    assert_eq!(d["j"], Value::Int(4_294_967_296));
    let d = find("fs_json_format");
    assert_eq!(d["cn"], Value::from("中文"));
    assert_eq!(d["b"], Value::from("AP8="), "JSON stores bytes as base64 text");
}
