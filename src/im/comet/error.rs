//! Why one client connection ended: bad input of each kind, timeouts, a kick,
//! a refused auth, or an ordinary close (or the client just going away). The
//! connection loop counts and logs each ([`super::connection`]); transports
//! return it. Imports `frame`, `codec` and `logic_link`'s error.

use std::time::Duration;

use super::codec::CodecError;
use super::logic_link::LinkError;
use crate::im::frame::FrameError;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A frame with a bad header (wrong header length, body over the maximum,
    /// negative or short pack length).
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// Other garbage: a truncated frame in a WebSocket message, a WebSocket
    /// protocol violation.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A WebSocket message over the largest frame.
    #[error("websocket message over {max} bytes")]
    TooLarge {
        /// The largest whole frame allowed.
        max: usize,
    },
    /// The socket failed (other than the peer going away:
    /// [`ConnError::PeerGone`]).
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The client closed the connection.
    #[error("closed by the client")]
    PeerClosed,
    /// The client went away without closing: a TCP reset, a WebSocket client
    /// that dropped the socket without the close handshake. Ordinary (a
    /// browser tab closing, a phone losing its network), not bad input.
    #[error("client went away: {0}")]
    PeerGone(String),
    /// No op 7 within the handshake timeout.
    #[error("no auth within {0:?}")]
    HandshakeTimeout(Duration),
    /// No heartbeat within the idle timeout.
    #[error("no heartbeat within {0:?}")]
    IdleTimeout(Duration),
    /// A newer connection authenticated with the same key.
    #[error("kicked: a newer connection took the key")]
    Kicked,
    /// Logic refused the auth body.
    #[error("auth refused: {0}")]
    Refused(String),
    /// Logic could not be asked.
    #[error("auth failed: {0}")]
    AuthFailed(LinkError),
    /// comet is shutting down.
    #[error("comet is shutting down")]
    Shutdown,
}

impl From<std::io::Error> for ConnError {
    /// A reset, an abort, a broken pipe or an EOF mid-frame is the peer going
    /// away ([`ConnError::PeerGone`]); anything else is a socket failure.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => ConnError::PeerGone(e.to_string()),
            _ => ConnError::Io(e),
        }
    }
}

impl From<CodecError> for ConnError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Frame(f) => ConnError::Frame(f),
            CodecError::Io(io) => ConnError::from(io),
        }
    }
}
