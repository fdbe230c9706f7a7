//! Values: MessagePack inside the cluster, JSON at the shell, checked
//! against the declared [`Type`]s.

use rmpv::Value;
use serde_json::Value as Json;

use crate::Type;

/// How deep a MessagePack value read from outside may nest.
pub const MAX_VALUE_DEPTH: usize = 256;

/// A value that does not fit its type, with where inside the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Path inside the value, such as `[2].name`; empty for the value itself.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
}

impl Mismatch {
    fn new(expected: &Type, found: String) -> Mismatch {
        Mismatch {
            path: String::new(),
            message: format!("expected {expected}, got {found}"),
        }
    }

    fn at(mut self, segment: String) -> Mismatch {
        self.path.insert_str(0, &segment);
        self
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at {}: {}", self.path, self.message)
        }
    }
}

fn describe_json(json: &Json) -> String {
    match json {
        Json::Null => "null".to_owned(),
        Json::Bool(b) => format!("bool {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        Json::String(s) => format!("string {s:?}"),
        Json::Array(items) => format!("an array of {} item(s)", items.len()),
        Json::Object(_) => "an object".to_owned(),
    }
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Nil => "nil".to_owned(),
        Value::Boolean(b) => format!("bool {b}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::F32(x) => format!("float {x}"),
        Value::F64(x) => format!("float {x}"),
        Value::String(s) => match s.as_str() {
            Some(text) if text.len() <= 40 => format!("string {text:?}"),
            _ => format!("a string of {} bytes", s.as_bytes().len()),
        },
        Value::Binary(bytes) => format!("{} bytes of binary", bytes.len()),
        Value::Array(items) => format!("an array of {} item(s)", items.len()),
        Value::Map(_) => "a map".to_owned(),
        Value::Ext(tag, _) => format!("extension type {tag}"),
    }
}

fn int_fits(ty: &Type, value: &rmpv::Integer) -> bool {
    match *ty {
        Type::Int(bits) => value.as_i64().is_some_and(|v| {
            bits == 64 || (v >= -(1i64 << (bits - 1)) && v < (1i64 << (bits - 1)))
        }),
        Type::UInt(bits) => value
            .as_u64()
            .is_some_and(|v| bits == 64 || v < (1u64 << bits)),
        _ => false,
    }
}

/// Converts a JSON value to MessagePack as `ty` expects it, or says why it
/// does not fit. Object keys become integers for `map<integer,_>`.
pub fn json_to_value(ty: &Type, json: &Json) -> Result<Value, Mismatch> {
    let wrong = || Mismatch::new(ty, describe_json(json));
    Ok(match (ty, json) {
        (Type::Any | Type::Named(_), _) => json_to_value_untyped(json),
        (Type::Unit, Json::Null) => Value::Nil,
        (Type::Bool, Json::Bool(b)) => Value::Boolean(*b),
        (Type::Int(_) | Type::UInt(_), Json::Number(n)) => {
            let value = if let Some(v) = n.as_u64() {
                Value::from(v)
            } else if let Some(v) = n.as_i64() {
                Value::from(v)
            } else {
                return Err(wrong());
            };
            match &value {
                Value::Integer(i) if int_fits(ty, i) => value,
                _ => {
                    return Err(Mismatch {
                        path: String::new(),
                        message: format!("{n} is out of range for {ty}"),
                    });
                }
            }
        }
        (Type::F32, Json::Number(n)) => Value::F32(n.as_f64().ok_or_else(wrong)? as f32),
        (Type::F64, Json::Number(n)) => Value::F64(n.as_f64().ok_or_else(wrong)?),
        (Type::String, Json::String(s)) => Value::from(s.as_str()),
        (Type::Bytes, Json::Array(items)) => {
            let mut bytes = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let byte = item.as_u64().filter(|b| *b <= 255).ok_or_else(|| {
                    Mismatch::new(&Type::UInt(8), describe_json(item)).at(format!("[{i}]"))
                })?;
                bytes.push(byte as u8);
            }
            Value::Binary(bytes)
        }
        (Type::Bytes, Json::String(s)) => Value::Binary(s.as_bytes().to_vec()),
        (Type::Option(_), Json::Null) => Value::Nil,
        (Type::Option(inner), _) => json_to_value(inner, json)?,
        (Type::List(item), Json::Array(items)) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| json_to_value(item, x).map_err(|e| e.at(format!("[{i}]"))))
                .collect::<Result<_, _>>()?,
        ),
        (Type::Tuple(types), Json::Array(items)) => {
            if types.len() != items.len() {
                return Err(wrong());
            }
            Value::Array(
                types
                    .iter()
                    .zip(items)
                    .enumerate()
                    .map(|(i, (t, x))| json_to_value(t, x).map_err(|e| e.at(format!("[{i}]"))))
                    .collect::<Result<_, _>>()?,
            )
        }
        (Type::Map(key_type, value_type), Json::Object(entries)) => {
            let mut pairs = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key_value = match **key_type {
                    Type::String | Type::Any | Type::Named(_) => Value::from(key.as_str()),
                    Type::Int(_) | Type::UInt(_) => {
                        let number: serde_json::Number = key.parse().map_err(|_| {
                            Mismatch::new(key_type, format!("key {key:?}")).at(format!(".{key}"))
                        })?;
                        json_to_value(key_type, &Json::Number(number))
                            .map_err(|e| e.at(format!(".{key}")))?
                    }
                    _ => {
                        return Err(
                            Mismatch::new(key_type, format!("key {key:?}")).at(format!(".{key}"))
                        );
                    }
                };
                pairs.push((
                    key_value,
                    json_to_value(value_type, value).map_err(|e| e.at(format!(".{key}")))?,
                ));
            }
            Value::Map(pairs)
        }
        (Type::Map(_, _), Json::Array(items)) => {
            // A map given as [[key, value], ...], for keys JSON cannot spell.
            let pair_type = Type::Tuple(match ty {
                Type::Map(k, v) => vec![(**k).clone(), (**v).clone()],
                _ => unreachable!(),
            });
            let mut pairs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match json_to_value(&pair_type, item).map_err(|e| e.at(format!("[{i}]")))? {
                    Value::Array(mut kv) if kv.len() == 2 => {
                        let v = kv.pop().expect("two");
                        pairs.push((kv.pop().expect("two"), v));
                    }
                    _ => unreachable!("a checked pair"),
                }
            }
            Value::Map(pairs)
        }
        _ => return Err(wrong()),
    })
}

