//! axum's extractors, with their rejections turned into [`WireError`]s so that a
//! malformed body, query or path gets the same JSON error shape as everything else.

use axum::extract::{FromRequest, FromRequestParts};

use super::error::WireError;
use crate::model::Id;

/// `axum::Json`, rejecting with an [`WireError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(WireError))]
pub struct Json<T>(pub T);

/// `axum::extract::Query`, rejecting with an [`WireError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(WireError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, rejecting with an [`WireError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(WireError))]
pub struct Path<T>(pub T);

/// Stores count in signed 64 bits; a seq or an offset beyond them means the
/// same as the largest they hold (before everything, or past the end).
pub(crate) fn clamp(number: u64) -> u64 {
    number.min(i64::MAX.unsigned_abs())
}

/// Parses an id from a path segment. A malformed id cannot name anything, so it
/// is a 404 for `what`, like an id that does not exist.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<Id, WireError> {
    raw.parse().map_err(|_| WireError::not_found(what))
}

/// Deserializes a field that may be absent (leave alone), `null` (clear) or a
/// value (set): serde alone cannot tell absent from null.
pub(crate) fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}
