//! A small client of the dashboard's JSON API, for `reborn admin` (and the
//! tests, which so exercise the same code path as operators).
//!
//! One HTTP/1.1 request per connection: admin commands are one-shot, and a fresh
//! connection always reaches whichever process holds the address now. A
//! [`DashboardClient`] carries the dashboard's token (`reborn admin --token`); the free
//! functions call without one. Imports only libraries.

use std::time::Duration;

use axum::http::{Method, Request, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// How long one call may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a call to the dashboard failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address.
    #[error(
        "cannot reach the dashboard at {addr}: {reason} (is `reborn dashboard` running there? see --dashboard)"
    )]
    Unreachable {
        /// The dashboard address.
        addr: String,
        /// What went wrong (refused, timed out, …).
        reason: String,
    },

    /// Something answered, but not with the HTTP/JSON we expect.
    #[error("the dashboard at {addr} gave an unexpected answer: {reason}")]
    Protocol {
        /// The dashboard address.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The dashboard wants a token, and none or another one was sent.
    #[error(
        "the dashboard needs a token: --token or REBORN_TOKEN ({message}; HTTP 401 from the dashboard at {addr})"
    )]
    Unauthorized {
        /// The dashboard address.
        addr: String,
        /// The `error` field of the reply (missing or wrong token).
        message: String,
    },

    /// The dashboard refused the request; `message` is its explanation.
    #[error("{message} (HTTP {status} from the dashboard at {addr})")]
    Refused {
        /// The dashboard address.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The `error` field of the reply.
        message: String,
    },
}

/// A reply: HTTP status and JSON body (`null` for an empty body).
#[derive(Debug, Clone)]
pub struct ApiReply {
    /// The dashboard address it came from.
    pub addr: String,
    /// HTTP status code.
    pub status: u16,
    /// The parsed body.
    pub body: serde_json::Value,
}

impl ApiReply {
    /// The `error` message of a refusal, if the body has one.
    pub fn error(&self) -> Option<&str> {
        self.body.get("error").and_then(|e| e.as_str())
    }

    /// The body as `T` on success (2xx).
    ///
    /// # Errors
    /// [`ClientError::Unauthorized`] for a 401 (the token is missing or
    /// wrong); [`ClientError::Refused`] with the dashboard's message for any
    /// other status; [`ClientError::Protocol`] if the body is not a `T`.
    pub fn into_json<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        if self.status == 401 {
            return Err(ClientError::Unauthorized {
                message: self.error().unwrap_or("no explanation given").to_string(),
                addr: self.addr,
            });
        }
        if !(200..300).contains(&self.status) {
            return Err(ClientError::Refused {
                message: self.error().unwrap_or("no explanation given").to_string(),
                addr: self.addr,
                status: self.status,
            });
        }
        serde_json::from_value(self.body).map_err(|e| ClientError::Protocol {
            addr: self.addr,
            reason: format!("unexpected JSON: {e}"),
        })
    }
}

/// The dashboard at one address, and the token to send it (`[auth] token` of
/// its config), if any.
#[derive(Clone)]
pub struct DashboardClient {
    addr: String,
    token: Option<String>,
}

impl DashboardClient {
    /// The dashboard at `addr` (`host:port`), without a token.
    pub fn new(addr: impl Into<String>) -> DashboardClient {
        DashboardClient {
            addr: addr.into(),
            token: None,
        }
    }

    /// The same dashboard, sending `Authorization: Bearer <token>` with every
    /// call (none for `None` or an empty token).
    pub fn with_token(self, token: Option<String>) -> DashboardClient {
        DashboardClient {
            token: token.filter(|t| !t.is_empty()),
            ..self
        }
    }

    /// Its address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path` (path and query, e.g. `/api/rebalance/plan?weights=1:2`).
    ///
    /// # Errors
    /// As [`DashboardClient::call`].
    pub async fn get(&self, path: &str) -> Result<ApiReply, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    ///
    /// # Errors
    /// As [`DashboardClient::call`].
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<ApiReply, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `POST path`, waiting up to `wait` for the reply instead of the usual
    /// 15 s: for operations that wait on servers themselves (a promote waits
    /// for a replica to catch up and for every proxy to acknowledge).
    ///
    /// # Errors
    /// As [`DashboardClient::call`].
    pub async fn post_within(
        &self,
        path: &str,
        body: &serde_json::Value,
        wait: Duration,
    ) -> Result<ApiReply, ClientError> {
        self.call_within(Method::POST, path, Some(body), wait).await
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// As [`DashboardClient::call`].
    pub async fn delete(&self, path: &str) -> Result<ApiReply, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends one request and reads the whole reply. Any status is a
    /// [`ApiReply`]; see [`ApiReply::into_json`].
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] if it cannot connect or the call times out;
    /// [`ClientError::Protocol`] for a reply that is not HTTP with a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiReply, ClientError> {
        self.call_within(method, path, body, CALL_TIMEOUT).await
    }

    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        wait: Duration,
    ) -> Result<ApiReply, ClientError> {
        match tokio::time::timeout(wait, exchange(self, method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Unreachable {
                addr: self.addr.clone(),
                reason: format!("no reply within {wait:?}"),
            }),
        }
    }
}

/// `GET path` from the dashboard at `addr`, without a token.
///
/// # Errors
/// As [`DashboardClient::call`].
pub async fn get(addr: &str, path: &str) -> Result<ApiReply, ClientError> {
    DashboardClient::new(addr).get(path).await
}

/// `POST path` to the dashboard at `addr`, without a token.
///
/// # Errors
/// As [`DashboardClient::call`].
pub async fn post(addr: &str, path: &str, body: &serde_json::Value) -> Result<ApiReply, ClientError> {
    DashboardClient::new(addr).post(path, body).await
}

/// Any call to the dashboard at `addr`, without a token.
///
/// # Errors
/// As [`DashboardClient::call`].
pub async fn call(
    addr: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<ApiReply, ClientError> {
    DashboardClient::new(addr).call(method, path, body).await
}

async fn exchange(
    client: &DashboardClient,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<ApiReply, ClientError> {
    let addr = client.addr.as_str();
    let protocol = |reason: String| ClientError::Protocol {
        addr: addr.to_string(),
        reason,
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    // The connection task ends when `sender` is dropped after the reply.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("dashboard client connection: {e}");
        }
    });
    let bytes = match body {
        Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| protocol(e.to_string()))?),
        None => Bytes::new(),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = &client.token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(bytes))
        .map_err(|e| protocol(format!("bad request {path:?}: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let status = response.status().as_u16();
    let data = response
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(e.to_string()))?
        .to_bytes();
    let body = if data.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&data).map_err(|_| {
            protocol(format!(
                "HTTP {status} with a body that is not JSON: {:?}",
                String::from_utf8_lossy(&data[..data.len().min(200)])
            ))
        })?
    };
    Ok(ApiReply {
        addr: addr.to_string(),
        status,
        body,
    })
}
