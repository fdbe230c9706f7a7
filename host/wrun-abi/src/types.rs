//! The type descriptors of the `wrun.tasks` custom section (ABI.md, "Types").

use std::fmt;

/// A parameter or result type as a task module declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// `bool`
    Bool,
    /// A signed integer of the given width in bits (`i8` .. `i64`).
    Int(u8),
    /// An unsigned integer of the given width in bits (`u8` .. `u64`).
    UInt(u8),
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `string`: UTF-8 text.
    String,
    /// `bytes`: a MessagePack bin value (JSON: an array of numbers 0..=255).
    Bytes,
    /// `unit`: nothing (MessagePack nil, JSON null).
    Unit,
    /// `list<T>`
    List(Box<Type>),
    /// `option<T>`: nil or a `T`.
    Option(Box<Type>),
    /// `tuple<A,B,...>`: an array of exactly these.
    Tuple(Vec<Type>),
    /// `map<K,V>`
    Map(Box<Type>, Box<Type>),
    /// `any`: any value.
    Any,
    /// A type the host cannot see into (a user struct or enum, by name).
    /// Its values pass unchecked; the guest checks them when it decodes.
    Named(String),
}

/// A type descriptor that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad type descriptor `{descriptor}`: {reason}")]
pub struct TypeParseError {
    /// The descriptor as written.
    pub descriptor: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How deep type descriptors may nest; a bound on a network input.
const MAX_TYPE_DEPTH: usize = 32;

impl Type {
    /// Parses a descriptor such as `list<tuple<u64,u64>>`.
    pub fn parse(descriptor: &str) -> Result<Type, TypeParseError> {
        let mut parser = Parser {
            text: descriptor,
            pos: 0,
        };
        let error = |reason: String| TypeParseError {
            descriptor: descriptor.to_owned(),
            reason,
        };
        let ty = parser.parse_type(0).map_err(error)?;
        parser.skip_spaces();
        if parser.pos != descriptor.len() {
            return Err(error(format!("unexpected text at byte {}", parser.pos)));
        }
        Ok(ty)
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.text[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn ident(&mut self) -> Result<&str, String> {
        self.skip_spaces();
        let rest = &self.text[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(format!("expected a type name at byte {}", self.pos));
        }
        self.pos += len;
        Ok(&rest[..len])
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_spaces();
        if self.text[self.pos..].starts_with(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` at byte {}", self.pos))
        }
    }

    fn args(&mut self, depth: usize) -> Result<Vec<Type>, String> {
        self.expect('<')?;
        let mut items = vec![self.parse_type(depth + 1)?];
        while self.eat(',') {
            items.push(self.parse_type(depth + 1)?);
        }
        self.expect('>')?;
        Ok(items)
    }

    fn parse_type(&mut self, depth: usize) -> Result<Type, String> {
        if depth > MAX_TYPE_DEPTH {
            return Err(format!("nested deeper than {MAX_TYPE_DEPTH}"));
        }
        let name = self.ident()?.to_owned();
        let arity = |items: Vec<Type>, n: usize| -> Result<Vec<Type>, String> {
            if items.len() == n {
                Ok(items)
            } else {
                Err(format!(
                    "`{name}` takes {n} type argument(s), got {}",
                    items.len()
                ))
            }
        };
        Ok(match name.as_str() {
            "bool" => Type::Bool,
            "i8" => Type::Int(8),
            "i16" => Type::Int(16),
            "i32" => Type::Int(32),
            "i64" => Type::Int(64),
            "u8" => Type::UInt(8),
            "u16" => Type::UInt(16),
            "u32" => Type::UInt(32),
            "u64" => Type::UInt(64),
            "f32" => Type::F32,
            "f64" => Type::F64,
            "string" => Type::String,
            "bytes" => Type::Bytes,
            "unit" => Type::Unit,
            "any" => Type::Any,
            "list" => Type::List(Box::new(arity(self.args(depth)?, 1)?.remove(0))),
            "option" => Type::Option(Box::new(arity(self.args(depth)?, 1)?.remove(0))),
            "tuple" => Type::Tuple(self.args(depth)?),
            "map" => {
                let mut kv = arity(self.args(depth)?, 2)?;
                let value = kv.pop().expect("two items");
                Type::Map(Box::new(kv.pop().expect("two items")), Box::new(value))
            }
            _ => {
                // A named type may carry generic arguments in its spelling;
                // they say nothing the host can check.
                if self.text[self.pos..].trim_start().starts_with('<') {
                    self.args(depth)?;
                }
                Type::Named(name)
            }
        })
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Bool => f.write_str("bool"),
            Type::Int(bits) => write!(f, "i{bits}"),
            Type::UInt(bits) => write!(f, "u{bits}"),
            Type::F32 => f.write_str("f32"),
            Type::F64 => f.write_str("f64"),
            Type::String => f.write_str("string"),
            Type::Bytes => f.write_str("bytes"),
            Type::Unit => f.write_str("unit"),
            Type::Any => f.write_str("any"),
            Type::List(item) => write!(f, "list<{item}>"),
            Type::Option(item) => write!(f, "option<{item}>"),
            Type::Tuple(items) => {
                f.write_str("tuple<")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(">")
            }
            Type::Map(key, value) => write!(f, "map<{key},{value}>"),
            Type::Named(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_through_display() {
        for text in [
            "i64",
            "list<tuple<u64,u64>>",
            "map<string,option<f64>>",
            "unit",
            "Point",
            "tuple<bool,bytes,any>",
        ] {
            assert_eq!(Type::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_descriptors_are_rejected_with_the_reason() {
        assert!(
            Type::parse("list<")
                .unwrap_err()
                .reason
                .contains("expected a type name")
        );
        assert!(
            Type::parse("map<i64>")
                .unwrap_err()
                .reason
                .contains("takes 2")
        );
        assert!(
            Type::parse("i64 junk")
                .unwrap_err()
                .reason
                .contains("unexpected text")
        );
        let deep = format!("{}i64{}", "list<".repeat(40), ">".repeat(40));
        assert!(
            Type::parse(&deep)
                .unwrap_err()
                .reason
                .contains("nested deeper")
        );
    }
}
