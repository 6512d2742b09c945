//! Loading a product into one [`Topology`], and following it.
//!
//! [`watch`] arms a single persistent recursive watch on the product node
//! *before* the first load (so no change can slip between load and watch), then
//! reloads the whole product after every burst of events and publishes the new
//! snapshot as a fresh `Arc`. Readers never see half of a change and never hold
//! a lock across `.await`. Reloading everything is cheap at this size (a slot
//! table, a few groups and proxies) and makes missed or reordered events harmless.
//!
//! Sessions: events that happen while disconnected can be lost
//! (ZOOKEEPER-4698), and the server drops a connection's watches with it (the
//! client does not send persistent watches again), so a reconnect re-arms the
//! watch and reloads; after expiry the watch is gone with its session, so the
//! follower waits for the [`Store`] to open the next one, re-arms and reloads.
//! Imports `libs` and `topo`'s kernel only.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::error::TopoError;
use super::model::{Group, ProxyInfo, SlotTable, Topology};
use super::path::{Paths, parse_group_node_name};
use super::session::{ZkSession, from_json};
use super::store::Store;
use crate::libs::backoff::Backoff;

/// After the first event of a burst, wait this long for more before reloading.
const COALESCE: Duration = Duration::from_millis(20);
/// The same once the burst carries an action (a phase of a switch): every
/// live proxy must apply it and acknowledge it while clients' requests for
/// its slots wait, and the one transaction that wrote it arrives as one run
/// of events, so a short quiet gap is enough to collect them.
const ACTION_COALESCE: Duration = Duration::from_millis(1);
/// Upper bound on one burst, so a steady trickle of events cannot starve reloads.
const MAX_BURST: Duration = Duration::from_millis(200);

/// Loads the whole product (slots, groups, proxies, offline markers).
///
/// # Errors
/// [`TopoError::NotInitialized`] if the product was never initialized; a bad node
/// or a ZooKeeper failure.
pub async fn load(store: &Store) -> Result<Topology, TopoError> {
    load_from(&store.zk()?, store.paths()).await
}

/// [`load`] on a given session.
///
/// # Errors
/// As [`load`].
pub async fn load_from(zk: &ZkSession, paths: &Paths) -> Result<Topology, TopoError> {
    let not_initialized = || TopoError::NotInitialized {
        product: paths.product_name().to_string(),
    };
    // The action first: it is written in one transaction with the slot table
    // (and a promote writes its group before its last action), and one
    // session reads in order, so everything read after it is at least as new.
    // Read the other way round, a snapshot could pair a new `pre_migrate`
    // action with the table from before it, and a proxy would acknowledge a
    // switch while still routing the slots to the source.
    let (exists, action) = tokio::try_join!(zk.exists(paths.product()), load_action(zk, paths))?;
    if !exists {
        return Err(not_initialized());
    }
    // The rest at once, after the action: a proxy applies every switch phase
    // after this load, so each round trip saved here is that much less time
    // its clients' requests for the moving slots are held.
    let slots = async {
        zk.get_json::<SlotTable>(&paths.slots())
            .await
            .map_err(|e| if e.is_not_found() { not_initialized() } else { e })
    };
    let offline = paths.offline();
    let (slots, groups, proxies, offline_proxies) = tokio::try_join!(
        slots,
        load_groups(zk, paths),
        load_proxies(zk, paths),
        zk.children_or_none(&offline)
    )?;
    let offline_proxies = offline_proxies.into_iter().collect();
    Ok(Topology {
        product: paths.product_name().to_string(),
        slots,
        groups,
        proxies,
        offline_proxies,
        action,
    })
}

