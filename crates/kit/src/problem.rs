//! RFC 9457 problem details with a stable machine `code`.
//!
//! Every error any service answers is a [`Problem`]. Clients branch on `code`
//! (stable, UPPER_SNAKE), humans read `title` and `detail`. Internal causes are
//! logged where they happen and never copied into a response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The catalogue of stable error codes. Adding a variant is fine; renaming one
/// breaks clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProblemCode {
    ValidationFailed,
    MalformedBody,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    UsernameTaken,
    DuplicateClaim,
    ConditionNotMet,
    EventNotActive,
    OutOfStock,
    IdempotencyKeyReused,
    IdempotencyInProgress,
    RateLimited,
    ServiceUnavailable,
    BadGateway,
    GatewayTimeout,
    Internal,
}

impl ProblemCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ProblemCode; 21] = [
        Self::ValidationFailed,
        Self::MalformedBody,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::UsernameTaken,
        Self::DuplicateClaim,
        Self::ConditionNotMet,
        Self::EventNotActive,
        Self::OutOfStock,
        Self::IdempotencyKeyReused,
        Self::IdempotencyInProgress,
        Self::RateLimited,
        Self::ServiceUnavailable,
        Self::BadGateway,
        Self::GatewayTimeout,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationFailed => "VALIDATION_FAILED",
            Self::MalformedBody => "MALFORMED_BODY",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::UsernameTaken => "USERNAME_TAKEN",
            Self::DuplicateClaim => "DUPLICATE_CLAIM",
            Self::ConditionNotMet => "CONDITION_NOT_MET",
            Self::EventNotActive => "EVENT_NOT_ACTIVE",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::IdempotencyInProgress => "IDEMPOTENCY_IN_PROGRESS",
            Self::RateLimited => "RATE_LIMITED",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::BadGateway => "BAD_GATEWAY",
            Self::GatewayTimeout => "GATEWAY_TIMEOUT",
            Self::Internal => "INTERNAL",
        }
    }

    /// The short, human title that goes with the code.
    pub fn title(self) -> &'static str {
        match self {
            Self::ValidationFailed => "Request validation failed",
            Self::MalformedBody => "Malformed request body",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge => "Request body too large",
            Self::Unauthenticated => "Authentication required",
            Self::Forbidden => "Not allowed",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict",
            Self::UsernameTaken => "Username already taken",
            Self::DuplicateClaim => "Reward already claimed",
            Self::ConditionNotMet => "Event condition not met",
            Self::EventNotActive => "Event not active",
            Self::OutOfStock => "Reward out of stock",
            Self::IdempotencyKeyReused => "Idempotency key reused with a different request",
            Self::IdempotencyInProgress => "A request with this idempotency key is in progress",
            Self::RateLimited => "Too many requests",
            Self::ServiceUnavailable => "Service unavailable",
            Self::BadGateway => "Bad gateway",
            Self::GatewayTimeout => "Gateway timeout",
            Self::Internal => "Internal error",
        }
    }

    /// The code a bare HTTP status maps to when nothing more specific is known
    /// (used to turn framework-made error responses into problems).
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::ValidationFailed,
            401 => Self::Unauthenticated,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            422 => Self::ValidationFailed,
            429 => Self::RateLimited,
            502 => Self::BadGateway,
            503 => Self::ServiceUnavailable,
            504 => Self::GatewayTimeout,
            _ => Self::Internal,
        }
    }
}

/// One offending field of a request, named by its path (`condition.conditions[2].days`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// An RFC 9457 problem details response. Boxed, so that `Result<T, Problem>`
/// stays small on the happy path; fields are reached through `Deref`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Problem(Box<ProblemDetails>);