/// Converts JSON to MessagePack with no type to guide it.
pub fn json_to_value_untyped(json: &Json) -> Value {
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(v) = n.as_u64() {
                Value::from(v)
            } else if let Some(v) = n.as_i64() {
                Value::from(v)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(json_to_value_untyped).collect()),
        Json::Object(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), json_to_value_untyped(v)))
                .collect(),
        ),
    }
}

/// Checks that a MessagePack value fits `ty`.
pub fn check_value(ty: &Type, value: &Value) -> Result<(), Mismatch> {
    let wrong = || Err(Mismatch::new(ty, describe_value(value)));
    match (ty, value) {
        (Type::Any | Type::Named(_), _) => Ok(()),
        (Type::Unit, Value::Nil) => Ok(()),
        (Type::Bool, Value::Boolean(_)) => Ok(()),
        (Type::Int(_) | Type::UInt(_), Value::Integer(i)) => {
            if int_fits(ty, i) {
                Ok(())
            } else {
                Err(Mismatch {
                    path: String::new(),
                    message: format!("{i} is out of range for {ty}"),
                })
            }
        }
        // serde reads floats from integers too.
        (Type::F32 | Type::F64, Value::F32(_) | Value::F64(_) | Value::Integer(_)) => Ok(()),
        (Type::String, Value::String(s)) if s.is_str() => Ok(()),
        (Type::Bytes, Value::Binary(_)) => Ok(()),
        (Type::Bytes, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_value(&Type::UInt(8), item).map_err(|e| e.at(format!("[{i}]")))?;
            }
            Ok(())
        }
        (Type::Option(_), Value::Nil) => Ok(()),
        (Type::Option(inner), _) => check_value(inner, value),
        (Type::List(item), Value::Array(items)) => {
            for (i, x) in items.iter().enumerate() {
                check_value(item, x).map_err(|e| e.at(format!("[{i}]")))?;
            }
            Ok(())
        }
        (Type::Tuple(types), Value::Array(items)) if types.len() == items.len() => {
            for (i, (t, x)) in types.iter().zip(items).enumerate() {
                check_value(t, x).map_err(|e| e.at(format!("[{i}]")))?;
            }
            Ok(())
        }
        (Type::Map(key_type, value_type), Value::Map(pairs)) => {
            for (key, x) in pairs {
                let at = || format!(".{}", key_label(key));
                check_value(key_type, key).map_err(|e| e.at(at()))?;
                check_value(value_type, x).map_err(|e| e.at(at()))?;
            }
            Ok(())
        }
        _ => wrong(),
    }
}

fn key_label(key: &Value) -> String {
    match key {
        Value::String(s) => s
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "<bytes>".to_owned()),
        other => other.to_string(),
    }
}

/// Converts a MessagePack value to JSON for people and shells. Binary becomes
/// an array of byte values, non-string map keys become their JSON text, and
/// non-finite floats become the strings `"NaN"`, `"inf"` and `"-inf"`.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => {
            if let Some(v) = i.as_u64() {
                Json::from(v)
            } else {
                Json::from(i.as_i64().unwrap_or_default())
            }
        }
        Value::F32(x) => float_to_json(f64::from(*x)),
        Value::F64(x) => float_to_json(*x),
        Value::String(s) => match s.as_str() {
            Some(text) => Json::from(text),
            None => Json::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        },
        Value::Binary(bytes) => Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()),
        Value::Array(items) => Json::Array(items.iter().map(value_to_json).collect()),
        Value::Map(pairs) => Json::Object(
            pairs
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) if s.is_str() => s.as_str().unwrap_or_default().to_owned(),
                        other => value_to_json(other).to_string(),
                    };
                    (key, value_to_json(v))
                })
                .collect(),
        ),
        Value::Ext(tag, bytes) => serde_json::json!({ "ext": tag, "data": bytes }),
    }
}

