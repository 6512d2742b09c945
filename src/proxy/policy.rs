//! The operator's command policy: commands denied or renamed in the proxy's
//! config (`[commands]` in conf/proxy.toml), as Redis's `rename-command` does
//! for one server.
//!
//! * `deny = ["flushall", "keys"]`: refused with the proxy's usual
//!   "not allowed through reborn proxy" error;
//! * `rename = { config = "xconfig" }`: the command answers only to its new
//!   name, and its old name is an unknown command.
//!
//! Commands refused by the proxy itself (SHUTDOWN, DEBUG, MIGRATE, REPLICAOF,
//! …) stay refused whatever the policy says. An empty policy costs one branch
//! per request. A name the policy does not know gets Redis's own error for an
//! unknown command ([`unknown_command`]), byte for byte, as clients and
//! Redis's tests match on it. Imports `command` and `libs::config`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::command::{self, Command, Kind, TRANSACTION};
use crate::libs::config::ConfigError;
use crate::libs::resp::{self, Request};

/// The `[commands]` table of the proxy config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Commands refused through this proxy (any case).
    pub deny: Vec<String>,
    /// Commands known only under another name: `old = "new"`.
    pub rename: BTreeMap<String, String>,
}

/// Longest name `command::lookup` reads.
const MAX_NAME: usize = 32;

impl CommandsConfig {
    /// Checks every name: denied and renamed commands must exist, new names
    /// must be new and distinct.
    ///
    /// # Errors
    /// The first bad entry, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        // A client whose MULTI is refused would see its queued writes run one
        // by one, and a retry apply them twice: the transaction commands stay.
        if let Some(name) = self
            .deny
            .iter()
            .chain(self.rename.keys())
            .find(|n| TRANSACTION.iter().any(|t| t.eq_ignore_ascii_case(n)))
        {
            return bad(format!(
                "commands: '{name}' cannot be denied or renamed (a refused transaction command would let its queued writes run one by one)"
            ));
        }
        for name in &self.deny {
            if command::lookup(name.as_bytes()).is_none() {
                return bad(format!("commands.deny: '{name}' is not a redis command"));
            }
        }
        let mut seen = HashMap::new();
        for (old, new) in &self.rename {
            if command::lookup(old.as_bytes()).is_none() {
                return bad(format!("commands.rename: '{old}' is not a redis command"));
            }
            if new.is_empty() || new.len() > MAX_NAME || !new.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(format!(
                    "commands.rename: '{new}' (for '{old}') must be 1 to {MAX_NAME} printable characters; use deny to disable a command"
                ));
            }
            if command::lookup(new.as_bytes()).is_some() {
                return bad(format!("commands.rename: '{new}' is already a redis command"));
            }
            if let Some(other) = seen.insert(new.to_ascii_lowercase(), old) {
                return bad(format!(
                    "commands.rename: '{other}' and '{old}' both renamed to '{new}'"
                ));
            }
        }
        Ok(())
    }
}

/// The policy in force, built once from a validated [`CommandsConfig`].
#[derive(Debug, Default)]
pub struct Policy {
    /// Table ids of denied commands.
    denied: Vec<usize>,
    /// New name (lower case) → the command.
    renamed: HashMap<String, Command>,
    /// Table ids of commands reachable only by their new name.
    hidden: Vec<usize>,
    /// Neither list has an entry: lookups go straight to the table.
    empty: bool,
}

impl Policy {
    /// The policy of `config`; entries that do not name a command are ignored
    /// (the config was validated at start).
    pub fn new(config: &CommandsConfig) -> Policy {
        let id = |n: &str| command::lookup(n.as_bytes()).map(|c| c.id);
        let renamed: HashMap<String, Command> = config
            .rename
            .iter()
            .filter_map(|(old, new)| Some((new.to_ascii_lowercase(), command::lookup(old.as_bytes())?)))
            .collect();
        Policy {
            denied: config.deny.iter().filter_map(|n| id(n)).collect(),
            hidden: renamed.values().map(|c| c.id).collect(),
            empty: config.deny.is_empty() && renamed.is_empty(),
            renamed,
        }
    }

    /// The command `name` means under this policy: `None` for unknown names
    /// (including a renamed command's old name); a denied command is `Refused`.
    #[inline]
    pub fn lookup(&self, name: &[u8]) -> Option<Command> {
        if self.empty {
            return command::lookup(name);
        }
        self.lookup_slow(name)
    }

