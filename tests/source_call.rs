//! The proxy's source call (`reborn::proxy::source_call`) against a real
//! redis-server: a request wrapped in the script gets byte for byte the reply
//! the bare request gets, when the server holds its keys; and the server says
//! so when it holds none or only some of them, without running anything,
//! naming the keys a removal left a tombstone for (`libs::tombstone`).

mod common;

use bytes::{Bytes, BytesMut};
use reborn::libs::resp;
use reborn::proxy::source_call::{self, Answer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bare RESP connection that returns raw reply frames.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, cmd: &[u8]) -> Bytes {
        self.stream.write_all(cmd).await.expect("write");
        loop {
            if let Some(len) = resp::reply_len(&self.buf).expect("valid reply") {
                return self.buf.split_to(len).freeze();
            }
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "server closed the connection");
        }
    }

    async fn call(&mut self, words: &[&str]) -> Bytes {
        self.send(&resp::encode_array(words)).await
    }
}

/// The same data set on a server.
async fn fill(c: &mut Raw) {
    for cmd in [
        &["SET", "s", "v"][..],
        &["SET", "n", "41"],
        // An absolute expiry, the same on both servers (a relative one
        // would differ by the milliseconds between the two fills).
        &["PEXPIREAT", "n", "4102444800000"],
        &["HSET", "h", "f1", "a", "f2", "b"],
        &["RPUSH", "l", "x", "y", "z"],
        &["ZADD", "z", "1.5", "a", "2", "b"],
        &["SADD", "set", "m1", "m2", "m3"],
        &["XADD", "st", "1-1", "f", "v"],
        &["SET", "{t}a", "1"],
        &["SET", "{t}b", "2"],
    ] {
        let reply = c.call(cmd).await;
        assert!(!resp::is_error(&reply), "{cmd:?}: {reply:?}");
    }
}

fn words(cmd: &[&str]) -> Vec<Bytes> {
    cmd.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
}

/// The source call of `cmd` (keys `keys`), through the script the proxy
/// picks for it: [`source_call::WRITES`] for a command that may write.
fn call_of(cmd: &[&str], keys: &[&str]) -> Option<source_call::ScriptCall> {
    let writes = reborn::proxy::command::named_writes(cmd[0].as_bytes());
    source_call::command(&words(cmd), &words(keys), writes)
}

