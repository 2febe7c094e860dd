//! Request body parsing (placeholder being replaced).

use super::{ApiRoute, ParsedRequest, Prompt, RequestError};

/// Parses a request body for `route`.
pub fn parse_request(route: ApiRoute, body: &[u8]) -> Result<ParsedRequest<'_>, RequestError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    let model = v
        .get("model")
        .and_then(|m| m.as_str())
        .map(|m| m.to_owned().into());
    Ok(ParsedRequest {
        route,
        model,
        prompt: Prompt::Text(v.to_string().into()),
        stream: v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
        max_tokens: None,
        lora: None,
        cache_salt: None,
        user: None,
    })
}
