//! Borrowing deserializers for the polymorphic fields of inference request bodies.
//!
//! Each type reads its value in a single pass, borrowing strings from the body when they
//! contain no JSON escapes, and skips what it does not need with [`IgnoredAny`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::Prompt;
use super::chat::InputItem;

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A token id: a non-negative integer below 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TokenId(pub u32);

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TokenId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a token id (an integer between 0 and 4294967295)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TokenId, E> {
                TokenId::visit(v).map(TokenId)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TokenId, E> {
                Err(E::custom(format_args!("token id {v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TokenId, E> {
                Err(E::custom(format_args!("token id {v} is not an integer")))
            }
        }
        d.deserialize_any(V)
    }
}

fn collect_ids<'de, A: SeqAccess<'de>>(
    mut ids: Vec<u32>,
    mut seq: A,
) -> Result<Vec<u32>, A::Error> {
    ids.reserve(seq.size_hint().unwrap_or(0));
    while let Some(TokenId(id)) = seq.next_element()? {
        ids.push(id);
    }
    Ok(ids)
}

fn drain<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// One element of a prompt or input list: a string, a token id, a list of token ids or (for
/// Responses `input`) an input item object.
enum PromptElem<'a> {
    Text(Cow<'a, str>),
    Id(u32),
    Ids(Vec<u32>),
    Item(InputItem<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for PromptElem<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PromptElem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a token id or a list of token ids")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(PromptElem::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PromptElem::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(PromptElem::Text(Cow::Owned(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                TokenId::visit(v).map(PromptElem::Id)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format_args!("token id {v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format_args!("token id {v} is not an integer")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                collect_ids(Vec::new(), seq).map(PromptElem::Ids)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                InputItem::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(PromptElem::Item)
            }
        }
        d.deserialize_any(V)
    }
}

impl TokenId {
    fn visit<E: de::Error>(v: u64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| E::custom(format_args!("token id {v} is out of range")))
    }
}

/// A prompt in any of the OpenAI shapes: a string, a list of strings, a list of token ids or
/// a list of token-id lists. A batch yields its first prompt; the rest is skipped unread.
pub(super) struct PromptValue<'a>(pub Prompt<'a>);

/// `input` of `/v1/embeddings` (a prompt) or `/v1/responses` (a string or input items).
pub(super) enum InputValue<'a> {
    Prompt(Prompt<'a>),
    Items(Vec<InputItem<'a>>),
}

/// Reads a string or a list; shared by [`PromptValue`] and [`InputValue`].
struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = InputValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, a list of strings, a list of token ids or a list of lists")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(InputValue::Prompt(Prompt::Text(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(InputValue::Prompt(Prompt::Text(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(InputValue::Prompt(Prompt::Text(Cow::Owned(v))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let prompt = match seq.next_element::<PromptElem<'de>>()? {
            None => return Err(de::Error::custom("the list is empty")),
            Some(PromptElem::Id(first)) => {
                return collect_ids(vec![first], seq)
                    .map(|ids| InputValue::Prompt(Prompt::Tokens(ids)));
            }
            Some(PromptElem::Item(first)) => {
                let mut items = Vec::with_capacity(1 + seq.size_hint().unwrap_or(0));
                items.push(first);
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                return Ok(InputValue::Items(items));
            }
            Some(PromptElem::Text(t)) => Prompt::Text(t),
            Some(PromptElem::Ids(ids)) => Prompt::Tokens(ids),
        };
        drain(seq)?;
        Ok(InputValue::Prompt(prompt))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for InputValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(InputVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for PromptValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(InputVisitor)? {
            InputValue::Prompt(p) => Ok(PromptValue(p)),
            InputValue::Items(_) => Err(de::Error::custom(
                "expected a string, a list of strings or token ids, found a list of objects",
            )),
        }
    }
}

/// SGLang `lora_path`: a string, or one per prompt of a batch (the first one counts).
pub(super) struct LoraPath<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LoraPath<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LoraPath<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, null or a list of them")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LoraPath(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LoraPath(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LoraPath(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Option<Text<'de>>>()?.flatten();
                drain(seq)?;
                Ok(LoraPath(first.map(|t| t.0)))
            }
        }
        d.deserialize_any(V)
    }
}

/// SGLang `sampling_params` (an object, or one per prompt of a batch): only
/// `max_new_tokens` is read.
pub(super) struct SamplingParams(pub Option<u64>);

#[derive(serde::Deserialize)]
struct SamplingFields {
    max_new_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for SamplingParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SamplingParams;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object or a list of objects")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SamplingParams(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let fields =
                    SamplingFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SamplingParams(fields.max_new_tokens))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<Option<SamplingFields>>()?.flatten();
                drain(seq)?;
                Ok(SamplingParams(first.and_then(|f| f.max_new_tokens)))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(json: &str) -> Result<Prompt<'_>, serde_json::Error> {
        serde_json::from_str::<PromptValue<'_>>(json).map(|p| p.0)
    }

    #[test]
    fn prompt_shapes() {
        assert!(matches!(
            prompt(r#""hi""#).unwrap(),
            Prompt::Text(Cow::Borrowed("hi"))
        ));
        assert_eq!(prompt(r#""a\nb""#).unwrap(), Prompt::Text("a\nb".into()));
        assert_eq!(prompt(r#"["x", "y"]"#).unwrap(), Prompt::Text("x".into()));
        assert_eq!(prompt("[1, 2, 3]").unwrap(), Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(prompt("[[4, 5], [6]]").unwrap(), Prompt::Tokens(vec![4, 5]));
        assert_eq!(prompt("[[]]").unwrap(), Prompt::Tokens(vec![]));
    }

    #[test]
    fn bad_prompts_are_errors() {
        for bad in [
            "[]",
            "[-1]",
            "[4294967296]",
            "[1.5]",
            "[1, \"a\"]",
            "3",
            "{}",
            "[[-1]]",
        ] {
            assert!(prompt(bad).is_err(), "{bad} parsed as {:?}", prompt(bad));
        }
        // Later batch entries are skipped unread: only their JSON validity matters.
        assert_eq!(prompt("[[1], [-2]]").unwrap(), Prompt::Tokens(vec![1]));
        assert_eq!(
            prompt("[4294967295]").unwrap(),
            Prompt::Tokens(vec![u32::MAX])
        );
    }

    #[test]
    fn lora_and_sampling_params() {
        let l: LoraPath = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(l.0.as_deref(), Some("a"));
        let l: LoraPath = serde_json::from_str("null").unwrap();
        assert_eq!(l.0, None);
        let s: SamplingParams =
            serde_json::from_str(r#"{"temperature": 0, "max_new_tokens": 9}"#).unwrap();
        assert_eq!(s.0, Some(9));
        let s: SamplingParams = serde_json::from_str(r#"[{"max_new_tokens": 3}, {}]"#).unwrap();
        assert_eq!(s.0, Some(3));
        assert!(serde_json::from_str::<SamplingParams>(r#"{"max_new_tokens": -1}"#).is_err());
    }
}
