//! The `MIGRATE` command that moves keys between redis-servers, built in one
//! place for the proxy (migrate on access, as bytes) and the dashboard's migrator
//! (as a frame of the framed client).

use std::time::Duration;

use bytes::Bytes;

use super::resp;
use super::resp_client::{self, Frame};

/// `MIGRATE host port "" 0 <ms> [AUTH pw] REPLACE KEYS k…` towards `target`
/// (`host:port` or `[v6]:port`).
///
/// `REPLACE`: while a slot migrates the source copy is authoritative (every write
/// of a migrating key goes to the target only after the key left the source),
/// and a key may already be on the target from an attempt whose reply was lost.
pub fn command<K: AsRef<[u8]>>(target: &str, keys: &[K], auth: Option<&str>, timeout: Duration) -> Bytes {
    with_words(target, keys, (auth, timeout, false), |args| {
        resp::encode_array(args)
    })
}

/// The same command as a frame for the framed client
/// ([`resp_client`](super::resp_client)).
pub fn frame<K: AsRef<[u8]>>(target: &str, keys: &[K], auth: Option<&str>, timeout: Duration) -> Frame {
    with_words(target, keys, (auth, timeout, false), |args| {
        resp_client::cmd(args)
    })
}

/// [`frame`] with `COPY`: the source keeps its keys (`… COPY REPLACE KEYS k…`).
pub fn copy_frame<K: AsRef<[u8]>>(target: &str, keys: &[K], auth: Option<&str>, timeout: Duration) -> Frame {
    with_words(target, keys, (auth, timeout, true), |args| resp_client::cmd(args))
}

/// Hands the command's words to `f`.
fn with_words<K: AsRef<[u8]>, R>(
    target: &str,
    keys: &[K],
    (auth, timeout, copy): (Option<&str>, Duration, bool),
    f: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    let (host, port) = split_addr(target);
    // Redis reads a timeout of 0 as its default; never send 0.
    let ms = timeout.as_millis().max(1).to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 10);
    args.extend([
        b"MIGRATE".as_ref(),
        host.as_bytes(),
        port.as_bytes(),
        b"",
        b"0",
        ms.as_bytes(),
    ]);
    if let Some(pw) = auth {
        args.extend([b"AUTH".as_ref(), pw.as_bytes()]);
    }
    if copy {
        args.push(b"COPY");
    }
    args.extend([b"REPLACE".as_ref(), b"KEYS"]);
    args.extend(keys.iter().map(|k| k.as_ref()));
    f(&args)
}

/// `host:port` → (`host`, `port`); brackets of `[v6]:port` are dropped.
pub fn split_addr(addr: &str) -> (&str, &str) {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "6379"));
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_shape() {
        let cmd = command("10.0.0.1:6380", &["k1", "k2"], Some("pw"), Duration::from_secs(5));
        let mut buf = bytes::BytesMut::from(&cmd[..]);
        let parsed = resp::parse_request(&mut buf, &resp::Limits::default())
            .expect("valid")
            .expect("complete");
        let args: Vec<&[u8]> = parsed.args.iter().map(|a| a.as_ref()).collect();
        let want: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"10.0.0.1",
            b"6380",
            b"",
            b"0",
            b"5000",
            b"AUTH",
            b"pw",
            b"REPLACE",
            b"KEYS",
            b"k1",
            b"k2",
        ];
        assert_eq!(args, want);
        let cmd = command("[::1]:7000", &["k"], None, Duration::ZERO);
        assert!(cmd.windows(5).any(|w| w == b"\r\n::1"), "brackets dropped");
        assert!(cmd.windows(6).any(|w| w == b"$1\r\n1\r"), "0 ms becomes 1 ms");
        let framed = frame("10.0.0.1:6380", &["k1", "k2"], Some("pw"), Duration::from_secs(5));
        assert_eq!(framed, resp_client::cmd(&want), "the frame has the same words");
        let copied = copy_frame("10.0.0.1:6380", &["k1", "k2"], Some("pw"), Duration::from_secs(5));
        let mut with_copy = want.clone();
        with_copy.insert(8, b"COPY");
        assert_eq!(copied, resp_client::cmd(&with_copy));
    }
}
