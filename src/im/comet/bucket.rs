//! The connection maps, sharded: key → channel, the rooms (room id → members)
//! and the count of connections per client IP. A key always hashes (crc32) to
//! the same bucket, so a duplicate key is found under one lock and the older
//! connection is kicked (goim's fix #377). Rooms are per bucket as in goim: a
//! room push visits every bucket's part of the room. Imports `channel`, `room`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::RwLock;

use super::channel::{Channel, Push};
use super::room::{Fanout, Room};

/// One shard.
#[derive(Default)]
struct Bucket {
    inner: RwLock<BucketInner>,
}

#[derive(Default)]
struct BucketInner {
    channels: HashMap<Arc<str>, Arc<Channel>>,
    rooms: HashMap<Arc<str>, Room>,
    ips: HashMap<IpAddr, u32>,
}

impl BucketInner {
    fn join(&mut self, ch: &Arc<Channel>, room: Option<Arc<str>>) {
        if let Some(id) = &room {
            self.rooms.entry(id.clone()).or_default().put(ch.clone());
        }
        ch.set_room(room);
    }

    fn leave(&mut self, ch: &Channel) {
        let Some(id) = ch.room() else { return };
        if let Some(room) = self.rooms.get_mut(&id) {
            room.del(ch.id());
            if room.is_empty() {
                self.rooms.remove(&id);
            }
        }
        ch.set_room(None);
    }
}

/// Every bucket of a comet.
pub struct Buckets {
    shards: Box<[Bucket]>,
}

impl Buckets {
    /// `size` buckets (at least one).
    pub fn new(size: usize) -> Buckets {
        Buckets {
            shards: (0..size.max(1)).map(|_| Bucket::default()).collect(),
        }
    }

    fn bucket(&self, key: &str) -> &Bucket {
        let i = crc32fast::hash(key.as_bytes()) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Registers `ch` under its key and in `room`. Returns the connection it
    /// replaced, already kicked (closed) and out of its room.
    pub fn put(&self, ch: &Arc<Channel>, room: Option<Arc<str>>) -> Option<Arc<Channel>> {
        let mut b = self.bucket(ch.key()).inner.write();
        let old = b.channels.insert(ch.shared_key(), ch.clone());
        if let Some(old) = &old {
            b.leave(old);
            old.kick();
        }
        b.join(ch, room);
        *b.ips.entry(ch.ip()).or_default() += 1;
        old
    }

    /// Unregisters `ch` (once, when its connection ends): out of its room, out
    /// of the key map unless a newer connection holds the key now.
    pub fn del(&self, ch: &Arc<Channel>) {
        let mut b = self.bucket(ch.key()).inner.write();
        if b.channels.get(ch.key()).is_some_and(|cur| Arc::ptr_eq(cur, ch)) {
            b.channels.remove(ch.key());
        }
        b.leave(ch);
        if let Some(n) = b.ips.get_mut(&ch.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                b.ips.remove(&ch.ip());
            }
        }
    }

    /// Moves `ch` to `room` (`None`: out of any room). A kicked channel stays out.
    pub fn change_room(&self, ch: &Arc<Channel>, room: Option<Arc<str>>) {
        let mut b = self.bucket(ch.key()).inner.write();
        if !b.channels.get(ch.key()).is_some_and(|cur| Arc::ptr_eq(cur, ch)) {
            return;
        }
        b.leave(ch);
        b.join(ch, room);
    }

    /// The connection holding `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Channel>> {
        self.bucket(key).inner.read().channels.get(key).cloned()
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false (there is at least one bucket).
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Queues `push` to every member of `room`, whatever ops they watch.
    pub fn push_room(&self, room: &str, push: &Push) -> Fanout {
        let mut out = Fanout::default();
        for shard in self.shards.iter() {
            if let Some(r) = shard.inner.read().rooms.get(room) {
                out.add(r.push(push));
            }
        }
        out
    }

    /// Queues `push` to every connection of bucket `index` that watches `op`;
    /// also returns how many connections the bucket holds (for broadcast pacing).
    pub fn broadcast_bucket(&self, index: usize, op: i32, push: &Push) -> (Fanout, usize) {
        let mut out = Fanout::default();
        let Some(shard) = self.shards.get(index) else {
            return (out, 0);
        };
        let b = shard.inner.read();
        for ch in b.channels.values().filter(|ch| ch.watches(op)) {
            out.record(ch.push(push.clone()));
        }
        (out, b.channels.len())
    }

