//! The auth body of a new client connection (the op-7 frame's body, passed by
//! comet as `ConnectReq.token`) and the decision to accept it.
//!
//! The body is goim's JSON `{"mid","key","room_id","platform","accepts"}` plus
//! reborn's optional `"token"`. Without `[auth] secret` the claimed mid is
//! trusted, as in goim; with it, the token must verify (`token.rs`). An empty
//! key becomes the one the comet drew for the connection (`ConnectReq.key`,
//! so that a Connect tried twice writes one session), or else a fresh UUID v4,
//! after the check (the token covers the key the client sent). Imports only `token.rs`.
//!
//! The JSON is read as goim's Go `json.Unmarshal` reads it, because goim's
//! clients were written against that: a `null` leaves a field empty (Go
//! clients send `"accepts":null` for an empty list), names match
//! case-insensitively (`"Mid"`), a repeated name's last value wins, unknown
//! names are ignored, and anything but an object (or `null`) is refused.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::token::{self, TokenError};

/// The JSON a client authenticates with (see the module docs for how it is
/// read).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AuthBody {
    /// The user id; `<= 0` means no `mid_` mapping.
    pub mid: i64,
    /// The connection's key (device); empty asks logic for one.
    pub key: String,
    /// The room to join, already `type://id`.
    pub room_id: String,
    /// The client's platform (only `web` matters, for node selection).
    pub platform: String,
    /// The initial set of watched push ops.
    pub accepts: Vec<i32>,
    /// reborn's signed token (see `token.rs`).
    pub token: String,
}

/// Why a connection was refused (comet answers op 8 with this message and
/// closes the connection).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The body is not JSON.
    #[error("bad auth body: {0}")]
    Json(#[from] serde_json::Error),
    /// The body is JSON, but not goim's auth object.
    #[error("bad auth body: {0}")]
    Shape(String),
    /// The token did not verify.
    #[error("{0}")]
    Token(#[from] TokenError),
}

/// Parses `body` and, when `secret` is not empty, checks its token at time
/// `now` (unix seconds). Returns the body with its key filled in: the
/// body's, else `fallback_key` (the comet's, the same for every try of one
/// connection's Connect), else a fresh UUID.
///
/// # Errors
/// Bad JSON, or a missing, malformed, forged or expired token.
pub fn authenticate(body: &[u8], secret: &[u8], now: u64, fallback_key: &str) -> Result<AuthBody, AuthError> {
    let mut auth = parse(body)?;
    if !secret.is_empty() {
        token::verify(secret, &auth.token, auth.mid, &auth.key, now)?;
    }
    if auth.key.is_empty() {
        auth.key = if fallback_key.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            fallback_key.to_string()
        };
    }
    Ok(auth)
}

/// Reads `body` as Go's `json.Unmarshal` into goim's struct would.
fn parse(body: &[u8]) -> Result<AuthBody, AuthError> {
    let fields = match serde_json::from_slice::<Value>(body)? {
        Value::Object(fields) => fields,
        Value::Null => return Ok(AuthBody::default()),
        other => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                _ => "a boolean",
            };
            return Err(AuthError::Shape(format!("want an object, got {kind}")));
        }
    };
    let mut auth = AuthBody::default();
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        match name.to_ascii_lowercase().as_str() {
            "mid" => auth.mid = field(&name, value)?,
            "key" => auth.key = field(&name, value)?,
            "room_id" => auth.room_id = field(&name, value)?,
            "platform" => auth.platform = field(&name, value)?,
            "accepts" => auth.accepts = field(&name, value)?,
            "token" => auth.token = field(&name, value)?,
            _ => {}
        }
    }
    Ok(auth)
}

