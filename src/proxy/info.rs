//! INFO through the proxy: the proxy's own sections (`local.rs`), the backend
//! fields clients gate on in `# Server`, and one `# Keyspace` for the whole
//! cluster, restricted to the sections asked for as Redis does.
//!
//! * `INFO`, `INFO default`, `INFO all`, `INFO everything`: every section;
//!   `INFO server clients …`: those (case-insensitive); an unknown section
//!   gives an empty reply, as in Redis.
//! * `# Server` starts with the fields of the master with the lowest
//!   `redis_version` ([`SERVER_FIELDS`]): a client that gates a feature on the
//!   version must see the oldest server it may land on.
//! * `# Keyspace` sums each db's `keys` and `expires` over the masters;
//!   `avg_ttl` is the average weighted by `expires`.
//!
//! Backends that fail to answer, or take longer than [`BACKEND_WAIT`], are
//! left out rather than failing INFO: INFO is what health checks and
//! monitoring read. It asks only the masters, and only
//! when the sections asked for need them.
//!
//! Imports `local`, `router`, `reply` and `libs::resp`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::context::{Client, Context};
use super::local;
use super::reply::Reply;
use crate::libs::resp::{self, Request};

/// Fields of a backend's `# Server` section that INFO shows, in this order.
pub const SERVER_FIELDS: &[&str] = &[
    "redis_version",
    "redis_git_sha1",
    "redis_git_dirty",
    "redis_build_id",
    "redis_mode",
    "os",
    "arch_bits",
    "monotonic_clock",
    "multiplexing_api",
    "atomicvar_api",
    "gcc_version",
];

/// How long INFO waits for the masters: a master that hangs must not hang
/// the health checks that read INFO. Late answers are left out.
pub const BACKEND_WAIT: Duration = Duration::from_millis(500);

/// Which sections a request asks for.
pub struct Wanted {
    /// `None`: every default section.
    names: Option<Vec<String>>,
    /// `all` or `everything`: the default sections and the others
    /// (`commandstats`), as Redis.
    all: bool,
}

impl Wanted {
    /// From INFO's arguments (after the command name).
    pub fn parse(args: &[Bytes]) -> Wanted {
        let names: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .collect();
        let every = names.is_empty()
            || names
                .iter()
                .any(|n| matches!(n.as_str(), "default" | "all" | "everything"));
        let all = names.iter().any(|n| matches!(n.as_str(), "all" | "everything"));
        Wanted {
            names: (!every).then_some(names),
            all,
        }
    }

    /// True if a section outside Redis's default set (`commandstats`) is asked
    /// for: by name, or with `all`/`everything`.
    pub fn has_extra(&self, title: &str) -> bool {
        self.all
            || self
                .names
                .as_ref()
                .is_some_and(|names| names.iter().any(|n| n.eq_ignore_ascii_case(title)))
    }

    /// True if section `title` (any case) is asked for.
    pub fn has(&self, title: &str) -> bool {
        match &self.names {
            None => true,
            Some(names) => names.iter().any(|n| n.eq_ignore_ascii_case(title)),
        }
    }
}

/// INFO [section …].
pub fn dispatch(ctx: &Context, client: &Client, req: &Request) -> Reply {
    let wanted = Wanted::parse(req.args.get(1..).unwrap_or_default());
    let proxy = local::info_sections(ctx);
    let (server, keyspace, persistence, errorstats, commandstats) = (
        wanted.has("server"),
        wanted.has("keyspace"),
        wanted.has("persistence"),
        wanted.has("errorstats"),
        wanted.has_extra("commandstats"),
    );
    if !server && !keyspace && !persistence && !errorstats && !commandstats {
        return Reply::Ready(resp::bulk(render(&wanted, proxy, &[]).as_bytes()));
    }
    let mut ask: Vec<&[u8]> = vec![b"INFO"];
    if server {
        ask.push(b"server");
    }
    if keyspace {
        ask.push(b"keyspace");
    }
    if persistence {
        ask.push(b"persistence");
    }
    if errorstats {
        ask.push(b"errorstats");
    }
    if commandstats {
        ask.push(b"commandstats");
    }
    let texts = ask_masters(ctx, client.id, resp::encode_array(&ask));
    let version = ctx.server_version.clone();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let texts = texts.await;
        if server && let Some(v) = oldest_version(&texts) {
            version.learn(v);
        }
        let _ = tx.send(resp::bulk(render(&wanted, proxy, &texts).as_bytes()));
    });
    Reply::Wait(rx)
}

