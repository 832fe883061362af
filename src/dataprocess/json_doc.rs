//! A JSON body parsed for the analyze rules: strings and keys borrowed from the text when
//! they hold no escapes, objects as sorted lists.
//!
//! Every query body is parsed to read a handful of fields. `serde_json::Value` allocates
//! each key, each string and a map per object; this tree allocates only its lists (and the
//! strings that had escapes). Objects read as `serde_json::Map` (sorted by key, the last of
//! duplicate keys wins), so a path selects the same values in the same order; they are kept
//! in text order and sorted only for the paths that list members (`*`, `..`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum JsonDoc<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<JsonDoc<'a>>),
    /// Members in text order, duplicates included (see [`JsonDoc::members`]).
    Object(Vec<(Cow<'a, str>, JsonDoc<'a>)>),
}

impl<'a> JsonDoc<'a> {
    /// Parses `text`; `None` when it is not JSON.
    pub fn parse(text: &'a str) -> Option<JsonDoc<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The member `key` of an object (the last one of that name).
    pub fn get(&self, key: &str) -> Option<&JsonDoc<'a>> {
        match self {
            JsonDoc::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|m| &m.1),
            _ => None,
        }
    }

    /// The members of an object as serde_json's map has them: sorted by key, the last of
    /// duplicate keys kept. Empty for anything else.
    pub fn members(&self) -> Vec<(&str, &JsonDoc<'a>)> {
        let JsonDoc::Object(members) = self else {
            return Vec::new();
        };
        let mut sorted: Vec<(&str, &JsonDoc<'a>)> =
            members.iter().map(|(k, v)| (&**k, v)).collect();
        // Stable: among equal keys the last one in the text comes last, and is kept.
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut out: Vec<(&str, &JsonDoc<'a>)> = Vec::with_capacity(sorted.len());
        for (k, v) in sorted {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out
    }

    /// The value as an analyze field: a string as it is, null as empty, anything else as
    /// its compact JSON text (as `serde_json::Value` prints it).
    pub fn to_field(&self) -> String {
        match self {
            JsonDoc::String(s) => s.to_string(),
            JsonDoc::Null => String::new(),
            JsonDoc::Bool(b) => b.to_string(),
            JsonDoc::Number(n) => n.to_string(),
            other => other.to_value().to_string(),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            JsonDoc::Null => Value::Null,
            JsonDoc::Bool(b) => Value::Bool(*b),
            JsonDoc::Number(n) => Value::Number(n.clone()),
            JsonDoc::String(s) => Value::String(s.to_string()),
            JsonDoc::Array(a) => Value::Array(a.iter().map(JsonDoc::to_value).collect()),
            // Inserted in text order: the last of duplicate keys wins, as when parsed.
            JsonDoc::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// A key or string, borrowed when the text holds it unescaped.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for JsonDoc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = JsonDoc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(JsonDoc::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(JsonDoc::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(JsonDoc::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(JsonDoc::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // As serde_json::Value: a non-finite number (not valid JSON anyway) is null.
        Ok(Number::from_f64(v).map_or(JsonDoc::Null, JsonDoc::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonDoc::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonDoc::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonDoc::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(JsonDoc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A query body is one object of ~15 members: one allocation, not five doublings
        // (serde_json gives no size hint).
        let mut members: Vec<(Cow<'de, str>, JsonDoc<'de>)> = Vec::with_capacity(16);
        while let Some((Text(k), v)) = map.next_entry::<Text<'de>, JsonDoc<'de>>()? {
            members.push((k, v));
        }
        Ok(JsonDoc::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON texts with nesting, duplicate keys, escapes, numbers of every kind.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
            "[a-c\\\\\"é\\n]{0,4}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("\"\\u00e9\\/x\"".to_string()),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[ab]{1,2}", inner), 0..4).prop_map(|m| {
                    let members: Vec<String> =
                        m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// The tree is serde_json::Value's: same members (sorted, last duplicate wins), same
        /// field text.
        #[test]
        fn reads_as_serde_json_value_does(text in json_text()) {
            let value: Value = serde_json::from_str(&text).unwrap();
            let doc = JsonDoc::parse(&text).unwrap();
            prop_assert_eq!(doc.to_value(), value.clone());
            if let Value::Object(m) = &value {
                let members: Vec<(String, Value)> =
                    doc.members().iter().map(|(k, v)| (k.to_string(), v.to_value())).collect();
                let expected: Vec<(String, Value)> =
                    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(members, expected);
                for (k, v) in m {
                    prop_assert_eq!(doc.get(k).map(JsonDoc::to_value), Some(v.clone()));
                }
            }
            let expected = match &value {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            prop_assert_eq!(doc.to_field(), expected);
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"depCity":"CAN","n":"a\"b","z":1}"#;
        let doc = JsonDoc::parse(text).unwrap();
        assert!(matches!(
            doc.get("depCity"),
            Some(JsonDoc::String(Cow::Borrowed("CAN")))
        ));
        assert!(matches!(doc.get("n"), Some(JsonDoc::String(Cow::Owned(s))) if s == "a\"b"));
        assert_eq!(doc.get("missing"), None);
        assert!(JsonDoc::parse("{not json").is_none());
    }
}
