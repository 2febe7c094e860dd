//! A body's top-level fields as raw JSON slices of the body: what per-engine normalization
//! reads and rewrites. Reading them builds no value tree (each value is a borrowed slice),
//! and writing them back copies the body once.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::de::Text;

/// One top-level value: a slice of the body, or JSON written by a rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// The client's JSON, as sent.
    Raw(&'a str),
    /// JSON text produced by a rewrite.
    Owned(String),
}

impl FieldValue<'_> {
    /// The JSON text.
    pub fn json(&self) -> &str {
        match self {
            FieldValue::Raw(s) => s,
            FieldValue::Owned(s) => s,
        }
    }
}

/// The top-level fields of a JSON object body, in order (duplicates kept as sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopLevel<'a> {
    /// Field names (unescaped) and values.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
}

impl<'a> TopLevel<'a> {
    /// The fields of `body`, or `None` when it is not a JSON object.
    pub fn parse(body: &'a [u8]) -> Option<TopLevel<'a>> {
        serde_json::from_slice::<TopLevel<'a>>(body).ok()
    }

    /// Whether a field called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }

    /// The string value of the last field called `name` (the one a JSON reader keeps).
    pub fn string(&self, name: &str) -> Option<String> {
        let (_, v) = self.fields.iter().rev().find(|(k, _)| k == name)?;
        serde_json::from_str::<String>(v.json()).ok()
    }

    /// Whether the last field called `name` is `true`.
    pub fn flag(&self, name: &str) -> bool {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .is_some_and(|(_, v)| v.json() == "true")
    }

    /// Removes every field called `name`; whether one was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.fields.len();
        self.fields.retain(|(k, _)| k != name);
        self.fields.len() != before
    }

    /// Renames every field called `from` to `to`; whether one was there.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let mut changed = false;
        for (k, _) in self.fields.iter_mut().filter(|(k, _)| k == from) {
            *k = Cow::Owned(to.to_owned());
            changed = true;
        }
        changed
    }

    /// Sets every field called `name` to the JSON string `value`.
    pub fn set_string(&mut self, name: &str, value: &str) {
        let json = serde_json::to_string(value).unwrap_or_default();
        for (_, v) in self.fields.iter_mut().filter(|(k, _)| k == name) {
            *v = FieldValue::Owned(json.clone());
        }
    }

    /// The object as JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        let len: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.json().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, k.as_ref());
            out.push(b':');
            out.extend_from_slice(v.json().as_bytes());
        }
        out.push(b'}');
        out
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    let raw: &'de RawValue = map.next_value()?;
                    fields.push((key.0, FieldValue::Raw(raw.get())));
                }
                Ok(TopLevel { fields })
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_edit_without_a_tree() {
        let body = br#" {"model":"m","st\u0072eam":true,"messages":[{"role":"user","content":"h\u00e9"}],"x":{"a":[1,2]}} "#;
        let mut t = TopLevel::parse(body).unwrap();
        assert_eq!(t.fields.len(), 4);
        assert!(t.contains("stream"), "escaped names are unescaped");
        assert_eq!(t.string("model").as_deref(), Some("m"));
        assert!(matches!(t.fields[2].1, FieldValue::Raw(r) if r.contains(r"h\u00e9")));
        assert!(t.remove("x"));
        assert!(!t.remove("x"));
        assert!(t.rename("stream", "streaming"));
        t.set_string("model", "served \"m\"");
        let v: serde_json::Value = serde_json::from_slice(&t.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"model": "served \"m\"", "streaming": true,
                "messages": [{"role": "user", "content": "hé"}]})
        );
    }

    #[test]
    fn only_objects_parse() {
        for body in [&b"[1]"[..], b"\"s\"", b"{", b"{\"a\":1} x", b""] {
            assert!(TopLevel::parse(body).is_none(), "{body:?}");
        }
        assert_eq!(TopLevel::parse(b"{}").unwrap().to_json(), b"{}");
    }
}
