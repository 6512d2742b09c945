//! The write that makes a `WAIT` cover other connections' writes.
//!
//! Redis answers `WAIT` for the writes of the connection it is sent on: the
//! replication offset after that connection's last propagated command. To
//! wait for writes made on other connections (the proxy's shared backend
//! connections, or an earlier connection of the migrator), a connection first
//! sends `PUBLISH` to a channel of ours: Redis propagates it to the replicas
//! without touching data, so that connection's offset becomes the master's
//! current one. Nobody subscribes to the channel.

/// The channel.
pub const CHANNEL: &[u8] = b"__reborn_wait__";

/// `PUBLISH __reborn_wait__ ""`, encoded.
pub const MARK: &[u8] = b"*3\r\n$7\r\nPUBLISH\r\n$15\r\n__reborn_wait__\r\n$0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_publishes_to_the_channel() {
        use crate::libs::resp::{put_bulk, put_header};
        let mut want = bytes::BytesMut::new();
        put_header(&mut want, b'*', 3);
        for word in [b"PUBLISH".as_ref(), CHANNEL, b""] {
            put_bulk(&mut want, word);
        }
        assert_eq!(&want[..], MARK);
    }
}