/// The fields of a [`Problem`].
#[derive(Debug, Clone, Serialize)]
pub struct ProblemDetails {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
    pub detail: String,
    pub code: ProblemCode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Seconds a client should wait before retrying (429 and 503).
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Sets `WWW-Authenticate: Bearer` (401 answers).
    #[serde(skip)]
    pub bearer_challenge: bool,
    /// Methods a 405 answer allows.
    #[serde(skip)]
    pub allow: Option<HeaderValue>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;
    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

impl Problem {
    pub fn new(status: StatusCode, code: ProblemCode, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            type_uri: format!("urn:rewards:problem:{}", code.as_str().to_ascii_lowercase().replace('_', "-")),
            title: code.title().to_owned(),
            status,
            detail: detail.into(),
            code,
            errors: Vec::new(),
            retry_after: None,
            bearer_challenge: false,
            allow: None,
        }))
    }

    pub fn validation(detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        let mut p = Self::new(StatusCode::BAD_REQUEST, ProblemCode::ValidationFailed, detail);
        p.errors = errors;
        p
    }

    /// A 400 listing every offending field (the detail names the first few).
    pub fn fields(errors: Vec<FieldError>) -> Self {
        let detail =
            errors.iter().take(5).map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        Self::validation(detail, errors)
    }

    /// A single offending field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(field, message);
        let detail = format!("{}: {}", error.field, error.message);
        Self::validation(detail, vec![error])
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated, detail);
        p.bearer_challenge = true;
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ProblemCode::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ProblemCode::NotFound, detail)
    }

    pub fn conflict(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut p = Self::new(StatusCode::SERVICE_UNAVAILABLE, ProblemCode::ServiceUnavailable, detail);
        p.retry_after = Some(retry_after_secs);
        p
    }

    pub fn rate_limited(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut p = Self::new(StatusCode::TOO_MANY_REQUESTS, ProblemCode::RateLimited, detail);
        p.retry_after = Some(retry_after_secs.max(1));
        p
    }

    /// A 500 whose cause has been logged by the caller; the client learns only
    /// that something failed on our side.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Internal,
            "the server failed to handle this request; it has been logged",
        )
    }

    /// Logs `cause` once and answers a bare 500.
    pub fn internal_from(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::internal()
    }

    /// The problem's JSON body, as sent.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            // Serialising plain strings and numbers cannot fail; keep a fallback anyway.
            r#"{"type":"urn:rewards:problem:internal","title":"Internal error","status":500,"detail":"","code":"INTERNAL"}"#
                .to_owned()
        })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code.as_str(), self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.bearer_challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.0.allow {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}

impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        if crate::store::is_unreachable(&err) {
            tracing::warn!(error = %err, "store unavailable");
            return Self::unavailable("the store is unavailable; try again shortly", 1);
        }
        Self::internal_from(format_args!("store: {err}"))
    }
}

/// The shape of a problem body, for OpenAPI documents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemSchema {
    /// A URI naming the kind of problem (`urn:rewards:problem:...`).
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine code, e.g. `VALIDATION_FAILED`.
    #[schema(example = "VALIDATION_FAILED")]
    pub code: String,
    /// The offending fields, for validation failures.
    pub errors: Option<Vec<FieldErrorSchema>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorSchema {
    pub field: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn renders_rfc9457_with_code_and_headers() {
        let response = Problem::rate_limited("slow down", 7).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 429);
        assert_eq!(json["code"], "RATE_LIMITED");
        assert_eq!(json["title"], "Too many requests");
        assert_eq!(json["detail"], "slow down");
        assert_eq!(json["type"], "urn:rewards:problem:rate-limited");
        assert!(json.get("errors").is_none());
    }

    #[tokio::test]
    async fn validation_lists_fields_and_401_challenges() {
        let json: serde_json::Value =
            serde_json::from_str(&Problem::invalid_field("endDate", "before startDate").to_json()).unwrap();
        assert_eq!(json["errors"][0]["field"], "endDate");
        assert_eq!(json["code"], "VALIDATION_FAILED");

        let response = Problem::unauthenticated("no token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn every_code_serialises_as_its_wire_string_and_has_a_title() {
        for code in ProblemCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert!(!code.title().is_empty());
        }
    }
}
