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
//!
//! A note also says whether the target answered `OK` to that `RESTORE`. A
//! batch retried after the target's replica did not confirm it (`write_ack =
//! "replica"`) finds its keys on the target already; those the target
//! acknowledged with exactly the copy the source still holds are ours, and
//! need no `MIGRATE` (`restore`).
//!
//! A contested key moved by `MIGRATE … COPY` (`write_ack = "replica"`,
//! `contested`) is noted too, before that command is sent, but without a
//! copy: the source copied what it held at that moment, which the migrator
//! never saw. While such a note stands, the target's copy is ours and never
//! served, whatever its bytes, unless our guarded `DEL` may have run
//! ([`Sent::MigrateCopy`]). Our marked copy written over a stale one is
//! noted the same way until the reply says whether it was written: then it
//! is noted as restored, with its bytes, or the note is put back as it was.
//!
//! A note also says when the copy the target acknowledged was sent, so that
//! a key a client deletes on the source while our copy waits on the target
//! can have that copy taken back (`restore::take_back`), and whether the source's
//! guarded `DEL` of it may have run without our hearing: then "gone from the
//! source" may be our own doing, and the target's copy is the only one.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

/// A key's copy: what `DUMP` and `PEXPIRETIME` gave (see `restore::read_copy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCopy {
    pub payload: Bytes,
    /// Unix ms, or 0 for no expiry.
    pub expire_at: i64,
}

/// What the migrator sent of a key whose deletion from the source it has not
/// seen confirmed: what a promote's settle judges the target's copy by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// `RESTORE`s of this copy: the first one sent, or the one the target
    /// acknowledged.
    Restore(KeyCopy),
    /// `MIGRATE … COPY REPLACE`: whatever the source held at that moment.
    /// `deleting`: our guarded `DEL` of it may have run.
    MigrateCopy { deleting: bool },
}

/// One key's note.
#[derive(Debug, Clone)]
struct Noted {
    /// `None` after a `MIGRATE … COPY`, whose copy the migrator never saw.
    copy: Option<KeyCopy>,
    /// Set once the target answered `OK` to its `RESTORE` (it holds this
    /// copy): when that `RESTORE` was sent.
    restored: Option<Instant>,
    /// The source's guarded `DEL` of the key was sent and not seen aborted.
    deleting: bool,
}

/// What was noted of a key before [`Unconfirmed::migrate_copying`].
#[derive(Debug, Clone)]
pub(super) struct Prior(Option<Noted>);

/// What [`Unconfirmed::sending`] found noted for a key about to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Earlier {
    /// Nothing: this is the first copy sent.
    Nothing,
    /// The same copy, which the target acknowledged (its `RESTORE` sent
    /// then): the target holds it, unless it lost it or a copy of someone
    /// else's replaced it since (`restore` checks our mark).
    Restored(Instant),
    /// Another copy, or one whose `RESTORE` was never acknowledged.
    Unknown,
}

/// Unconfirmed keys by source address (`host:port`).
#[derive(Debug, Default)]
pub struct Unconfirmed {
    by_source: Mutex<HashMap<String, HashMap<Bytes, Noted>>>,
}

