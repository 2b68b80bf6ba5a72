//! Codec micro-benchmarks: encode+sign and decode+verify of the seed
//! sessions and of a 2 KiB session, plus the tagged-JSON steps alone.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hipflask::{CookieCodec, Dict, SecretKey, parse_tagged_json, to_tagged_json};

const NOW: u64 = 1_700_000_000;

/// The sessions measured, as Flask's tagged JSON.
fn sessions() -> Vec<(&'static str, Dict)> {
    let mut cart_2k = String::from(r#"{"csrf_token":"4c3d1b2e9f7a6b5c8d0e1f2a3b4c5d6e7f8a9b0c","items":["#);
    for i in 0..23 {
        if i > 0 {
            cart_2k.push(',');
        }
        cart_2k.push_str(&format!(
            r#"{{"name":"Item number {i} with a name","price":{}.99,"qty":{},"sku":"SKU-{i:04}-{:x}"}}"#,
            i * 3,
            i % 5 + 1,
            i * 7919
        ));
    }
    cart_2k.push_str(r#"],"user_id":42}"#);
    let cart_2k = parse_tagged_json(&cart_2k).unwrap();
    assert!((1900..2300).contains(&to_tagged_json(&cart_2k).len()), "{}", to_tagged_json(&cart_2k).len());
    vec![
        // The HTTP benchmark's session (`/bench/write`).
        ("visits", parse_tagged_json(r#"{"_permanent":true,"visits":12}"#).unwrap()),
        ("user_pwd", parse_tagged_json(r#"{"pwd":"password","user":"poloyy"}"#).unwrap()),
        ("cart", parse_tagged_json(r#"{"cart_item":{"apples":"20","mangoes":"30","pineapples":"10"}}"#).unwrap()),
        ("session_2k", cart_2k),
    ]
}

fn codec(c: &mut Criterion) {
    let codec = CookieCodec::new(&SecretKey::new("secret").unwrap(), &[], 2_678_400);
    for (name, session) in sessions() {
        let cookie = codec.encode(&session, NOW);
        c.bench_function(&format!("encode_sign/{name}"), |b| b.iter(|| codec.encode(black_box(&session), NOW)));
        // A cookie seen before: the codec remembers cookies it verified.
        c.bench_function(&format!("decode_verify_again/{name}"), |b| {
            b.iter(|| codec.decode(black_box(&cookie), NOW).unwrap())
        });
        // First sight of each cookie: 20,000 distinct ones in turn, far more
        // than the codec remembers, so each decode does the full work.
        let distinct: Vec<String> = (0..20_000).map(|i| codec.encode(&session, NOW - i)).collect();
        let mut next = distinct.iter().cycle();
        c.bench_function(&format!("decode_verify/{name}"), |b| {
            b.iter(|| codec.decode(black_box(next.next().unwrap()), NOW).unwrap())
        });
        let json = to_tagged_json(&session);
        c.bench_function(&format!("tagged_json_write/{name}"), |b| b.iter(|| to_tagged_json(black_box(&session))));
        c.bench_function(&format!("tagged_json_parse/{name}"), |b| {
            b.iter(|| parse_tagged_json(black_box(&json)).unwrap())
        });
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
