//! Any `Serialize` into a [`Value`], and `Value` into any serializer in
//! Flask's tagged form.
//!
//! Mapping: Rust tuples become Python tuples, `serialize_bytes` (e.g.
//! `serde_bytes`) becomes bytes, maps and structs become dicts, unit and
//! `None` become `None`. Map keys that are integers or bools are written as
//! their JSON text, as Python's `json.dumps` does.

use serde::ser::{self, Serialize};

use crate::error::Error;
use crate::value::{Dict, Value};

/// The newtype name under which a [`Value`] passes its tagged form, so that
/// our own serializer can restore the tags while others see plain JSON shapes.
pub(crate) const TAGGED: &str = "$hipflask::Tagged";

/// Converts any serializable value into a session [`Value`].
///
/// ```
/// let v = hipflask::to_value(&("message", 1)).unwrap();
/// assert_eq!(v, hipflask::Value::Tuple(vec!["message".into(), 1.into()]));
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, Error> {
    value.serialize(ValueSerializer)
}

/// A `Value` serializes as Flask's tagged JSON shape: `{" t": [...]}` for a
/// tuple, `{" b": "base64"}` for bytes and so on, and `{" di": ...}` around a
/// dict that would otherwise look like a tag.
impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(TAGGED, &Plain { value: self, tagged: false })
    }
}

/// Serializes the plain-data shape of a value. Tagged types (and dicts that
/// look like tags) are first turned into their tagged form; `tagged` marks
/// data that already is one, whose `{" t": ...}` maps must be written as they
/// are rather than tagged again.
struct Plain<'a> {
    value: &'a Value,
    tagged: bool,
}

impl Serialize for Plain<'_> {
    fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap as _, SerializeSeq as _};
        let tagged = self.tagged;
        match self.value {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::BigInt(b) => match b.to_i128() {
                Some(n) => s.serialize_i128(n),
                None => s.serialize_str(b.as_str()),
            },
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&Plain { value, tagged })?;
                }
                seq.end()
            }
            Value::Dict(d) if tagged || !crate::json::looks_like_tag(d) => {
                let mut m = s.serialize_map(Some(d.len()))?;
                for (k, value) in d {
                    m.serialize_entry(k, &Plain { value, tagged })?;
                }
                m.end()
            }
            other => Plain { value: &crate::de::tagged_form(other), tagged: true }.serialize(s),
        }
    }
}

/// Builds a [`Value`] from any `Serialize`.
pub(crate) struct ValueSerializer;

fn key_error() -> Error {
    Error::encode("session dict keys must be strings, integers or bools")
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = VariantBuilder<SeqBuilder>;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = VariantBuilder<MapBuilder>;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        Ok(Value::from_i128(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        Ok(Value::from_u128(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        Ok(Value::Float(f64::from(v)))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Value, Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Value, Error> {
        Ok(Value::Str(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, v: &T) -> Result<Value, Error> {
        let value = v.serialize(ValueSerializer)?;
        if name == TAGGED { crate::de::untag_tree(value) } else { Ok(value) }
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, Error> {
        let mut d = Dict::new();
        d.insert(variant.to_owned(), v.serialize(ValueSerializer)?);
        Ok(Value::Dict(d))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder { items: Vec::with_capacity(len.unwrap_or(0)), tuple: false })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder { items: Vec::with_capacity(len), tuple: true })
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder { items: Vec::with_capacity(len), tuple: false })
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantBuilder<SeqBuilder>, Error> {
        Ok(VariantBuilder { variant, inner: self.serialize_tuple_struct("", len)? })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapBuilder, Error> {
        Ok(MapBuilder { dict: Dict::new(), key: None })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapBuilder, Error> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<VariantBuilder<MapBuilder>, Error> {
        Ok(VariantBuilder { variant, inner: self.serialize_map(None)? })
    }
}

pub(crate) struct SeqBuilder {
    items: Vec<Value>,
    tuple: bool,
}

impl SeqBuilder {
    fn push<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.items.push(v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn finish(self) -> Value {
        if self.tuple { Value::Tuple(self.items) } else { Value::List(self.items) }
    }
}

macro_rules! seq_builder {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for SeqBuilder {
            type Ok = Value;
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
                self.push(v)
            }
            fn end(self) -> Result<Value, Error> {
                Ok(self.finish())
            }
        }
    )*};
}
seq_builder!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field);

pub(crate) struct MapBuilder {
    dict: Dict,
    key: Option<String>,
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = Some(match key.serialize(ValueSerializer)? {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            Value::BigInt(b) => b.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".to_owned(),
            _ => return Err(key_error()),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        let key = self.key.take().ok_or_else(key_error)?;
        self.dict.insert(key, v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Dict(self.dict))
    }
}

impl ser::SerializeStruct for MapBuilder {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), Error> {
        self.dict.insert(key.to_owned(), v.serialize(ValueSerializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Dict(self.dict))
    }
}

/// An enum variant with data: `{variant: data}`, as serde_json writes it.
pub(crate) struct VariantBuilder<B> {
    variant: &'static str,
    inner: B,
}

impl<B> VariantBuilder<B> {
    fn wrap(variant: &'static str, value: Value) -> Value {
        let mut d = Dict::new();
        d.insert(variant.to_owned(), value);
        Value::Dict(d)
    }
}

impl ser::SerializeTupleVariant for VariantBuilder<SeqBuilder> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Error> {
        self.inner.push(v)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Self::wrap(self.variant, self.inner.finish()))
    }
}

impl ser::SerializeStructVariant for VariantBuilder<MapBuilder> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<(), Error> {
        ser::SerializeStruct::serialize_field(&mut self.inner, key, v)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Self::wrap(self.variant, Value::Dict(self.inner.dict)))
    }
}
