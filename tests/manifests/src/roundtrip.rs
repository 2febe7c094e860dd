//! Comparing a document with its typed round trip.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a document did not survive its typed round trip.
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    /// The type rejected the document (missing field, wrong type, unknown field).
    #[error("does not parse: {0}")]
    Parse(serde_json::Error),
    /// The typed value could not be serialized again.
    #[error("does not serialize: {0}")]
    Serialize(serde_json::Error),
    /// Fields were lost or changed: typos or fields the schema does not have.
    #[error("fields unknown to the type or changed by it: {}", .0.join("; "))]
    Differs(Vec<String>),
}

/// Parses `value` as `T`, serializes it back and requires the same document.
pub fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, RoundTripError> {
    let typed: T = serde_json::from_value(value.clone()).map_err(RoundTripError::Parse)?;
    let back = serde_json::to_value(&typed).map_err(RoundTripError::Serialize)?;
    let diffs = differences(value, &back);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(RoundTripError::Differs(diffs))
    }
}

/// Paths where `input` and `output` differ, after dropping `null` members on both sides
/// (an absent optional field serializes as `null` or not at all).
pub fn differences(input: &Value, output: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("", &strip_nulls(input), &strip_nulls(output), &mut out);
    out
}

fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

fn diff_at(path: &str, input: &Value, output: &Value, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, va) in a {
                let child = format!("{path}.{key}");
                match b.get(key) {
                    Some(vb) => diff_at(&child, va, vb, out),
                    None => out.push(format!("{child}: unknown field")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: added by the type"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff_at(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::differences;

    #[test]
    fn nulls_are_ignored_and_losses_reported() {
        let input = json!({"a": 1, "b": {"c": "x", "typo": true}, "n": null});
        let output = json!({"a": 1.0, "b": {"c": "x", "d": null}, "e": [1]});
        let diffs = differences(&input, &output);
        assert_eq!(
            diffs,
            vec![
                ".b.typo: unknown field".to_owned(),
                ".e: added by the type".to_owned()
            ]
        );
    }

    #[test]
    fn changed_values_and_list_lengths_are_reported() {
        let diffs = differences(
            &json!({"p": "9002", "l": [1, 2]}),
            &json!({"p": 9002, "l": [1]}),
        );
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(differences(&json!([{"a": 1}]), &json!([{"a": 1}])).is_empty());
    }
}