    /// Members of `room` on this comet.
    pub fn room_online(&self, room: &str) -> usize {
        self.shards
            .iter()
            .map(|s| s.inner.read().rooms.get(room).map_or(0, Room::online))
            .sum()
    }

    /// `{room: online}` for every room with someone in it.
    pub fn room_counts(&self) -> HashMap<String, i32> {
        let mut out: HashMap<String, i32> = HashMap::new();
        for shard in self.shards.iter() {
            for (id, room) in &shard.inner.read().rooms {
                let n = i32::try_from(room.online()).unwrap_or(i32::MAX);
                let e = out.entry(id.to_string()).or_default();
                *e = e.saturating_add(n);
            }
        }
        out
    }

    /// Connections registered.
    pub fn conn_count(&self) -> usize {
        self.shards.iter().map(|s| s.inner.read().channels.len()).sum()
    }

    /// Distinct client IPs.
    pub fn ip_count(&self) -> usize {
        let mut ips = HashSet::new();
        for shard in self.shards.iter() {
            ips.extend(shard.inner.read().ips.keys().copied());
        }
        ips.len()
    }

    /// Every connection registered now.
    pub fn channels(&self) -> Vec<Arc<Channel>> {
        let mut out = Vec::with_capacity(self.conn_count());
        for shard in self.shards.iter() {
            out.extend(shard.inner.read().channels.values().cloned());
        }
        out
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        for shard in self.shards.iter() {
            for ch in shard.inner.read().channels.values() {
                ch.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im::frame::Frame;
    use std::net::Ipv4Addr;

    fn ch(key: &str, last_octet: u8, accepts: &[i32]) -> Arc<Channel> {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet));
        Arc::new(Channel::new(key, 1, ip, accepts, 8))
    }

    fn room(id: &str) -> Option<Arc<str>> {
        Some(id.into())
    }

    #[test]
    fn a_duplicate_key_kicks_the_old_connection() {
        let b = Buckets::new(4);
        let old = ch("k", 1, &[]);
        let new = ch("k", 2, &[]);
        assert!(b.put(&old, room("live://1")).is_none());
        let kicked = b.put(&new, room("live://1")).expect("replaced");
        assert!(Arc::ptr_eq(&kicked, &old) && old.was_kicked() && !new.is_closed());
        assert_eq!(b.room_online("live://1"), 1, "the old one left the room");
        assert_eq!(b.ip_count(), 2, "until the old connection's task ends");
        b.del(&old);
        assert!(
            b.get("k").is_some_and(|c| Arc::ptr_eq(&c, &new)),
            "del of the old one keeps the new"
        );
        assert_eq!(
            (b.conn_count(), b.ip_count(), b.room_online("live://1")),
            (1, 1, 1)
        );
        b.del(&new);
        assert_eq!((b.conn_count(), b.ip_count()), (0, 0));
        assert!(b.room_counts().is_empty(), "empty rooms are dropped");
    }

    #[test]
    fn rooms_count_across_buckets_and_follow_changes() {
        let b = Buckets::new(32);
        let all: Vec<_> = (0..40).map(|i| ch(&format!("key-{i}"), 1, &[])).collect();
        for c in &all {
            b.put(c, room("live://1"));
        }
        assert_eq!(b.room_online("live://1"), 40);
        b.change_room(&all[0], room("live://2"));
        b.change_room(&all[1], None);
        assert_eq!(
            b.room_counts(),
            HashMap::from([("live://1".into(), 38), ("live://2".into(), 1)])
        );
        assert_eq!(all[0].room().as_deref(), Some("live://2"));
        assert_eq!(b.ip_count(), 1);
        let p = Push::from_frame(&Frame::new(1, 1000, 0, &b"x"[..]));
        assert_eq!(b.push_room("live://1", &p).queued, 38);
        assert_eq!(b.push_room("live://9", &p).queued, 0);
    }

    #[test]
    fn broadcasts_honour_the_op_filter() {
        let b = Buckets::new(2);
        let yes = ch("yes", 1, &[1000]);
        let no = ch("no", 1, &[1001]);
        b.put(&yes, None);
        b.put(&no, None);
        let p = Push::from_frame(&Frame::new(1, 1000, 0, &b"x"[..]));
        let mut total = Fanout::default();
        let mut conns = 0;
        for i in 0..b.len() {
            let (f, n) = b.broadcast_bucket(i, 1000, &p);
            total.add(f);
            conns += n;
        }
        assert_eq!((total.queued, conns), (1, 2));
        assert_eq!((yes.take_pushes().len(), no.take_pushes().len()), (1, 0));
    }
}
