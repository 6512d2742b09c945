//! The auth body of a new client connection (the op-7 frame's body, passed by
//! comet as `ConnectReq.token`) and the decision to accept it.
//!
//! The body is goim's JSON `{"mid","key","room_id","platform","accepts"}` plus
//! reborn's optional `"token"`. Without `[auth] secret` the claimed mid is
//! trusted, as in goim; with it, the token must verify (`token.rs`). An empty
//! key becomes a fresh UUID v4 after the check (the token covers the key the
//! client sent). Imports only `token.rs`.

use serde::Deserialize;

use super::token::{self, TokenError};

/// The JSON a client authenticates with. Unknown fields are ignored (goim).
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
    /// The body is not goim's auth JSON.
    #[error("bad auth body: {0}")]
    Json(#[from] serde_json::Error),
    /// The token did not verify.
    #[error("{0}")]
    Token(#[from] TokenError),
}

/// Parses `body` and, when `secret` is not empty, checks its token at time
/// `now` (unix seconds). Returns the body with its key filled in.
///
/// # Errors
/// Bad JSON, or a missing, malformed, forged or expired token.
pub fn authenticate(body: &[u8], secret: &[u8], now: u64) -> Result<AuthBody, AuthError> {
    let mut auth: AuthBody = serde_json::from_slice(body)?;
    if !secret.is_empty() {
        token::verify(secret, &auth.token, auth.mid, &auth.key, now)?;
    }
    if auth.key.is_empty() {
        auth.key = uuid::Uuid::new_v4().to_string();
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goims_body_parses_and_an_empty_key_gets_a_uuid() {
        let body = br#"{"mid":123,"room_id":"live://1000","platform":"web","accepts":[1000,1001],"extra":1}"#;
        let a = authenticate(body, b"", 0).expect("accepted");
        assert_eq!(
            (a.mid, a.room_id.as_str(), a.platform.as_str()),
            (123, "live://1000", "web")
        );
        assert_eq!(a.accepts, vec![1000, 1001]);
        assert!(uuid::Uuid::parse_str(&a.key).is_ok(), "{}", a.key);
        let b = authenticate(body, b"", 0).expect("accepted");
        assert_ne!(a.key, b.key, "each connection gets its own key");
    }

    #[test]
    fn with_a_secret_only_a_valid_token_passes() {
        let t = token::sign(b"k", 7, "dev", 100).expect("sign");
        let ok = format!(r#"{{"mid":7,"key":"dev","token":"{t}"}}"#);
        assert_eq!(authenticate(ok.as_bytes(), b"k", 50).expect("valid").key, "dev");
        assert!(matches!(
            authenticate(ok.as_bytes(), b"k", 100),
            Err(AuthError::Token(TokenError::Expired { .. }))
        ));
        let other_key = format!(r#"{{"mid":7,"key":"dev2","token":"{t}"}}"#);
        assert!(matches!(
            authenticate(other_key.as_bytes(), b"k", 50),
            Err(AuthError::Token(TokenError::BadSignature))
        ));
        assert!(matches!(
            authenticate(br#"{"mid":7}"#, b"k", 50),
            Err(AuthError::Token(TokenError::Missing))
        ));
        assert!(matches!(
            authenticate(b"not json", b"", 0),
            Err(AuthError::Json(_))
        ));
    }
}
