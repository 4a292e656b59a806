//! The service's errors and their one mapping to HTTP: the status is chosen here and nowhere
//! else. Native routes answer `{"error": {"type", "message", "field"?}}`; the OpenAI-compatible
//! routes (`/v1/…`) answer OpenAI's shape `{"error": {"message", "type", "param", "code"}}`,
//! so OpenAI clients find the offending field in `param`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use mrl_core::store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing, has the wrong type or an unacceptable value.
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{message}")]
    InputTooLong { field: String, message: String },
    #[error("missing or invalid API key (send \"Authorization: Bearer <key>\")")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the model queue is full (at most {requests} requests or {tokens} tokens wait); retry \
         shortly"
    )]
    QueueFull { requests: usize, tokens: usize },
    #[error("internal error: {0}")]
    Internal(String),
    /// A component the request needs (the vector store) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::InvalidField { .. } => "invalid_request",
            Self::MalformedJson(_) => "malformed_json",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InputTooLong { .. } => "input_too_long",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::QueueFull { .. } => "overloaded",
            Self::Internal(_) => "internal",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn field_name(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } | Self::InputTooLong { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The response for `body` (the object under `"error"`), with this error's status and
    /// headers.
    fn respond(&self, body: serde_json::Value) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, Self::QueueFull { .. } | Self::Unavailable(_)) {
            resp.insert_header((header::RETRY_AFTER, "1"));
        }
        if matches!(self, Self::Unauthorized) {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        resp.json(json!({ "error": body }))
    }

    /// OpenAI's `type` and `code` for this error (`code` refines the type: OpenAI's own for
    /// the key and rate limits, the native `type` otherwise).
    fn openai_kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Unauthorized => ("invalid_request_error", "invalid_api_key"),
            Self::QueueFull { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            Self::Internal(_) => ("server_error", "internal"),
            Self::Unavailable(_) => ("server_error", "unavailable"),
            other => ("invalid_request_error", other.kind()),
        }
    }

    /// This error as the route at `path` answers it: in OpenAI's shape under `/v1/` (the
    /// OpenAI-compatible API), natively elsewhere. For errors raised outside a handler.
    pub fn for_path(self, path: &str) -> actix_web::Error {
        if path.starts_with("/v1/") {
            OpenAiError(self).into()
        } else {
            self.into()
        }
    }
}

impl From<mrl_core::Error> for ApiError {
    fn from(e: mrl_core::Error) -> Self {
        use mrl_core::Error as E;
        match e {
            E::InvalidField { field, message } => Self::InvalidField { field, message },
            E::InputTooLong { field, message } => Self::InputTooLong { field, message },
            E::QueueFull { requests, tokens } => Self::QueueFull { requests, tokens },
            E::Store(e) => e.into(),
            E::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchCollection(_) => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } | StoreError::Redefined { .. } => {
                Self::Conflict(e.to_string())
            }
            StoreError::BadName(_) => Self::field("name", e.to_string()),
            StoreError::InvalidFilter(_) => Self::field("filter", e.to_string()),
            StoreError::Storage(_) => Self::Internal(e.to_string()),
            StoreError::Unavailable(_) => Self::Unavailable(e.to_string()),
            StoreError::Unsupported { option, message } => Self::field(&option, message),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } | Self::InputTooLong { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({"type": self.kind(), "message": self.to_string()});
        if let Some(f) = self.field_name() {
            body["field"] = json!(f);
        }
        self.respond(body)
    }
}

/// An `ApiError` on an OpenAI-compatible route: the same status and headers, OpenAI's body.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct OpenAiError(#[from] pub ApiError);

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, code) = self.0.openai_kind();
        self.0.respond(json!({
            "message": self.0.to_string(),
            "type": kind,
            "param": self.0.field_name(),
            "code": code,
        }))
    }
}
