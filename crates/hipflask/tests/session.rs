//! The dict-like `Session` behaves like Flask's `session` (spec 4.1, 5).

use hipflask::{Dict, ErrorKind, Session, Value};
use serde::{Deserialize, Serialize};

fn loaded(pairs: &[(&str, Value)]) -> Session {
    Session::from_dict(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
}

#[test]
fn reading_marks_accessed_but_not_modified() {
    let s = loaded(&[("user", "poloyy".into())]);
    assert!(!s.is_accessed());
    assert_eq!(s.get::<String>("user").as_deref(), Some("poloyy"));
    assert!(s.contains_key("user"));
    assert_eq!(s.keys(), ["user"]);
    assert!(s.is_accessed());
    assert!(!s.is_modified());
    assert!(!s.is_new());
}

#[test]
fn assigning_the_same_value_still_marks_modified() {
    let s = loaded(&[("user", "poloyy".into())]);
    s.insert("user", "poloyy").unwrap();
    assert!(s.is_modified());
}

#[test]
fn pop_marks_modified_only_when_the_key_existed() {
    let s = loaded(&[("user", "poloyy".into())]);
    assert_eq!(s.remove("missing"), None);
    assert!(!s.is_modified());
    assert_eq!(s.remove("user"), Some(Value::from("poloyy")));
    assert!(s.is_modified());
}

#[test]
fn clear_always_marks_modified() {
    let s = Session::new();
    s.clear();
    assert!(s.is_modified());
    assert!(s.is_empty());
}

#[test]
fn setdefault_marks_modified_only_for_a_new_key() {
    let s = loaded(&[("cart", Value::List(vec![]))]);
    s.setdefault("cart", Value::Null);
    assert!(!s.is_modified());
    s.setdefault("other", 1);
    assert!(s.is_modified());
}

#[test]
fn nested_mutation_is_not_detected_until_marked() {
    let cart: Dict = [("pineapples".to_owned(), Value::from("10"))].into();
    let s = loaded(&[("cart_item", Value::Dict(cart))]);
    s.with_value_mut("cart_item", |v| {
        v.as_dict_mut().unwrap().insert("pineapples".into(), "100".into());
    });
    assert!(!s.is_modified(), "Flask does not see nested changes");
    s.mark_modified();
    assert!(s.is_modified());
    assert_eq!(s.get_value("cart_item").unwrap().as_dict().unwrap()["pineapples"], Value::from("100"));
}

#[test]
fn permanent_false_is_stored_not_removed() {
    let s = Session::new();
    assert!(!s.permanent());
    s.set_permanent(true);
    assert!(s.permanent());
    s.set_permanent(false);
    assert!(!s.permanent());
    assert_eq!(s.get_value("_permanent"), Some(Value::Bool(false)));
}

#[test]
fn require_tells_missing_from_wrong_type() {
    let s = loaded(&[("user", "poloyy".into())]);
    assert_eq!(s.require::<u32>("nope").unwrap_err().kind(), ErrorKind::MissingKey);
    let err = s.require::<u32>("user").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.to_string().contains("\"user\""), "{err}");
    assert_eq!(s.get::<u32>("user"), None);
}

#[test]
fn remove_as_keeps_the_value_when_the_type_is_wrong() {
    let s = loaded(&[("user", "poloyy".into())]);
    assert!(s.remove_as::<u32>("user").is_err());
    assert!(s.contains_key("user"), "no data lost");
    assert!(!s.is_modified());
    assert_eq!(s.remove_as::<String>("user").unwrap().as_deref(), Some("poloyy"));
    assert_eq!(s.remove_as::<String>("user").unwrap(), None);
}

