//! The cluster-wide SCAN cursor: which group a SCAN is in, and where in it.
//!
//! A cursor is `backend_cursor << 14 | group_id` (group ids are at most 9999,
//! so they fit in 14 bits). Groups are visited one after the other in id
//! order, each scanned to its end by its master's own SCAN; a group's cursor 0
//! moves on to the next group, and the last group's 0 is the client's 0. The
//! client's first cursor, 0, names "group 0, its start", which is the start of
//! the first group. A cursor naming a group that no longer exists moves on to
//! the next id, from its start.
//!
//! Redis's guarantee holds while no slot moves: a key present for the whole
//! iteration is in one group the whole time, and that group is scanned whole.
//! While slots migrate a key can leave a group not yet scanned for one already
//! scanned, and be missed; or the other way round, and come back twice
//! (docs/compatibility.md).
//!
//! Imports `router` (the group list), `merge` and `libs::resp`.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::merge;
use super::reply::{Reply, lost};
use super::router::Routes;
use crate::libs::resp::{self, Request};
use crate::topo::model::GroupId;

/// Bits of the cursor that hold the group id.
pub const GROUP_BITS: u32 = 14;
const GROUP_MASK: u64 = (1 << GROUP_BITS) - 1;

/// The client's cursor for `backend` cursor of group `group`; `None` when the
/// backend cursor is too large to carry a group id beside it.
pub fn encode(backend: u64, group: GroupId) -> Option<u64> {
    if backend >> (64 - GROUP_BITS) != 0 || u64::from(group) > GROUP_MASK {
        return None;
    }
    Some(backend << GROUP_BITS | u64::from(group))
}

/// `(backend cursor, group id)` of a client's cursor; `None` if it is not an
/// unsigned 64-bit number (Redis's "invalid cursor").
pub fn decode(cursor: &[u8]) -> Option<(u64, GroupId)> {
    let n: u64 = std::str::from_utf8(cursor).ok()?.parse().ok()?;
    Some((n >> GROUP_BITS, (n & GROUP_MASK) as GroupId))
}

/// Where a cursor continues among `groups` (ids, ascending): the index of its
/// group and the backend cursor there, or `None` when no group is left.
pub fn position(groups: &[GroupId], (backend, group): (u64, GroupId)) -> Option<(usize, u64)> {
    let at = groups.iter().position(|&g| g >= group)?;
    // A group that is gone: start the next one from its beginning.
    let backend = if groups[at] == group { backend } else { 0 };
    Some((at, backend))
}

/// The client's next cursor after a backend answered `next` for the group at
/// `at`; `None` when it cannot be encoded.
pub fn next_cursor(groups: &[GroupId], at: usize, next: u64) -> Option<u64> {
    if next != 0 {
        return encode(next, *groups.get(at)?);
    }
    match groups.get(at + 1) {
        Some(&g) => encode(0, g),
        None => Some(0),
    }
}

/// SCAN cursor [MATCH p] [COUNT n] [TYPE t]: one SCAN to the master of the
/// cursor's group, its options passed on unchanged.
pub fn dispatch(client_id: u64, req: &Request, routes: &Routes) -> Reply {
    let Some(cursor) = req.args.get(1).and_then(|c| decode(c)) else {
        return Reply::Ready(resp::error("ERR invalid cursor"));
    };
    let ids: Vec<GroupId> = routes.groups.iter().map(|g| g.id).collect();
    let Some((at, backend)) = position(&ids, cursor) else {
        return Reply::Ready(finished());
    };
    let Some(group) = routes.groups.get(at) else {
        return Reply::Ready(finished());
    };
    let Some(pool) = group.master.clone() else {
        return Reply::Ready(resp::error(&format!("ERR group {} has no master", group.id)));
    };
    let backend = backend.to_string();
    let mut args: Vec<&[u8]> = req.args.iter().map(|a| a.as_ref()).collect();
    if let Some(cursor) = args.get_mut(1) {
        *cursor = backend.as_bytes();
    }
    let rx = pool.send(client_id, resp::encode_array(&args));
    let addr = pool.addr().to_string();
    let (tx, out) = oneshot::channel();
    tokio::spawn(async move {
        let reply = rx.await.unwrap_or_else(|_| lost());
        let _ = tx.send(rewrite(&addr, reply, &ids, at));
    });
    Reply::Wait(out)
}

/// `*2 "0" *0`: the iteration is over.
fn finished() -> Bytes {
    Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n")
}

/// The backend's `[cursor, keys]` with its cursor turned into the client's.
pub fn rewrite(addr: &str, reply: Bytes, groups: &[GroupId], at: usize) -> Bytes {
    if resp::is_error(&reply) {
        return reply;
    }
    let parsed = resp::array_items(&reply).and_then(|items| {
        let [cursor, keys] = items.as_slice() else {
            return None;
        };
        let next: u64 = std::str::from_utf8(&resp::bulk_payload(cursor)?)
            .ok()?
            .parse()
            .ok()?;
        Some((next, keys.clone()))
    });
    let Some((next, keys)) = parsed else {
        return resp::error(&format!("ERR unexpected SCAN reply from {addr}"));
    };
    match next_cursor(groups, at, next) {
        Some(c) => merge::array_of(&[resp::bulk(c.to_string().as_bytes()), keys]),
        None => resp::error(&format!(
            "ERR SCAN cursor {next} of {addr} is too large to carry a group id"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = encode(12345, 7).expect("fits");
        assert_eq!(c, 12345 << 14 | 7);
        assert_eq!(decode(c.to_string().as_bytes()), Some((12345, 7)));
        assert_eq!(decode(b"0"), Some((0, 0)));
        assert_eq!(decode(b"-1"), None);
        assert_eq!(decode(b"abc"), None);
        assert_eq!(decode(b"18446744073709551616"), None);
        assert_eq!(encode(1 << 50, 1), None);
        assert_eq!(encode((1 << 50) - 1, 9999).map(|c| c & GROUP_MASK), Some(9999));
    }

    #[test]
    fn groups_are_visited_in_id_order_and_gone_ones_skipped() {
        let groups = [2, 5, 9];
        // Cursor 0 starts at the first group.
        assert_eq!(position(&groups, (0, 0)), Some((0, 0)));
        assert_eq!(position(&groups, (77, 5)), Some((1, 77)));
        // Group 4 is gone: the next id, from its start.
        assert_eq!(position(&groups, (77, 4)), Some((1, 0)));
        assert_eq!(position(&groups, (77, 10)), None);
        assert_eq!(next_cursor(&groups, 0, 33), encode(33, 2));
        assert_eq!(next_cursor(&groups, 0, 0), encode(0, 5));
        assert_eq!(next_cursor(&groups, 2, 0), Some(0));
    }

    #[test]
    fn a_backend_reply_gets_the_clients_cursor() {
        let reply = Bytes::from_static(b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n");
        let out = rewrite("h:1", reply, &[3, 4], 0);
        let want = format!(
            "*2\r\n${}\r\n{}\r\n*1\r\n$1\r\nk\r\n",
            (17u64 << 14 | 3).to_string().len(),
            17u64 << 14 | 3
        );
        assert_eq!(out, want.as_bytes());
        let done = rewrite("h:1", Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n"), &[3, 4], 1);
        assert_eq!(&done[..], b"*2\r\n$1\r\n0\r\n*0\r\n");
        assert!(resp::is_error(&rewrite(
            "h:1",
            Bytes::from_static(b":1\r\n"),
            &[3],
            0
        )));
    }
}
