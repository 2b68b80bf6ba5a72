//! The session value model: Python's JSON-able types plus Flask's tagged ones.
//!
//! Flask cookies round-trip tuples, bytes, `Markup`, UUIDs and datetimes and
//! keep integers apart from floats; a faithful re-encode needs every one of
//! those distinctions, so `Value` keeps them all.

use std::collections::BTreeMap;
use std::fmt;

use crate::date;

/// A session dict: string keys, kept in code-point order, which is the order
/// Flask's `sort_keys=True` writes them in.
pub type Dict = BTreeMap<String, Value>;

/// One value of a Flask session.
///
/// ```
/// use hipflask::Value;
///
/// let v = Value::from(vec![Value::from(1), Value::from("two")]);
/// assert_eq!(v.as_list().unwrap().len(), 2);
/// assert_eq!(Value::from(3).as_i64(), Some(3));
/// assert_eq!(Value::from(3.0).as_i64(), None); // an int is not a float
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    /// `None`.
    #[default]
    Null,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A Python integer beyond 64 bits, kept exactly.
    BigInt(BigInt),
    /// A float; `NaN` and the infinities included, as Python allows them.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<Value>),
    /// A tuple (Flask tag `" t"`); Rust tuples become these.
    Tuple(Vec<Value>),
    /// A dict with string keys.
    Dict(Dict),
    /// Bytes (Flask tag `" b"`).
    Bytes(Vec<u8>),
    /// `markupsafe.Markup`: HTML that is already safe (Flask tag `" m"`).
    Markup(String),
    /// A UUID (Flask tag `" u"`).
    Uuid(uuid::Uuid),
    /// An aware UTC datetime with whole seconds (Flask tag `" d"`).
    DateTime(DateTime),
}

/// A Python integer outside the `i64` range, held as its canonical decimal text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BigInt(Box<str>);

impl BigInt {
    /// Parses canonical decimal text (`-?[1-9][0-9]*`); returns `None` for
    /// anything else. Values that fit in `i64` are better held as [`Value::Int`].
    pub fn parse(text: &str) -> Option<BigInt> {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical.then(|| BigInt(text.into()))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as `i128`, when it fits.
    pub fn to_i128(&self) -> Option<i128> {
        self.0.parse().ok()
    }
}

impl fmt::Debug for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An aware UTC datetime in whole seconds, within Python's year 1 to 9999.
///
/// Flask drops sub-second precision and the offset when it tags a datetime, so
/// this is exactly what survives a cookie.
///
/// ```
/// use hipflask::DateTime;
/// let dt = DateTime::from_unix(1_700_000_000).unwrap();
/// assert_eq!(dt.to_string(), "Tue, 14 Nov 2023 22:13:20 GMT");
/// assert_eq!(dt.to_offset_date_time().unix_timestamp(), 1_700_000_000);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime(i64);

impl DateTime {
    /// From Unix seconds; `None` outside years 1 to 9999.
    pub fn from_unix(seconds: i64) -> Option<DateTime> {
        (date::MIN_UNIX..=date::MAX_UNIX).contains(&seconds).then_some(DateTime(seconds))
    }

    /// Unix seconds.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// As a `time::OffsetDateTime` in UTC.
    pub fn to_offset_date_time(self) -> time::OffsetDateTime {
        // The range check in every constructor keeps this within `time`'s range.
        time::OffsetDateTime::from_unix_timestamp(self.0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// Parses an RFC 2822 date as Werkzeug's `parse_date` does.
    pub(crate) fn parse_http(text: &str) -> Option<DateTime> {
        date::parse_rfc2822(text).and_then(DateTime::from_unix)
    }
}

impl fmt::Debug for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&date::rfc3339(self.0))
    }
}

/// Formats as an HTTP date, the text Flask stores in a `" d"` tag.
impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&date::http_date(self.0))
    }
}

/// Converts to UTC and truncates to whole seconds, as Flask does; fails outside
/// years 1 to 9999, which Python cannot represent.
impl TryFrom<time::OffsetDateTime> for DateTime {
    type Error = crate::Error;

    fn try_from(value: time::OffsetDateTime) -> Result<Self, Self::Error> {
        DateTime::from_unix(value.unix_timestamp()).ok_or_else(|| {
            crate::Error::encode(format!("datetime {value} is outside the years 1 to 9999 that Python supports"))
        })
    }
}

impl From<DateTime> for time::OffsetDateTime {
    fn from(value: DateTime) -> Self {
        value.to_offset_date_time()
    }
}

impl Value {
    /// The string, for `Str` and `Markup`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Markup(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, for `Int` only (a bool or float is not an int here).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number as `f64`, for `Float` and `Int`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Option<uuid::Uuid> {
        match self {
            Value::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    /// The datetime, as a `time::OffsetDateTime` in UTC.
    pub fn as_datetime(&self) -> Option<time::OffsetDateTime> {
        match self {
            Value::DateTime(d) => Some(d.to_offset_date_time()),
            _ => None,
        }
    }

    /// The items of a `List` or a `Tuple`.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The dict.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The dict, mutably (for changing a nested value in place; see
    /// [`Session::with_value_mut`](crate::Session::with_value_mut)).
    pub fn as_dict_mut(&mut self) -> Option<&mut Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Whether this is `None`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Python's truthiness: empty containers, zero, `""` and `None` are false.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::BigInt(_) | Value::Uuid(_) | Value::DateTime(_) => true,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) | Value::Markup(s) => !s.is_empty(),
            Value::List(v) | Value::Tuple(v) => !v.is_empty(),
            Value::Dict(d) => !d.is_empty(),
            Value::Bytes(b) => !b.is_empty(),
        }
    }

    /// The name of the Python type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Bytes(_) => "bytes",
            Value::Markup(_) => "Markup",
            Value::Uuid(_) => "UUID",
            Value::DateTime(_) => "datetime",
        }
    }

    /// An integer from `i128`, as `Int` when it fits in 64 bits.
    pub fn from_i128(n: i128) -> Value {
        match i64::try_from(n) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(BigInt(n.to_string().into())),
        }
    }

    /// An integer from `u128`, as `Int` when it fits in 64 bits.
    pub fn from_u128(n: u128) -> Value {
        match i64::try_from(n) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(BigInt(n.to_string().into())),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Value { Value::Int(i64::from(n)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::from_u128(u128::from(n))
    }
}
impl From<i128> for Value {
    fn from(n: i128) -> Value {
        Value::from_i128(n)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::List(v)
    }
}
impl From<Dict> for Value {
    fn from(d: Dict) -> Value {
        Value::Dict(d)
    }
}
impl From<uuid::Uuid> for Value {
    fn from(u: uuid::Uuid) -> Value {
        Value::Uuid(u)
    }
}
impl From<DateTime> for Value {
    fn from(d: DateTime) -> Value {
        Value::DateTime(d)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map_or(Value::Null, Into::into)
    }
}