/// The latest action, if any was ever written.
async fn load_action(zk: &ZkSession, paths: &Paths) -> Result<Option<crate::topo::model::Action>, TopoError> {
    let names = zk.children_or_none(&paths.actions()).await?;
    // Zero-padded names: the lexical maximum is the latest.
    let Some(latest) = names.iter().max() else {
        return Ok(None);
    };
    let path = format!("{}/{latest}", paths.actions());
    match zk.get_json(&path).await {
        Ok(action) => Ok(Some(action)),
        // Garbage-collected between the listing and the read: a newer one exists.
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

async fn load_groups(
    zk: &ZkSession,
    paths: &Paths,
) -> Result<std::collections::BTreeMap<u32, Group>, TopoError> {
    let names = zk.children(&paths.groups()).await.map_err(|e| {
        if e.is_not_found() {
            TopoError::NotInitialized {
                product: paths.product_name().to_string(),
            }
        } else {
            e
        }
    })?;
    let ids: Vec<u32> = names.iter().filter_map(|n| parse_group_node_name(n)).collect();
    let mut groups = std::collections::BTreeMap::new();
    for (path, data) in get_many(zk, ids.iter().map(|&id| paths.group(id)).collect()).await? {
        let group: Group = from_json(&path, &data)?;
        groups.insert(group.id, group);
    }
    Ok(groups)
}

async fn load_proxies(
    zk: &ZkSession,
    paths: &Paths,
) -> Result<std::collections::BTreeMap<String, ProxyInfo>, TopoError> {
    let names = zk.children_or_none(&paths.proxies()).await?;
    let mut proxies = std::collections::BTreeMap::new();
    for (path, data) in get_many(zk, names.iter().map(|n| paths.proxy(n)).collect()).await? {
        // One proxy publishing garbage must not hide the whole cluster.
        match from_json::<ProxyInfo>(&path, &data) {
            Ok(info) => {
                proxies.insert(info.id.clone(), info);
            }
            Err(e) => tracing::warn!("ignoring proxy node: {e}"),
        }
    }
    Ok(proxies)
}

/// Reads many nodes in one round trip: the client sends each request when its
/// future is created, so creating them all before awaiting pipelines them.
/// Nodes deleted since they were listed are skipped.
async fn get_many(zk: &ZkSession, paths: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, TopoError> {
    let pending: Vec<_> = paths
        .into_iter()
        .map(|p| {
            let fut = zk.client().get_data(&p);
            (p, fut)
        })
        .collect();
    let mut out = Vec::with_capacity(pending.len());
    for (path, fut) in pending {
        match fut.await {
            Ok((data, _)) => out.push((path, data)),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(TopoError::zk("get", &path, e)),
        }
    }
    Ok(out)
}

/// Follows the product: the receiver already holds the first snapshot, then a
/// new `Arc<Topology>` after every change (proxies joining and leaving included).
/// Stops when `cancel` is cancelled, the store is closed, or every receiver is
/// dropped.
///
/// # Errors
/// The first load's errors ([`TopoError::NotInitialized`], …) or failing to arm
/// the watch.
pub async fn watch(
    store: Store,
    cancel: CancellationToken,
) -> Result<channel::Receiver<Arc<Topology>>, TopoError> {
    let (zk, events) = arm(&store).await?;
    let first = load_from(&zk, store.paths()).await?;
    let (tx, rx) = channel::channel(Arc::new(first));
    let follower = Follower { store, cancel, tx };
    tokio::spawn(follower.run(zk, events));
    Ok(rx)
}

/// Arms the recursive watch on the current session.
async fn arm(store: &Store) -> Result<(ZkSession, zk::PersistentWatcher), TopoError> {
    let zk = store.zk()?;
    let path = store.paths().product();
    let events = zk
        .client()
        .watch(path, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(TopoError::zk_at("watch", path))?;
    Ok((zk, events))
}

/// What a burst of watch events asks the follower to do.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    /// Nodes changed: reload.
    Changed,
    /// The connection dropped; wait for it to come back.
    Disconnected,
    /// The connection is back: events may have been lost, reload.
    Reconnected,
    /// The session ended: the watch is dead, re-arm on the next session.
    Ended,
}

struct Follower {
    store: Store,
    cancel: CancellationToken,
    tx: channel::Sender<Arc<Topology>>,
}

impl Follower {
    async fn run(self, mut zk: ZkSession, mut events: zk::PersistentWatcher) {
        loop {
            let burst = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.store.closed() => return,
                () = self.tx.closed() => return,
                burst = next_burst(&mut events, self.store.paths()) => burst,
            };
            match burst {
                Burst::Disconnected => {}
                Burst::Changed => self.reload(&zk).await,
                Burst::Reconnected => {
                    // Same session, new connection: the server forgot the
                    // watch with the old one, and zookeeper-client 0.11.2 does
                    // not send persistent watches again (its `resend_watches`
                    // only re-sends one-shot ones). Without this the proxy
                    // would follow nothing after its member dies.
                    let Some((next_zk, next_events)) = self.rearm(zk.generation()).await else {
                        return;
                    };
                    // The new watch is armed before the old one is dropped,
                    // so dropping it asks the server to remove nothing.
                    (zk, events) = (next_zk, next_events);
                    self.reload(&zk).await;
                }
                Burst::Ended => {
                    // The watcher panics if polled after a terminal event: drop it.
                    drop(events);
                    let Some((next_zk, next_events)) = self.rearm(zk.generation() + 1).await else {
                        return;
                    };
                    (zk, events) = (next_zk, next_events);
                    self.reload(&zk).await;
                }
            }
        }
    }

    /// Reloads until it works (or the session ends, or we are stopped) and
    /// publishes the snapshot if it differs from the last one.
    async fn reload(&self, zk: &ZkSession) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match load_from(zk, self.store.paths()).await {
                Ok(topo) => {
                    self.tx.send_if_modified(|current| {
                        if **current == topo {
                            return false;
                        }
                        *current = Arc::new(topo);
                        true
                    });
                    return;
                }
                // The watch delivers the end of the session; re-arming follows.
                Err(TopoError::SessionExpired | TopoError::Closed) => return,
                Err(e) => tracing::warn!("reloading the topology: {e}"),
            }
            if !self.pause(backoff.next_delay()).await {
                return;
            }
        }
    }

    /// Waits for a connected session of generation `from` or later and arms
    /// the watch on it.
    async fn rearm(&self, from: u64) -> Option<(ZkSession, zk::PersistentWatcher)> {
        let mut session = self.store.session();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            let newer = tokio::select! {
                () = self.cancel.cancelled() => return None,
                () = self.store.closed() => return None,
                r = session.wait_for(|e| e.generation >= from && e.connected) => r.is_ok(),
            };
            if !newer {
                return None;
            }
            match arm(&self.store).await {
                Ok(armed) => return Some(armed),
                Err(e) => tracing::warn!("re-arming the topology watch: {e}"),
            }
            if !self.pause(backoff.next_delay()).await {
                return None;
            }
        }
    }

    /// Sleeps `d`; false if we were stopped meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = self.store.closed() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

