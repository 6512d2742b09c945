//! The push queue's producer: appends each `PushMsg` to its stream with
//! `XADD goim-push-{i} MAXLEN ~ <maxlen> * m <protobuf>` through the proxy.
//! The stream is chosen by `queue::stream_of` (goim's Kafka partition key), so
//! pushes to one room stay in order; job consumes them. All messages of one
//! HTTP request go in one pipeline. Imports `im::queue` and `im::proxies`.

use std::sync::Arc;

use bytes::Bytes;

use crate::im::proto::logic::PushMsg;
use crate::im::queue;
use crate::libs::resp_client::{self, Frame, RespError};

use super::config::LogicQueueConfig;
use crate::im::proxies::ProxySet;

/// Appends pushes to the queue.
#[derive(Debug, Clone)]
pub struct Producer {
    cluster: Arc<ProxySet>,
    streams: usize,
    maxlen: Bytes,
}

impl Producer {
    /// A producer over `config.streams` streams in `cluster`.
    pub fn new(cluster: Arc<ProxySet>, config: &LogicQueueConfig) -> Producer {
        Producer {
            cluster,
            streams: config.streams.max(1),
            maxlen: Bytes::from(config.maxlen.to_string()),
        }
    }

    /// The `XADD` command for `msg`.
    pub fn xadd(&self, msg: &PushMsg) -> Frame {
        let stream = queue::stream_key(queue::stream_of(msg, self.streams));
        let args: [Bytes; 7] = [
            Bytes::from_static(b"XADD"),
            Bytes::from(stream),
            Bytes::from_static(b"MAXLEN"),
            Bytes::from_static(b"~"),
            self.maxlen.clone(),
            Bytes::from_static(b"*"),
            Bytes::from_static(queue::FIELD.as_bytes()),
        ];
        let mut items: Vec<Frame> = args.into_iter().map(Frame::BulkString).collect();
        items.push(Frame::BulkString(queue::encode(msg)));
        Frame::Array(items)
    }

    /// Appends every message, in one pipeline.
    ///
    /// # Errors
    /// The cluster failed or refused an append (earlier ones may have been
    /// queued: a retry can deliver those twice, which the at-least-once queue
    /// allows).
    pub async fn append(&self, msgs: &[PushMsg]) -> Result<(), RespError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let frames = msgs.iter().map(|m| self.xadd(m)).collect();
        for reply in self.cluster.pipeline(frames).await? {
            resp_client::check(reply)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::logic::config::LogicClusterConfig;
    use crate::im::proto::logic::push_msg::Type as PushType;
    use crate::im::proxies::Failover;

    #[test]
    fn an_append_is_an_xadd_capped_approximately_with_the_encoded_message() {
        let c = LogicClusterConfig::default();
        let cluster = Arc::new(ProxySet::new(&c.addrs, c.conns, c.timeout, Failover::Spread));
        let p = Producer::new(
            cluster,
            &LogicQueueConfig {
                streams: 4,
                maxlen: 99,
            },
        );
        let msg = PushMsg {
            r#type: PushType::Room as i32,
            operation: 1000,
            room: "live://1".into(),
            msg: b"hi".to_vec(),
            ..PushMsg::default()
        };
        let Frame::Array(items) = p.xadd(&msg) else {
            panic!("not an array")
        };
        let text: Vec<Vec<u8>> = items
            .iter()
            .map(|f| match f {
                Frame::BulkString(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let stream = queue::stream_key(queue::stream_of(&msg, 4));
        assert_eq!(
            text[..7],
            [
                b"XADD".to_vec(),
                stream.into_bytes(),
                b"MAXLEN".to_vec(),
                b"~".to_vec(),
                b"99".to_vec(),
                b"*".to_vec(),
                b"m".to_vec()
            ]
        );
        assert_eq!(queue::decode(&text[7]).ok(), Some(msg));
    }
}
