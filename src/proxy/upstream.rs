//! One upstream subscriber connection: the worker's subscriptions on one
//! master.
//!
//! Unlike a `BackendConn`, whose every frame answers a request, this
//! connection mostly receives frames nobody asked for (messages), so it has
//! its own small loop: the hub (`pubsub.rs`) queues `SUBSCRIBE`/`UNSUBSCRIBE`
//! operations, the loop writes them and hands every frame it reads
//! (`resp::reply_len` frames) back to the hub, which delivers messages and
//! confirms subscriptions.
//!
//! A name is confirmed to the hub only by the confirmation of the last
//! `SUBSCRIBE` written for it (see [`State`]). The loop keeps the set it is
//! subscribed to, so after a lost connection it
//! reconnects with backoff and subscribes to all of it again; the hub marks
//! the connection's subscriptions unconfirmed meanwhile. It speaks RESP2
//! (messages are re-framed for RESP3 clients by the hub) and ends when the
//! hub drops its handle.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::backend::{self, BackendError, BackendOptions};
use super::pubsub::{Class, PubSubHub};
use crate::libs::backoff::Backoff;
use crate::libs::protocol::Protocol;
use crate::libs::resp;

/// What the hub asks of the connection.
enum Op {
    Subscribe(Class, Bytes),
    Unsubscribe(Class, Bytes),
}

/// Handle to the subscriber connection to one master; dropping it closes the
/// connection.
pub struct Upstream {
    tx: mpsc::UnboundedSender<Op>,
}

impl Upstream {
    /// Starts the connection to `addr` on the current runtime.
    pub fn spawn(addr: &str, opts: BackendOptions, hub: Weak<PubSubHub>) -> Upstream {
        // A subscriber speaks RESP2 whatever its clients speak, and needs no
        // `CLIENT ID` (it never blocks); it never carries a write to `WAIT` for.
        let opts = BackendOptions {
            protocol: Protocol::Resp2,
            track_id: false,
            replica_ack: None,
            busy_after: None,
            ..opts
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(addr.to_string(), opts, hub, rx));
        Upstream { tx }
    }

    /// Subscribes to `name` (confirmed to the hub when the server says so).
    pub fn subscribe(&self, class: Class, name: Bytes) {
        let _ = self.tx.send(Op::Subscribe(class, name));
    }

    /// Unsubscribes from `name`.
    pub fn unsubscribe(&self, class: Class, name: Bytes) {
        let _ = self.tx.send(Op::Unsubscribe(class, name));
    }
}

/// Why a connection ended.
enum End {
    /// The hub dropped the handle.
    Closed,
    /// The connection could not be opened, or broke.
    Lost(BackendError),
}

async fn run(addr: String, opts: BackendOptions, hub: Weak<PubSubHub>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut state = State::default();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    // The last failure logged: the same one again (a password the server
    // refuses, a server down for long) is not news at every retry.
    let mut last_error: Option<String> = None;
    loop {
        let end = match backend::connect(&addr, &opts).await {
            Ok((stream, _)) => {
                backoff.reset();
                if last_error.take().is_some() {
                    tracing::info!(backend = %addr, "pub/sub upstream connected again");
                } else {
                    tracing::debug!(backend = %addr, "pub/sub upstream connected");
                }
                serve(stream, &addr, &hub, &mut rx, &mut state).await
            }
            Err(e) => End::Lost(e),
        };
        let End::Lost(why) = end else { return };
        let Some(h) = hub.upgrade() else { return };
        h.down(&addr);
        drop(h);
        let error = why.to_string();
        if last_error.as_deref() == Some(error.as_str()) {
            tracing::debug!(backend = %addr, %error, "pub/sub upstream still down");
        } else {
            tracing::warn!(backend = %addr, %error, "pub/sub upstream lost; resubscribing after backoff");
        }
        last_error = Some(error);
        // Keep the set current while waiting, so the resubscription is too.
        let sleep = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                op = rx.recv() => match op {
                    Some(op) => { apply(&mut state, op); }
                    None => return,
                },
            }
        }
        // Subscribed to nothing: connect again only once asked for something.
        while state.subscribed.is_empty() {
            let Some(op) = rx.recv().await else { return };
            apply(&mut state, op);
        }
    }
}