/// Waits for the next relevant event, then gathers the rest of its burst.
/// Where [`next_burst`] takes its events from: the topology's watch, or a
/// channel in the tests.
trait Events {
    fn next(&mut self) -> impl Future<Output = zk::WatchedEvent> + Send + '_;
}

impl Events for zk::PersistentWatcher {
    fn next(&mut self) -> impl Future<Output = zk::WatchedEvent> + Send + '_ {
        self.changed()
    }
}

async fn next_burst(events: &mut impl Events, paths: &Paths) -> Burst {
    let actions = paths.actions();
    let is_action = |event: &zk::WatchedEvent| event.path.starts_with(actions.as_str());
    let mut quiet = COALESCE;
    loop {
        let event = events.next().await;
        match classify(&event, paths) {
            None => continue,
            Some(Burst::Changed) => {
                if is_action(&event) {
                    quiet = ACTION_COALESCE;
                }
                break;
            }
            Some(other) => return other,
        }
    }
    let deadline = tokio::time::Instant::now() + MAX_BURST;
    loop {
        let until = deadline.min(tokio::time::Instant::now() + quiet);
        match tokio::time::timeout_at(until, events.next()).await {
            Err(_) => return Burst::Changed,
            Ok(event) => match classify(&event, paths) {
                Some(Burst::Changed) if is_action(&event) => quiet = ACTION_COALESCE,
                None | Some(Burst::Changed) => {}
                // A session event ends the burst; a reconnect reloads anyway.
                Some(other) => return other,
            },
        }
    }
}

