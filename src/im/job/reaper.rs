//! Removing the consumers of dead job instances from a stream's group: after
//! each complete claim pass (`claim.rs`), `XINFO CONSUMERS` lists the group's
//! consumers and `XGROUP DELCONSUMER` deletes each one that
//!
//! * is not this instance,
//! * has no pending entries (`DELCONSUMER` would drop them unacked; the claim
//!   pass takes them over first),
//! * has been idle for at least `claim_min_idle` (a live instance's blocking
//!   read touches its consumer every `block`), and
//! * is not a job instance registered in discovery now.
//!
//! Without it, every job instance that ever ran (the default consumer name
//! holds the process id) stays in every group for ever. Nothing is reaped
//! while discovery does not list this instance itself: the list is not known
//! yet, or ZooKeeper is unreachable. Imports `im::queue`, `im::discovery`,
//! `libs::resp_client` and `im::proxies`.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;

use crate::im::discovery::Instance;
use crate::im::proxies::ProxySet;
use crate::im::queue;
use crate::libs::resp_client::{self, Frame, RespError};

/// One consumer of a group, as `XINFO CONSUMERS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConsumer {
    /// The consumer name.
    pub name: String,
    /// Entries it read and did not ack.
    pub pending: i64,
    /// Milliseconds since it last read (or tried to).
    pub idle_ms: i64,
}

/// Decodes an `XINFO CONSUMERS` reply (a list of field/value maps).
///
/// # Errors
/// A reply of another shape.
pub fn from_xinfo(reply: Frame) -> Result<Vec<GroupConsumer>, RespError> {
    let mut out = Vec::new();
    for c in resp_client::array(reply)? {
        let mut consumer = GroupConsumer {
            name: String::new(),
            pending: 0,
            idle_ms: 0,
        };
        let mut fields = resp_client::array(c)?.into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            match resp_client::bytes(k)?.as_deref() {
                Some(b"name") => {
                    let name = resp_client::bytes(v)?.unwrap_or_default();
                    consumer.name = String::from_utf8_lossy(&name).into_owned();
                }
                Some(b"pending") => consumer.pending = resp_client::int(v)?,
                Some(b"idle") => consumer.idle_ms = resp_client::int(v)?,
                _ => {}
            }
        }
        out.push(consumer);
    }
    Ok(out)
}

/// The consumers to delete (see the module docs), in `consumers`' order.
pub fn dead_consumers(
    consumers: &[GroupConsumer],
    me: &str,
    live: &HashSet<String>,
    min_idle: Duration,
) -> Vec<String> {
    let min_idle_ms = i64::try_from(min_idle.as_millis()).unwrap_or(i64::MAX);
    consumers
        .iter()
        .filter(|c| c.name != me && c.pending == 0 && c.idle_ms >= min_idle_ms && !live.contains(&c.name))
        .map(|c| c.name.clone())
        .collect()
}

/// The consumers whose pending entries this instance may take over at once,
/// without waiting for `claim_min_idle`: not this instance, not a job
/// instance registered in discovery now (its registration went with its
/// session), with entries pending and quiet for at least `quiet` (a live
/// instance's blocking read touches its consumer every `block`).
pub fn orphans(
    consumers: &[GroupConsumer],
    me: &str,
    live: &HashSet<String>,
    quiet: Duration,
) -> Vec<String> {
    let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
    consumers
        .iter()
        .filter(|c| c.name != me && c.pending > 0 && c.idle_ms >= quiet_ms && !live.contains(&c.name))
        .map(|c| c.name.clone())
        .collect()
}

/// Deletes the dead consumers of one stream's group, and names the ones
/// whose entries can be taken over at once.
#[derive(Debug)]
pub struct ConsumerReaper {
    stream: String,
    me: String,
    min_idle: Duration,
    /// See [`orphans`].
    quiet: Duration,
    jobs: watch::Receiver<Vec<Instance>>,
}

impl ConsumerReaper {
    /// A reaper for `stream`, run by consumer `me`, which trusts `jobs` (the
    /// job instances in discovery) once `me` is in it.
    pub fn new(
        stream: &str,
        me: &str,
        (min_idle, quiet): (Duration, Duration),
        jobs: watch::Receiver<Vec<Instance>>,
    ) -> ConsumerReaper {
        ConsumerReaper {
            stream: stream.to_string(),
            me: me.to_string(),
            min_idle,
            quiet,
            jobs,
        }
    }