/// What the connection is subscribed to, and the `SUBSCRIBE`s it wrote
/// that the server has not confirmed yet, per name.
#[derive(Default)]
struct State {
    subscribed: HashSet<(Class, Bytes)>,
    /// A name is confirmed to the hub only when its last `SUBSCRIBE` is: after
    /// `SUBSCRIBE`, `UNSUBSCRIBE`, `SUBSCRIBE`, the first confirmation says
    /// nothing about the last.
    outstanding: HashMap<(Class, Bytes), u32>,
}

impl State {
    /// Notes a subscription confirmed; true when it is the last one
    /// outstanding of a name still wanted.
    fn confirmed(&mut self, key: (Class, Bytes)) -> bool {
        if let Some(n) = self.outstanding.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n > 0 {
                return false;
            }
            self.outstanding.remove(&key);
        }
        self.subscribed.contains(&key)
    }
}

fn apply(state: &mut State, op: Op) -> Bytes {
    match op {
        Op::Subscribe(class, name) => {
            let req = resp::encode_array(&[class.subscribe(), &name[..]]);
            *state.outstanding.entry((class, name.clone())).or_default() += 1;
            state.subscribed.insert((class, name));
            req
        }
        Op::Unsubscribe(class, name) => {
            let req = resp::encode_array(&[class.unsubscribe(), &name[..]]);
            state.subscribed.remove(&(class, name));
            req
        }
    }
}

/// Runs one connected socket: subscribes to the whole set, then writes the
/// hub's operations and hands it every frame read.
async fn serve(
    mut stream: TcpStream,
    addr: &str,
    hub: &Weak<PubSubHub>,
    rx: &mut mpsc::UnboundedReceiver<Op>,
    state: &mut State,
) -> End {
    let mut out = BytesMut::new();
    // A new connection: only the subscriptions written on it will confirm.
    state.outstanding.clear();
    for (class, name) in state.subscribed.iter() {
        out.extend_from_slice(&resp::encode_array(&[class.subscribe(), &name[..]]));
        state.outstanding.insert((*class, name.clone()), 1);
    }
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scan = resp::ReplyScan::default();
    loop {
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return End::Lost(e.into());
            }
            out.clear();
        }
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { return End::Closed };
                out.extend_from_slice(&apply(state, op));
                // Everything queued goes in one write.
                while let Ok(op) = rx.try_recv() {
                    out.extend_from_slice(&apply(state, op));
                }
            }
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => return End::Lost(BackendError::Closed),
                    Err(e) => return End::Lost(e.into()),
                    Ok(_) => {}
                }
                let Some(h) = hub.upgrade() else { return End::Closed };
                loop {
                    match scan.next_len(&buf) {
                        Ok(Some(n)) => {
                            let frame = buf.split_to(n).freeze();
                            if resp::is_error(&frame) {
                                tracing::warn!(backend = %addr, reply = %String::from_utf8_lossy(&frame).trim(), "pub/sub upstream error");
                            }
                            match PubSubHub::confirmation_of(&frame) {
                                Some(key) => {
                                    if state.confirmed(key.clone()) {
                                        h.confirm(addr, key.0, key.1);
                                    }
                                }
                                None => h.on_frame(addr, &frame),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return End::Lost(e.into()),
                    }
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_subscribe_of_a_name_confirms_it() {
        let mut st = State::default();
        let key = (Class::Channel, Bytes::from_static(b"c"));
        apply(&mut st, Op::Subscribe(key.0, key.1.clone()));
        apply(&mut st, Op::Unsubscribe(key.0, key.1.clone()));
        apply(&mut st, Op::Subscribe(key.0, key.1.clone()));
        assert!(!st.confirmed(key.clone()), "the first SUBSCRIBE's confirmation");
        assert!(st.confirmed(key.clone()), "the last one's");
        apply(&mut st, Op::Unsubscribe(key.0, key.1.clone()));
        assert!(!st.confirmed(key), "no longer wanted");
    }
}
