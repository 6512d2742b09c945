//! Taking over entries another consumer left pending: `XAUTOCLAIM <stream>
//! <group> <me> <min-idle> <cursor> COUNT n`, a whole pass over the pending list
//! every `claim_interval`, a page at a time. An entry pending longer than
//! `claim_min_idle` belongs to a job instance that died or stalled; claiming
//! and delivering it again is what makes delivery at-least-once. The entries
//! of an instance known dead (no longer registered, see `reaper::orphans`)
//! are adopted at once instead ([`Claimer::adopt`]), and a pass is hurried
//! when the registered instances change. A pass claims only if a read finds
//! something stale, and a claim the proxy ran without a replica's
//! confirmation is read back ([`Claimer::own_pending`]). Imports
//! `im::queue`, `libs::resp_client` and `im::proxies`, entries.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::entry::{self, Claimed, StreamEntry};
use crate::im::proxies::ProxySet;
use crate::im::queue;
use crate::libs::resp_client::{RespError, check, cmd};

/// The cursor `XAUTOCLAIM` starts from and returns when a pass is complete.
const START: &[u8] = b"0-0";

/// The claim schedule of one stream.
#[derive(Debug)]
pub struct Claimer {
    stream: String,
    consumer: String,
    min_idle_ms: String,
    interval: Duration,
    /// Where the pass in progress continues; `None` between passes.
    cursor: Option<Bytes>,
    next_pass: Instant,
}

impl Claimer {
    /// A schedule whose first pass is due at once (a starting instance takes
    /// over what a dead one left).
    pub fn new(stream: &str, consumer: &str, min_idle: Duration, interval: Duration) -> Claimer {
        Claimer {
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            min_idle_ms: min_idle.as_millis().to_string(),
            interval,
            cursor: None,
            next_pass: Instant::now(),
        }
    }

    /// True when a page should be claimed before the next read.
    pub fn due(&self) -> bool {
        self.cursor.is_some() || Instant::now() >= self.next_pass
    }

    /// True while a pass has pages left.
    pub fn in_pass(&self) -> bool {
        self.cursor.is_some()
    }

    /// How long until the next pass is due (zero while one is in progress).
    pub fn wait(&self) -> Duration {
        if self.cursor.is_some() {
            Duration::ZERO
        } else {
            self.next_pass.saturating_duration_since(Instant::now())
        }
    }

    /// Claims the next page of at most `count` entries. After the last page the
    /// next pass is scheduled `interval` later.
    ///
    /// # Errors
    /// The proxy failed or refused; the pass resumes where it was next time.
    pub async fn claim_page(&mut self, link: &ProxySet, count: usize) -> Result<Claimed, RespError> {
        if self.cursor.is_none() && !self.any_stale(link).await? {
            self.end_pass();
            return Ok(Claimed::default());
        }
        let cursor = self.cursor.clone().unwrap_or_else(|| Bytes::from_static(START));
        let count = count.to_string();
        let args: [&[u8]; 8] = [
            b"XAUTOCLAIM",
            self.stream.as_bytes(),
            queue::GROUP.as_bytes(),
            self.consumer.as_bytes(),
            self.min_idle_ms.as_bytes(),
            &cursor,
            b"COUNT",
            count.as_bytes(),
        ];
        let claimed = match link.call(&args).await.and_then(entry::from_autoclaim) {
            Ok(c) => c,
            Err(e) => {
                // NOGROUP (the stream is not there yet): nothing to claim
                // this pass. A claim that ran unconfirmed gave no cursor: the
                // next pass looks again, rather than every page of this one
                // getting the same reply until the replica is back.
                if e.ran_unreplicated() || matches!(&e, RespError::Server(m) if m.starts_with("NOGROUP")) {
                    self.end_pass();
                }
                return Err(e);
            }
        };
        if claimed.cursor.as_ref() == START {
            self.end_pass();
        } else {
            self.cursor = Some(claimed.cursor.clone());
        }
        Ok(claimed)
    }

