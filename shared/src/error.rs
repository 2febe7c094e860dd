//! Errors a routing decision can end in, and their OpenAI-style JSON body.

use serde::Serialize;

/// Why no worker could be chosen. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No known worker serves the requested model (HTTP 404).
    #[error("the model `{model}` does not exist or is not served by any worker")]
    ModelNotFound {
        /// The requested model name.
        model: String,
    },
    /// Workers serve the model but none is healthy and accepting requests (HTTP 503).
    #[error("no healthy worker is available for model `{model}`")]
    NoHealthyWorker {
        /// The requested model name.
        model: String,
    },
    /// The proxy's subset hint named no eligible worker (HTTP 503).
    #[error("no eligible endpoint in the subset given by the proxy")]
    EmptySubset,
    /// The request was shed because of load (HTTP 429).
    #[error("too many requests in flight, retry later")]
    Overloaded,
}

impl RouteError {
    /// HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::ModelNotFound { .. } => 404,
            RouteError::NoHealthyWorker { .. } | RouteError::EmptySubset => 503,
            RouteError::Overloaded => 429,
        }
    }

    /// The OpenAI-style error body for this error.
    pub fn to_openai(&self) -> OpenAiError {
        let (kind, code) = match self {
            RouteError::ModelNotFound { .. } => ("invalid_request_error", "model_not_found"),
            RouteError::NoHealthyWorker { .. } | RouteError::EmptySubset => {
                ("service_unavailable", "no_healthy_upstream")
            }
            RouteError::Overloaded => ("rate_limit_error", "too_many_requests"),
        };
        OpenAiError::new(self.to_string(), kind, code, None)
    }
}

/// An OpenAI-compatible error body: `{"error":{"message":..,"type":..,"param":..,"code":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAiError {
    /// Human-readable explanation.
    pub message: String,
    /// Error class, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending request field, when one is to blame.
    pub param: Option<String>,
    /// Machine-readable code, e.g. `model_not_found`.
    pub code: String,
}

impl OpenAiError {
    /// Builds an error body.
    pub fn new(
        message: impl Into<String>,
        kind: &str,
        code: &str,
        param: Option<&str>,
    ) -> OpenAiError {
        OpenAiError {
            message: message.into(),
            kind: kind.to_owned(),
            param: param.map(str::to_owned),
            code: code.to_owned(),
        }
    }

    /// Serializes the body as the engines do: wrapped in an `error` object.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wrapper<'a> {
            error: &'a OpenAiError,
        }
        serde_json::to_string(&Wrapper { error: self }).expect("error body serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_openai_shaped() {
        let err = RouteError::ModelNotFound { model: "m".into() };
        assert_eq!(err.status(), 404);
        let json: serde_json::Value = serde_json::from_str(&err.to_openai().to_json()).unwrap();
        assert_eq!(json["error"]["code"], "model_not_found");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert!(json["error"]["param"].is_null());
        assert!(json["error"]["message"].as_str().unwrap().contains("`m`"));
    }
}
