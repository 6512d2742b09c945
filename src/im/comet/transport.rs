//! What the connection loop needs from a client socket, so the goim protocol is
//! written once for raw TCP and for WebSocket (plain or TLS). Imports
//! `frame`, `channel` and the connection's error type.

use std::collections::VecDeque;
use std::future::Future;

use super::channel::Push;
use super::error::ConnError;
use crate::im::frame::Frame;

/// A client socket carrying goim frames.
pub trait Transport: Send {
    /// Waits for input and appends the whole frames that arrived to `out`.
    ///
    /// Cancel-safe: dropped before it resolves, it loses nothing (the loop
    /// selects it against pushes and timers).
    fn read_frames(&mut self, out: &mut Vec<Frame>) -> impl Future<Output = Result<(), ConnError>> + Send;

    /// Writes `replies` then `pushes` as one batch and flushes.
    fn write(
        &mut self,
        replies: &[Frame],
        pushes: &VecDeque<Push>,
    ) -> impl Future<Output = Result<(), ConnError>> + Send;

    /// Closes the socket politely (best effort).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}
