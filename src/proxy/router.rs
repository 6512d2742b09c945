//! The routing table: slot → backend pool, as an immutable snapshot.
//!
//! Every request reads the current [`Routes`] through an [`ArcSwap`] (a couple of
//! atomic operations, no lock). A topology change builds a whole new `Routes` and
//! swaps it in, so a request sees either the old table or the new one, never a mix.
//! Pools are keyed by redis address and reused across snapshots, so a change that
//! does not touch a group keeps its connections warm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::sync::watch;

use super::backend::{BackendConn, BackendOptions};
use super::output::Meter;
use crate::libs::hash::SLOT_COUNT;
use crate::libs::protocol::Protocol;
use crate::topo::model::{GroupId, SlotState, Topology};

/// A few pipelined connections to one redis-server.
///
/// A client always uses the same one (`client id % n`): Redis answers each
/// connection in order, so one client's requests to one backend can never
/// overtake each other, while different clients spread over the connections.
///
/// The connections speak RESP2. RESP3 clients (`HELLO 3`) get a second set
/// that said `HELLO 3` itself, opened on first use, so Redis encodes their
/// replies and the proxy passes them through as it does for RESP2.
pub struct Pool {
    conns: Vec<BackendConn>,
    /// The RESP3 set, opened by the first RESP3 request.
    resp3: OnceLock<Vec<BackendConn>>,
    /// How to open the RESP3 set.
    opts: BackendOptions,
    rt: Handle,
}

impl Pool {
    fn new(addr: &str, size: usize, opts: &BackendOptions, rt: &Handle) -> Pool {
        Pool {
            conns: Self::open(addr, size, opts, rt),
            resp3: OnceLock::new(),
            opts: opts.clone(),
            rt: rt.clone(),
        }
    }

    fn open(addr: &str, size: usize, opts: &BackendOptions, rt: &Handle) -> Vec<BackendConn> {
        (0..size.max(1))
            .map(|_| BackendConn::spawn_on(rt, addr, opts.clone()).0)
            .collect()
    }

    /// The connections of `protocol`, the RESP3 ones opened if need be.
    fn conns_of(&self, protocol: Protocol) -> &[BackendConn] {
        match protocol {
            Protocol::Resp2 => &self.conns,
            Protocol::Resp3 => self.resp3.get_or_init(|| {
                let opts = BackendOptions {
                    protocol: Protocol::Resp3,
                    ..self.opts.clone()
                };
                Self::open(self.addr(), self.conns.len(), &opts, &self.rt)
            }),
        }
    }

    /// Sends `req` for client `client`, which speaks `protocol`, on that
    /// client's connection of that protocol.
    pub fn send_as(&self, client: u64, protocol: Protocol, req: Bytes) -> oneshot::Receiver<Bytes> {
        pick(self.conns_of(protocol), client, req)
    }

    /// [`send_as`](Self::send_as), the reply counted against the client's
    /// `meter` (see `output.rs`), `script` if the request runs one: a
    /// client's data request.
    ///
    /// # Errors
    /// The `-BUSY` to answer at once while another client's script runs long
    /// on its connection (see `backend.rs`).
    pub fn send_counted(
        &self,
        (client, protocol): (u64, Protocol),
        req: Bytes,
        meter: &Arc<Meter>,
        script: bool,
    ) -> Result<oneshot::Receiver<Bytes>, Bytes> {
        let conns = self.conns_of(protocol);
        match conns.get(index_of(conns, client)) {
            Some(conn) => conn.send_client(client, script, req, Some(meter)),
            None => Ok(empty_pool()),
        }
    }

    /// The backend's address.
    pub fn addr(&self) -> &str {
        self.conns.first().map(|c| c.addr()).unwrap_or("")
    }

    /// Sends `req` for client `client` (a RESP2 client) on that client's
    /// connection.
    pub fn send(&self, client: u64, req: Bytes) -> oneshot::Receiver<Bytes> {
        pick(&self.conns, client, req)
    }

    /// A `PING` down every connection (of both protocols): when all have
    /// answered, every request sent on this pool before the call has been
    /// answered too.
    pub fn barrier(&self) -> Vec<oneshot::Receiver<Bytes>> {
        let ping = Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
        let resp3 = self.resp3.get().map(|c| c.as_slice()).unwrap_or_default();
        self.conns
            .iter()
            .chain(resp3)
            .map(|c| c.send(ping.clone()))
            .collect()
    }

    /// True while every connection of the pool is down.
    pub fn is_down(&self) -> bool {
        self.conns.iter().all(|c| c.is_down())
    }

