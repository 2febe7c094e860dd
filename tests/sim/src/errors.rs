//! Error responses formatted the way each engine formats them.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A request error with the status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 for a model the engine does not serve.
    pub fn unknown_model(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
        }
    }

    fn error_type(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "NotFoundError",
            s if s.is_server_error() => "InternalServerError",
            _ => "BadRequestError",
        }
    }

    /// OpenAI-route body shared by vLLM and SGLang:
    /// `{"object":"error","message","type","param":null,"code"}`.
    pub fn openai(self) -> Response {
        let body = json!({
            "object": "error",
            "message": self.message,
            "type": self.error_type(),
            "param": null,
            "code": self.status.as_u16(),
        });
        (self.status, Json(body)).into_response()
    }

    /// SGLang native-route body (`/generate`): `{"error":{"message"}}`.
    pub fn sglang_native(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"message": self.message}})),
        )
            .into_response()
    }
}