#[tokio::test]
async fn wrapped_requests_get_the_replies_of_bare_ones() {
    let (a, b) = (common::redis(), common::redis());
    let (mut bare, mut wrapped) = (Raw::connect(&a.addr()).await, Raw::connect(&b.addr()).await);
    fill(&mut bare).await;
    fill(&mut wrapped).await;

    // Neither script is cached yet: EVALSHA says so, and one EVAL caches it
    // under the very SHA the proxy sends.
    for (cmd, script) in [
        (&["GET", "s"][..], source_call::READS),
        (&["SET", "s", "v"], source_call::WRITES),
    ] {
        let probe = call_of(cmd, &["s"]).expect("wrapped");
        assert_eq!(probe.script(), script, "{cmd:?}");
        assert!(source_call::is_noscript(&wrapped.send(&probe.evalsha()).await));
        let cached = ["SCRIPT", "EXISTS", script.sha];
        assert_eq!(wrapped.call(&cached).await.as_ref(), b"*1\r\n:0\r\n");
        let want = bare.call(cmd).await;
        assert_eq!(
            source_call::answer(wrapped.send(&probe.eval()).await),
            Answer::Served(want)
        );
        assert_eq!(wrapped.call(&cached).await.as_ref(), b"*1\r\n:1\r\n", "{cmd:?}");
    }

    // (request, its keys), run in this order on both servers: reads, writes,
    // the command's own errors, replies of every RESP2 type.
    let cases: &[(&[&str], &[&str])] = &[
        (&["GET", "s"], &["s"]),
        (&["SET", "s", "w"], &["s"]),
        (&["GET", "s"], &["s"]),
        (&["SET", "s", "x", "GET"], &["s"]),
        (&["TYPE", "h"], &["h"]),
        (&["TTL", "s"], &["s"]),
        (&["PEXPIRETIME", "n"], &["n"]),
        (&["HGETALL", "h"], &["h"]),
        (&["HMGET", "h", "f1", "nope", "f2"], &["h"]),
        (&["HSET", "h", "f3", "c"], &["h"]),
        (&["LRANGE", "l", "0", "-1"], &["l"]),
        (&["LPOP", "l"], &["l"]),
        (&["LPOS", "l", "nope"], &["l"]),
        (&["ZRANGE", "z", "0", "-1", "WITHSCORES"], &["z"]),
        (&["ZSCORE", "z", "a"], &["z"]),
        (&["ZINCRBY", "z", "0.25", "a"], &["z"]),
        (&["SISMEMBER", "set", "m2"], &["set"]),
        (&["XRANGE", "st", "-", "+"], &["st"]),
        (&["STRLEN", "s"], &["s"]),
        (&["LPUSH", "s", "oops"], &["s"]),
        (&["HGET", "s", "f"], &["s"]),
        (&["MGET", "{t}a", "{t}b"], &["{t}a", "{t}b"]),
        (&["SREM", "set", "m1"], &["set"]),
        (&["EXPIRE", "{t}a", "100"], &["{t}a"]),
    ];
    for &(cmd, keys) in cases {
        let want = bare.call(cmd).await;
        let call = call_of(cmd, keys).expect("wrapped");
        let got = wrapped.send(&call.evalsha()).await;
        assert_eq!(
            source_call::answer(got),
            Answer::Served(want.clone()),
            "{cmd:?}: bare {want:?}"
        );
    }

    // A command that removes keys says which (indices into its keys), with
    // the reply the bare command gets.
    let removing: &[(&[&str], &[&str], &[usize])] = &[
        (&["DEL", "{t}a", "{t}b"], &["{t}a", "{t}b"], &[0, 1]),
        (&["GETDEL", "s"], &["s"], &[0]),
        (&["SREM", "set", "m2", "m3"], &["set"], &[0]),
        (&["LTRIM", "l", "1", "0"], &["l"], &[0]),
        (&["EXPIRE", "z", "-1"], &["z"], &[0]),
    ];
    for &(cmd, keys, removed) in removing {
        let want = bare.call(cmd).await;
        let call = call_of(cmd, keys).expect("wrapped");
        let got = wrapped.send(&call.evalsha()).await;
        assert_eq!(
            source_call::answer(got),
            Answer::ServedRemoving(want.clone(), removed.to_vec()),
            "{cmd:?}: bare {want:?}"
        );
    }

    // Each key removed has a tombstone now, in database 1, for 30 s; the
    // data set and every other key are as the bare server has them.
    for key in ["{t}a", "{t}b", "s", "set", "l", "z"] {
        let pttl = wrapped
            .call(&[
                "EVAL",
                "redis.call('SELECT', 1) return redis.call('PTTL', KEYS[1])",
                "1",
                key,
            ])
            .await;
        let ms = resp::integer(&pttl).unwrap_or(-9);
        assert!(
            ms > 0 && ms as u64 <= reborn::libs::tombstone::TTL_MS,
            "{key}: {pttl:?}"
        );
    }
    let tombstones = wrapped
        .call(&["EVAL", "redis.call('SELECT', 1) return redis.call('DBSIZE')", "0"])
        .await;
    assert_eq!(tombstones.as_ref(), b":6\r\n", "one per key removed, none other");
    assert_eq!(wrapped.call(&["DBSIZE"]).await, bare.call(&["DBSIZE"]).await);

    // Keys the server does not hold: nothing runs, and the answer says so,
    // naming those with a tombstone (0-based), for reads and writes alike.
    let gone = call_of(&["SET", "s", "new"], &["s"]).expect("wrapped");
    assert_eq!(wrapped.call(&["EXISTS", "s"]).await.as_ref(), b":0\r\n");
    assert_eq!(
        source_call::answer(wrapped.send(&gone.evalsha()).await),
        Answer::NoKeyHere(vec![0])
    );
    let read = call_of(&["MGET", "{t}a", "never", "{t}b"], &["{t}a", "never", "{t}b"]).expect("wrapped");
    assert_eq!(
        source_call::answer(wrapped.send(&read.evalsha()).await),
        Answer::NoKeyHere(vec![0, 2])
    );
    let never = call_of(&["GET", "never"], &["never"]).expect("wrapped");
    assert_eq!(
        source_call::answer(wrapped.send(&never.evalsha()).await),
        Answer::NoKeyHere(vec![])
    );
    // Some keys here: the request moves them, and that move looks for
    // tombstones itself (`migrate::move_keys`), so the answer names none.
    for (cmd, keys) in [
        (&["MSET", "{u}a", "1", "h", "2"][..], &["{u}a", "h"][..]),
        (&["MSET", "{t}a", "1", "h", "2"], &["{t}a", "h"]),
    ] {
        let some = call_of(cmd, keys).expect("wrapped");
        assert_eq!(
            source_call::answer(wrapped.send(&some.evalsha()).await),
            Answer::Classic,
            "{cmd:?}"
        );
    }
    assert_eq!(
        wrapped.call(&["EXISTS", "s", "{u}a", "{t}a"]).await.as_ref(),
        b":0\r\n"
    );
    assert_eq!(wrapped.call(&["HGET", "h", "f1"]).await.as_ref(), b"$1\r\na\r\n");

    // Commands whose replies Lua would change keep the classic path.
    assert!(call_of(&["INCRBY", "n", "1"], &["n"]).is_none());
}

/// A server with a single database has no room for tombstones: a removal is
/// served and reported as on any other, and a gone key is reported without
/// one, by a source call and by the look behind a move.
#[tokio::test]
async fn a_server_with_one_database_serves_removals_without_tombstones() {
    let server = common::redis_one_database();
    let addr = server.addr();
    let mut c = Raw::connect(&addr).await;
    assert_eq!(c.call(&["SET", "k", "v"]).await.as_ref(), b"+OK\r\n");
    let del = call_of(&["DEL", "k"], &["k"]).expect("wrapped");
    assert_eq!(
        source_call::answer(c.send(&del.eval()).await),
        Answer::ServedRemoving(Bytes::from_static(b":1\r\n"), vec![0])
    );
    let get = call_of(&["GET", "k"], &["k"]).expect("wrapped");
    assert_eq!(
        source_call::answer(c.send(&get.eval()).await),
        Answer::NoKeyHere(vec![])
    );
    let set = call_of(&["SET", "k", "w"], &["k"]).expect("wrapped");
    assert_eq!(
        source_call::answer(c.send(&set.eval()).await),
        Answer::NoKeyHere(vec![])
    );
    // The look a move on access sends answers an empty list, not an error.
    let find = c.send(&reborn::libs::tombstone::find(&["k"])).await;
    assert_eq!(find.as_ref(), b"*0\r\n");
}