    /// Connections currently up.
    pub fn up_count(&self) -> usize {
        self.conns.iter().filter(|c| c.is_up()).count()
    }

    /// The last connection error, if any.
    pub fn last_error(&self) -> String {
        self.conns
            .iter()
            .map(|c| c.last_error())
            .find(|e| !e.is_empty())
            .unwrap_or_default()
    }
}

/// Sends `req` on `client`'s connection among `conns`.
fn pick(conns: &[BackendConn], client: u64, req: Bytes) -> oneshot::Receiver<Bytes> {
    match conns.get(index_of(conns, client)) {
        Some(conn) => conn.send(req),
        None => empty_pool(),
    }
}

/// Which of `conns` carries `client`'s requests: always the same one, so
/// they stay in order.
fn index_of(conns: &[BackendConn], client: u64) -> usize {
    (client % (conns.len() as u64).max(1)) as usize
}

/// The reply of a pool without connections (never built so).
fn empty_pool() -> oneshot::Receiver<Bytes> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(crate::libs::resp::error("ERR internal: empty backend pool"));
    rx
}

/// Where one slot's requests go.
#[derive(Clone)]
pub enum SlotRoute {
    /// Served by this pool (the group master).
    Serve { group: GroupId, pool: Arc<Pool> },
    /// Not assigned to any group.
    Unassigned,
    /// The group exists but has no master.
    NoMaster(GroupId),
    /// Migrating from `from` to `to`: keys move on access (see `migrate.rs`).
    Migrate { from: Arc<Pool>, to: Arc<Pool> },
    /// About to migrate (`pre_migrate`): requests wait for the next phase.
    /// `source` is kept so the switch can wait for its in-flight requests.
    Switching { source: Option<Arc<Pool>> },
}

/// A group that serves slots, as cluster-wide commands see it (see `fanout.rs`).
#[derive(Clone)]
pub struct GroupRoute {
    pub id: GroupId,
    /// Its master's pool; `None` when the group has no master.
    pub master: Option<Arc<Pool>>,
}

/// One immutable routing snapshot.
pub struct Routes {
    pub slots: Vec<SlotRoute>,
    /// Groups that own a slot, or are the source of a migrating one, by id.
    pub groups: Vec<GroupRoute>,
    /// Every server address of every group of the topology, master first, by
    /// group id (for commands that reach replicas too, as CONFIG SET).
    pub servers: Vec<(GroupId, Vec<String>)>,
    /// False when an operator set this proxy offline.
    pub online: bool,
    /// Bumped on every swap; shown in `/stats` and INFO.
    pub epoch: u64,
}

impl Routes {
    /// The route of `slot`.
    pub fn get(&self, slot: u16) -> &SlotRoute {
        self.slots
            .get(usize::from(slot))
            .unwrap_or(&SlotRoute::Unassigned)
    }
}

/// The current routes plus the pools they point into.
pub struct Router {
    routes: ArcSwap<Routes>,
    pools: parking_lot::Mutex<HashMap<String, Arc<Pool>>>,
    /// For the shared pools.
    opts: BackendOptions,
    /// For dedicated connections (blocked calls, transactions): no `WAIT`
    /// may ever be slipped between their commands.
    dedicated: BackendOptions,
    pool_size: usize,
    proxy_id: String,
    /// The runtime of the worker that owns this router: backend connections
    /// must live there, whichever thread applies a topology.
    runtime: std::sync::OnceLock<Handle>,
    /// Logs each new table at info (one router of the proxy does; the
    /// other workers' would repeat the same line).
    announce: bool,
    /// Sequence of the latest action whose table is applied (0: none).
    applied_action: AtomicU64,
    /// Bumped after every swap; sessions holding a request wait on it.
    changes: watch::Sender<u64>,
}

impl Router {
    /// An empty router: every slot unassigned until the first topology arrives.
    pub fn new(proxy_id: &str, opts: BackendOptions, pool_size: usize) -> Router {
        Router {
            routes: ArcSwap::from_pointee(Routes {
                slots: vec![SlotRoute::Unassigned; SLOT_COUNT],
                groups: Vec::new(),
                servers: Vec::new(),
                online: true,
                epoch: 0,
            }),
            pools: parking_lot::Mutex::new(HashMap::new()),
            dedicated: BackendOptions {
                replica_ack: None,
                busy_after: None,
                ..opts.clone()
            },
            opts,
            pool_size,
            proxy_id: proxy_id.to_string(),
            runtime: std::sync::OnceLock::new(),
            announce: true,
            applied_action: AtomicU64::new(0),
            changes: watch::Sender::new(0),
        }
    }