fn float_to_json(x: f64) -> Json {
    match serde_json::Number::from_f64(x) {
        Some(n) => Json::Number(n),
        None if x.is_nan() => Json::from("NaN"),
        None if x > 0.0 => Json::from("inf"),
        None => Json::from("-inf"),
    }
}

/// Decodes one MessagePack value, bounded in nesting, and requires that it
/// uses every byte.
pub fn decode_value(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_VALUE_DEPTH)
        .map_err(|error| format!("malformed MessagePack: {error}"))?;
    if !reader.is_empty() {
        return Err(format!(
            "{} bytes left after the MessagePack value",
            reader.len()
        ));
    }
    if let Err(offset) = crate::encoded::well_formed(bytes) {
        return Err(match bytes.get(offset) {
            Some(0xc1) => format!(
                "malformed MessagePack: the reserved byte 0xc1 at offset {offset} is not a value"
            ),
            _ => format!("malformed MessagePack at offset {offset}"),
        });
    }
    Ok(value)
}

/// Encodes a value as MessagePack.
pub fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn t(text: &str) -> Type {
        Type::parse(text).unwrap()
    }

    #[test]
    fn typed_conversion_checks_ranges_and_shapes() {
        assert_eq!(
            json_to_value(&t("i64"), &json!(-5)).unwrap(),
            Value::from(-5)
        );
        assert!(
            json_to_value(&t("u8"), &json!(300))
                .unwrap_err()
                .message
                .contains("out of range for u8")
        );
        assert!(json_to_value(&t("i8"), &json!(-129)).is_err());
        assert!(
            json_to_value(&t("i64"), &json!(1.5))
                .unwrap_err()
                .message
                .contains("expected i64, got number 1.5")
        );
        assert!(
            json_to_value(&t("i64"), &json!("a"))
                .unwrap_err()
                .message
                .contains("string \"a\"")
        );
        let err = json_to_value(&t("list<i64>"), &json!([1, 2, "x"])).unwrap_err();
        assert_eq!(err.to_string(), "at [2]: expected i64, got string \"x\"");
        assert!(json_to_value(&t("tuple<u64,u64>"), &json!([1])).is_err());
        assert_eq!(
            json_to_value(&t("f64"), &json!(2)).unwrap(),
            Value::F64(2.0)
        );
        assert_eq!(
            json_to_value(&t("option<i64>"), &json!(null)).unwrap(),
            Value::Nil
        );
        let map = json_to_value(&t("map<u32,string>"), &json!({"7": "seven"})).unwrap();
        assert_eq!(
            map,
            Value::Map(vec![(Value::from(7u64), Value::from("seven"))])
        );
        assert!(json_to_value(&t("map<u32,string>"), &json!({"x": "seven"})).is_err());
        // Named types pass through for the guest to check.
        assert!(json_to_value(&t("Point"), &json!({"x": 1})).is_ok());
    }

    #[test]
    fn check_value_matches_json_checks() {
        assert!(
            check_value(
                &t("list<i64>"),
                &Value::Array(vec![Value::from(1), Value::from("x")])
            )
            .is_err()
        );
        assert!(check_value(&t("f64"), &Value::from(3)).is_ok());
        assert!(check_value(&t("u8"), &Value::from(256)).is_err());
        assert!(check_value(&t("unit"), &Value::Nil).is_ok());
    }

    #[test]
    fn malformed_and_too_deep_msgpack_is_an_error() {
        assert!(decode_value(&[0x92, 0x01]).is_err()); // array of 2, one item
        assert!(
            decode_value(&[0x01, 0x02])
                .unwrap_err()
                .contains("left after")
        );
        let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 10_000).chain([0xc0]).collect();
        assert!(decode_value(&deep).is_err());
    }

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            (-1e300f64..1e300).prop_map(Json::from),
            ".{0,20}".prop_map(Json::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..8)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn json_msgpack_json_round_trips(json in arb_json()) {
            let value = json_to_value(&Type::Any, &json).unwrap();
            let bytes = encode_value(&value);
            let decoded = decode_value(&bytes).unwrap();
            prop_assert_eq!(&decoded, &value);
            prop_assert_eq!(value_to_json(&decoded), json);
        }

        #[test]
        fn typed_lists_of_integers_round_trip(xs in prop::collection::vec(any::<i64>(), 0..100)) {
            let json = Json::from(xs.clone());
            let value = json_to_value(&t("list<i64>"), &json).unwrap();
            check_value(&t("list<i64>"), &value).unwrap();
            let back: Vec<i64> = rmp_serde::from_slice(&encode_value(&value)).unwrap();
            prop_assert_eq!(back, xs);
        }
    }
}
