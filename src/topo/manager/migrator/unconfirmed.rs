//! The keys a `DUMP`/`RESTORE` batch may have copied to the target whose
//! deletion from the source has not been confirmed, with the copy sent.
//!
//! While the source master lives, such a key is harmless: the source's copy
//! is authoritative while it exists (`restore`), and the target's copy is
//! never served. If the source master dies and its replica is promoted, they
//! are the only keys of a migrating slot that can be on both servers with the
//! *source's* copy the one that counts: every other key on both is one the
//! old master deleted after the target had it (a `MIGRATE`, or a confirmed
//! batch) and whose `DEL` the replica had not received. The promote's settle
//! (`settle`) tells them apart by comparing the target's copy with the one we
//! sent: unchanged means no client wrote it there.
//!
//! A key is noted before its `RESTORE` is sent (a connection that fails
//! mid-batch leaves unknown which were applied) and forgotten once the source
//! confirmed its deletion, or a `MIGRATE` moved or found it gone. Only the
//! first copy sent is kept: `RESTORE` without `REPLACE` never changes a key
//! the target has. A dashboard that restarts forgets them (docs/reliability.md).

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;

/// A key's copy: what `DUMP` and `PEXPIRETIME` gave (see `restore::read_copy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCopy {
    pub payload: Bytes,
    /// Unix ms, or 0 for no expiry.
    pub expire_at: i64,
}

/// Unconfirmed keys by source address (`host:port`).
#[derive(Debug, Default)]
pub struct Unconfirmed {
    by_source: Mutex<HashMap<String, HashMap<Bytes, KeyCopy>>>,
}

impl Unconfirmed {
    /// The process's registry. Keyed by server address, so the migrations of
    /// every product a process drives share it without mixing.
    pub fn global() -> &'static Unconfirmed {
        static GLOBAL: std::sync::OnceLock<Unconfirmed> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Unconfirmed::default)
    }

    /// Notes copies about to be sent from `source`; returns, for each, whether
    /// it was new (a key already noted keeps its first copy).
    pub(super) fn sending<'a>(
        &self,
        source: &str,
        copies: impl Iterator<Item = (&'a [u8], KeyCopy)>,
    ) -> Vec<bool> {
        let mut all = self.by_source.lock();
        let keys = all.entry(source.to_string()).or_default();
        copies
            .map(|(name, copy)| match keys.entry(Bytes::copy_from_slice(name)) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(copy);
                    true
                }
            })
            .collect()
    }

    /// Forgets `keys` of `source`: deleted there, or (`BUSYKEY`) never
    /// written by us.
    pub(super) fn forget<'a>(&self, source: &str, keys: impl Iterator<Item = &'a [u8]>) {
        let mut all = self.by_source.lock();
        if let Some(noted) = all.get_mut(source) {
            for k in keys {
                noted.remove(k);
            }
            if noted.is_empty() {
                all.remove(source);
            }
        }
    }

    /// The keys noted for `source`, removed from the registry: the promote
    /// that asks for them replaces that server as the source.
    pub fn take(&self, source: &str) -> HashMap<Bytes, KeyCopy> {
        self.by_source.lock().remove(source).unwrap_or_default()
    }

    /// How many keys are noted for `source`.
    pub fn count(&self, source: &str) -> usize {
        self.by_source.lock().get(source).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(p: &'static str) -> KeyCopy {
        KeyCopy {
            payload: Bytes::from_static(p.as_bytes()),
            expire_at: 0,
        }
    }

    #[test]
    fn the_first_copy_stays_until_forgotten() {
        let u = Unconfirmed::default();
        let fresh = u.sending(
            "a:1",
            [(b"k".as_ref(), copy("v1")), (b"j".as_ref(), copy("w"))].into_iter(),
        );
        assert_eq!(fresh, vec![true, true]);
        let again = u.sending("a:1", [(b"k".as_ref(), copy("v2"))].into_iter());
        assert_eq!(again, vec![false]);
        u.forget("a:1", [b"j".as_ref()].into_iter());
        assert_eq!(u.count("a:1"), 1);
        let taken = u.take("a:1");
        assert_eq!(taken.get(b"k".as_ref()), Some(&copy("v1")));
        assert_eq!(u.count("a:1"), 0);
        assert!(u.take("b:2").is_empty());
    }
}
