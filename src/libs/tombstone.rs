//! Tombstones: the source's short memory of keys a client removed while
//! their slot migrates.
//!
//! A mover's copy of a key can reach the target after a client removed the
//! key from the source through a proxy: the mover read the key just before.
//! The proxy that served the removal took back the copies it could see, but
//! not one that lands later, and another client may read the key between
//! the removal and that proxy's take-back. The proxies serve a key the
//! source lacks from the target, so such a read would get the removed key's
//! value, and wear the copy's mark (`copy_mark`), so that nobody takes the
//! copy back after it: the key would be back for good.
//!
//! So a removal by a proxy's source call also leaves a tombstone on the
//! source: a key of the same name in database [`DB`], which clients of the
//! proxy never see (it serves database 0 only), expiring after [`TTL_MS`].
//! A source call that finds its keys gone from the source also reports those
//! with a tombstone, as does [`FIND`] behind a move on access, and the proxy
//! then takes back every unworn mover's copy of them on the target before it
//! sends the request there (`proxy::migrate`). That is safe while the tombstone lives:
//! * the source held the key until the removal, so any copy on the target
//!   from before was a mover's, of the removed value;
//! * a removed key never comes back to the source during the migration, so
//!   any mover's copy made since is a late one of that same value;
//! * a client's write of the key since goes to the target, and reads idle
//!   for less than the tombstone's age, far below the mark's
//!   (`copy_mark::min_idle` of zero, 58 s, against at most 30 s).
//!
//! Only a tombstone of this migration may count: a key removed in an
//! earlier migration of the same slot may have come back to the source
//! since, and moved again, and a tombstone from then would take its copy for
//! a late one. So the migrator clears the source's tombstones of its slots
//! before it moves anything (`topo::manager::migrator`), and they expire
//! long before a copy the migrator moved could read idle past the mark
//! without one.
//!
//! A server with a single database has no room for tombstones; the scripts
//! then skip them, and the removal is as safe as it was without.

/// The database the tombstones live in.
pub const DB: u8 = 1;

/// How long a tombstone lives: milliseconds. Below the least idle time a
/// take-back asks of a copy (58 s) by far more than the LRU clock's slack,
/// and far above the time a mover takes to take back its own late copy.
pub const TTL_MS: u64 = 30_000;

/// Which of `KEYS` have a tombstone: their 1-based indices. Read-only, so a
/// proxy with `write_ack = "replica"` sends it as `EVAL_RO`, which waits for
/// no replica. Sent behind a proxy's `MIGRATE` of keys on access
/// (`proxy::migrate::move_keys`); a source call's scripts look themselves.
pub const FIND: &str = "if not pcall(redis.call, 'SELECT', 1) then return {} end \
local out = {} \
for i, k in ipairs(KEYS) do if redis.call('EXISTS', k) == 1 then out[#out + 1] = i end end \
redis.call('SELECT', 0) \
return out";

/// `EVAL_RO` [`FIND`] for `keys`.
pub fn find<B: AsRef<[u8]>>(keys: &[B]) -> bytes::Bytes {
    let count = keys.len().to_string();
    let mut words: Vec<&[u8]> = vec![b"EVAL_RO", FIND.as_bytes(), count.as_bytes()];
    words.extend(keys.iter().map(AsRef::as_ref));
    crate::libs::resp::encode_array(&words)
}

/// The 0-based indices a reply to [`find`] names. Anything else (an error, a
/// lost connection) names none: the request then goes as it would have
/// without tombstones.
pub fn found(reply: &bytes::Bytes) -> Vec<usize> {
    crate::libs::resp::array_items(reply)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| {
            usize::try_from(crate::libs::resp::integer(i)?)
                .ok()?
                .checked_sub(1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_names_the_keys_and_its_reply_gives_0_based_indices() {
        let req = find(&[b"a".as_ref(), b"bc"]);
        let mut buf = bytes::BytesMut::from(&req[..]);
        let words = crate::libs::resp::parse_request(&mut buf, &crate::libs::resp::Limits::default())
            .expect("valid")
            .expect("complete")
            .args;
        let want: Vec<&[u8]> = vec![b"EVAL_RO", FIND.as_bytes(), b"2", b"a", b"bc"];
        assert_eq!(words, want);
        assert_eq!(
            found(&bytes::Bytes::from_static(b"*2\r\n:1\r\n:3\r\n")),
            vec![0, 2]
        );
        assert_eq!(found(&bytes::Bytes::from_static(b"*0\r\n")), Vec::<usize>::new());
        assert_eq!(
            found(&bytes::Bytes::from_static(b"-ERR x\r\n")),
            Vec::<usize>::new()
        );
    }
}