/// What one event means; `None` for events that cannot change the topology.
fn classify(event: &zk::WatchedEvent, paths: &Paths) -> Option<Burst> {
    classify_parts(event.event_type, event.session_state, &event.path, paths)
}

fn classify_parts(kind: zk::EventType, state: zk::SessionState, path: &str, paths: &Paths) -> Option<Burst> {
    if kind != zk::EventType::Session {
        return (!paths.is_outside_topology(path)).then_some(Burst::Changed);
    }
    match state {
        s if s.is_terminated() => Some(Burst::Ended),
        zk::SessionState::Disconnected => Some(Burst::Disconnected),
        _ => Some(Burst::Reconnected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_classified() {
        use zk::{EventType as E, SessionState as S};
        let p = Paths::new("/r", "d").expect("paths");
        let c = |t, s, path| classify_parts(t, s, path, &p);
        assert_eq!(
            c(E::NodeDataChanged, S::SyncConnected, "/r/d/slots"),
            Some(Burst::Changed)
        );
        assert_eq!(
            c(E::NodeCreated, S::SyncConnected, "/r/d/proxies/x"),
            Some(Burst::Changed)
        );
        assert_eq!(c(E::NodeCreated, S::SyncConnected, "/r/d/lock"), None);
        assert_eq!(c(E::NodeDeleted, S::SyncConnected, "/r/d/dashboard"), None);
        assert_eq!(c(E::Session, S::Disconnected, ""), Some(Burst::Disconnected));
        assert_eq!(c(E::Session, S::SyncConnected, ""), Some(Burst::Reconnected));
        assert_eq!(c(E::Session, S::Expired, ""), Some(Burst::Ended));
        assert_eq!(c(E::Session, S::Closed, ""), Some(Burst::Ended));
    }

    impl Events for tokio::sync::mpsc::UnboundedReceiver<zk::WatchedEvent> {
        async fn next(&mut self) -> zk::WatchedEvent {
            match self.recv().await {
                Some(event) => event,
                None => std::future::pending().await,
            }
        }
    }

    fn node_event(path: &str) -> zk::WatchedEvent {
        zk::WatchedEvent::new(zk::EventType::NodeDataChanged, path)
    }

    /// How long (in paused time) a burst that starts with `first` takes to
    /// end when nothing follows.
    async fn burst_time(first: &str) -> Duration {
        let p = Paths::new("/r", "d").expect("paths");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(node_event(first)).expect("send");
        let start = tokio::time::Instant::now();
        assert_eq!(next_burst(&mut rx, &p).await, Burst::Changed);
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_with_an_action_ends_at_once_others_coalesce() {
        // A switch phase: reloaded after ~1 ms, not after the 20 ms quiet gap.
        assert!(burst_time("/r/d/actions/0000000007").await <= Duration::from_millis(2));
        let other = burst_time("/r/d/slots").await;
        assert!(
            other >= COALESCE && other <= COALESCE + Duration::from_millis(2),
            "{other:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_of_events_cannot_postpone_the_reload_past_the_cap() {
        let p = Paths::new("/r", "d").expect("paths");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                if tx.send(node_event("/r/d/proxies/x")).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let start = tokio::time::Instant::now();
        assert_eq!(next_burst(&mut rx, &p).await, Burst::Changed);
        let took = start.elapsed();
        assert!(took >= MAX_BURST && took <= MAX_BURST + COALESCE, "{took:?}");
    }
}
