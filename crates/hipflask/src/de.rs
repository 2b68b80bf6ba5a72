//! Reading a [`Value`] as any `Deserialize` type, and building a `Value`
//! from any deserializer (e.g. JSON in Flask's tagged form).
//!
//! A session value shows itself to serde as plain data: a tuple as a
//! sequence, bytes as bytes (or a sequence of `u8`, so `Vec<u8>` works), a
//! UUID as its hyphenated string (what `uuid::Uuid` reads), a datetime as an
//! RFC 3339 string (what `chrono` and `time::serde::rfc3339` read).

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, Deserialize, DeserializeOwned, IntoDeserializer, Visitor};

use crate::error::Error;
use crate::ser::TAGGED;
use crate::value::{Dict, Value};

/// Reads a session [`Value`] as `T`.
///
/// ```
/// let v = hipflask::Value::Tuple(vec![1.into(), 2.into()]);
/// let pair: (i32, i32) = hipflask::from_value(&v).unwrap();
/// assert_eq!(pair, (1, 2));
/// ```
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Error> {
    T::deserialize(ValueDeserializer(value))
}

/// Applies Flask's untagging bottom-up to a value built from plain data.
pub(crate) fn untag_tree(value: Value) -> Result<Value, Error> {
    let decode_err = |m: &str| Error::new(crate::ErrorKind::Decode, format!("bad tagged value: {m}"));
    match value {
        Value::List(items) => Ok(Value::List(items.into_iter().map(untag_tree).collect::<Result<_, _>>()?)),
        Value::Tuple(items) => Ok(Value::Tuple(items.into_iter().map(untag_tree).collect::<Result<_, _>>()?)),
        Value::Dict(d) => {
            let mut out = Dict::new();
            for (k, v) in d {
                out.insert(k, untag_tree(v)?);
            }
            if crate::json::looks_like_tag(&out) {
                let (tag, member) = out.pop_first().unwrap_or_default();
                let first = member.as_dict().and_then(|d| d.keys().next().cloned());
                return crate::json::untag(&tag, member, first).map_err(decode_err);
            }
            Ok(Value::Dict(out))
        }
        other => Ok(other),
    }
}

/// The tagged form of a value as plain data: the shape `Value::serialize`
/// writes, and the shape `Value::deserialize` reads back exactly.
pub(crate) fn tagged_form(value: &Value) -> Value {
    fn tag(name: &str, v: Value) -> Value {
        Value::Dict(Dict::from([(name.to_owned(), v)]))
    }
    match value {
        Value::List(items) => Value::List(items.iter().map(tagged_form).collect()),
        Value::Tuple(items) => tag(" t", Value::List(items.iter().map(tagged_form).collect())),
        Value::Dict(d) => match d.iter().next() {
            Some((k, v)) if crate::json::looks_like_tag(d) => tag(" di", tag(&format!("{k}__"), tagged_form(v))),
            _ => Value::Dict(d.iter().map(|(k, v)| (k.clone(), tagged_form(v))).collect()),
        },
        Value::Bytes(b) => {
            use base64::Engine as _;
            tag(" b", Value::Str(base64::engine::general_purpose::STANDARD.encode(b)))
        }
        Value::Markup(m) => tag(" m", Value::Str(m.clone())),
        Value::Uuid(u) => tag(" u", Value::Str(u.simple().to_string())),
        Value::DateTime(d) => tag(" d", Value::Str(d.to_string())),
        other => other.clone(),
    }
}

struct ValueDeserializer<'a>(&'a Value);

impl<'de> IntoDeserializer<'de, Error> for ValueDeserializer<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

fn seq(items: &[Value]) -> SeqDeserializer<impl Iterator<Item = ValueDeserializer<'_>>, Error> {
    SeqDeserializer::new(items.iter().map(ValueDeserializer))
}

