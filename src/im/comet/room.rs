//! A room's members within one bucket: the connections that joined room id
//! `type://id` and whose key hashes to that bucket. The bucket's lock guards it;
//! a room with no member is dropped by the bucket. Room pushes ignore the op
//! filter, as in goim. Imports `channel` only.

use std::collections::HashMap;
use std::sync::Arc;

use super::channel::{Channel, Push, PushError};

/// What a push to many connections did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Connections the push was queued to.
    pub queued: u64,
    /// Connections whose queue was full (the push was dropped for them).
    pub dropped: u64,
}

impl Fanout {
    /// Counts one connection's outcome.
    pub fn record(&mut self, result: Result<(), PushError>) {
        match result {
            Ok(()) => self.queued += 1,
            Err(PushError::Full) => self.dropped += 1,
            Err(PushError::Closed) => {}
        }
    }

    /// Adds another fan-out's counts.
    pub fn add(&mut self, other: Fanout) {
        self.queued += other.queued;
        self.dropped += other.dropped;
    }
}

/// The members of one room in one bucket.
#[derive(Default, Debug)]
pub struct Room {
    members: HashMap<u64, Arc<Channel>>,
}

impl Room {
    /// Adds `ch`.
    pub fn put(&mut self, ch: Arc<Channel>) {
        self.members.insert(ch.id(), ch);
    }

    /// Removes the channel with `id`; true if it was a member.
    pub fn del(&mut self, id: u64) -> bool {
        self.members.remove(&id).is_some()
    }

    /// Members online here.
    pub fn online(&self) -> usize {
        self.members.len()
    }

    /// True when nobody is left (the bucket then drops the room).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Queues `push` to every member, whatever ops they watch.
    pub fn push(&self, push: &Push) -> Fanout {
        let mut out = Fanout::default();
        for ch in self.members.values() {
            out.record(ch.push(push.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::frame::Frame;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn room_pushes_ignore_the_filter_and_count_drops() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let a = Arc::new(Channel::new("a", 1, ip, &[], 1));
        let b = Arc::new(Channel::new("b", 2, ip, &[1000], 1));
        let mut room = Room::default();
        room.put(a.clone());
        room.put(b.clone());
        assert_eq!(room.online(), 2);
        let p = Push::from_frame(&Frame::new(1, 2000, 0, &b"x"[..]));
        assert_eq!(
            room.push(&p),
            Fanout {
                queued: 2,
                dropped: 0
            }
        );
        assert_eq!(
            room.push(&p),
            Fanout {
                queued: 0,
                dropped: 2
            }
        );
        assert!(room.del(a.id()) && !room.del(a.id()));
        assert!(room.del(b.id()) && room.is_empty());
    }
}
