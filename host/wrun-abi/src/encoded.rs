//! Checks encoded MessagePack against a [`Type`] without decoding it.
//!
//! Every task's arguments are checked before it runs and every result
//! after, so this is on the path of each task: walking the bytes allocates
//! nothing, where [`decode_value`](crate::decode_value) builds a tree (and
//! would copy a 64 MiB `bytes` result to check it). Only when a value does
//! not fit is it decoded, to say precisely where and why.

use crate::Type;
use crate::values::{MAX_VALUE_DEPTH, Mismatch, check_value, decode_value};

/// Why encoded bytes are not a value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodedMismatch {
    /// Not one well-formed MessagePack value (or bytes left after it).
    Malformed(String),
    /// A well-formed value of another type.
    Type(Mismatch),
}

impl std::fmt::Display for EncodedMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodedMismatch::Malformed(reason) => f.write_str(reason),
            EncodedMismatch::Type(mismatch) => mismatch.fmt(f),
        }
    }
}

/// Checks that `bytes` are exactly one MessagePack value that fits `ty`.
pub fn check_encoded(ty: &Type, bytes: &[u8]) -> Result<(), EncodedMismatch> {
    let mut walker = Walker { bytes, pos: 0 };
    if walker.value(Some(ty), 0).is_ok() && walker.pos == bytes.len() {
        return Ok(());
    }
    // The rare case: decode to say what is wrong.
    let value = decode_value(bytes).map_err(EncodedMismatch::Malformed)?;
    check_value(ty, &value).map_err(EncodedMismatch::Type)?;
    // The walker is stricter than the decoder somewhere; trust the decoder.
    Ok(())
}

/// Whether `bytes` are a MessagePack array whose items fit `types`, one
/// each (the fast check of a task's arguments; on `false` the caller decodes
/// to say which argument is wrong).
pub(crate) fn array_fits<'t>(types: impl ExactSizeIterator<Item = &'t Type>, bytes: &[u8]) -> bool {
    let mut walker = Walker { bytes, pos: 0 };
    let fits = || {
        let len = walker.array_len()?;
        if len != types.len() as u64 {
            return Err(());
        }
        for ty in types {
            walker.value(Some(ty), 1)?;
        }
        Ok(())
    };
    fits().is_ok() && walker.pos == bytes.len()
}

/// Whether `bytes` are exactly one well-formed MessagePack value; on
/// `Err`, the offset where it stopped being one. (The decoder reads the
/// reserved byte 0xc1 as nil; this does not.)
pub(crate) fn well_formed(bytes: &[u8]) -> Result<(), usize> {
    let mut walker = Walker { bytes, pos: 0 };
    match walker.value(None, 0) {
        Ok(()) if walker.pos == bytes.len() => Ok(()),
        _ => Err(walker.pos.saturating_sub(1)),
    }
}

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Step = Result<(), ()>;

