//! Scripts declared with no keys (`EVAL script 0`, `FCALL f 0`): where they
//! may run.
//!
//! A script's declared keys choose the group it runs on. With none, any group
//! could be asked, and a script that reads or writes a key anyway would act on
//! whichever group that is: it would silently miss data, or create a key on a
//! group that does not own its slot, where no client can find it again. So the
//! proxy runs a keyless script only when its text shows it cannot reach the
//! data at all, and refuses every other one with an error that says to
//! declare the keys.
//!
//! Only `EVAL`/`EVAL_RO` carry their text; `EVALSHA` and `FCALL` with no keys
//! are refused. A text is data-free when every `redis`/`server` in it is
//! followed by `.` and a function that touches no key ([`SAFE_CALLS`]), and
//! it names nothing that could reach the `redis` table indirectly
//! ([`REACHES_GLOBALS`]). The check is textual, so it errs on the side of
//! refusing (a string `"server"` inside the script is refused too).
//!
//! Imports nothing from the crate.

/// `redis.`/`server.` members that touch no key.
pub const SAFE_CALLS: &[&str] = &[
    "status_reply",
    "error_reply",
    "sha1hex",
    "log",
    "LOG_",
    "setresp",
    "set_repl",
    "REPL_",
    "replicate_commands",
    "breakpoint",
    "debug",
    "REDIS_VERSION",
];

/// Names through which Lua code can reach a global table by a computed name.
pub const REACHES_GLOBALS: &[&str] = &[
    "_G", "fenv", "load", "debug", "rawget", "require", "module", "dofile",
];

/// True if `script` cannot call a Redis command (see the module docs).
pub fn is_data_free(script: &[u8]) -> bool {
    let text = String::from_utf8_lossy(script);
    for table in ["redis", "server"] {
        for (at, _) in text.match_indices(table) {
            let rest = &text[at + table.len()..];
            let Some(member) = rest.strip_prefix('.') else {
                return false;
            };
            if !SAFE_CALLS.iter().any(|s| member.starts_with(s)) {
                return false;
            }
        }
    }
    // `redis.debug` is fine but `debug.` (Lua's library) is not: look for the
    // other names outside the safe `redis.` members.
    let stripped = SAFE_CALLS.iter().fold(text.to_string(), |t, s| {
        t.replace(&format!("redis.{s}"), "")
            .replace(&format!("server.{s}"), "")
    });
    !REACHES_GLOBALS.iter().any(|n| stripped.contains(n))
}

/// The error for a keyless script the proxy will not run.
pub fn refusal(cmd: &str) -> String {
    format!(
        "ERR {cmd} with numkeys 0 is refused by reborn proxy: a script runs on the group of its keys, so declare every key it touches (EVAL of a script that calls no redis command may use 0)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_that_cannot_touch_data_are_recognised() {
        for ok in [
            "return 1",
            "return {ARGV[1], ARGV[2]}",
            "return redis.status_reply('fine')",
            "return redis.sha1hex(ARGV[1])",
            "redis.log(redis.LOG_WARNING, 'x') return 1",
            "return redis.REDIS_VERSION",
        ] {
            assert!(is_data_free(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "return redis.call('get', 'foo')",
            "return redis.pcall('set', 'foo', 1)",
            "return server.call('get', 'foo')",
            "local r = redis return r.call('get', 'x')",
            "return redis['call']('get', 'x')",
            "return _G['red'..'is'].call('get', 'x')",
            "return getfenv(1).redis",
            "return loadstring('return 1')()",
            "return debug.getregistry()",
            "return redis.sha1hex('x') .. redis.call('get', 'x')",
        ] {
            assert!(!is_data_free(bad.as_bytes()), "{bad}");
        }
    }
}
