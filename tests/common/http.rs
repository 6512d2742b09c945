//! One HTTP/1.1 request from a test to any of our HTTP servers (logic's push
//! API, a proxy's admin endpoints): the status and the body. Built on hyper's
//! client connection, so no HTTP is parsed by hand here.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Why a request failed.
pub type HttpError = Box<dyn std::error::Error + Send + Sync>;

/// One request to `addr`: the status and the body, or why there is none (for
/// tests that expect failures, such as a killed proxy behind logic).
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes), HttpError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from(body)))?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    Ok((status, res.into_body().collect().await?.to_bytes()))
}

/// One request to `addr`: the status and the body (panics without an answer).
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> (u16, Bytes) {
    try_request(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `GET path`: the body as text, whatever the status.
pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    let (_, body) = request(addr, "GET", path, Vec::new()).await;
    String::from_utf8_lossy(&body).into_owned()
}
