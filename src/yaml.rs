//! A YAML document as a tree of nodes that remember where they were written.
//!
//! Pipeline files are read in two steps: the YAML text becomes a [`Node`] tree (each node with
//! its line and column), `${NAME}` references are substituted, and then each part of the file
//! (the header, every stage) is deserialized on its own through [`NodeDeserializer`]. Doing it
//! per part is what lets `validate` report every error of a file at once, and every serde error
//! raised inside a node carries that node's position.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{
    self, DeserializeSeed, Error as _, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A position in a pipeline file, 1-based. `line == 0` means unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node and where it was written.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// The value of a node. Mappings keep their order and the position of each key.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(IndexMap<String, (Pos, Node)>),
}

impl PartialEq for Node {
    /// Nodes compare by value only: moving a stage within the file does not change it.
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::{Bool, Float, Int, Map, Null, Seq, Str, UInt};
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            (Int(a), UInt(b)) | (UInt(b), Int(a)) => u64::try_from(*a).is_ok_and(|a| a == *b),
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Str(a), Str(b)) => a == b,
            (Seq(a), Seq(b)) => a == b,
            (Map(a), Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, (_, v))| b.get(k).is_some_and(|(_, w)| v == w))
            }
            _ => false,
        }
    }
}

impl Value {
    /// A short name for error messages ("a string", "a list", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The mapping entries of this node, if it is a mapping.
    pub fn as_map(&self) -> Option<&IndexMap<String, (Pos, Node)>> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` of a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map().and_then(|m| m.get(key)).map(|(_, n)| n)
    }

    /// The string value of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts the node to JSON (positions are dropped). Used for diffs and for `migrate`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::UInt(u) => (*u).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Str(s) => s.clone().into(),
            Value::Seq(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(m) => m
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

fn pos_of(loc: &serde_saphyr::Location) -> Pos {
    Pos {
        line: loc.line(),
        column: loc.column(),
    }
}

/// What the YAML parser sees; converted into [`Node`] right after parsing.
struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(RawValue)
    }
}

fn node_from(sp: Spanned<RawValue>) -> Node {
    Node {
        pos: pos_of(&sp.referenced),
        value: sp.value.0,
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::UInt(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawValue>>()? {
            items.push(node_from(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = IndexMap::new();
        while let Some(key) = map.next_key::<Spanned<RawValue>>()? {
            let kpos = pos_of(&key.referenced);
            let name = match key.value.0 {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::UInt(u) => u.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "a mapping key must be a string, found {}",
                        other.kind()
                    )));
                }
            };
            let value = node_from(map.next_value::<Spanned<RawValue>>()?);
            out.insert(name, (kpos, value));
        }
        Ok(Value::Map(out))
    }
}

/// A YAML syntax error, with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML text into a node tree. Duplicate keys are rejected by the parser.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node {
            pos: Pos { line: 1, column: 1 },
            value: Value::Null,
        });
    }
    match serde_saphyr::from_str::<Spanned<RawValue>>(text) {
        Ok(sp) => Ok(node_from(sp)),
        Err(e) => {
            let pos = e.location().map(|l| pos_of(&l)).unwrap_or_default();
            let message = e.without_snippet().to_string();
            Err(SyntaxError {
                pos,
                message: strip_location_suffix(&message),
            })
        }
    }
}

/// serde-saphyr appends "at line X column Y" to some messages; we print positions ourselves.
/// Its duplicate-key message speaks to programmers ("set DuplicateKeyPolicy in Options"); a
/// user needs the key.
fn strip_location_suffix(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    let first = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    match first.strip_prefix("duplicate mapping key") {
        Some(rest) => {
            let key = rest
                .split(", set DuplicateKeyPolicy")
                .next()
                .unwrap_or("")
                .trim_start_matches(':')
                .trim();
            if key.is_empty() {
                "a key appears twice in this mapping; each key may be given once".to_string()
            } else {
                format!("`{key}` appears twice in this mapping; each key may be given once")
            }
        }
        None => first.to_string(),
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` in every string of the tree. `$${` is a literal `${`.
/// Every missing variable is reported with the position of the string that names it.
pub fn substitute_env(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<(Pos, String)> {
    let mut errors = Vec::new();
    substitute_inner(node, lookup, &mut errors);
    errors
}

fn substitute_inner(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(Pos, String)>,
) {
    match &mut node.value {
        Value::Str(s) if s.contains('$') => match interpolate(s, lookup) {
            Ok(v) => *s = v,
            Err(msgs) => errors.extend(msgs.into_iter().map(|m| (node.pos, m))),
        },
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|n| substitute_inner(n, lookup, errors)),
        Value::Map(m) => m
            .values_mut()
            .for_each(|(_, n)| substitute_inner(n, lookup, errors)),
        _ => {}
    }
}

/// Expands `${NAME}` / `${NAME:-default}` in one string.
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                errors.push(format!("unterminated `${{` in {s:?}"));
                return Err(errors);
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if valid {
                match (lookup(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                    )),
                }
            } else {
                errors.push(format!("`${{{expr}}}` is not a valid variable reference (expected ${{NAME}} or ${{NAME:-default}})"));
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------------
// Deserializing typed config from a node.

/// An error raised while deserializing a node: the message and the closest known position.
#[derive(Debug, Clone)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub path: Vec<String>,
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            pos: None,
            path: Vec::new(),
            message: msg.to_string(),
        }
    }
}

