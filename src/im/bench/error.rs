//! The load generator's error type. Imports nothing of the crate: the
//! generator's parts (wire, http, modes) all report through it.

/// Why a generator connection or request failed. None of these is retried by
/// the generator: a failed connection is counted and reported, not redialled.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The socket failed (connect, bind, read or write).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The comet closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The comet sent a frame the generator cannot read.
    #[error("bad frame: {0}")]
    Frame(String),
    /// The comet answered the auth with something other than an empty op 8.
    #[error("auth refused: {0}")]
    Refused(String),
    /// Logic's HTTP answer could not be read.
    #[error("bad http response: {0}")]
    Http(String),
    /// A step took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}
