//! Who may use the dashboard's HTTP API: `[auth]` of `conf/dashboard.toml`.
//!
//! With a `token`, every change (any method but GET, HEAD and OPTIONS, on any
//! path) needs `Authorization: Bearer <token>`; with `read_auth = true` so does
//! every read under `/api/` and of `/metrics`. The rest (`GET /` and the web UI's static files)
//! stays open, so that a browser can load the page that then asks for the
//! token. A refusal is the API's usual `{"error": …}` with `401` and a
//! `WWW-Authenticate: Bearer` header. The check is one axum layer around the
//! whole app ([`protect`]), so a route added later is covered without being
//! told.
//!
//! Without a token anyone who reaches the port may change the cluster, so the
//! dashboard then serves only loopback addresses, unless the operator says
//! `insecure = true` ([`AuthConfig::check_exposure`]).
//!
//! Imports the manager's API error and the dashboard's error.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::DashboardError;
use crate::libs::config::ConfigError;
use crate::topo::manager::api::ApiError;

/// `[auth]`: the API token and where it is needed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The bearer token every change must carry; empty: none (loopback only).
    pub token: String,
    /// Reads under `/api/` and of `/metrics` need the token too.
    pub read_auth: bool,
    /// Without a token, serve a non-loopback address anyway.
    pub insecure: bool,
}

// By hand, so the token never reaches a log line.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("token", &token)
            .field("read_auth", &self.read_auth)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl AuthConfig {
    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.read_auth && self.token.is_empty() {
            return Err(ConfigError::Invalid(
                "[auth] read_auth = true needs [auth] token (or --token)".into(),
            ));
        }
        // It travels in an HTTP header, which carries visible ASCII only.
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid(
                "[auth] token: use visible ASCII characters only (no spaces)".into(),
            ));
        }
        Ok(())
    }

    /// Refuses to serve the API on `bound`, a non-loopback address, while it
    /// needs no token, unless `insecure` says so.
    ///
    /// # Errors
    /// [`DashboardError::Exposed`], naming the fixes.
    pub fn check_exposure(&self, bound: SocketAddr) -> Result<(), DashboardError> {
        if self.token.is_empty() && !self.insecure && !bound.ip().is_loopback() {
            return Err(DashboardError::Exposed { addr: bound });
        }
        Ok(())
    }
}

/// `app` behind the token check of `auth`. Without a token (loopback only),
/// behind a check of the `Host` instead: a page that makes its own name point
/// at 127.0.0.1 would otherwise be same-origin with the dashboard
/// (`libs::browser_guard`), unless the operator said `insecure`.
pub fn protect(app: Router, auth: &AuthConfig) -> Router {
    if auth.token.is_empty() {
        if auth.insecure {
            return app;
        }
        return app.layer(middleware::from_fn(crate::libs::browser_guard::literal_host_only));
    }
    let guard = Guard {
        token: Arc::from(auth.token.as_str()),
        read_auth: auth.read_auth,
    };
    app.layer(middleware::from_fn_with_state(guard, check))
}

/// The token and where it is needed, shared by every request.
#[derive(Clone)]
struct Guard {
    token: Arc<str>,
    read_auth: bool,
}

impl Guard {
    fn needs_token(&self, method: &Method, path: &str) -> bool {
        let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        !read || (self.read_auth && (path == "/api" || path.starts_with("/api/") || path == "/metrics"))
    }

    /// Why `headers` do not carry the token, if they do not.
    fn refusal(&self, headers: &HeaderMap) -> Option<TokenRefusal> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Some(TokenRefusal::Missing);
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match given {
            None => Some(TokenRefusal::NotBearer),
            Some(t) if tokens_match(t.as_bytes(), self.token.as_bytes()) => None,
            Some(_) => Some(TokenRefusal::Wrong),
        }
    }
}

/// Why a request was refused.
enum TokenRefusal {
    Missing,
    NotBearer,
    Wrong,
}

impl TokenRefusal {
    fn into_response(self) -> Response {
        let (message, challenge) = match self {
            TokenRefusal::Missing => (
                "this dashboard needs a token for this call: send Authorization: Bearer <token>",
                "Bearer realm=\"reborn dashboard\"",
            ),
            TokenRefusal::NotBearer => (
                "the Authorization header must be: Bearer <token>",
                "Bearer realm=\"reborn dashboard\", error=\"invalid_request\"",
            ),
            TokenRefusal::Wrong => (
                "the token is wrong",
                "Bearer realm=\"reborn dashboard\", error=\"invalid_token\"",
            ),
        };
        let challenge = HeaderValue::from_static(challenge);
        let error = ApiError::new(StatusCode::UNAUTHORIZED, message);
        ([(header::WWW_AUTHENTICATE, challenge)], error).into_response()
    }
}