impl DeError {
    fn at(mut self, pos: Pos) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }
    fn under(mut self, key: &str) -> Self {
        self.path.insert(0, key.to_string());
        self
    }
}

/// Deserializes `T` from a node; errors carry positions and the field path.
pub fn from_node<T: de::DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer { node, skip: &[] })
}

/// Like [`from_node`], but the mapping keys in `skip` are not shown to `T` (used to strip the
/// `type` and `inputs` keys that every stage has before handing the rest to the stage's config).
pub fn from_node_skipping<T: de::DeserializeOwned>(
    node: &Node,
    skip: &[&str],
) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer { node, skip })
}

/// A serde deserializer over a [`Node`].
pub struct NodeDeserializer<'a> {
    node: &'a Node,
    skip: &'a [&'a str],
}

impl<'a> NodeDeserializer<'a> {
    fn child(node: &'a Node) -> Self {
        NodeDeserializer { node, skip: &[] }
    }
}

macro_rules! forward_to_any {
    ($($m:ident)*) => { $(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> { self.deserialize_any(v) }
    )* };
}

impl<'de> Deserializer<'de> for NodeDeserializer<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let pos = self.node.pos;
        let r = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::UInt(u) => visitor.visit_u64(*u),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(NodeSeq {
                iter: items.iter(),
                index: 0,
            }),
            Value::Map(m) => visitor.visit_map(NodeMap {
                iter: m.iter(),
                skip: self.skip,
                current: None,
            }),
        };
        r.map_err(|e| e.at(pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // YAML users write `reasons: [404]` or `name: 1.0` and mean strings.
        let pos = self.node.pos;
        let r = match &self.node.value {
            Value::Int(i) => visitor.visit_string(i.to_string()),
            Value::UInt(u) => visitor.visit_string(u.to_string()),
            Value::Float(f) => visitor.visit_string(f.to_string()),
            Value::Bool(b) => visitor.visit_string(b.to_string()),
            _ => return self.deserialize_any(visitor),
        };
        r.map_err(|e: DeError| e.at(pos))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // `types: Warning` means `types: [Warning]`.
        match &self.node.value {
            Value::Str(_) | Value::Int(_) | Value::UInt(_) => visitor
                .visit_seq(NodeSeq {
                    iter: std::slice::from_ref(self.node).iter(),
                    index: 0,
                })
                .map_err(|e| e.at(self.node.pos)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let pos = self.node.pos;
        let r = match &self.node.value {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Map(m) if m.len() == 1 => {
                let Some((k, (_, v))) = m.iter().next() else {
                    return Err(DeError::custom("expected a single-key mapping").at(pos));
                };
                visitor.visit_enum(NodeEnum {
                    variant: k,
                    node: v,
                })
            }
            other => Err(DeError::custom(format!(
                "expected a string naming a variant, found {}",
                other.kind()
            ))),
        };
        r.map_err(|e| e.at(pos))
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(_) => self.deserialize_any(v),
            // `field:` with nothing after it means "all defaults".
            Value::Null => v
                .visit_map(NodeMap {
                    iter: indexmap::map::Iter::default(),
                    skip: &[],
                    current: None,
                })
                .map_err(|e| e.at(self.node.pos)),
            other => Err(
                DeError::custom(format!("expected a mapping, found {}", other.kind()))
                    .at(self.node.pos),
            ),
        }
    }
}

struct NodeSeq<'a> {
    iter: std::slice::Iter<'a, Node>,
    index: usize,
}

impl<'de> SeqAccess<'de> for NodeSeq<'_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(node) => {
                let i = self.index;
                self.index += 1;
                seed.deserialize(NodeDeserializer::child(node))
                    .map(Some)
                    .map_err(|e| e.at(node.pos).under(&format!("[{i}]")))
            }
            None => Ok(None),
        }
    }
}

