//! The gRPC server settings the push roles share (logic serves comet, comet
//! serves job).
//!
//! h2, under tonic, guards a server against floods of small DATA frames: the
//! overhead of frames received but not yet read is charged to a budget of half
//! the connection window (512 KB under hyper's 1 MB window), and past it the
//! whole connection gets GOAWAY, failing every call on it. Each of our calls is
//! one small frame, and a comet sends all its calls to a logic on one
//! connection, so thousands at once (a crowd of clients logging out together)
//! tripped the guard. Capping the streams in flight per connection keeps the
//! unread frames within the budget; the client queues the rest, because h2
//! honours the server's SETTINGS_MAX_CONCURRENT_STREAMS.

use tonic::transport::Server;

/// Streams in flight per connection: at most one small frame of at most
/// 256 bytes of charged overhead each, 256 KB in all, half the budget.
pub const MAX_STREAMS: u32 = 1_000;

/// A tonic server builder with the settings above.
#[must_use]
pub fn builder() -> Server {
    Server::builder().max_concurrent_streams(MAX_STREAMS)
}