/// Sends `ask` (an INFO request) to every master; the texts of the replies
/// that came within [`BACKEND_WAIT`].
fn ask_masters(ctx: &Context, client: u64, ask: Bytes) -> impl Future<Output = Vec<String>> + Send + 'static {
    let routes = ctx.router.routes();
    let parts: Vec<oneshot::Receiver<Bytes>> = routes
        .groups
        .iter()
        .filter_map(|g| g.master.as_ref())
        .map(|pool| pool.send(client, ask.clone()))
        .collect();
    async move {
        let deadline = tokio::time::Instant::now() + BACKEND_WAIT;
        let mut texts = Vec::with_capacity(parts.len());
        for part in parts {
            let reply = tokio::time::timeout_at(deadline, part).await;
            let text = reply
                .ok()
                .and_then(|r| r.ok())
                .and_then(|r| resp::bulk_payload(&r));
            texts.extend(text.map(|t| String::from_utf8_lossy(&t).into_owned()));
        }
        texts
    }
}

/// Asks the masters for their lowest `redis_version` (what `HELLO` reports)
/// and remembers it in `ctx.server_version`; `None` if none answered.
pub fn learn_server_version(
    ctx: &Context,
    client: u64,
) -> impl Future<Output = Option<String>> + Send + 'static {
    let texts = ask_masters(ctx, client, resp::encode_array(&[b"INFO".as_ref(), b"server"]));
    let cache = ctx.server_version.clone();
    async move {
        let version = oldest_version(&texts.await)?;
        cache.learn(version.clone());
        Some(version)
    }
}

/// The lowest `redis_version` in the masters' INFO texts.
fn oldest_version(texts: &[String]) -> Option<String> {
    texts
        .iter()
        .filter_map(|t| sections(t).remove("server")?.remove("redis_version"))
        .min_by_key(|v| version_key(v))
}