async fn check(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if guard.needs_token(req.method(), req.uri().path())
        && let Some(refusal) = guard.refusal(req.headers())
    {
        return refusal.into_response();
    }
    next.run(req).await
}

/// True when `given` equals `want`, taking the same time wherever they differ
/// and whatever their lengths: both are hashed (SHA-256) and the digests are
/// compared in constant time (`subtle`), so neither the first differing byte
/// nor the token's length can be timed from outside.
pub fn tokens_match(given: &[u8], want: &[u8]) -> bool {
    let (given, want) = (Sha256::digest(given), Sha256::digest(want));
    given.as_slice().ct_eq(want.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match(b"s3cret-token", b"s3cret-token"));
        assert!(tokens_match(b"", b""));
        // Same length, one byte off (first, last).
        assert!(!tokens_match(b"X3cret-token", b"s3cret-token"));
        assert!(!tokens_match(b"s3cret-tokeX", b"s3cret-token"));
        // A prefix, a longer one, an empty one.
        assert!(!tokens_match(b"s3cret", b"s3cret-token"));
        assert!(!tokens_match(b"s3cret-token-and-more", b"s3cret-token"));
        assert!(!tokens_match(b"", b"s3cret-token"));
    }

    #[test]
    fn changes_always_need_the_token_and_reads_only_with_read_auth() {
        let open = Guard {
            token: Arc::from("t"),
            read_auth: false,
        };
        let closed = Guard {
            read_auth: true,
            ..open.clone()
        };
        for g in [&open, &closed] {
            assert!(g.needs_token(&Method::POST, "/api/groups"));
            assert!(g.needs_token(&Method::DELETE, "/api/groups/1"));
            assert!(g.needs_token(&Method::PUT, "/api/loglevel/info"));
            assert!(g.needs_token(&Method::POST, "/anything"));
            assert!(!g.needs_token(&Method::GET, "/"));
            assert!(!g.needs_token(&Method::GET, "/app.js"));
        }
        assert!(!open.needs_token(&Method::GET, "/api/groups"));
        assert!(closed.needs_token(&Method::GET, "/api/groups"));
        assert!(closed.needs_token(&Method::HEAD, "/api"));
        assert!(!open.needs_token(&Method::GET, "/metrics"));
        assert!(closed.needs_token(&Method::GET, "/metrics"));
    }

    #[test]
    fn the_header_is_read_as_a_bearer_token() {
        let g = Guard {
            token: Arc::from("s3cret"),
            read_auth: false,
        };
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            g.refusal(&h)
        };
        assert!(matches!(
            g.refusal(&HeaderMap::new()),
            Some(TokenRefusal::Missing)
        ));
        assert!(with("Bearer s3cret").is_none());
        assert!(with("bearer s3cret").is_none());
        assert!(matches!(with("Bearer wrong"), Some(TokenRefusal::Wrong)));
        assert!(matches!(with("Basic s3cret"), Some(TokenRefusal::NotBearer)));
        assert!(matches!(with("s3cret"), Some(TokenRefusal::NotBearer)));
    }

    #[test]
    fn a_token_is_a_header_value_and_read_auth_needs_one() {
        let c = |token: &str, read_auth| AuthConfig {
            token: token.into(),
            read_auth,
            insecure: false,
        };
        assert!(c("", false).validate().is_ok());
        assert!(c("abc-123_XYZ", true).validate().is_ok());
        assert!(c("", true).validate().is_err());
        assert!(c("two words", false).validate().is_err());
        assert!(c("é", false).validate().is_err());
        assert!(!format!("{:?}", c("abc-123", false)).contains("abc-123"));
    }

    #[test]
    fn only_loopback_is_served_without_a_token_unless_insecure() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let none = AuthConfig::default();
        assert!(none.check_exposure(addr("127.0.0.1:1")).is_ok());
        assert!(none.check_exposure(addr("[::1]:1")).is_ok());
        let err = none.check_exposure(addr("0.0.0.0:1")).expect_err("exposed");
        let msg = err.to_string();
        assert!(
            msg.contains("[auth] token") && msg.contains("--insecure"),
            "{msg}"
        );
        let insecure = AuthConfig {
            insecure: true,
            ..AuthConfig::default()
        };
        assert!(insecure.check_exposure(addr("10.1.2.3:1")).is_ok());
        let token = AuthConfig {
            token: "t".into(),
            ..AuthConfig::default()
        };
        assert!(token.check_exposure(addr("0.0.0.0:1")).is_ok());
    }
}
