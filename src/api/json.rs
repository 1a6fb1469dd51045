//! [`ApiJson`]: a JSON body extractor whose rejections use the error shape: malformed JSON
//! is 400, a body that does not fit the type (missing or mistyped field) is 422 naming the
//! field, a body over the limit is 413, a wrong content type is 415. Also [`Validate`], the
//! field checks every request type runs, reported all at once as a 422.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{FieldError, HttpError};

/// A JSON request body.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(rejection) => return Err(json_error(rejection)),
        };
        // serde would also build a struct from an array; the API only takes objects.
        if !value.is_object() {
            return Err(HttpError::invalid_fields(vec![FieldError {
                field: "body".into(),
                message: "the body must be a JSON object".into(),
            }]));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| data_error(&e.to_string()))
    }
}

/// A 422 for a body that is JSON but does not fit the request type. serde names the field
/// in backticks ("missing field `title`", "unknown field `colour`"); a wrong value names the
/// variant or type instead, so only the first backticked word that is a known key is used.
fn data_error(text: &str) -> HttpError {
    let field = text
        .split('`')
        .nth(1)
        .filter(|f| {
            text.contains("field `")
                && f.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        })
        .unwrap_or("body")
        .to_owned();
    HttpError::invalid_fields(vec![FieldError {
        field,
        message: text.to_owned(),
    }])
}

fn json_error(rejection: JsonRejection) -> HttpError {
    match rejection {
        JsonRejection::JsonDataError(e) => data_error(&e.body_text()),
        JsonRejection::JsonSyntaxError(e) => {
            HttpError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            too_large()
        }
        other => HttpError::bad_request(other.body_text()),
    }
}

/// A query string extractor whose rejection is the JSON error shape (400 naming the problem).
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, HttpError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| HttpError::bad_request(e.body_text()))
    }
}

/// An optional JSON body: empty means `T::default()`; otherwise the same 400/413/422 rules as
/// [`ApiJson`] (any content type).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    HttpError::bad_request(e.body_text())
                }
            })?;
        parse_optional(&body).map(OptionalJson)
    }
}

fn too_large() -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than the limit",
    )
}

/// Parses an optional JSON body: empty means `T::default()`; otherwise the same 400/422
/// rules as [`ApiJson`].
pub fn parse_optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| HttpError::bad_request(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(HttpError::invalid_fields(vec![FieldError {
            field: "body".into(),
            message: "the body must be a JSON object".into(),
        }]));
    }
    serde_json::from_value(value).map_err(|e| data_error(&e.to_string()))
}

/// Collects field problems and turns them into one 422.
#[derive(Debug, Default)]
pub struct Validate {
    errors: Vec<FieldError>,
}

impl Validate {
    /// Records a problem with `field` when `bad`.
    pub fn check(&mut self, bad: bool, field: &str, message: &str) -> &mut Self {
        if bad {
            self.errors.push(FieldError {
                field: field.to_owned(),
                message: message.to_owned(),
            });
        }
        self
    }

    /// `Ok` if nothing was recorded, else the 422.
    pub fn finish(&mut self) -> Result<(), HttpError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(HttpError::invalid_fields(std::mem::take(&mut self.errors)))
        }
    }
}

/// A slug: 1-64 of `a-z 0-9 - _`.
pub fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An RFC 3339 timestamp, normalised to our UTC millisecond form.
pub fn parse_timestamp(s: &str) -> Option<String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(crate::proto::playlist::format_pdt(t.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_timestamps() {
        assert!(is_slug("music-live_2"));
        assert!(!is_slug("Music"));
        assert!(!is_slug(""));
        assert!(!is_slug(&"a".repeat(65)));
        assert_eq!(
            parse_timestamp("2030-01-02T03:04:05+01:00").as_deref(),
            Some("2030-01-02T02:04:05.000Z")
        );
        assert_eq!(parse_timestamp("tomorrow"), None);
    }
}
