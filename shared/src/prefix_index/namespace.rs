//! Cache namespaces: requests in different namespaces never share a cached prefix.

use super::key::KeyKind;
use crate::request::RouteRequest;

/// What an engine's prefix cache is keyed on besides the prompt: the model, the LoRA adapter
/// and the `cache_salt`. Each namespace (and key kind) has its own tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Namespace<'a> {
    /// Model name (a vLLM LoRA adapter named through `model` is a model of its own).
    pub model: &'a str,
    /// LoRA adapter (SGLang `lora_path`).
    pub lora: Option<&'a str>,
    /// vLLM `cache_salt`.
    pub cache_salt: Option<&'a str>,
}

impl<'a> Namespace<'a> {
    /// The namespace of a request.
    pub fn of(req: &RouteRequest<'a>) -> Namespace<'a> {
        Namespace {
            model: req.model,
            lora: req.lora,
            cache_salt: req.cache_salt,
        }
    }

    /// An unambiguous byte encoding of the namespace and key kind (length-prefixed fields).
    pub(super) fn encode(&self, kind: KeyKind) -> Vec<u8> {
        let fields = [Some(self.model), self.lora, self.cache_salt];
        let mut out =
            Vec::with_capacity(1 + fields.iter().flatten().map(|f| f.len() + 9).sum::<usize>());
        out.push(match kind {
            KeyKind::Text => b't',
            KeyKind::Tokens => b'k',
        });
        for field in fields {
            match field {
                None => out.push(0),
                Some(f) => {
                    out.push(1);
                    out.extend_from_slice(&(f.len() as u64).to_le_bytes());
                    out.extend_from_slice(f.as_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_unambiguous() {
        let a = Namespace {
            model: "ab",
            lora: Some("c"),
            cache_salt: None,
        };
        let b = Namespace {
            model: "a",
            lora: Some("bc"),
            cache_salt: None,
        };
        let c = Namespace {
            model: "ab",
            lora: None,
            cache_salt: Some("c"),
        };
        let enc: Vec<Vec<u8>> = [a, b, c].iter().map(|n| n.encode(KeyKind::Text)).collect();
        assert_ne!(enc[0], enc[1]);
        assert_ne!(enc[0], enc[2]);
        assert_ne!(a.encode(KeyKind::Text), a.encode(KeyKind::Tokens));
    }
}
