//! The push queue's layout in the proxy cluster: where logic appends each
//! accepted push and where job reads it back.
//!
//! goim put pushes on a Kafka topic; reborn keeps them in Redis Streams reached
//! through the proxy. The queue is `streams` stream keys (`goim-push-0` …), so
//! it spreads over every group's slots. A push goes to the stream chosen by
//! goim's partition key (the first key for a key push, the room for a room
//! push, the op for a broadcast), so pushes to one room stay in order. Each
//! entry holds one field, [`FIELD`], whose value is the protobuf
//! [`PushMsg`]. Jobs read with the consumer group [`GROUP`].

use bytes::Bytes;
use prost::Message;

use super::proto::logic::PushMsg;
use super::proto::logic::push_msg::Type as PushType;

/// The consumer group every job instance joins.
pub const GROUP: &str = "goim-push-group-job";
/// The entry field holding the encoded [`PushMsg`].
pub const FIELD: &str = "m";
/// Default number of stream keys.
pub const DEFAULT_STREAMS: usize = 16;
/// Default approximate length cap per stream (`XADD … MAXLEN ~`).
pub const DEFAULT_MAXLEN: usize = 100_000;

/// The name of stream `i`.
pub fn stream_key(i: usize) -> String {
    format!("goim-push-{i}")
}

/// All stream names of a queue of `streams` keys.
pub fn stream_keys(streams: usize) -> Vec<String> {
    (0..streams.max(1)).map(stream_key).collect()
}

/// Which of `streams` streams `msg` goes to (goim's Kafka partition key).
pub fn stream_of(msg: &PushMsg, streams: usize) -> usize {
    let op = msg.operation.to_string();
    let key: &[u8] = match msg.r#type() {
        PushType::Push => msg.keys.first().map_or(&[][..], |k| k.as_bytes()),
        PushType::Room => msg.room.as_bytes(),
        PushType::Broadcast => op.as_bytes(),
    };
    crc32fast::hash(key) as usize % streams.max(1)
}

/// The entry value for `msg`.
pub fn encode(msg: &PushMsg) -> Bytes {
    Bytes::from(msg.encode_to_vec())
}

/// Reads an entry value back.
///
/// # Errors
/// Bytes that are not an encoded [`PushMsg`].
pub fn decode(value: &[u8]) -> Result<PushMsg, prost::DecodeError> {
    PushMsg::decode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_always_maps_to_the_same_stream_and_messages_round_trip() {
        let msg = PushMsg {
            r#type: PushType::Room as i32,
            operation: 1000,
            room: "live://1000".into(),
            msg: b"hi".to_vec(),
            ..PushMsg::default()
        };
        let s = stream_of(&msg, DEFAULT_STREAMS);
        assert!(s < DEFAULT_STREAMS);
        assert_eq!(stream_of(&msg.clone(), DEFAULT_STREAMS), s);
        assert_eq!(decode(&encode(&msg)).ok(), Some(msg));
        assert!(decode(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn the_default_streams_cover_many_slots() {
        let slots: std::collections::BTreeSet<u32> = stream_keys(DEFAULT_STREAMS)
            .iter()
            .map(|k| crc32fast::hash(k.as_bytes()) % 1024)
            .collect();
        assert_eq!(slots.len(), DEFAULT_STREAMS, "every stream in its own slot");
    }
}