struct NodeMap<'a> {
    iter: indexmap::map::Iter<'a, String, (Pos, Node)>,
    skip: &'a [&'a str],
    current: Option<(&'a str, &'a Node)>,
}

impl<'de> MapAccess<'de> for NodeMap<'_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (k, (kpos, node)) in self.iter.by_ref() {
            if self.skip.contains(&k.as_str()) {
                continue;
            }
            self.current = Some((k, node));
            let key: de::value::StrDeserializer<'_, DeError> = k.as_str().into_deserializer();
            return seed
                .deserialize(key)
                .map(Some)
                .map_err(|e| e.at(*kpos).under(k));
        }
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((k, node)) = self.current.take() else {
            return Err(DeError::custom("value requested before key"));
        };
        seed.deserialize(NodeDeserializer::child(node))
            .map_err(|e| e.at(node.pos).under(k))
    }
}

struct NodeEnum<'a> {
    variant: &'a str,
    node: &'a Node,
}

impl<'de, 'a> de::EnumAccess<'de> for NodeEnum<'a> {
    type Error = DeError;
    type Variant = NodeDeserializerVariant<'a>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let d: de::value::StrDeserializer<'_, DeError> = self.variant.into_deserializer();
        let v = seed.deserialize(d)?;
        Ok((v, NodeDeserializerVariant(self.node)))
    }
}

struct NodeDeserializerVariant<'a>(&'a Node);

impl<'de> de::VariantAccess<'de> for NodeDeserializerVariant<'_> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(NodeDeserializer::child(self.0))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        NodeDeserializer::child(self.0).deserialize_any(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _f: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        NodeDeserializer::child(self.0).deserialize_any(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[allow(dead_code)]
        name: String,
        #[serde(default)]
        #[allow(dead_code)]
        list: Vec<String>,
    }

    #[test]
    fn positions_are_kept() {
        let n = parse("a:\n  b: [1, x]\n  c: hello\n").unwrap();
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.pos.line, 2);
        let Value::Seq(items) = &b.value else {
            panic!()
        };
        assert_eq!(
            items[1].pos,
            Pos {
                line: 2,
                column: 10
            }
        );
        assert_eq!(
            n.get("a").unwrap().get("c").unwrap().pos,
            Pos { line: 3, column: 6 }
        );
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        let n = parse("name: x\nlsit: [a]\n").unwrap();
        let e = from_node::<Demo>(&n).unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, column: 1 }));
        assert!(e.message.contains("unknown field `lsit`"), "{}", e.message);
    }

    #[test]
    fn type_error_points_at_the_value() {
        let n = parse("name: x\nlist:\n  - a\n  - {b: 1}\n").unwrap();
        let e = from_node::<Demo>(&n).unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 4, column: 5 }));
        assert_eq!(e.path, vec!["list", "[1]"]);
    }

    #[test]
    fn numbers_read_as_strings_where_strings_are_expected() {
        let n = parse("name: 404\n").unwrap();
        assert_eq!(from_node::<Demo>(&n).unwrap().name, "404");
    }

    #[test]
    fn syntax_error_has_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }

    #[test]
    fn duplicate_keys_are_rejected_with_the_key_and_its_position() {
        let e = parse("a: 1\nstages:\n  x: 1\n  x: 2\n").unwrap_err();
        assert_eq!(
            e.message,
            "`x` appears twice in this mapping; each key may be given once"
        );
        assert_eq!(e.pos.line, 4, "{e:?}");
        assert!(!e.message.contains("DuplicateKeyPolicy"));
    }

    #[test]
    fn env_interpolation() {
        let look = |n: &str| (n == "HOME_X").then(|| "/h".to_string());
        assert_eq!(interpolate("${HOME_X}/a", &look).unwrap(), "/h/a");
        assert_eq!(interpolate("${NOPE:-d}", &look).unwrap(), "d");
        assert_eq!(interpolate("$${HOME_X} $5", &look).unwrap(), "${HOME_X} $5");
        assert!(interpolate("${NOPE}", &look).unwrap_err()[0].contains("NOPE"));
        let mut n = parse("a: ${NOPE}\nb: [x, '${HOME_X}']\n").unwrap();
        let errs = substitute_env(&mut n, &look);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0.line, 1);
        assert_eq!(
            n.get("b").unwrap().to_json(),
            serde_json::json!(["x", "/h"])
        );
    }
}