    /// The request under its command's real name (backends know only the
    /// real names): borrowed as it came unless it came under a new name.
    #[inline]
    pub fn real_request<'a>(&self, req: &'a Request, cmd: Command) -> Cow<'a, Request> {
        if self.renamed.is_empty() {
            return Cow::Borrowed(req);
        }
        self.rewrite(req, cmd).map_or(Cow::Borrowed(req), Cow::Owned)
    }

    fn rewrite(&self, req: &Request, cmd: Command) -> Option<Request> {
        if req.name().eq_ignore_ascii_case(cmd.spec.name.as_bytes()) {
            return None;
        }
        let mut args = req.args.clone();
        *args.first_mut()? = Bytes::copy_from_slice(cmd.spec.name.as_bytes());
        let raw = resp::encode_array(&args);
        Some(Request { args, raw })
    }

    fn lookup_slow(&self, name: &[u8]) -> Option<Command> {
        let mut cmd = match command::lookup(name) {
            Some(c) if self.hidden.contains(&c.id) => return None,
            Some(c) => c,
            None => *self
                .renamed
                .get(&String::from_utf8_lossy(name).to_ascii_lowercase())?,
        };
        if self.denied.contains(&cmd.id) {
            cmd.kind = Kind::Refused;
        }
        Some(cmd)
    }
}

/// How much of the client's words Redis quotes in its unknown-command errors.
const QUOTED: usize = 128;

/// `arg` as C's `%.*s` prints it: up to a NUL byte, at most `max` bytes.
fn c_str(arg: &[u8], max: usize) -> &[u8] {
    let end = arg.iter().position(|&b| b == 0).unwrap_or(arg.len());
    &arg[..end.min(max)]
}

/// Redis 7's error for a command it does not know (`args`: name first),
/// byte for byte: `ERR unknown command 'foo', with args beginning with: 'a'
/// 'b' `, each argument followed by a space. The name is cut at 128 bytes;
/// arguments are quoted while the quoted text is under 128 bytes, each cut to
/// what is left of them. Like Redis's `%s`, a NUL ends a word.
pub fn unknown_command(args: &[Bytes]) -> Bytes {
    let mut quoted = Vec::new();
    for arg in args.iter().skip(1) {
        let Some(room) = QUOTED.checked_sub(quoted.len()).filter(|&r| r > 0) else {
            break;
        };
        quoted.push(b'\'');
        quoted.extend_from_slice(c_str(arg, room));
        quoted.extend_from_slice(b"' ");
    }
    let name = args.first().map_or(&b""[..], |a| &a[..]);
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(c_str(name, QUOTED));
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&quoted);
    resp::error_bytes(&msg)
}

