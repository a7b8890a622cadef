//! A token's claims as JSON, refusing any object that names a key twice, at any
//! depth.
//!
//! JSON leaves duplicate keys undefined and parsers disagree: `serde_json` keeps the
//! last, others keep the first or refuse. A token holding `"roles"` twice could then
//! grant one role here and another to any other reader of the same token, and the
//! issuer may have checked a third. RFC 7519 (section 4) lets a recipient reject
//! such a token; this server does, whatever the key and however deep.
//!
//! The payload is decoded (base64url, then JSON) before the signature is checked, so
//! that a duplicate costs no key lookup and no cryptography; the claims used
//! afterwards are these, parsed from exactly the bytes whose signature and
//! registered claims `jsonwebtoken` then checks. Nothing here trusts the content:
//! it only parses it.

use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::{TokenError, echo};

/// The claims of a compact JWS `token` (already checked to be three base64url
/// parts) as a JSON object.
///
/// # Errors
/// [`TokenError::DuplicateClaim`] naming the first key found twice (with its path,
/// e.g. `realm_access.roles`); [`TokenError::Malformed`] when the payload is not
/// base64url of a JSON object.
pub(crate) fn parse(token: &str) -> Result<Map<String, Value>, TokenError> {
    let not_an_object = TokenError::Malformed("its claims are not a JSON object");
    let payload = token
        .split('.')
        .nth(1)
        .ok_or(TokenError::Malformed("it has no claims part"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("a part is not base64url"))?;
    let duplicate = RefCell::new(None);
    let mut json = serde_json::Deserializer::from_slice(&bytes);
    let parsed = Strict {
        duplicate: &duplicate,
    }
    .deserialize(&mut json)
    .and_then(|value| json.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some(path)) => Err(TokenError::DuplicateClaim(display_path(path))),
        (Ok(Value::Object(claims)), None) => Ok(claims),
        _ => Err(not_an_object),
    }
}

/// One step of the path to a duplicate key.
enum Segment {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// The path as `a.b[2].c`, quoted and shortened as client input is.
fn display_path(mut innermost_first: Vec<Segment>) -> String {
    innermost_first.reverse();
    let mut path = String::new();
    for segment in innermost_first {
        match segment {
            Segment::Key(key) if path.is_empty() => path.push_str(&key),
            Segment::Key(key) => {
                path.push('.');
                path.push_str(&key);
            }
            Segment::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    format!("{:?}", echo(&path))
}

/// Parses any JSON value as `serde_json::Value` does, except that an object naming
/// a key twice is an error. The path to that key is left in `duplicate`,
/// innermost segment first (each enclosing level adds its own on the way out), so
/// that the error can name it: a `serde_json::Error` carries only text.
struct Strict<'a> {
    duplicate: &'a RefCell<Option<Vec<Segment>>>,
}

impl Strict<'_> {
    /// Adds the enclosing `segment` to the path of a duplicate found below it.
    fn enclosing(&self, segment: impl FnOnce() -> Segment) {
        if let Some(path) = self.duplicate.borrow_mut().as_mut() {
            path.push(segment());
        }
    }

    fn child(&self) -> Strict<'_> {
        Strict {
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // As serde_json's own `Value`: JSON has no NaN or infinity anyway.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let index = items.len();
            match seq.next_element_seed(self.child()) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(error) => {
                    self.enclosing(|| Segment::Index(index));
                    return Err(error);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(vec![Segment::Key(key)]);
                return Err(de::Error::custom("duplicate key"));
            }
            match map.next_value_seed(self.child()) {
                Ok(value) => {
                    object.insert(key, value);
                }
                Err(error) => {
                    self.enclosing(|| Segment::Key(key));
                    return Err(error);
                }
            }
        }
        Ok(Value::Object(object))
    }
}