    /// Ties this router to the current runtime (call on its worker thread,
    /// before the first [`Router::apply`]).
    pub fn bind_runtime(&self) {
        let _ = self.runtime.set(Handle::current());
    }

    /// An empty router with the same settings, for another worker thread;
    /// it logs its tables at info only if `announce`.
    pub fn sibling(&self, announce: bool) -> Router {
        Router {
            announce,
            ..Router::new(&self.proxy_id, self.opts.clone(), self.pool_size)
        }
    }

    /// The current snapshot.
    pub fn routes(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.routes.load()
    }

    /// The options used to open dedicated backend connections.
    pub fn backend_options(&self) -> &BackendOptions {
        &self.dedicated
    }

    /// Builds and swaps in the routes for `topo`. Pools of addresses no longer
    /// used are dropped; their connections close after their in-flight replies.
    pub fn apply(&self, topo: &Topology) {
        let rt = self.runtime.get().cloned().unwrap_or_else(Handle::current);
        let mut pools = self.pools.lock();
        let mut used: HashMap<String, Arc<Pool>> = HashMap::new();
        let mut slots = Vec::with_capacity(SLOT_COUNT);
        // The pool of a group's master, shared across slots and snapshots.
        let mut pool_of = |group: GroupId| -> Option<Arc<Pool>> {
            let addr = topo.groups.get(&group)?.master()?;
            let pool = used.entry(addr.to_string()).or_insert_with(|| {
                pools
                    .get(addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Pool::new(addr, self.pool_size, &self.opts, &rt)))
            });
            Some(pool.clone())
        };
        for slot in topo.slots.slots() {
            let route = match (slot.group, slot.state, slot.from) {
                (0, _, _) => SlotRoute::Unassigned,
                (group, SlotState::PreMigrate, _) => SlotRoute::Switching {
                    source: pool_of(group),
                },
                (group, SlotState::Migrate, Some(src)) => match (pool_of(src), pool_of(group)) {
                    (Some(from), Some(to)) => SlotRoute::Migrate { from, to },
                    (None, _) => SlotRoute::NoMaster(src),
                    (_, None) => SlotRoute::NoMaster(group),
                },
                // `migrate` without a source cannot move anything: serve the target.
                (group, _, _) => match pool_of(group) {
                    Some(pool) => SlotRoute::Serve { group, pool },
                    None => SlotRoute::NoMaster(group),
                },
            };
            slots.push(route);
        }
        let serving: std::collections::BTreeSet<GroupId> = topo
            .slots
            .slots()
            .iter()
            .flat_map(|s| [s.group, s.from.unwrap_or(0)])
            .filter(|&g| g != 0)
            .collect();
        let groups = serving
            .into_iter()
            .map(|id| GroupRoute {
                id,
                master: pool_of(id),
            })
            .collect();
        let servers = topo
            .groups
            .values()
            .map(|g| {
                let master = g.master().map(str::to_string);
                let others = g
                    .servers
                    .iter()
                    .map(|s| s.addr.clone())
                    .filter(|a| Some(a) != master.as_ref());
                (g.id, master.clone().into_iter().chain(others).collect())
            })
            .collect();
        let epoch = self.routes.load().epoch + 1;
        let online = !topo.offline_proxies.contains(&self.proxy_id);
        self.routes.store(Arc::new(Routes {
            slots,
            groups,
            servers,
            online,
            epoch,
        }));
        let action = topo.action.as_ref().map_or(0, |a| a.seq);
        // Release: whoever sees this action applied (ack.rs) also sees every
        // blocking command registered before the swap (see `blocked.rs`).
        self.applied_action.fetch_max(action, Ordering::Release);
        self.changes.send_replace(epoch);
        *pools = used;
        if self.announce {
            tracing::info!(epoch, online, backends = pools.len(), "routing table updated");
        } else {
            tracing::debug!(epoch, online, backends = pools.len(), "routing table updated");
        }
    }

    /// Sequence of the latest action this router has applied.
    pub fn applied_action(&self) -> u64 {
        self.applied_action.load(Ordering::Acquire)
    }

    /// Fires after every routing change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The pool of the backend at `addr`, if the current routes use it.
    pub fn pool(&self, addr: &str) -> Option<Arc<Pool>> {
        self.pools.lock().get(addr).cloned()
    }

    /// The pools in use, by address (for stats).
    pub fn pools(&self) -> Vec<(String, Arc<Pool>)> {
        let mut v: Vec<_> = self
            .pools
            .lock()
            .iter()
            .map(|(a, p)| (a.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