/// One field's value, or an error naming the field.
fn field<T: DeserializeOwned>(name: &str, value: Value) -> Result<T, AuthError> {
    serde_json::from_value(value).map_err(|e| AuthError::Shape(format!("field {name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goims_body_parses_and_an_empty_key_gets_a_uuid() {
        let body = br#"{"mid":123,"room_id":"live://1000","platform":"web","accepts":[1000,1001],"extra":1}"#;
        let a = authenticate(body, b"", 0, "").expect("accepted");
        assert_eq!(
            (a.mid, a.room_id.as_str(), a.platform.as_str()),
            (123, "live://1000", "web")
        );
        assert_eq!(a.accepts, vec![1000, 1001]);
        assert!(uuid::Uuid::parse_str(&a.key).is_ok(), "{}", a.key);
        let b = authenticate(body, b"", 0, "").expect("accepted");
        assert_ne!(a.key, b.key, "each connection gets its own key");
        let c = authenticate(body, b"", 0, "drawn-by-comet").expect("accepted");
        assert_eq!(c.key, "drawn-by-comet", "the comet's key, when it drew one");
        let keyed = br#"{"mid":123,"key":"mine"}"#;
        assert_eq!(
            authenticate(keyed, b"", 0, "drawn-by-comet")
                .expect("accepted")
                .key,
            "mine",
            "the client's own key first"
        );
    }

    #[test]
    fn with_a_secret_only_a_valid_token_passes() {
        let t = token::sign(b"k", 7, "dev", 100).expect("sign");
        let ok = format!(r#"{{"mid":7,"key":"dev","token":"{t}"}}"#);
        assert_eq!(
            authenticate(ok.as_bytes(), b"k", 50, "").expect("valid").key,
            "dev"
        );
        assert!(matches!(
            authenticate(ok.as_bytes(), b"k", 100, ""),
            Err(AuthError::Token(TokenError::Expired { .. }))
        ));
        let other_key = format!(r#"{{"mid":7,"key":"dev2","token":"{t}"}}"#);
        assert!(matches!(
            authenticate(other_key.as_bytes(), b"k", 50, ""),
            Err(AuthError::Token(TokenError::BadSignature))
        ));
        assert!(matches!(
            authenticate(br#"{"mid":7}"#, b"k", 50, ""),
            Err(AuthError::Token(TokenError::Missing))
        ));
        assert!(matches!(
            authenticate(b"not json", b"", 0, ""),
            Err(AuthError::Json(_))
        ));
    }

    /// What goim's clients send, read as Go's `json.Unmarshal` reads it.
    #[test]
    fn nulls_names_in_any_case_and_repeats_read_as_go_reads_them() {
        let go_client =
            br#"{"mid":123,"key":"","room_id":"live://1000","platform":"android","accepts":null}"#;
        let a = authenticate(go_client, b"", 0, "").expect("a Go client's nil slice");
        assert_eq!(
            (a.mid, a.room_id.as_str(), a.accepts.len()),
            (123, "live://1000", 0)
        );
        let all_null =
            br#"{"mid":null,"key":null,"room_id":null,"platform":null,"accepts":null,"token":null}"#;
        let a = authenticate(all_null, b"", 0, "").expect("nulls are empty");
        assert_eq!((a.mid, a.room_id.as_str()), (0, ""));
        let cased = br#"{"Mid":5130,"Room_Id":"live://7","ACCEPTS":[1000]}"#;
        let a = authenticate(cased, b"", 0, "").expect("names in any case");
        assert_eq!(
            (a.mid, a.room_id.as_str(), a.accepts.clone()),
            (5130, "live://7", vec![1000])
        );
        let repeated = br#"{"mid":1,"mid":2}"#;
        assert_eq!(authenticate(repeated, b"", 0, "").expect("last wins").mid, 2);
        assert_eq!(authenticate(b"null", b"", 0, "").expect("null body").mid, 0);
        for bad in [
            &b"[1]"[..],
            b"\"x\"",
            b"7",
            br#"{"mid":"7"}"#,
            br#"{"accepts":[1,"a"]}"#,
        ] {
            assert!(
                matches!(authenticate(bad, b"", 0, ""), Err(AuthError::Shape(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