    /// True once the job instances in discovery changed since the last call
    /// (one left: its entries may be taken over now).
    pub fn jobs_changed(&mut self) -> bool {
        let changed = self.jobs.has_changed().unwrap_or(false);
        if changed {
            self.jobs.mark_unchanged();
        }
        changed
    }

    /// The instances registered now, and the group's consumers; `None` while
    /// discovery does not list this instance itself (nothing is known).
    async fn consumers(
        &self,
        link: &ProxySet,
    ) -> Result<Option<(HashSet<String>, Vec<GroupConsumer>)>, RespError> {
        let live: HashSet<String> = self.jobs.borrow().iter().map(|j| j.id.clone()).collect();
        if !live.contains(&self.me) {
            return Ok(None);
        }
        let reply = link
            .call(&["XINFO", "CONSUMERS", &self.stream, queue::GROUP])
            .await?;
        Ok(Some((live, from_xinfo(resp_client::check(reply)?)?)))
    }

    /// The consumers of dead instances with entries pending (see [`orphans`]).
    ///
    /// # Errors
    /// The proxy failed or refused.
    pub async fn orphans(&self, link: &ProxySet) -> Result<Vec<String>, RespError> {
        Ok(match self.consumers(link).await? {
            Some((live, consumers)) => orphans(&consumers, &self.me, &live, self.quiet),
            None => Vec::new(),
        })
    }

    /// One round: lists the group's consumers and deletes the dead ones.
    /// Returns how many were deleted.
    ///
    /// # Errors
    /// The proxy failed or refused (no group yet, mostly); the next round
    /// tries again.
    pub async fn reap(&self, link: &ProxySet) -> Result<usize, RespError> {
        let Some((live, consumers)) = self.consumers(link).await? else {
            return Ok(0);
        };
        let mut deleted = 0;
        for name in dead_consumers(&consumers, &self.me, &live, self.min_idle) {
            let reply = link
                .call(&["XGROUP", "DELCONSUMER", &self.stream, queue::GROUP, &name])
                .await?;
            let dropped = resp_client::int(reply)?;
            if dropped > 0 {
                // It read entries between XINFO and DELCONSUMER: a dead
                // instance cannot, so this one was alive after all.
                tracing::error!(stream = %self.stream, consumer = %name, dropped, "deleted a consumer with pending entries");
            }
            tracing::info!(stream = %self.stream, consumer = %name, "deleted a dead job instance's consumer");
            deleted += 1;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::types::BytesFrame;

    fn consumer(name: &str, pending: i64, idle_ms: i64) -> GroupConsumer {
        GroupConsumer {
            name: name.into(),
            pending,
            idle_ms,
        }
    }

    #[test]
    fn only_idle_empty_unregistered_others_are_dead() {
        let consumers = [
            consumer("me", 0, 99_000),
            consumer("dead", 0, 99_000),
            consumer("dead-with-pending", 3, 99_000),
            consumer("recently-read", 0, 500),
            consumer("registered", 0, 99_000),
        ];
        let live: HashSet<String> = ["me".to_string(), "registered".to_string()].into();
        let dead = dead_consumers(&consumers, "me", &live, Duration::from_secs(30));
        assert_eq!(dead, vec!["dead".to_string()]);
    }

    #[test]
    fn only_quiet_unregistered_others_with_pending_entries_are_orphans() {
        let consumers = [
            consumer("me", 4, 99_000),
            consumer("dead", 2, 9_000),
            consumer("dead-but-nothing-pending", 0, 99_000),
            consumer("just-read", 2, 100),
            consumer("registered", 2, 99_000),
        ];
        let live: HashSet<String> = ["me".to_string(), "registered".to_string()].into();
        let found = orphans(&consumers, "me", &live, Duration::from_secs(4));
        assert_eq!(found, vec!["dead".to_string()]);
    }

    #[test]
    fn xinfo_consumers_replies_decode() {
        let bulk = |s: &str| BytesFrame::BulkString(s.as_bytes().to_vec().into());
        let one = |name: &str, pending: i64, idle: i64| {
            BytesFrame::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("pending"),
                BytesFrame::Integer(pending),
                bulk("idle"),
                BytesFrame::Integer(idle),
                bulk("inactive"),
                BytesFrame::Integer(-1),
            ])
        };
        let reply = BytesFrame::Array(vec![one("job-a", 2, 10), one("job-b", 0, 70_000)]);
        assert_eq!(
            from_xinfo(reply).expect("decodes"),
            vec![consumer("job-a", 2, 10), consumer("job-b", 0, 70_000)]
        );
        assert!(from_xinfo(BytesFrame::Integer(1)).is_err());
    }
}
