//! A minimal keep-alive HTTP/1.1 POST client for the load generator, so the
//! pushers measure logic and not a client library. It understands exactly
//! what logic's API answers (a Content-Length body); anything else is an
//! error. Imports only the generator's error.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::im::bench::error::BenchError;

/// The largest response header block read.
const MAX_HEAD: usize = 16 * 1024;

/// One keep-alive connection to logic's HTTP API.
pub struct HttpConn {
    stream: TcpStream,
    host: String,
    buf: BytesMut,
}

impl HttpConn {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn open(addr: SocketAddr) -> Result<HttpConn, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            host: addr.to_string(),
            buf: BytesMut::with_capacity(1024),
        })
    }

    /// POSTs `body` to `path` (with its query) and returns the status and the
    /// response body.
    ///
    /// # Errors
    /// Socket failures or a response this client does not understand.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<(u16, Bytes), BenchError> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        let (status, head_len, body_len) = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let (status, len) = parse_head(&self.buf[..end])?;
                break (status, end + 4, len);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(BenchError::Http("header block too large".into()));
            }
            self.fill().await?;
        };
        while self.buf.len() < head_len + body_len {
            self.fill().await?;
        }
        let mut resp = self.buf.split_to(head_len + body_len);
        let body = resp.split_off(head_len).freeze();
        Ok((status, body))
    }

    async fn fill(&mut self) -> Result<(), BenchError> {
        self.buf.reserve(1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(BenchError::Closed);
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status and Content-Length of a response header block.
fn parse_head(head: &[u8]) -> Result<(u16, usize), BenchError> {
    let text = std::str::from_utf8(head).map_err(|_| BenchError::Http("not utf-8".into()))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| BenchError::Http("no status line".into()))?;
    let mut len = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(BenchError::Http("chunked responses are not supported".into()));
            }
        }
    }
    len.map(|l| (status, l))
        .ok_or_else(|| BenchError::Http("no content-length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_status_and_length() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 23";
        assert_eq!(parse_head(head).ok(), Some((200, 23)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked").is_err());
    }
}