    /// Whether any entry has been pending `claim_min_idle` or longer, asked
    /// with a read (`XPENDING … IDLE`) before a pass: most passes find
    /// nothing, and an `XAUTOCLAIM` is a write even then, which a proxy in
    /// `write_ack = "replica"` mode follows with a `WAIT` that, while the
    /// replica is away, holds up its connection to the master for the whole
    /// `write_ack_timeout`.
    ///
    /// # Errors
    /// The proxy failed or refused (`NOGROUP`: no stream yet).
    async fn any_stale(&self, link: &ProxySet) -> Result<bool, RespError> {
        let reply = link
            .call(&[
                "XPENDING",
                &self.stream,
                queue::GROUP,
                "IDLE",
                &self.min_idle_ms,
                "-",
                "+",
                "1",
            ])
            .await;
        match reply.and_then(check) {
            Ok(found) => Ok(!entry::pending_ids(found)?.is_empty()),
            Err(RespError::Server(m)) if m.starts_with("NOGROUP") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes the next pass due now (a job instance left: what it left
    /// pending may be taken over).
    pub fn hurry(&mut self) {
        if self.cursor.is_none() {
            self.next_pass = Instant::now();
        }
    }

    /// Takes over at most `count` of the entries consumer `from` (a dead job
    /// instance's, see `reaper::orphans`) has pending, however short their
    /// idle time: `XPENDING … <from>`, then `XCLAIM … 0 <ids>`.
    ///
    /// # Errors
    /// The proxy failed or refused.
    pub async fn adopt(
        &self,
        link: &ProxySet,
        from: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, RespError> {
        let ids = self.pending_of(link, from, b"-", count).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<&[u8]> = vec![
            b"XCLAIM",
            self.stream.as_bytes(),
            queue::GROUP.as_bytes(),
            self.consumer.as_bytes(),
            b"0",
        ];
        args.extend(ids.iter().map(|id| id.as_ref()));
        entry::from_claim(check(link.call(&args).await?)?)
    }

    /// At most `count` of the entries pending to this consumer that
    /// `delivering` does not name, with their bodies, read without a write:
    /// pages of `XPENDING … <me>`, then one pipeline of `XRANGE <id> <id>`.
    /// A claim that ran but whose reply the proxy withheld (`-NOREPLICAS` in
    /// its `write_ack = "replica"` mode, [`RespError::ran_unreplicated`]) took
    /// entries this consumer has not seen: they are among these, and waiting
    /// for a later claim would hold them up by `claim_min_idle`, or for as long
    /// as the replica is away, since every claim meanwhile gets the same reply.
    ///
    /// # Errors
    /// The proxy failed or refused.
    pub async fn own_pending(
        &self,
        link: &ProxySet,
        count: usize,
        delivering: impl Fn(&Bytes) -> bool,
    ) -> Result<Vec<StreamEntry>, RespError> {
        let mut start = Bytes::from_static(b"-");
        let mut ids = Vec::new();
        loop {
            let got = self.pending_of(link, &self.consumer, &start, count).await?;
            let Some(last) = got.last() else { break };
            // The next page starts after this one's last id.
            start = Bytes::from([b"(".as_ref(), last].concat());
            let full = got.len() == count;
            ids.extend(got.into_iter().filter(|id| !delivering(id)));
            if ids.len() >= count || !full {
                break;
            }
        }
        ids.truncate(count);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ranges = ids
            .iter()
            .map(|id| cmd(&[b"XRANGE".as_ref(), self.stream.as_bytes(), id, id]))
            .collect();
        let mut entries = Vec::with_capacity(ids.len());
        for reply in link.pipeline(ranges).await? {
            entries.extend(entry::from_range(check(reply)?)?);
        }
        Ok(entries)
    }

    /// The ids of at most `count` entries pending to `consumer`, from id
    /// `start` on (`-`, or `(<id>` for after it): `XPENDING`, a read.
    async fn pending_of(
        &self,
        link: &ProxySet,
        consumer: &str,
        start: &[u8],
        count: usize,
    ) -> Result<Vec<Bytes>, RespError> {
        let count = count.to_string();
        let reply = link
            .call(&[
                b"XPENDING".as_ref(),
                self.stream.as_bytes(),
                queue::GROUP.as_bytes(),
                start,
                b"+",
                count.as_bytes(),
                consumer.as_bytes(),
            ])
            .await?;
        entry::pending_ids(check(reply)?)
    }

    fn end_pass(&mut self) {
        self.cursor = None;
        self.next_pass = Instant::now() + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pass_is_due_at_start_then_every_interval() {
        let mut c = Claimer::new("s", "me", Duration::from_secs(30), Duration::from_secs(10));
        assert!(c.due());
        c.end_pass();
        assert!(!c.due());
        assert_eq!(c.wait(), Duration::from_secs(10));
        c.cursor = Some(Bytes::from_static(b"5-0"));
        assert!(c.due(), "a pass in progress continues");
        c.end_pass();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(c.due());
        assert_eq!(c.min_idle_ms, "30000");
    }
}
