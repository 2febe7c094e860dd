//! Typed request errors, mapped by the shells to HTTP 400 (or 413) with an OpenAI-style body.

use crate::error::OpenAiError;

/// Why a request body could not be used for routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not valid JSON (includes invalid UTF-8 and truncated bodies).
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON, but the top level is not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// A required field is missing.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or shape.
    #[error("invalid value for field `{field}`: {reason}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is larger than the configured limit (HTTP 413).
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Body size seen so far.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
}

impl RequestError {
    /// HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::TooLarge { .. } => 413,
            _ => 400,
        }
    }

    /// The OpenAI-style error body.
    pub fn to_openai(&self) -> OpenAiError {
        let param = match self {
            RequestError::MissingField(f) | RequestError::InvalidField { field: f, .. } => Some(*f),
            _ => None,
        };
        let code = match self {
            RequestError::TooLarge { .. } => "request_too_large",
            _ => "invalid_request",
        };
        OpenAiError::new(self.to_string(), "invalid_request_error", code, param)
    }
}