#[test]
fn ints_and_floats_stay_distinct() {
    let s = Session::new();
    s.insert("i", 3).unwrap();
    s.insert("f", 3.0).unwrap();
    assert_eq!(hipflask::to_tagged_json(&s.to_dict()), r#"{"f":3.0,"i":3}"#);
    assert_eq!(s.get::<i64>("f"), None, "a float is not read as an int");
    assert_eq!(s.get::<f64>("i"), Some(3.0), "an int widens to a float, as in Python");
}

#[test]
fn structs_and_tuples_round_trip() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Cart {
        items: Vec<(String, u32)>,
        coupon: Option<String>,
    }
    let s = Session::new();
    let cart = Cart { items: vec![("apples".into(), 20)], coupon: None };
    s.insert("cart", &cart).unwrap();
    assert_eq!(hipflask::to_tagged_json(&s.to_dict()), r#"{"cart":{"coupon":null,"items":[{" t":["apples",20]}]}}"#);
    assert_eq!(s.get::<Cart>("cart"), Some(cart));
}

#[test]
fn non_string_map_keys_are_stringified_like_json_dumps() {
    let s = Session::new();
    let m: std::collections::BTreeMap<i32, &str> = [(1, "a"), (2, "b")].into();
    s.insert("d", m).unwrap();
    assert_eq!(hipflask::to_tagged_json(&s.to_dict()), r#"{"d":{"1":"a","2":"b"}}"#);
    let bad: std::collections::BTreeMap<(i32, i32), i32> = [((1, 2), 3)].into();
    assert_eq!(s.insert("bad", bad).unwrap_err().kind(), ErrorKind::Encode);
    assert!(!s.contains_key("bad"));
}

#[test]
fn get_value_type_is_exact_for_tagged_types() {
    let s = Session::new();
    s.insert_value("t", Value::Tuple(vec![1.into()]));
    s.insert_value("m", Value::Markup("<b>x</b>".into()));
    s.insert_value("b", Value::Bytes(vec![0, 255]));
    s.insert_value(
        "big",
        Value::BigInt(hipflask::BigInt::parse("123456789012345678901234567890123456789012").unwrap()),
    );
    for key in ["t", "m", "b", "big"] {
        assert_eq!(s.get::<Value>(key), s.get_value(key), "{key}");
    }
    // Nested inside a user type, Values still come back exactly.
    let both: Vec<Value> = vec![s.get_value("t").unwrap(), s.get_value("b").unwrap()];
    s.insert("both", &both).unwrap();
    assert_eq!(s.get::<Vec<Value>>("both"), Some(both));
}

#[test]
fn flashes_are_stored_as_flask_stores_them() {
    let s = Session::new();
    s.flash("Hello", "message");
    s.flash(Value::Markup("<b>hi</b>".into()), "info");
    assert_eq!(
        hipflask::to_tagged_json(&s.to_dict()),
        r#"{"_flashes":[{" t":["message","Hello"]},{" t":["info",{" m":"<b>hi</b>"}]}]}"#
    );
}

#[test]
fn get_flashed_messages_consumes_all_and_caches_per_request() {
    let s = Session::new();
    s.flash("a", "message");
    s.flash("b", "error");
    let errors = s.get_flashed_messages(&["error"]);
    assert_eq!(errors.len(), 1);
    assert!(!s.contains_key("_flashes"), "all flashes leave the session");
    assert_eq!(s.get_flashed_messages(&[]).len(), 2, "later calls see the cached list");
}

#[test]
fn flashes_from_flask_session_lists_are_read_too() {
    let entry = Value::List(vec!["warning".into(), "careful".into()]);
    let s = loaded(&[("_flashes", Value::List(vec![entry, Value::Int(3)]))]);
    let got = s.get_flashed_messages(&[]);
    assert_eq!(got.len(), 1, "the malformed entry is skipped");
    assert_eq!((got[0].category.as_str(), got[0].text()), ("warning", Some("careful")));
}

#[test]
fn debug_never_shows_values() {
    let s = loaded(&[("password", "hunter2".into())]);
    let shown = format!("{s:?}");
    assert!(shown.contains("password") && !shown.contains("hunter2"), "{shown}");
}

#[test]
fn datetime_and_uuid_values_from_rust_types() {
    let s = Session::new();
    let when = time::OffsetDateTime::from_unix_timestamp(1_704_164_645).unwrap();
    s.insert_value("dt", Value::DateTime(when.try_into().unwrap()));
    s.insert_value("id", Value::Uuid(uuid::Uuid::from_u128(0x1234_5678_1234_5678_1234_5678_1234_5678)));
    assert_eq!(
        hipflask::to_tagged_json(&s.to_dict()),
        r#"{"dt":{" d":"Tue, 02 Jan 2024 03:04:05 GMT"},"id":{" u":"12345678123456781234567812345678"}}"#
    );
    assert_eq!(s.get_value("dt").unwrap().as_datetime(), Some(when));
    let too_old = time::OffsetDateTime::from_unix_timestamp(-62_135_596_801).unwrap();
    assert!(hipflask::DateTime::try_from(too_old).is_err());
}

#[test]
fn value_serializes_in_flasks_tagged_form_and_reads_back() {
    let text =
        r#"{"a":{" di":{" t__":1}},"b":{" t":[1,{" b":"AP8="}]},"c":[{" u":"12345678123456781234567812345678"}]}"#;
    let value: Value = serde_json::from_str(text).unwrap();
    let d = value.as_dict().unwrap();
    assert_eq!(d["a"].as_dict().unwrap()[" t"], Value::Int(1), "a dict that looks like a tag");
    assert_eq!(d["b"], Value::Tuple(vec![1.into(), Value::Bytes(vec![0, 255])]));
    assert_eq!(serde_json::to_string(&value).unwrap(), text);
    assert_eq!(hipflask::to_tagged_json(d), text, "the same text Flask writes");
}
