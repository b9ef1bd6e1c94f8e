//! Request extractors that answer bad input with a [`Problem`], never with the
//! framework's plain-text rejections (and never with a 500).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem, ProblemCode};

/// A JSON body. Malformed JSON is 400 `MALFORMED_BODY`; wrong types, missing or
/// unknown fields are 400 `VALIDATION_FAILED` naming the field; a missing or
/// wrong content type is 415; a body over the limit is 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(err) => {
            // serde_path_to_error's message reads "<path>: <what>"; keep both parts.
            let text = err.body_text();
            let message =
                text.strip_prefix("Failed to deserialize the JSON body into the target type: ").unwrap_or(&text);
            let (field, what) = split_path_message(message);
            Problem::validation(format!("invalid request body: {message}"), vec![FieldError::new(field, what)])
        }
        JsonRejection::JsonSyntaxError(err) => Problem::new(
            StatusCode::BAD_REQUEST,
            ProblemCode::MalformedBody,
            format!("malformed JSON: {}", err.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::UnsupportedMediaType,
            "expected a body with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, ProblemCode::PayloadTooLarge, "the request body is too large")
        }
        other => Problem::new(
            StatusCode::BAD_REQUEST,
            ProblemCode::MalformedBody,
            format!("could not read the request body: {}", other.body_text()),
        ),
    }
}

/// Splits serde_path_to_error's "a.b[0]: message at line 1 column 9" into the
/// field path and the message. Messages without a path name the body itself.
fn split_path_message(message: &str) -> (String, String) {
    let trimmed = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    let (path, what) = match trimmed.split_once(": ") {
        Some((path, what)) if !path.contains(' ') => (Some(path), what),
        _ => (None, trimmed),
    };
    // "missing field `x`" and "unknown field `x`" name the field only in the message.
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| what.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let field = match (path, named) {
        // serde_path_to_error already ends the path with an unknown field's name.
        (Some(path), Some(name)) if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
        (Some(path), Some(name)) => format!("{path}.{name}"),
        (Some(path), None) => path.to_owned(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => "$".to_owned(),
    };
    (field, what.to_owned())
}

/// Query parameters; anything unparsable is 400 `VALIDATION_FAILED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(query_problem(rejection)),
        }
    }
}

fn query_problem(rejection: QueryRejection) -> Problem {
    let text = rejection.body_text();
    let message = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned();
    let field = message.split('`').nth(1).unwrap_or("query").to_owned();
    Problem::validation(format!("invalid query string: {message}"), vec![FieldError::new(field, message)])
}

/// Path parameters; a segment of the wrong shape is 400 `VALIDATION_FAILED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                Err(Problem::validation(format!("invalid path parameter: {}", err.body_text()), Vec::new()))
            }
            Err(other) => Err(Problem::internal_from(format_args!("path extraction: {}", other.body_text()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_serde_paths_from_messages() {
        assert_eq!(
            split_path_message("roles[1]: unknown variant `BOSS`, expected one of `USER` at line 1 column 20"),
            ("roles[1]".to_owned(), "unknown variant `BOSS`, expected one of `USER`".to_owned())
        );
        assert_eq!(
            split_path_message("missing field `username` at line 1 column 2"),
            ("username".to_owned(), "missing field `username`".to_owned())
        );
        assert_eq!(
            split_path_message("condition.dayz: unknown field `dayz`, expected `days` at line 1 column 40"),
            ("condition.dayz".to_owned(), "unknown field `dayz`, expected `days`".to_owned())
        );
        assert_eq!(
            split_path_message("condition: missing field `days` at line 1 column 40"),
            ("condition.days".to_owned(), "missing field `days`".to_owned())
        );
        assert_eq!(split_path_message("invalid type: null"), ("$".to_owned(), "invalid type: null".to_owned()));
    }
}