impl Walker<'_> {
    fn byte(&mut self) -> Result<u8, ()> {
        let b = *self.bytes.get(self.pos).ok_or(())?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&[u8], ()> {
        let n = usize::try_from(n).map_err(|_| ())?;
        let end = self.pos.checked_add(n).ok_or(())?;
        let slice = self.bytes.get(self.pos..end).ok_or(())?;
        self.pos = end;
        Ok(slice)
    }

    fn uint(&mut self, width: usize) -> Result<u64, ()> {
        let bytes = self.take(width as u64)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// The length of an array header at the current position.
    fn array_len(&mut self) -> Result<u64, ()> {
        match self.byte()? {
            b @ 0x90..=0x9f => Ok(u64::from(b & 0x0f)),
            0xdc => self.uint(2),
            0xdd => self.uint(4),
            _ => Err(()),
        }
    }

    /// Walks one value; `ty` is `None` for "anything well-formed".
    fn value(&mut self, ty: Option<&Type>, depth: usize) -> Step {
        // Stricter than the decoder's bound, so the walker never accepts
        // what decoding refuses (when it refuses, the decoder decides).
        if depth + 2 > MAX_VALUE_DEPTH {
            return Err(());
        }
        let ty = match ty {
            Some(Type::Any | Type::Named(_)) | None => None,
            Some(Type::Option(inner)) => {
                if self.bytes.get(self.pos) == Some(&0xc0) {
                    self.pos += 1;
                    return Ok(());
                }
                return self.value(Some(inner), depth + 1);
            }
            Some(ty) => Some(ty),
        };
        let marker = self.byte()?;
        match marker {
            0x00..=0x7f => int(ty, i128::from(marker)),
            0xe0..=0xff => int(ty, i128::from(marker as i8)),
            0xcc => self.uint(1).and_then(|v| int(ty, i128::from(v))),
            0xcd => self.uint(2).and_then(|v| int(ty, i128::from(v))),
            0xce => self.uint(4).and_then(|v| int(ty, i128::from(v))),
            0xcf => self.uint(8).and_then(|v| int(ty, i128::from(v))),
            0xd0 => self
                .uint(1)
                .and_then(|v| int(ty, i128::from(v as u8 as i8))),
            0xd1 => self
                .uint(2)
                .and_then(|v| int(ty, i128::from(v as u16 as i16))),
            0xd2 => self
                .uint(4)
                .and_then(|v| int(ty, i128::from(v as u32 as i32))),
            0xd3 => self.uint(8).and_then(|v| int(ty, i128::from(v as i64))),
            0xc0 => expect(ty, |t| matches!(t, Type::Unit)),
            0xc2 | 0xc3 => expect(ty, |t| matches!(t, Type::Bool)),
            0xca => self
                .take(4)
                .and_then(|_| expect(ty, |t| matches!(t, Type::F32 | Type::F64))),
            0xcb => self
                .take(8)
                .and_then(|_| expect(ty, |t| matches!(t, Type::F32 | Type::F64))),
            0xa0..=0xbf => self.string(ty, u64::from(marker & 0x1f)),
            0xd9 => self.uint(1).and_then(|n| self.string(ty, n)),
            0xda => self.uint(2).and_then(|n| self.string(ty, n)),
            0xdb => self.uint(4).and_then(|n| self.string(ty, n)),
            0xc4 => self.uint(1).and_then(|n| self.binary(ty, n)),
            0xc5 => self.uint(2).and_then(|n| self.binary(ty, n)),
            0xc6 => self.uint(4).and_then(|n| self.binary(ty, n)),
            0x90..=0x9f => self.array(ty, u64::from(marker & 0x0f), depth),
            0xdc => self.uint(2).and_then(|n| self.array(ty, n, depth)),
            0xdd => self.uint(4).and_then(|n| self.array(ty, n, depth)),
            0x80..=0x8f => self.map(ty, u64::from(marker & 0x0f), depth),
            0xde => self.uint(2).and_then(|n| self.map(ty, n, depth)),
            0xdf => self.uint(4).and_then(|n| self.map(ty, n, depth)),
            0xd4 => self.ext(ty, 1),
            0xd5 => self.ext(ty, 2),
            0xd6 => self.ext(ty, 4),
            0xd7 => self.ext(ty, 8),
            0xd8 => self.ext(ty, 16),
            0xc7 => self.uint(1).and_then(|n| self.ext(ty, n)),
            0xc8 => self.uint(2).and_then(|n| self.ext(ty, n)),
            0xc9 => self.uint(4).and_then(|n| self.ext(ty, n)),
            // 0xc1 is reserved: never a value.
            _ => Err(()),
        }
    }

    fn string(&mut self, ty: Option<&Type>, len: u64) -> Step {
        let bytes = self.take(len)?;
        match ty {
            None => Ok(()),
            Some(Type::String) if std::str::from_utf8(bytes).is_ok() => Ok(()),
            Some(_) => Err(()),
        }
    }

    fn binary(&mut self, ty: Option<&Type>, len: u64) -> Step {
        self.take(len)?;
        expect(ty, |t| matches!(t, Type::Bytes))
    }

    fn ext(&mut self, ty: Option<&Type>, len: u64) -> Step {
        self.take(len.checked_add(1).ok_or(())?)?;
        expect(ty, |_| false)
    }

    fn array(&mut self, ty: Option<&Type>, len: u64, depth: usize) -> Step {
        match ty {
            None => (0..len).try_for_each(|_| self.value(None, depth + 1)),
            Some(Type::List(item)) => (0..len).try_for_each(|_| self.value(Some(item), depth + 1)),
            Some(Type::Bytes) => {
                (0..len).try_for_each(|_| self.value(Some(&Type::UInt(8)), depth + 1))
            }
            Some(Type::Tuple(types)) if types.len() as u64 == len => types
                .iter()
                .try_for_each(|t| self.value(Some(t), depth + 1)),
            Some(_) => Err(()),
        }
    }

    fn map(&mut self, ty: Option<&Type>, len: u64, depth: usize) -> Step {
        let (key, value) = match ty {
            None => (None, None),
            Some(Type::Map(key, value)) => (Some(&**key), Some(&**value)),
            Some(_) => return Err(()),
        };
        (0..len).try_for_each(|_| {
            self.value(key, depth + 1)?;
            self.value(value, depth + 1)
        })
    }
}

fn expect(ty: Option<&Type>, fits: impl Fn(&Type) -> bool) -> Step {
    match ty {
        None => Ok(()),
        Some(t) if fits(t) => Ok(()),
        Some(_) => Err(()),
    }
}

fn int(ty: Option<&Type>, v: i128) -> Step {
    let fits = match ty {
        None | Some(Type::F32 | Type::F64) => true,
        Some(Type::Int(bits)) => {
            let half = 1i128 << (bits - 1);
            (-half..half).contains(&v)
        }
        Some(Type::UInt(bits)) => (0..(1i128 << bits)).contains(&v),
        Some(_) => false,
    };
    if fits { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_value, json_to_value};
    use proptest::prelude::*;
    use serde_json::json;

    fn t(text: &str) -> Type {
        Type::parse(text).unwrap()
    }

    #[test]
    fn agrees_with_the_decoder_on_examples() {
        let cases = [
            ("i64", json!(-5)),
            ("u8", json!(255)),
            ("f64", json!(1.5)),
            ("string", json!("hi")),
            ("list<i64>", json!([1, 2, 3])),
            ("tuple<u64,u64>", json!([1, 2])),
            ("map<string,list<u32>>", json!({"a": [1], "b": []})),
            ("option<i64>", json!(null)),
            ("bytes", json!([1, 2, 255])),
            ("any", json!({"x": [1, "y", null]})),
        ];
        for (ty, json) in cases {
            let ty = t(ty);
            let bytes = encode_value(&json_to_value(&ty, &json).unwrap());
            assert_eq!(check_encoded(&ty, &bytes), Ok(()), "{ty} {json}");
        }
    }

    #[test]
    fn says_what_is_wrong() {
        let hi = encode_value(&rmpv::Value::from("hi"));
        assert_eq!(
            check_encoded(&t("i64"), &hi).unwrap_err().to_string(),
            "expected i64, got string \"hi\""
        );
        assert!(matches!(
            check_encoded(&t("i64"), &[0xc1]),
            Err(EncodedMismatch::Malformed(_))
        ));
        assert!(matches!(
            check_encoded(&t("i64"), &[0x01, 0x02]),
            Err(EncodedMismatch::Malformed(_))
        ));
        assert_eq!(
            check_encoded(&t("u8"), &[0xcd, 0x01, 0x00])
                .unwrap_err()
                .to_string(),
            "256 is out of range for u8"
        );
        let one = [t("i64")];
        let two = [t("i64"), t("i64")];
        assert!(array_fits(two.iter(), &[0x92, 0x01, 0x02]));
        assert!(!array_fits(one.iter(), &[0x92, 0x01, 0x02]));
        assert!(!array_fits(one.iter(), &[0x91, 0xa1, b'x']));
    }

    fn any_value() -> impl Strategy<Value = rmpv::Value> {
        let leaf = prop_oneof![
            Just(rmpv::Value::Nil),
            any::<bool>().prop_map(rmpv::Value::from),
            any::<i64>().prop_map(rmpv::Value::from),
            any::<u64>().prop_map(rmpv::Value::from),
            any::<f64>().prop_map(rmpv::Value::F64),
            "[a-z]{0,40}".prop_map(|s| rmpv::Value::from(s.as_str())),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(rmpv::Value::Binary),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(rmpv::Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(rmpv::Value::Map),
            ]
        })
    }

    proptest! {
        /// The walker accepts exactly what decoding and checking accept.
        #[test]
        fn walker_agrees_with_decode_and_check(value in any_value(), ty in prop_oneof![
            Just("any"), Just("i64"), Just("u64"), Just("f64"), Just("string"), Just("bytes"),
            Just("list<any>"), Just("list<i64>"), Just("map<string,any>"), Just("option<i64>"),
            Just("tuple<any,any>"), Just("unit"), Just("bool"), Just("u8"), Just("i8"),
        ]) {
            let ty = t(ty);
            let bytes = encode_value(&value);
            let mut walker = Walker { bytes: &bytes, pos: 0 };
            let walked = walker.value(Some(&ty), 0).is_ok() && walker.pos == bytes.len();
            let checked = check_value(&ty, &decode_value(&bytes).unwrap()).is_ok();
            prop_assert_eq!(walked, checked);
        }

        /// Random bytes: the walker never accepts what the decoder refuses.
        #[test]
        fn walker_never_accepts_malformed_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut walker = Walker { bytes: &bytes, pos: 0 };
            let walked = walker.value(None, 0).is_ok() && walker.pos == bytes.len();
            if walked {
                prop_assert!(decode_value(&bytes).is_ok());
            }
        }
    }
}
