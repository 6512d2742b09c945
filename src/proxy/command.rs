//! Command classification: what the proxy does with each command, and where its
//! keys are.
//!
//! The facts about a command (arity, flags, key positions) come from Redis itself,
//! in `command_table.rs`. This module adds the proxy's policy on top:
//!
//! * **local**: answered by the proxy (PING, AUTH, SELECT, INFO, …);
//! * **refused**: unsafe behind a proxy (SHUTDOWN, MONITOR, REPLICAOF, …), with a
//!   clear error and the connection left open;
//! * **unsupported yet**: pub/sub, transactions, SCAN and cluster-wide commands,
//!   which need machinery a later release brings;
//! * **split**: MGET, MSET, DEL, UNLINK, EXISTS, TOUCH, split per backend and merged;
//! * **blocking**: run on a dedicated backend connection so they never stall a
//!   shared one;
//! * **forwarded**: everything else with keys, routed by the slot of its keys.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;

/// Command flag: the command may modify data.
pub const WRITE: u16 = 1;
/// Command flag: the command only reads.
pub const READONLY: u16 = 2;
/// Command flag: the command may block the connection.
pub const BLOCKING: u16 = 4;
/// Command flag: key positions depend on the arguments.
pub const MOVABLE: u16 = 8;

/// Where the key search of a key spec begins (Redis 7 `begin_search`).
#[derive(Debug, Clone, Copy)]
pub enum Begin {
    /// At a fixed argument index.
    Index(i16),
    /// After the first argument equal to the keyword, searching from `startfrom`
    /// (from the end when negative).
    Keyword(&'static str, i16),
    /// Keys the server itself cannot locate (SORT's BY/GET patterns).
    Unknown,
}

/// Which arguments after the beginning are keys (Redis 7 `find_keys`).
#[derive(Debug, Clone, Copy)]
pub enum Find {
    /// From the beginning up to `last` (relative; negative counts from the end),
    /// every `step`-th argument; `limit` > 1 keeps only the first 1/limit of them.
    Range { last: i16, step: u16, limit: u16 },
    /// The number of keys is at `idx` (relative); the keys start at `first`.
    KeyNum { idx: u16, first: u16, step: u16 },
    /// Not locatable.
    Unknown,
}

/// One Redis 7 key specification.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub begin: Begin,
    pub find: Find,
}

/// A command (or subcommand) as Redis describes it.
#[derive(Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: exact argument count when positive, minimum when negative.
    pub arity: i16,
    pub flags: u16,
    pub keys: &'static [KeySpec],
    /// Subcommands of container commands (OBJECT ENCODING, XINFO STREAM, …).
    pub subs: &'static [Spec],
}

/// What the proxy does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered by the proxy itself.
    Local,
    /// Never allowed through the proxy.
    Refused,
    /// Not supported by this release.
    Unsupported,
    /// Multi-key command split per backend and merged.
    Split(Merge),
    /// May block: runs on a dedicated backend connection.
    Blocking,
    /// Routed by the slot of its keys.
    Forward,
}

/// How the replies of a split command are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// MGET: values back in key order.
    Values,
    /// MSET: `+OK` if every part said OK.
    Ok,
    /// DEL, UNLINK, EXISTS, TOUCH: integers summed.
    Sum,
}

/// A command as the proxy sees it: its spec and its treatment.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    pub spec: &'static Spec,
    pub kind: Kind,
    /// Position in the command table; indexes per-command stats.
    pub id: usize,
}

/// Commands the proxy answers itself.
const LOCAL: &[&str] = &[
    "auth", "client", "command", "echo", "hello", "info", "ping", "quit", "select",
];

/// Commands that are unsafe or meaningless behind a proxy. Tested one by one.
pub const REFUSED: &[&str] = &[
    "acl",
    "asking",
    "bgrewriteaof",
    "bgsave",
    "cluster",
    "config",
    "debug",
    "failover",
    "lastsave",
    "latency",
    "migrate",
    "module",
    "monitor",
    "move",
    "pfdebug",
    "pfselftest",
    "psync",
    "readonly",
    "readwrite",
    "replconf",
    "replicaof",
    "reset",
    "restore-asking",
    "role",
    "save",
    "shutdown",
    "slaveof",
    "slowlog",
    "swapdb",
    "sync",
    "wait",
    "lolwut",
    "memory",
    "script",
    "function",
    "time",
];

/// Commands a later release will support (pub/sub, transactions, cluster-wide scans).
pub const UNSUPPORTED: &[&str] = &[
    "subscribe",
    "psubscribe",
    "unsubscribe",
    "punsubscribe",
    "publish",
    "pubsub",
    "ssubscribe",
    "sunsubscribe",
    "spublish",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "scan",
    "keys",
    "randomkey",
    "dbsize",
    "flushdb",
    "flushall",
];