/// The reply text: the proxy's sections with the backends' (`backends`: each
/// master's INFO text) merged in, keeping only the wanted ones.
pub fn render(wanted: &Wanted, proxy: Vec<(&'static str, String)>, backends: &[String]) -> String {
    let parsed: Vec<BTreeMap<String, BTreeMap<String, String>>> =
        backends.iter().map(|t| sections(t)).collect();
    let mut out: Vec<(String, String)> = Vec::new();
    for (title, lines) in proxy {
        if wanted.has(title) {
            let lines = if title == "Server" {
                format!("{}{lines}", server_fields(&parsed))
            } else {
                lines
            };
            out.push((title.to_string(), lines));
        }
        // Where Redis puts it: after Clients (and Memory, which we have not).
        if title == "Clients" && wanted.has("persistence") {
            out.push(("Persistence".into(), persistence(&parsed)));
        }
    }
    if wanted.has_extra("commandstats") {
        out.push(("Commandstats".into(), commandstats(&parsed)));
    }
    if wanted.has("errorstats") {
        out.push(("Errorstats".into(), errorstats(&parsed)));
    }
    if wanted.has("keyspace") {
        out.push(("Keyspace".into(), keyspace(&parsed)));
    }
    out.iter()
        .map(|(title, lines)| format!("# {title}\r\n{lines}"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// An INFO text by section (lower-case title), each `field → value`.
fn sections(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(title) = line.strip_prefix("# ") {
            current = title.to_ascii_lowercase();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once(':') {
            out.entry(current.clone())
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// `7.0.15` → `[7, 0, 15]`, for comparing versions.
fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// [`SERVER_FIELDS`] of the master with the lowest `redis_version`.
fn server_fields(backends: &[BTreeMap<String, BTreeMap<String, String>>]) -> String {
    let oldest = backends
        .iter()
        .filter_map(|b| b.get("server"))
        .filter(|s| s.contains_key("redis_version"))
        .min_by_key(|s| version_key(s.get("redis_version").map_or("", String::as_str)));
    let Some(server) = oldest else {
        return String::new();
    };
    SERVER_FIELDS
        .iter()
        .filter_map(|f| server.get(*f).map(|v| format!("{f}:{v}\r\n")))
        .collect()
}

/// `# Persistence` of the whole cluster: counts summed over the masters
/// (`rdb_changes_since_last_save`: what a save everywhere would write), flags
/// raised if any master has them, the oldest save time, and the first
/// master's value of anything else.
fn persistence(backends: &[BTreeMap<String, BTreeMap<String, String>>]) -> String {
    const SUM: &[&str] = &["rdb_changes_since_last_save", "rdb_saves", "aof_rewrites"];
    const MAX: &[&str] = &[
        "loading",
        "async_loading",
        "rdb_bgsave_in_progress",
        "aof_enabled",
        "aof_rewrite_in_progress",
        "aof_rewrite_scheduled",
        "module_fork_in_progress",
        "current_cow_size",
    ];
    const MIN: &[&str] = &["rdb_last_save_time"];
    let all: Vec<&BTreeMap<String, String>> = backends.iter().filter_map(|b| b.get("persistence")).collect();
    let Some(first) = all.first() else {
        return String::new();
    };
    let mut out = String::new();
    for (field, value) in first.iter() {
        let numbers = || all.iter().filter_map(|p| p.get(field)?.parse::<i64>().ok());
        let merged = if SUM.contains(&field.as_str()) {
            numbers().sum::<i64>().to_string()
        } else if MAX.contains(&field.as_str()) {
            numbers().max().unwrap_or(0).to_string()
        } else if MIN.contains(&field.as_str()) {
            numbers().min().unwrap_or(0).to_string()
        } else if field.ends_with("_status") && all.iter().any(|p| p.get(field).is_some_and(|v| v != "ok")) {
            "err".to_string()
        } else {
            value.clone()
        };
        out.push_str(&format!("{field}:{merged}\r\n"));
    }
    out
}

/// `errorstat_<CODE>:count=N` summed over the masters: the errors the servers
/// answered (the proxy's own refusals are in its `# Stats`).
fn errorstats(backends: &[BTreeMap<String, BTreeMap<String, String>>]) -> String {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for stats in backends.iter().filter_map(|b| b.get("errorstats")) {
        for (code, value) in stats {
            let n = value
                .strip_prefix("count=")
                .and_then(|n| n.parse::<i64>().ok())
                .unwrap_or(0);
            *counts.entry(code.as_str()).or_default() += n;
        }
    }
    counts
        .iter()
        .map(|(code, n)| format!("{code}:count={n}\r\n"))
        .collect()
}

/// `cmdstat_<name>:calls=…,usec=…,usec_per_call=…,rejected_calls=…,failed_calls=…`
/// summed over the masters (`usec_per_call` recomputed from the sums): what
/// the servers ran, as one Redis holding every key would count it.
fn commandstats(backends: &[BTreeMap<String, BTreeMap<String, String>>]) -> String {
    let mut sums: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for stats in backends.iter().filter_map(|b| b.get("commandstats")) {
        for (cmd, value) in stats {
            let entry = sums.entry(cmd.as_str()).or_default();
            for (k, v) in value.split(',').filter_map(|kv| kv.split_once('=')) {
                if k != "usec_per_call" {
                    *entry.entry(k).or_default() += v.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    let mut out = String::new();
    for (cmd, fields) in sums {
        let get = |k: &str| fields.get(k).copied().unwrap_or(0.0);
        let (calls, usec) = (get("calls"), get("usec"));
        let per_call = if calls > 0.0 { usec / calls } else { 0.0 };
        out.push_str(&format!(
            "{cmd}:calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
            calls as u64,
            usec as u64,
            get("rejected_calls") as u64,
            get("failed_calls") as u64,
        ));
    }
    out
}

/// The `db0:keys=…,expires=…,avg_ttl=…` line, summed over the masters. The
/// proxy serves database 0 only: the others hold nothing of its clients'
/// (a migration's source keeps tombstones in one, `libs::tombstone`).
fn keyspace(backends: &[BTreeMap<String, BTreeMap<String, String>>]) -> String {
    // field → (sum, ttl × expires for avg_ttl)
    let mut fields: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    for line in backends.iter().filter_map(|b| b.get("keyspace")?.get("db0")) {
        let values: BTreeMap<&str, i128> = line
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse::<i128>().ok()?)))
            .collect();
        let expires = values.get("expires").copied().unwrap_or(0);
        for (k, v) in &values {
            let e = fields.entry((*k).to_string()).or_default();
            e.0 += v;
            e.1 += v * expires;
        }
    }
    if fields.is_empty() {
        return String::new();
    }
    let expires = fields.get("expires").map_or(0, |e| e.0);
    let mut parts = Vec::new();
    // Redis's order first, then any field a newer server adds.
    let order = ["keys", "expires", "avg_ttl"];
    let rest = fields.keys().filter(|k| !order.contains(&k.as_str()));
    for k in order.iter().map(|s| s.to_string()).chain(rest.cloned()) {
        let Some((sum, weighted)) = fields.get(&k) else {
            continue;
        };
        let v = match k.as_str() {
            "avg_ttl" if expires > 0 => weighted / expires,
            "avg_ttl" => 0,
            _ => *sum,
        };
        parts.push(format!("{k}={v}"));
    }
    format!("db0:{}\r\n", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(args: &[&str]) -> Wanted {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        Wanted::parse(&args)
    }

    fn proxy() -> Vec<(&'static str, String)> {
        vec![
            ("Server", "reborn_version:1\r\n".into()),
            ("Stats", "total_commands_processed:3\r\n".into()),
        ]
    }

    const A: &str = "# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\nos:Linux\r\narch_bits:64\r\nrun_id:aaa\r\n\r\n# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=1000\r\n";
    const B: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\narch_bits:64\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=6,avg_ttl=3000\r\ndb1:keys=2,expires=2,avg_ttl=100\r\n";

    #[test]
    fn server_takes_the_oldest_master_and_keyspace_is_summed() {
        let text = render(&wanted(&[]), proxy(), &[A.into(), B.into()]);
        assert!(text.starts_with("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\narch_bits:64\r\nreborn_version:1\r\n"), "{text}");
        assert!(!text.contains("run_id"), "{text}");
        assert!(text.contains("\r\n\r\n# Stats\r\n"), "{text}");
        // avg_ttl weighted by expires: (1000*2 + 3000*6) / 8 = 2500. Only
        // db0: the proxy serves no other.
        assert!(
            text.ends_with("# Keyspace\r\ndb0:keys=15,expires=8,avg_ttl=2500\r\n"),
            "{text}"
        );
    }

    #[test]
    fn sections_are_honoured() {
        let text = render(&wanted(&["server"]), proxy(), &[A.into()]);
        assert!(
            text.contains("redis_version:7.2.4") && !text.contains("# Stats") && !text.contains("# Keyspace"),
            "{text}"
        );
        let text = render(&wanted(&["STATS", "keyspace"]), proxy(), &[]);
        assert_eq!(
            text,
            "# Stats\r\ntotal_commands_processed:3\r\n\r\n# Keyspace\r\n"
        );
        assert_eq!(render(&wanted(&["nosuch"]), proxy(), &[]), "");
        assert!(render(&wanted(&["everything"]), proxy(), &[]).contains("# Stats"));
        assert!(!wanted(&["server"]).has("keyspace") && wanted(&["all"]).has("keyspace"));
    }

    #[test]
    fn persistence_sums_changes_and_raises_flags() {
        let a = "# Persistence\r\nloading:0\r\nrdb_changes_since_last_save:3\r\nrdb_last_save_time:200\r\nrdb_last_bgsave_status:ok\r\n";
        let b = "# Persistence\r\nloading:1\r\nrdb_changes_since_last_save:4\r\nrdb_last_save_time:100\r\nrdb_last_bgsave_status:err\r\n";
        let sections = vec![("Clients", "connected_clients:1\r\n".to_string())];
        let text = render(
            &wanted(&["clients", "persistence"]),
            sections,
            &[a.into(), b.into()],
        );
        assert_eq!(
            text,
            "# Clients\r\nconnected_clients:1\r\n\r\n# Persistence\r\nloading:1\r\nrdb_changes_since_last_save:7\r\nrdb_last_bgsave_status:err\r\nrdb_last_save_time:100\r\n"
        );
    }

    #[test]
    fn errorstats_are_summed() {
        let a = "# Errorstats\r\nerrorstat_ERR:count=2\r\nerrorstat_NOGROUP:count=1\r\n";
        let b = "# Errorstats\r\nerrorstat_ERR:count=3\r\n";
        let text = render(&wanted(&["errorstats"]), proxy(), &[a.into(), b.into()]);
        assert_eq!(
            text,
            "# Errorstats\r\nerrorstat_ERR:count=5\r\nerrorstat_NOGROUP:count=1\r\n"
        );
    }

    #[test]
    fn commandstats_are_summed_and_only_sent_when_asked() {
        let a = "# Commandstats\r\ncmdstat_get:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0,failed_calls=1\r\n";
        let b = "# Commandstats\r\ncmdstat_get:calls=1,usec=50,usec_per_call=50.00,rejected_calls=2,failed_calls=0\r\ncmdstat_xadd:calls=2,usec=4,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n";
        let text = render(&wanted(&["commandstats"]), proxy(), &[a.into(), b.into()]);
        assert!(
            text.contains(
                "cmdstat_get:calls=4,usec=80,usec_per_call=20.00,rejected_calls=2,failed_calls=1\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("cmdstat_xadd:calls=2,"), "{text}");
        assert!(wanted(&["all"]).has_extra("commandstats"));
        assert!(wanted(&["everything"]).has_extra("commandstats"));
        assert!(!wanted(&[]).has_extra("commandstats"), "not a default section");
        assert!(!wanted(&["default"]).has_extra("commandstats"));
        assert!(!render(&wanted(&[]), proxy(), &[a.into()]).contains("cmdstat_"));
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(version_key("7.0.15") < version_key("7.2.4"));
        assert!(version_key("6.2.14") < version_key("7.0.0"));
        assert!(version_key("10.0.0") > version_key("9.9.9"));
    }
}