// Strings are handed over with `visit_str`, never borrowed, so a temporary
// value (the tagged form below) can be served as well as a session's own.
impl<'de> de::Deserializer<'de> for ValueDeserializer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::BigInt(b) => match b.to_i128() {
                Some(n) => visitor.visit_i128(n),
                None => visitor.visit_str(b.as_str()),
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) | Value::Markup(s) => visitor.visit_str(s),
            Value::List(items) | Value::Tuple(items) => {
                let mut access = seq(items);
                let out = visitor.visit_seq(&mut access)?;
                access.end()?;
                Ok(out)
            }
            Value::Dict(d) => {
                let mut access =
                    MapDeserializer::new(d.iter().map(|(k, v)| (StrDeserializer::new(k), ValueDeserializer(v))));
                let out = visitor.visit_map(&mut access)?;
                access.end()?;
                Ok(out)
            }
            Value::Bytes(b) => visitor.visit_bytes(b),
            Value::Uuid(u) => visitor.visit_string(u.hyphenated().to_string()),
            Value::DateTime(d) => visitor.visit_string(crate::date::rfc3339(d.unix())),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Bytes(b) => {
                let mut access = SeqDeserializer::new(b.iter().copied());
                let out = visitor.visit_seq(&mut access)?;
                access.end()?;
                Ok(out)
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, Error> {
        if name == TAGGED {
            return visitor.visit_newtype_struct(ValueDeserializer(&tagged_form(self.0)));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Str(s) => visitor.visit_enum(StrDeserializer::<Error>::new(s)),
            Value::Dict(d) if d.len() == 1 => {
                let (k, v) = d.iter().next().ok_or_else(|| de::Error::custom("empty enum map"))?;
                visitor.visit_enum(EnumAccess { variant: k, value: v })
            }
            other => Err(de::Error::invalid_type(unexpected(other), &"an enum variant")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct map struct identifier ignored_any
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Int(i) => de::Unexpected::Signed(*i),
        Value::Float(f) => de::Unexpected::Float(*f),
        Value::Str(s) => de::Unexpected::Str(s),
        Value::Bytes(b) => de::Unexpected::Bytes(b),
        Value::List(_) | Value::Tuple(_) => de::Unexpected::Seq,
        Value::Dict(_) => de::Unexpected::Map,
        other => de::Unexpected::Other(other.type_name()),
    }
}

struct EnumAccess<'a> {
    variant: &'a str,
    value: &'a Value,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = Error;
    type Variant = ValueDeserializer<'a>;
    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self::Variant), Error> {
        let v = seed.deserialize(StrDeserializer::<Error>::new(self.variant))?;
        Ok((v, ValueDeserializer(self.value)))
    }
}

impl<'de> de::VariantAccess<'de> for ValueDeserializer<'_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

/// A `Value` reads any self-describing input as Flask's tagged JSON: plain
/// data, where a one-key object whose key is a tag name (`" t"`, `" b"`,
/// `" di"`, ...) is decoded as that tag.
///
/// ```
/// let v: hipflask::Value = serde_json::from_str(r#"{"cart":{" t":[1,2]}}"#).unwrap();
/// assert_eq!(v.as_dict().unwrap()["cart"], hipflask::Value::Tuple(vec![1.into(), 2.into()]));
/// ```
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_newtype_struct(TAGGED, ValueVisitor)
    }
}

/// Builds plain data, then untags it.
struct ValueVisitor;

macro_rules! plain {
    ($($method:ident($t:ty) => $build:expr;)*) => {$(
        fn $method<E: de::Error>(self, v: $t) -> Result<Value, E> {
            #[allow(clippy::redundant_closure_call)]
            Ok(($build)(v))
        }
    )*};
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Flask session value (tagged JSON)")
    }

    plain! {
        visit_bool(bool) => Value::Bool;
        visit_i64(i64) => Value::Int;
        visit_i128(i128) => Value::from_i128;
        visit_u64(u64) => Value::from;
        visit_u128(u128) => Value::from_u128;
        visit_f64(f64) => Value::Float;
        visit_str(&str) => |s: &str| Value::Str(s.to_owned());
        visit_string(String) => Value::Str;
        visit_bytes(&[u8]) => |b: &[u8]| Value::Bytes(b.to_vec());
        visit_byte_buf(Vec<u8>) => Value::Bytes;
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let plain = d.deserialize_any(ValueVisitor)?;
        untag_tree(plain).map_err(de::Error::custom)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(PlainSeed)? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut d = Dict::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(PlainSeed)?;
            d.insert(key, value);
        }
        Ok(Value::Dict(d))
    }
}

/// Nested values are read plain; the untagging runs once over the whole tree.
struct PlainSeed;

impl<'de> de::DeserializeSeed<'de> for PlainSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}