fn classify(spec: &'static Spec) -> Kind {
    let name = spec.name;
    if LOCAL.contains(&name) {
        Kind::Local
    } else if REFUSED.contains(&name) {
        Kind::Refused
    } else if UNSUPPORTED.contains(&name) {
        Kind::Unsupported
    } else {
        match name {
            "mget" => Kind::Split(Merge::Values),
            "mset" => Kind::Split(Merge::Ok),
            "del" | "unlink" | "exists" | "touch" => Kind::Split(Merge::Sum),
            _ if spec.flags & BLOCKING != 0 => Kind::Blocking,
            _ => Kind::Forward,
        }
    }
}

fn table() -> &'static HashMap<&'static str, Command> {
    static MAP: OnceLock<HashMap<&'static str, Command>> = OnceLock::new();
    MAP.get_or_init(|| {
        super::command_table::TABLE
            .iter()
            .enumerate()
            .map(|(id, spec)| {
                (
                    spec.name,
                    Command {
                        spec,
                        kind: classify(spec),
                        id,
                    },
                )
            })
            .collect()
    })
}

/// Looks a command up by name, case-insensitively. `None` for unknown commands.
pub fn lookup(name: &[u8]) -> Option<Command> {
    // Names are short; lower-case on the stack to avoid an allocation per request.
    let mut buf = [0u8; 32];
    let lower = buf.get_mut(..name.len())?;
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let name = std::str::from_utf8(lower).ok()?;
    table().get(name).copied()
}

/// Every command in the table, for `COMMAND` replies.
pub fn all() -> impl Iterator<Item = &'static Spec> {
    super::command_table::TABLE.iter()
}

impl Spec {
    /// True when `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let a = self.arity;
        if a >= 0 {
            argc == a as usize
        } else {
            argc >= a.unsigned_abs() as usize
        }
    }

    /// The spec that applies to these arguments: the subcommand's for container
    /// commands that have one (OBJECT ENCODING key), else this one.
    pub fn resolve(&'static self, args: &[Bytes]) -> &'static Spec {
        if self.subs.is_empty() {
            return self;
        }
        args.get(1)
            .and_then(|sub| {
                self.subs
                    .iter()
                    .find(|s| s.name.as_bytes().eq_ignore_ascii_case(sub))
            })
            .unwrap_or(self)
    }

    /// Indices of the key arguments, following Redis 7's key specs. SORT's STORE
    /// destination, which Redis cannot describe, is found by keyword.
    pub fn key_indices(&self, args: &[Bytes]) -> Vec<usize> {
        let mut out = Vec::new();
        for ks in self.keys {
            collect_keys(ks, args, &mut out);
        }
        if matches!(self.name, "sort" | "sort_ro")
            && let Some(i) = keyword_pos(args, "STORE", 2)
            && i + 1 < args.len()
        {
            out.push(i + 1);
        }
        out
    }
}

/// Index of the first argument equal to `kw` (case-insensitive), searching from
/// `from` (from the end, backwards, when negative).
fn keyword_pos(args: &[Bytes], kw: &str, from: i16) -> Option<usize> {
    let n = args.len() as i64;
    let kw = kw.as_bytes();
    if from >= 0 {
        (from as usize..args.len()).find(|&i| args[i].eq_ignore_ascii_case(kw))
    } else {
        let start = n + i64::from(from);
        (1..=start.max(0) as usize)
            .rev()
            .find(|&i| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(kw)))
    }
}