impl Unconfirmed {
    /// The process's registry. Keyed by server address, so the migrations of
    /// every product a process drives share it without mixing.
    pub fn global() -> &'static Unconfirmed {
        static GLOBAL: std::sync::OnceLock<Unconfirmed> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Unconfirmed::default)
    }

    /// Notes copies about to be sent from `source`; returns, for each, what
    /// was noted before (a key already noted keeps its first copy).
    pub(super) fn sending<'a>(
        &self,
        source: &str,
        copies: impl Iterator<Item = (&'a [u8], &'a KeyCopy)>,
    ) -> Vec<Earlier> {
        let mut all = self.by_source.lock();
        let keys = all.entry(source.to_string()).or_default();
        copies
            .map(|(name, copy)| match keys.entry(Bytes::copy_from_slice(name)) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let noted = o.get_mut();
                    // The source holds it: no `DEL` of ours ran.
                    noted.deleting = false;
                    match noted.restored {
                        Some(at) if noted.copy.as_ref() == Some(copy) => Earlier::Restored(at),
                        _ => Earlier::Unknown,
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Noted {
                        copy: Some(copy.clone()),
                        restored: None,
                        deleting: false,
                    });
                    Earlier::Nothing
                }
            })
            .collect()
    }

    /// Notes that the target answered `OK` to the `RESTORE` of these copies
    /// of `source`'s keys: it did not have the key, so it holds exactly that
    /// copy now, whatever an earlier attempt sent. `at`: when the `RESTORE`
    /// was sent (no later than the target applied it).
    pub(super) fn restored<'a>(
        &self,
        source: &str,
        at: Instant,
        copies: impl Iterator<Item = (&'a [u8], &'a KeyCopy)>,
    ) {
        let mut all = self.by_source.lock();
        if let Some(noted) = all.get_mut(source) {
            for (k, copy) in copies {
                if let Some(n) = noted.get_mut(k) {
                    n.copy = Some(copy.clone());
                    n.restored = Some(at);
                }
            }
        }
    }

    /// Notes that `MIGRATE … COPY REPLACE` of `keys` is about to be sent from
    /// `source`: whatever the target held of them, it will hold the source's
    /// copy of the moment, unseen by us (see [`Sent::MigrateCopy`]). The
    /// marked overwrite of a stale copy (`contested`) is noted the same way
    /// until its reply says what it wrote. Returns what was noted of each key
    /// before, for [`Unconfirmed::put_back`].
    pub(super) fn migrate_copying<'a>(
        &self,
        source: &str,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<Prior> {
        let mut all = self.by_source.lock();
        let noted = all.entry(source.to_string()).or_default();
        keys.map(|k| {
            let before = noted.insert(
                Bytes::copy_from_slice(k),
                Noted {
                    copy: None,
                    restored: None,
                    deleting: false,
                },
            );
            Prior(before)
        })
        .collect()
    }

    /// Puts back what was noted of `keys` before [`Unconfirmed::migrate_copying`]:
    /// the copy announced was not written after all.
    pub(super) fn put_back<'a>(&self, source: &str, keys: impl Iterator<Item = (&'a [u8], Prior)>) {
        let mut all = self.by_source.lock();
        let noted = all.entry(source.to_string()).or_default();
        for (k, Prior(before)) in keys {
            match before {
                Some(n) => noted.insert(Bytes::copy_from_slice(k), n),
                None => noted.remove(k),
            };
        }
        if noted.is_empty() {
            all.remove(source);
        }
    }

    /// Notes that the source's guarded `DEL` of `keys` is about to be sent
    /// (`true`), or that its `EXEC` aborted, so that it deleted none (`false`).
    pub(super) fn deleting<'a>(&self, source: &str, keys: impl Iterator<Item = &'a [u8]>, sent: bool) {
        let mut all = self.by_source.lock();
        if let Some(noted) = all.get_mut(source) {
            for k in keys {
                if let Some(n) = noted.get_mut(k) {
                    n.deleting = sent;
                }
            }
        }
    }

    /// When the `RESTORE` of our copy of `key` (of `source`) that the target
    /// acknowledged was sent, if it did acknowledge one.
    pub(super) fn acknowledged(&self, source: &str, key: &[u8]) -> Option<Instant> {
        self.by_source.lock().get(source)?.get(key)?.restored
    }

    /// Of `keys` (gone from `source`), those whose copy the target
    /// acknowledged, with when it was sent, unless our own `DEL` may have
    /// removed them from the source: the copies that may be taken back.
    pub(super) fn taken_back_candidates<'a>(
        &self,
        source: &str,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<(&'a [u8], Instant)> {
        let all = self.by_source.lock();
        let Some(noted) = all.get(source) else {
            return Vec::new();
        };
        keys.filter_map(|k| {
            let n = noted.get(k)?;
            (!n.deleting).then_some((k, n.restored?))
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
    pub fn take(&self, source: &str) -> HashMap<Bytes, Sent> {
        let noted = self.by_source.lock().remove(source).unwrap_or_default();
        noted
            .into_iter()
            .map(|(k, n)| {
                let sent = match n.copy {
                    Some(copy) => Sent::Restore(copy),
                    None => Sent::MigrateCopy { deleting: n.deleting },
                };
                (k, sent)
            })
            .collect()
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
        let (v1, w) = (copy("v1"), copy("w"));
        let fresh = u.sending("a:1", [(b"k".as_ref(), &v1), (b"j".as_ref(), &w)].into_iter());
        assert_eq!(fresh, vec![Earlier::Nothing, Earlier::Nothing]);
        let v2 = copy("v2");
        let again = u.sending("a:1", [(b"k".as_ref(), &v2)].into_iter());
        assert_eq!(again, vec![Earlier::Unknown]);
        // Not acknowledged by the target yet: the same copy is not known there.
        assert_eq!(
            u.sending("a:1", [(b"j".as_ref(), &w)].into_iter()),
            vec![Earlier::Unknown]
        );
        let at = Instant::now();
        u.restored("a:1", at, [(b"j".as_ref(), &w), (b"k".as_ref(), &v2)].into_iter());
        assert_eq!(
            u.sending("a:1", [(b"j".as_ref(), &w)].into_iter()),
            vec![Earlier::Restored(at)]
        );
        // An acknowledged copy replaces the first one sent.
        assert_eq!(
            u.sending("a:1", [(b"k".as_ref(), &v2)].into_iter()),
            vec![Earlier::Restored(at)]
        );
        assert_eq!(
            u.sending("a:1", [(b"k".as_ref(), &v1)].into_iter()),
            vec![Earlier::Unknown]
        );
        u.forget("a:1", [b"j".as_ref()].into_iter());
        assert_eq!(u.count("a:1"), 1);
        let gone = || u.taken_back_candidates("a:1", [b"k".as_ref(), b"j".as_ref()].into_iter());
        assert_eq!(
            gone(),
            vec![(b"k".as_ref(), at)],
            "only a noted, acknowledged copy"
        );
        u.deleting("a:1", [b"k".as_ref()].into_iter(), true);
        assert!(
            gone().is_empty(),
            "our own DEL may have removed it: never taken back"
        );
        u.deleting("a:1", [b"k".as_ref()].into_iter(), false);
        assert_eq!(gone().len(), 1, "the DEL aborted");
        u.deleting("a:1", [b"k".as_ref()].into_iter(), true);
        u.sending("a:1", [(b"k".as_ref(), &v2)].into_iter());
        assert_eq!(gone().len(), 1, "the source still held it: no DEL of ours ran");
        let taken = u.take("a:1");
        assert_eq!(taken.get(b"k".as_ref()), Some(&Sent::Restore(v2.clone())));
        assert_eq!(u.count("a:1"), 0);
        assert!(u.take("b:2").is_empty());
    }

    #[test]
    fn a_migrate_copy_is_noted_without_its_bytes() {
        let u = Unconfirmed::default();
        let v1 = copy("v1");
        u.sending("a:1", [(b"k".as_ref(), &v1)].into_iter());
        u.restored("a:1", Instant::now(), [(b"k".as_ref(), &v1)].into_iter());
        // Contested, then copied by `MIGRATE … COPY`: the target holds the
        // source's copy of that moment, not v1, and not a key of its own.
        u.migrate_copying("a:1", [b"k".as_ref(), b"new".as_ref()].into_iter());
        assert_eq!(
            u.sending("a:1", [(b"k".as_ref(), &v1)].into_iter()),
            vec![Earlier::Unknown],
            "v1 is no longer known to be there"
        );
        assert!(
            u.taken_back_candidates("a:1", [b"k".as_ref(), b"new".as_ref()].into_iter())
                .is_empty(),
            "a copy without our mark is never taken back"
        );
        u.deleting("a:1", [b"new".as_ref()].into_iter(), true);
        let taken = u.take("a:1");
        assert_eq!(
            taken.get(b"k".as_ref()),
            Some(&Sent::MigrateCopy { deleting: false })
        );
        assert_eq!(
            taken.get(b"new".as_ref()),
            Some(&Sent::MigrateCopy { deleting: true })
        );
    }

    #[test]
    fn a_copy_announced_and_not_written_leaves_the_notes_as_they_were() {
        let u = Unconfirmed::default();
        let v1 = copy("v1");
        let at = Instant::now();
        u.sending("a:1", [(b"k".as_ref(), &v1)].into_iter());
        u.restored("a:1", at, [(b"k".as_ref(), &v1)].into_iter());
        let prior = u.migrate_copying("a:1", [b"k".as_ref(), b"new".as_ref()].into_iter());
        assert_eq!(u.count("a:1"), 2);
        u.put_back("a:1", [b"k".as_ref(), b"new".as_ref()].into_iter().zip(prior));
        assert_eq!(u.count("a:1"), 1, "a key noted by the copy alone is forgotten");
        assert_eq!(
            u.sending("a:1", [(b"k".as_ref(), &v1)].into_iter()),
            vec![Earlier::Restored(at)],
            "the acknowledged copy is known again"
        );
        let prior = u.migrate_copying("b:2", [b"x".as_ref()].into_iter());
        u.put_back("b:2", [b"x".as_ref()].into_iter().zip(prior));
        assert_eq!(u.count("b:2"), 0);
        assert!(u.take("b:2").is_empty());
    }
}
