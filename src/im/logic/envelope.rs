//! goim's HTTP response envelope: always HTTP 200, with the outcome in the body,
//! `{"code": 0 | -400 | -500, "message": "...", "data": ...}`. `data` is left
//! out when there is none; an empty list is still `[]`. Imports nothing of the
//! crate.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Success.
pub const OK: i32 = 0;
/// A bad request: missing or malformed parameters, a body too large.
pub const REQUEST_ERR: i32 = -400;
/// The server failed (the proxy cluster could not be reached, …).
pub const SERVER_ERR: i32 = -500;

/// One response body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// [`OK`], [`REQUEST_ERR`] or [`SERVER_ERR`].
    pub code: i32,
    /// Empty on success; why, otherwise.
    pub message: String,
    /// The result, when the call has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Envelope {
    /// Success without data.
    pub fn ok() -> Envelope {
        Envelope {
            code: OK,
            message: String::new(),
            data: None,
        }
    }

    /// Success with `data`.
    pub fn data<T: Serialize>(data: &T) -> Envelope {
        match serde_json::to_value(data) {
            Ok(v) => Envelope {
                data: Some(v),
                ..Envelope::ok()
            },
            Err(e) => Envelope::server_error(format!("encoding the reply: {e}")),
        }
    }

    /// A bad request.
    pub fn bad_request(message: impl Into<String>) -> Envelope {
        Envelope {
            code: REQUEST_ERR,
            message: message.into(),
            data: None,
        }
    }

    /// A server failure.
    pub fn server_error(message: impl Into<String>) -> Envelope {
        Envelope {
            code: SERVER_ERR,
            message: message.into(),
            data: None,
        }
    }
}

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        (StatusCode::OK, Json(self)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &Envelope) -> String {
        serde_json::to_string(e).unwrap_or_default()
    }

    #[test]
    fn data_is_omitted_only_when_absent() {
        assert_eq!(json(&Envelope::ok()), r#"{"code":0,"message":""}"#);
        assert_eq!(
            json(&Envelope::data(&Vec::<u8>::new())),
            r#"{"code":0,"message":"","data":[]}"#
        );
        assert_eq!(
            json(&Envelope::bad_request("missing operation")),
            r#"{"code":-400,"message":"missing operation"}"#
        );
        assert_eq!(Envelope::server_error("x").code, SERVER_ERR);
    }

    #[tokio::test]
    async fn every_outcome_is_http_200() {
        let r = Envelope::server_error("down").into_response();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1024)
            .await
            .unwrap_or_default();
        assert_eq!(&body[..], br#"{"code":-500,"message":"down"}"#);
    }
}