fn collect_keys(ks: &KeySpec, args: &[Bytes], out: &mut Vec<usize>) {
    let n = args.len();
    let begin = match ks.begin {
        Begin::Index(i) if i > 0 => i as usize,
        Begin::Keyword(kw, from) => match keyword_pos(args, kw, from) {
            Some(i) => i + 1,
            None => return,
        },
        _ => return,
    };
    if begin >= n {
        return;
    }
    match ks.find {
        Find::Range { last, step, limit } => {
            let step = usize::from(step.max(1));
            let end = if last >= 0 {
                begin + last as usize
            } else {
                let from_end = last.unsigned_abs() as usize;
                let mut end = n.saturating_sub(from_end);
                if limit > 1 {
                    // e.g. XREAD STREAMS k1 k2 id1 id2: only the first half are keys.
                    let count = (end + 1 - begin) / usize::from(limit);
                    end = begin + count.saturating_sub(1);
                }
                end
            };
            let mut i = begin;
            while i <= end && i < n {
                out.push(i);
                i += step;
            }
        }
        Find::KeyNum { idx, first, step } => {
            let Some(count) = args
                .get(begin + usize::from(idx))
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return;
            };
            let step = usize::from(step.max(1));
            let mut i = begin + usize::from(first);
            for _ in 0..count {
                if i >= n {
                    break;
                }
                out.push(i);
                i += step;
            }
        }
        Find::Unknown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cmd: &str) -> Vec<String> {
        let args: Vec<Bytes> = cmd
            .split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        let c = lookup(&args[0]).expect("known command");
        let spec = c.spec.resolve(&args);
        spec.key_indices(&args)
            .into_iter()
            .map(|i| String::from_utf8_lossy(&args[i]).into_owned())
            .collect()
    }

    #[test]
    fn key_positions_follow_redis_key_specs() {
        assert_eq!(keys("GET a"), ["a"]);
        assert_eq!(keys("set a 1 EX 10"), ["a"]);
        assert_eq!(keys("MSET a 1 b 2 c 3"), ["a", "b", "c"]);
        assert_eq!(keys("MGET a b c"), ["a", "b", "c"]);
        assert_eq!(keys("BLPOP l1 l2 0"), ["l1", "l2"]);
        assert_eq!(keys("LMOVE src dst LEFT RIGHT"), ["src", "dst"]);
        assert_eq!(keys("EVAL script 2 k1 k2 a1"), ["k1", "k2"]);
        assert_eq!(keys("EVALSHA abc 0 x"), Vec::<String>::new());
        assert_eq!(keys("FCALL f 1 k a"), ["k"]);
        assert_eq!(keys("ZUNIONSTORE dst 2 s1 s2 WEIGHTS 1 2"), ["dst", "s1", "s2"]);
        assert_eq!(keys("BLMPOP 0 2 l1 l2 LEFT"), ["l1", "l2"]);
        assert_eq!(keys("XREAD COUNT 2 STREAMS s1 s2 0 0"), ["s1", "s2"]);
        assert_eq!(keys("XREADGROUP GROUP g c BLOCK 0 STREAMS s1 >"), ["s1"]);
        assert_eq!(keys("GEORADIUS g 1 2 3 m STORE dst"), ["g", "dst"]);
        assert_eq!(keys("SORT l LIMIT 0 5 STORE out"), ["l", "out"]);
        assert_eq!(keys("OBJECT ENCODING k"), ["k"]);
        assert_eq!(keys("XINFO STREAM s"), ["s"]);
        assert_eq!(keys("RENAME a b"), ["a", "b"]);
        assert_eq!(keys("SMOVE a b m"), ["a", "b"]);
    }

    #[test]
    fn classification() {
        let kind = |n: &str| lookup(n.as_bytes()).map(|c| c.kind);
        assert_eq!(kind("get"), Some(Kind::Forward));
        assert_eq!(kind("GET"), Some(Kind::Forward));
        assert_eq!(kind("mget"), Some(Kind::Split(Merge::Values)));
        assert_eq!(kind("MSET"), Some(Kind::Split(Merge::Ok)));
        assert_eq!(kind("unlink"), Some(Kind::Split(Merge::Sum)));
        assert_eq!(kind("blpop"), Some(Kind::Blocking));
        assert_eq!(kind("bzmpop"), Some(Kind::Blocking));
        assert_eq!(kind("xread"), Some(Kind::Blocking));
        assert_eq!(kind("ping"), Some(Kind::Local));
        assert_eq!(kind("subscribe"), Some(Kind::Unsupported));
        assert_eq!(kind("nosuchcommand"), None);
        assert_eq!(kind(&"x".repeat(100)), None);
    }

    #[test]
    fn every_denied_command_exists_and_is_refused() {
        // Codis once had deny-list entries that could never match (a full-width
        // comma, multi-word names). Every entry here must be a real command.
        for name in REFUSED {
            let c = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} is not a redis command"));
            assert_eq!(c.kind, Kind::Refused, "{name}");
        }
        for name in UNSUPPORTED {
            let c = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} is not a redis command"));
            assert_eq!(c.kind, Kind::Unsupported, "{name}");
        }
        for name in [
            "shutdown",
            "debug",
            "monitor",
            "sync",
            "psync",
            "replicaof",
            "cluster",
            "migrate",
        ] {
            assert_eq!(
                lookup(name.as_bytes()).map(|c| c.kind),
                Some(Kind::Refused),
                "{name}"
            );
        }
    }

    #[test]
    fn every_keyless_forwarded_command_is_known() {
        // A command the proxy forwards must have keys to route by; keyless ones
        // must be local, refused or unsupported.
        for spec in all() {
            let kind = classify(spec);
            if matches!(kind, Kind::Forward | Kind::Blocking | Kind::Split(_)) {
                let has_keys = !spec.keys.is_empty() || spec.subs.iter().any(|s| !s.keys.is_empty());
                assert!(
                    has_keys || spec.flags & MOVABLE != 0,
                    "{} is forwarded but has no keys",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn arity() {
        let get = lookup(b"get").expect("get").spec;
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let mset = lookup(b"mset").expect("mset").spec;
        assert!(mset.arity_ok(3) && mset.arity_ok(5) && !mset.arity_ok(2));
    }
}
