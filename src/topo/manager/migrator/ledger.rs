//! Which `SCAN` cursor is safe to persist.
//!
//! Batches complete out of order (retries, splits), so the cursor returned by
//! the latest `SCAN` is not a safe resume point: keys of earlier `SCAN` calls may
//! still be waiting. The ledger keeps, per `SCAN` call in order, how many of its
//! keys are not settled yet (moved, or found gone); the committed cursor only
//! advances past a call once all its keys are settled. Resuming from it re-scans
//! at most what was in flight, and `MIGRATE` of an already moved key is a
//! harmless `NOKEY`.

use std::collections::VecDeque;

/// One `SCAN` call whose keys are not all settled.
#[derive(Debug)]
struct ScanCall {
    /// The cursor `SCAN` returned: where a resumed pass continues.
    cursor: u64,
    /// Keys of the call not settled yet.
    left: usize,
    /// Keys of the migrating slots it found.
    found: u64,
}

/// Open `SCAN` calls, oldest first; call ids are consecutive.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Id of the front call.
    first: u64,
    calls: VecDeque<ScanCall>,
}

/// What may be committed to the progress.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Commit {
    /// The new resume cursor.
    pub(super) cursor: u64,
    /// Keys of the migrating slots found by the calls committed now.
    pub(super) found: u64,
}

impl Ledger {
    /// Records a `SCAN` call that returned `cursor` and `found` keys of the
    /// slots; returns the id its keys carry.
    pub(super) fn scanned(&mut self, cursor: u64, found: usize) -> u64 {
        let id = self.first + self.calls.len() as u64;
        self.calls.push_back(ScanCall {
            cursor,
            left: found,
            found: found as u64,
        });
        id
    }

    /// One key of call `id` is settled.
    pub(super) fn settle(&mut self, id: u64) {
        let index = id.checked_sub(self.first).and_then(|i| usize::try_from(i).ok());
        if let Some(call) = index.and_then(|i| self.calls.get_mut(i)) {
            call.left = call.left.saturating_sub(1);
        }
    }

    /// Retires the oldest calls whose keys are all settled.
    pub(super) fn commit(&mut self) -> Option<Commit> {
        let mut out: Option<Commit> = None;
        while let Some(call) = self.calls.front().filter(|c| c.left == 0) {
            let found = out.as_ref().map_or(0, |c| c.found) + call.found;
            out = Some(Commit {
                cursor: call.cursor,
                found,
            });
            self.calls.pop_front();
            self.first += 1;
        }
        out
    }

    /// True when every call is retired.
    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_waits_for_the_oldest_call() {
        let mut l = Ledger::default();
        let a = l.scanned(10, 2);
        let b = l.scanned(20, 1);
        let c = l.scanned(30, 0);
        assert_eq!(l.commit(), None);
        l.settle(b);
        assert_eq!(l.commit(), None, "call a still has keys in flight");
        l.settle(a);
        assert_eq!(l.commit(), None);
        l.settle(a);
        assert_eq!(l.commit(), Some(Commit { cursor: 30, found: 3 }));
        assert!(l.is_empty());
        let _ = c;
        let d = l.scanned(0, 1);
        assert_eq!(d, 3);
        l.settle(d);
        l.settle(99);
        assert_eq!(l.commit(), Some(Commit { cursor: 0, found: 1 }));
    }
}