/// Redis 7's error for a subcommand `sub` that the container command
/// `container` (as the client spelt it) does not have: `ERR unknown
/// subcommand 'foo'. Try CLIENT HELP.`
pub fn unknown_subcommand(container: &[u8], sub: &[u8]) -> Bytes {
    let mut msg = b"ERR unknown subcommand '".to_vec();
    msg.extend_from_slice(c_str(sub, QUOTED));
    msg.extend_from_slice(b"'. Try ");
    msg.extend(c_str(container, usize::MAX).iter().map(u8::to_ascii_uppercase));
    msg.extend_from_slice(b" HELP.");
    resp::error_bytes(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_commands_cannot_be_denied_or_renamed() {
        for cfg in [
            CommandsConfig {
                deny: vec!["MULTI".into()],
                ..CommandsConfig::default()
            },
            CommandsConfig {
                rename: [("exec".to_string(), "go".to_string())].into(),
                ..CommandsConfig::default()
            },
        ] {
            let e = cfg.validate().expect_err("refused");
            assert!(e.to_string().contains("cannot be denied or renamed"), "{e}");
        }
    }

    fn config(deny: &[&str], rename: &[(&str, &str)]) -> CommandsConfig {
        CommandsConfig {
            deny: deny.iter().map(|s| s.to_string()).collect(),
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn denied_commands_are_refused_and_renamed_ones_move() {
        let p = Policy::new(&config(&["FLUSHALL"], &[("config", "xconfig")]));
        assert_eq!(p.lookup(b"flushall").map(|c| c.kind), Some(Kind::Refused));
        assert_eq!(p.lookup(b"get").map(|c| c.kind), Some(Kind::Forward));
        assert!(p.lookup(b"config").is_none() && p.lookup(b"CONFIG").is_none());
        let xconfig = p.lookup(b"XConfig").expect("renamed");
        assert_eq!(xconfig.spec.name, "config");
        let req = Request {
            args: vec![Bytes::from_static(b"XConfig"), Bytes::from_static(b"GET")],
            raw: Bytes::new(),
        };
        let real = p.real_request(&req, xconfig);
        assert!(matches!(real, Cow::Owned(_)), "rewritten");
        assert_eq!(&real.raw[..], b"*2\r\n$6\r\nconfig\r\n$3\r\nGET\r\n");
        // Always-refused commands stay refused even renamed.
        let p = Policy::new(&config(&[], &[("shutdown", "stop")]));
        assert_eq!(p.lookup(b"stop").map(|c| c.kind), Some(Kind::Refused));
        assert_eq!(
            Policy::new(&CommandsConfig::default())
                .lookup(b"get")
                .map(|c| c.kind),
            Some(Kind::Forward)
        );
    }

    fn words(words: &[&[u8]]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::copy_from_slice(w)).collect()
    }

    /// Each expected reply was recorded from redis-server 7.0.15.
    #[test]
    fn unknown_commands_get_redis_own_error() {
        let x200 = [b'x'; 200];
        let (a100, b100) = ([b'a'; 100], [b'b'; 100]);
        let cases: Vec<(Vec<Bytes>, Vec<u8>)> = vec![
            (
                words(&[b"foo"]),
                b"-ERR unknown command 'foo', with args beginning with: \r\n".to_vec(),
            ),
            (
                words(&[b"foo", b"a", b"b"]),
                b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n".to_vec(),
            ),
            (
                words(&[b"foo", &x200]),
                [
                    &b"-ERR unknown command 'foo', with args beginning with: '"[..],
                    &x200[..128],
                    b"' \r\n",
                ]
                .concat(),
            ),
            (
                words(&[b"foo", &a100, &b100, b"c"]),
                [
                    &b"-ERR unknown command 'foo', with args beginning with: '"[..],
                    &a100,
                    b"' '",
                    &b100[..25],
                    b"' \r\n",
                ]
                .concat(),
            ),
            (
                words(&[b"f\0oo", b"a\0b", b"c\r\nd"]),
                b"-ERR unknown command 'f', with args beginning with: 'a' 'c  d' \r\n".to_vec(),
            ),
            (
                words(&[&x200]),
                [
                    &b"-ERR unknown command '"[..],
                    &x200[..128],
                    b"', with args beginning with: \r\n",
                ]
                .concat(),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(unknown_command(&args), want, "{}", String::from_utf8_lossy(&want));
        }
        let mut many = words(&[b"foo"]);
        many.extend(words(&[&b"ab"[..]; 50]));
        let want = format!(
            "-ERR unknown command 'foo', with args beginning with: {}\r\n",
            "'ab' ".repeat(26)
        );
        assert_eq!(unknown_command(&many), want.as_bytes());
        assert_eq!(
            unknown_subcommand(b"client", b"FOO"),
            &b"-ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n"[..]
        );
    }

    #[test]
    fn the_toml_shape_is_strict() {
        let c: CommandsConfig =
            toml::from_str("deny = [\"flushall\"]\nrename = { config = \"xconfig\" }").expect("parses");
        assert_eq!(c, config(&["flushall"], &[("config", "xconfig")]));
        assert!(toml::from_str::<CommandsConfig>("allow = []").is_err());
    }

    #[test]
    fn bad_entries_are_caught_at_start() {
        assert!(config(&["flushall"], &[("config", "xconfig")]).validate().is_ok());
        assert!(config(&["nosuch"], &[]).validate().is_err());
        assert!(config(&[], &[("nosuch", "x")]).validate().is_err());
        assert!(config(&[], &[("config", "get")]).validate().is_err());
        assert!(config(&[], &[("config", "")]).validate().is_err());
        assert!(config(&[], &[("config", "a b")]).validate().is_err());
        assert!(config(&[], &[("config", "x"), ("keys", "X")]).validate().is_err());
    }
}
