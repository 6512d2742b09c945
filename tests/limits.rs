//! One client can never hurt another (issue 10, part 4), with real sockets: a
//! proxy child process under a small open-file limit refuses the clients past
//! it with an error instead of leaving them hanging in the accept queue; a
//! client that never reads its replies is held back (and past
//! `client_output_limit` disconnected) while another client of the same group
//! keeps its latency, and the proxy's memory stays bounded.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ProxyProcess, keys_in};
use common::{RawConn, Resp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_the_fd_limit_get_an_error_not_a_hang() {
    let c = Cluster::start().await;
    // 128 descriptors: the proxy keeps half for itself, so 64 clients fit.
    let (_child, id, _dir) = c
        .proxy_process_with_fd_limit(Duration::from_secs(2), Some(128))
        .await;
    let mut served = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100 {
        let mut s = TcpStream::connect(&id).await.expect("connect");
        s.write_all(b"PING\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("client {i} got no answer: it hangs"))
            .unwrap_or(0);
        match &buf[..n] {
            b"+PONG\r\n" => {
                ok += 1;
                served.push(s); // kept open: it holds its slot
            }
            b"-ERR max number of clients reached\r\n" => refused += 1,
            other => panic!("client {i}: {:?}", String::from_utf8_lossy(other)),
        }
    }
    assert_eq!(ok, 64, "clients served under 128 descriptors");
    assert_eq!(refused, 36);
    // Those served still are.
    let s = &mut served[0];
    s.write_all(b"PING\r\n").await.expect("write");
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.expect("pong");
    assert_eq!(&buf, b"+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auths_slow_down_and_then_close_the_connection() {
    let c = Cluster::start().await;
    let proxy = c.proxy_with(|cfg| cfg.auth = "secret".into()).await;

    // A typo costs nothing; the right password still works and starts over.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"AUTH typo\r\nAUTH secret\r\nPING\r\n")
        .await
        .expect("write");
    let want = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n+PONG\r\n";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
        .await
        .expect("answered at once")
        .expect("read");
    assert_eq!(got, want);

    // 20,000 guesses pipelined: ten are answered, slower and slower, then
    // the connection is closed.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let started = std::time::Instant::now();
    s.write_all(&b"AUTH guess\r\n".repeat(20_000))
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("-WRONGPASS").count(), 9, "{text}");
    assert!(
        text.ends_with("-ERR too many failed AUTH attempts, closing the connection\r\n"),
        "{text}"
    );
    // 100 ms doubling to 1 s after each failure but the first: 5.5 s.
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Sends `AUTH password` on a new connection from address `from` and reads
/// the answer for up to `wait`: the reply ("" if none came) and how long it
/// took.
async fn guess(
    proxy: std::net::SocketAddr,
    from: &str,
    password: &str,
    wait: Duration,
) -> (String, Duration) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind");
    let mut s = socket.connect(proxy).await.expect("connect");
    let started = std::time::Instant::now();
    s.write_all(format!("AUTH {password}\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 256];
    let reply = match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    };
    (reply, started.elapsed())
}

/// The per-connection throttle does not see a guesser that reconnects
/// after every guess (2,182 guesses a second before), or guesses on many
/// connections at once: per address, attempts take slots 100 ms doubling to
/// 1 s apart, and those that would wait more than 10 s are refused unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_one_address_are_spaced_whatever_the_connections() {
    let c = Cluster::start().await;
    let proxy = c.proxy_with(|cfg| cfg.auth = "secret".into()).await;
    let started = std::time::Instant::now();
    for _ in 0..7 {
        let (reply, _) = guess(proxy, "127.0.0.1", "guess", Duration::from_secs(5)).await;
        assert!(reply.starts_with("-WRONGPASS"), "{reply:?}");
    }
    // Free, free, then 0.1 + 0.2 + 0.4 + 0.8 + 1 s.
    let seq = started.elapsed();
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
    // Another address is not slowed.
    let (reply, took) = guess(proxy, "127.0.0.2", "secret", Duration::from_secs(5)).await;
    assert_eq!(reply, "+OK\r\n");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Sixteen connections at once, with the right password even: one answer
    // a second, and the attempts past ten seconds of slots refused at once.
    let attempts: Vec<_> = (0..16)
        .map(|_| tokio::spawn(guess(proxy, "127.0.0.1", "secret", Duration::from_millis(2500))))
        .collect();
    let mut answered = 0;
    let mut refused = 0;
    for a in attempts {
        let (reply, took) = a.await.expect("join");
        if reply == "+OK\r\n" {
            answered += 1;
        } else if reply.contains("too many failed AUTH attempts from this address") {
            assert!(took < Duration::from_millis(500), "refused after {took:?}");
            refused += 1;
        } else {
            assert_eq!(reply, "", "neither answered nor refused");
        }
    }
    eprintln!(
        "7 guesses reconnecting: {seq:?}; 16 at once: {answered} answered within 2.5 s, {refused} refused"
    );
    assert!(answered <= 3, "{answered} answered within 2.5 s");
    assert!(refused >= 5, "{refused} refused");
}

/// Before its password, a client gets Redis 7's limits for strangers (10
/// arguments, 16 KiB each): without them one unauthenticated connection made
/// the proxy buffer a 300 MB bulk string, and a few such took it to 600 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_password_cannot_make_the_proxy_buffer_much() {
    let c = Cluster::start().await;
    let proxy = c.proxy_with(|cfg| cfg.auth = "secret".into()).await;
    let answer = async |bytes: &[u8]| {
        let mut s = TcpStream::connect(proxy).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .expect("answered and closed")
            .expect("read");
        String::from_utf8_lossy(&all).into_owned()
    };
    let big = answer(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$314572800\r\n").await;
    assert_eq!(big, "-ERR Protocol error: unauthenticated bulk length\r\n");
    let many = answer(b"*11\r\n").await;
    assert_eq!(many, "-ERR Protocol error: unauthenticated multibulk length\r\n");
    // With the password, the proxy's own limits again: a 1 MB value passes.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let value = vec![b'v'; 1 << 20];
    let mut req = b"AUTH secret\r\n".to_vec();
    req.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n$4\r\n{{g}}v\r\n${}\r\n", value.len()).as_bytes());
    req.extend_from_slice(&value);
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).await.expect("write");
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("answered")
        .expect("read");
    assert_eq!(&got, b"+OK\r\n+OK\r\n");
}

/// With `auth` set, a connection that never gives the password is closed
/// after `auth_timeout`, whether it stays silent or keeps sending commands
/// (each gets `NOAUTH`): strangers cannot hold the proxy's `max_clients`
/// slots for ever. A client that authenticated stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_authenticates_is_closed_after_auth_timeout() {
    let c = Cluster::start().await;
    let proxy = c
        .proxy_with(|cfg| {
            cfg.auth = "secret".into();
            cfg.auth_timeout = Duration::from_millis(600);
        })
        .await;
    let started = std::time::Instant::now();
    let silent = TcpStream::connect(proxy).await.expect("connect");
    let mut chatty = TcpStream::connect(proxy).await.expect("connect");
    let mut member = TcpStream::connect(proxy).await.expect("connect");
    member.write_all(b"AUTH secret\r\n").await.expect("write");
    let mut ok = [0u8; 5];
    member.read_exact(&mut ok).await.expect("read");
    assert_eq!(&ok, b"+OK\r\n");

    // The chatty stranger gets NOAUTH for every PING, then the close.
    let pinging = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            if chatty.write_all(b"PING\r\n").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), chatty.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("neither answered nor closed"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
    });
    let closed_after = async |mut s: TcpStream| {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        (rest, started.elapsed())
    };
    let (rest, silent_took) = closed_after(silent).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let (noauths, chatty_took) = pinging.await.expect("join");
    assert!(noauths.starts_with("-NOAUTH"), "{noauths:?}");
    assert!(!noauths.contains("PONG"), "{noauths:?}");
    for took in [silent_took, chatty_took] {
        assert!(took >= Duration::from_millis(600), "closed after {took:?}");
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
    }

    // The client that gave the password is still served.
    member.write_all(b"PING\r\n").await.expect("write");
    let mut pong = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(2), member.read_exact(&mut pong))
        .await
        .expect("answered")
        .expect("read");
    assert_eq!(&pong, b"+PONG\r\n");
}

/// A script that runs long holds its group's shared backend connection. On
/// one Redis, once a script has run for `busy-reply-threshold`, every other
/// client gets `-BUSY` at once; through the proxy they queued behind it, and
/// a client that retried its timed-out script ran it again (an 8 s script
/// ran 11 times under redis-py's defaults). Now, once the connection has
/// been silent for `busy_reply_threshold` with a script out, other clients'
/// new requests for that server get `-BUSY`; the script's own client and
/// what was queued before still run after it, and other groups never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_runs_long_gets_other_clients_busy_not_a_queue() {
    let c = Cluster::start().await;
    let proxy = c
        .proxy_with(|cfg| cfg.busy_reply_threshold = Duration::from_millis(800))
        .await
        .to_string();
    let runs = keys_in(1, "runs", 1).remove(0);
    let same = keys_in(1, "k", 1).remove(0);
    let other = keys_in(2, "k", 1).remove(0);
    let script = format!(
        "redis.call('INCR', KEYS[1]) {} return 7",
        common::spin_lua(Duration::from_millis(3000))
    );
    let eval = common::cmd(&["EVAL", script.as_str(), "1", runs.as_str()]);

    let started = std::time::Instant::now();
    let mut owner = RawConn::connect(&proxy).await;
    owner.send(&eval).await;
    // Sent before the threshold: it queues, as before.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut early = RawConn::connect(&proxy).await;
    early.send(&common::cmd(&["GET", same.as_str()])).await;

    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(started.elapsed())).await;
    let busy = |r: &Resp| matches!(r, Resp::Error(e) if e.starts_with("BUSY Redis is busy running a script"));
    let mut late = RawConn::connect(&proxy).await;
    let asked = std::time::Instant::now();
    let got = late.call(&["GET", same.as_str()]).await;
    assert!(busy(&got), "{got:?}");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    // A retry of the script is refused the same way: it does not run twice.
    let mut retry = RawConn::connect(&proxy).await;
    retry.send(&eval).await;
    let got = retry.read_reply().await;
    assert!(busy(&got), "{got:?}");
    // Both are counted.
    let topo = reborn::topo::watcher::load(&c.store).await.expect("topology");
    let admin = topo.proxies[&proxy].admin_addr.parse().expect("admin address");
    let (_, body) = common::http::request(admin, "GET", "/metrics", Vec::new()).await;
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.lines().any(|l| l.ends_with("busy_replies_total 2")),
        "{metrics}"
    );
    // The other group is not held.
    let asked = std::time::Instant::now();
    assert_eq!(late.call(&["GET", other.as_str()]).await, Resp::Bulk(None));
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    // The script's own client queues behind it, as on its own connection.
    owner.send(&common::cmd(&["GET", same.as_str()])).await;
    // The script still runs once that GET is sent: another client still
    // gets BUSY. (Asked, not timed: a check that the reply came 3 s after
    // the start failed once, when the script still spun by the plain
    // difference of two `TIME`s, the wall clock; see `common::spin_lua`.)
    let got = late.call(&["GET", same.as_str()]).await;
    assert!(busy(&got), "the script ended too soon to tell: {got:?}");

    assert_eq!(owner.read_reply().await, Resp::Int(7));
    assert_eq!(owner.read_reply().await, Resp::Bulk(None));
    assert_eq!(early.read_reply().await, Resp::Bulk(None));
    // Once it ended, everyone is served again, and it ran once.
    assert_eq!(late.call(&["GET", same.as_str()]).await, Resp::Bulk(None));
    assert_eq!(
        late.call(&["GET", runs.as_str()]).await,
        Resp::Bulk(Some(b"1".to_vec()))
    );
}

/// The same for RESP3 clients (`HELLO 3`), whose requests travel on the
/// proxy's RESP3 connections: a script from one of them makes the others
/// get `-BUSY` too, and its retry does not run it twice. Redis's own
/// threshold is set below the proxy's here: the `-BUSY` it then gives on the
/// proxy's other connection (RESP2) is not taken for a sign of life (it
/// was, in a walk-through on `reborn up`, where both thresholds are 5 s and
/// the push roles' requests met Redis's `BUSY`: after it, clients queued
/// behind the script again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_script_that_runs_long_gets_other_clients_busy() {
    let c = Cluster::start().await;
    let proxy = c
        .proxy_with(|cfg| cfg.busy_reply_threshold = Duration::from_millis(800))
        .await
        .to_string();
    let mut master = RawConn::connect(&c.masters[0].addr()).await;
    let set = master
        .call(&["CONFIG", "SET", "busy-reply-threshold", "300"])
        .await;
    assert_eq!(set, Resp::Simple("OK".into()));
    let runs = keys_in(1, "runs", 1).remove(0);
    let same = keys_in(1, "k", 1).remove(0);
    let script = format!(
        "redis.call('INCR', KEYS[1]) {} return 7",
        common::spin_lua(Duration::from_millis(2500))
    );
    let eval = common::cmd(&["EVAL", script.as_str(), "1", runs.as_str()]);
    let resp3 = async || {
        let mut conn = RawConn::connect(&proxy).await;
        let hello = conn.call_raw(&["HELLO", "3"]).await;
        assert!(hello.starts_with(b"%"), "{:?}", String::from_utf8_lossy(&hello));
        conn
    };
    let started = std::time::Instant::now();
    let mut owner = resp3().await;
    owner.send(&eval).await;
    // Past Redis's threshold, before the proxy's: Redis answers this itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut early = RawConn::connect(&proxy).await;
    let got = early.call(&["GET", same.as_str()]).await;
    assert!(matches!(&got, Resp::Error(e) if e.starts_with("BUSY")), "{got:?}");
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(started.elapsed())).await;
    for (mut conn, request) in [
        (resp3().await, common::cmd(&["GET", same.as_str()])),
        (resp3().await, eval.clone()),
        (
            RawConn::connect(&proxy).await,
            common::cmd(&["GET", same.as_str()]),
        ),
    ] {
        conn.send(&request).await;
        let got = String::from_utf8_lossy(&conn.read_frame().await).into_owned();
        assert!(got.starts_with("-BUSY Redis is busy running a script"), "{got:?}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(2200),
        "the script ended too soon to tell"
    );
    assert_eq!(owner.read_frame().await, b":7\r\n");
    let mut after = RawConn::connect(&proxy).await;
    assert_eq!(
        after.call(&["GET", runs.as_str()]).await,
        Resp::Bulk(Some(b"1".to_vec()))
    );
}

/// A `SCRIPT KILL` sent early, before Redis's `busy-reply-threshold`, is
/// taken once the server reaches it and kills the script (with the
/// handshake's `PING`, it failed after 1 s saying the backend was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_script_kill_waits_for_the_server_and_kills() {
    let c = Cluster::start().await;
    let proxy = c.proxy().await.to_string();
    let mut master = RawConn::connect(&c.masters[0].addr()).await;
    let set = master
        .call(&["CONFIG", "SET", "busy-reply-threshold", "1500"])
        .await;
    assert_eq!(set, Resp::Simple("OK".into()));
    let key = keys_in(1, "spin", 1).remove(0);
    let mut owner = RawConn::connect(&proxy).await;
    owner
        .send(&common::busy_eval(Duration::from_secs(20), &key))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let mut killer = RawConn::connect(&proxy).await;
    assert_eq!(killer.call(&["SCRIPT", "KILL"]).await, Resp::Simple("OK".into()));
    let got = owner.read_reply().await;
    assert!(matches!(&got, Resp::Error(e) if e.contains("killed")), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A script counts only until its reply is delivered or dropped: after
/// 10,000 fast scripts read and up to 10,000 more from a client that hung up
/// without reading, a quiet server is not taken for a busy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_that_ended_never_leave_a_server_busy() {
    let c = Cluster::start().await;
    let proxy = c
        .proxy_with(|cfg| cfg.busy_reply_threshold = Duration::from_millis(300))
        .await
        .to_string();
    let key = keys_in(1, "n", 1).remove(0);
    let eval = common::cmd(&["EVAL", "return redis.call('INCR', KEYS[1])", "1", key.as_str()]);
    let mut reader = RawConn::connect(&proxy).await;
    reader.send(&eval.repeat(10_000)).await;
    for _ in 0..10_000 {
        assert!(matches!(reader.read_reply().await, Resp::Int(_)));
    }
    let mut quitter = TcpStream::connect(&proxy).await.expect("connect");
    quitter.write_all(&eval.repeat(10_000)).await.expect("write");
    drop(quitter);
    // The proxy runs what it read of the quitter's before the hang-up: wait
    // until the counter stops moving, then stay quiet past the threshold.
    let mut last = Resp::Bulk(None);
    common::eventually("the scripts ran", Duration::from_secs(10), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = reader.call(&["GET", key.as_str()]).await;
        std::mem::replace(&mut last, now.clone()) == now
    })
    .await;
    let Resp::Bulk(Some(count)) = &last else {
        panic!("{last:?}")
    };
    let count: u64 = String::from_utf8_lossy(count).parse().expect("a count");
    assert!(count >= 10_000, "{count}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut other = RawConn::connect(&proxy).await;
    assert_eq!(other.call(&["GET", key.as_str()]).await, last);
}

/// 256 KB, the value of the never-reading client.
const BIG: usize = 256 * 1024;

/// Writes `GET {g}big` as fast as the proxy reads them and never reads a
/// reply, until the socket is closed or `n` requests are out.
fn never_reading_client(proxy: &str, n: usize) -> tokio::task::JoinHandle<(TcpStream, usize)> {
    never_reading_client_of(proxy, "{g}big", n)
}

/// [`never_reading_client`] of `key`.
fn never_reading_client_of(proxy: &str, key: &str, n: usize) -> tokio::task::JoinHandle<(TcpStream, usize)> {
    let proxy = proxy.to_string();
    let chunk = format!("GET {key}\r\n").repeat(1000).into_bytes();
    tokio::spawn(async move {
        let mut s = TcpStream::connect(&proxy).await.expect("connect");
        let mut sent = 0;
        while sent < n {
            let write = s.write_all(&chunk);
            match tokio::time::timeout(Duration::from_secs(2), write).await {
                Ok(Ok(())) => sent += 1000,
                // Blocked (the proxy stopped reading) or closed.
                _ => break,
            }
        }
        (s, sent)
    })
}

/// GETs a small key of the big key's slot every 10 ms for `d`: the
/// latencies, sorted.
async fn probe(proxy: &str, d: Duration) -> Vec<Duration> {
    let mut p = common::client(proxy).await;
    let mut lat = Vec::new();
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        let t = std::time::Instant::now();
        let v: String = redis::cmd("GET")
            .arg("{g}probe")
            .query_async(&mut p)
            .await
            .expect("probe GET");
        lat.push(t.elapsed());
        assert_eq!(v, "small");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lat.sort();
    lat
}

async fn seed(proxy: &ProxyProcess) {
    let mut p = common::client(&proxy.id).await;
    let _: () = redis::cmd("SET")
        .arg("{g}big")
        .arg(vec![b'x'; BIG])
        .query_async(&mut p)
        .await
        .expect("set big");
    let _: () = redis::cmd("SET")
        .arg("{g}probe")
        .arg("small")
        .query_async(&mut p)
        .await
        .expect("set probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_held_back_and_others_keep_their_latency() {
    let c = Cluster::start().await;
    let proxy = c.proxy_process_with(Duration::from_secs(5), None, "").await;
    // A second proxy of the same backends, probed at the same moments: the
    // yardstick. On a shared 2-core machine other tests' clusters starting
    // up put 10 ms into any p99, so a fixed bound measured the machine
    // (CI once failed with p99 11 ms before the bad client came, 10.5 ms
    // while it was there). Both probes share that noise; only the bad
    // client's proxy has the bad client.
    let control = c.proxy_process_with(Duration::from_secs(5), None, "").await;
    seed(&proxy).await;
    let rss_before = proxy.rss();

    // A million GETs of 256 KB: 13 MB of requests (more than the sockets'
    // buffers hold) for 256 GB of replies, none of them read.
    let bad = never_reading_client(&proxy.id, 1_000_000);
    let (during, yardstick) = tokio::join!(
        probe(&proxy.id, Duration::from_secs(3)),
        probe(&control.id, Duration::from_secs(3))
    );
    let rss_during = proxy.rss();
    let (bad, sent) = bad.await.expect("writer");
    // The proxy stopped reading it long before: back-pressure, and the
    // client is still connected, only waiting.
    assert!(
        sent < 1_000_000,
        "the proxy read all {sent} requests of a client that never reads"
    );
    assert_eq!(proxy.metric("output_limit_kills_total").await, 0);
    let p99 = |l: &[Duration]| l[l.len() * 99 / 100];
    eprintln!(
        "probe p99 {:?} (max {:?}, {} probes), beside it through the other proxy {:?}; rss {} MB -> {} MB; {sent} requests read",
        p99(&during),
        during.last(),
        during.len(),
        p99(&yardstick),
        rss_before >> 20,
        rss_during >> 20
    );
    // A client stalled behind the bad one waits seconds (its reply queued
    // behind 256 KB replies nobody reads); held back, it waits what the
    // other proxy's clients wait, give or take the machine's jitter.
    let bound = Duration::from_millis(10).max(p99(&yardstick) * 3);
    assert!(
        p99(&during) < bound,
        "probe p99 {:?}, through the other proxy {:?}",
        p99(&during),
        p99(&yardstick)
    );
    // Without the bound the proxy took 1 GB for this client (issue 10).
    assert!(
        rss_during < rss_before + (64 << 20),
        "rss {} MB -> {} MB",
        rss_before >> 20,
        rss_during >> 20
    );
    drop(bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_output_limit_is_disconnected_and_counted() {
    let c = Cluster::start().await;
    // Lower than the window (1 MB), so the unread replies reach it.
    let proxy = c
        .proxy_process_with(Duration::from_secs(5), None, "client_output_limit = 524288")
        .await;
    seed(&proxy).await;
    let bad = never_reading_client(&proxy.id, 20_000);
    common::eventually(
        "the never-reading client is disconnected",
        Duration::from_secs(10),
        || async { proxy.metric("output_limit_kills_total").await == 1 },
    )
    .await;
    let (mut bad, _) = bad.await.expect("writer");
    // It gets what the socket held, then the end of the stream.
    let mut sink = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the connection was not closed");
    // Others are served as before.
    let lat = probe(&proxy.id, Duration::from_millis(300)).await;
    assert!(!lat.is_empty());
    assert_eq!(
        proxy.metric("output_memory_bytes").await,
        0,
        "nothing left counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_big_replies_after_small_ones_is_bounded_by_the_output_limit() {
    // A script holds the server for 300 ms: the burst's replies all arrive
    // at once after it.
    burst_behind(common::busy_eval(Duration::from_millis(300), "{g}s")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_limit_behind_a_blocked_call_is_disconnected_at_once() {
    // A BLPOP that never returns: the burst's replies arrive behind it, and
    // the client must not wait for it to be disconnected.
    burst_behind(common::cmd(&["BLPOP", "{g}nothing", "0"])).await;
}

/// A client reads 1,000 small replies (which open its window to
/// `max_pipeline`, 4,096), then sends `head` and 4,000 GETs of 256 KB and
/// reads nothing: it is disconnected at `client_output_limit` (32 MB) and the
/// proxy's memory stays bounded.
async fn burst_behind(head: Vec<u8>) {
    let c = Cluster::start().await;
    let proxy = c
        .proxy_process_with(Duration::from_secs(5), None, "client_output_limit = 33554432")
        .await;
    seed(&proxy).await;
    let mut s = TcpStream::connect(&proxy.id).await.expect("connect");
    // Small replies first, read: they open the client's window to
    // `max_pipeline`, 4,096 requests in flight.
    s.write_all(&b"GET {g}probe\r\n".repeat(1000))
        .await
        .expect("write");
    let mut got = Vec::new();
    while got.len() < 1000 * b"$5\r\nsmall\r\n".len() {
        let mut chunk = [0u8; 16384];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    let rss_before = proxy.rss();
    // Then 4,000 GETs of 256 KB behind `head`: all dispatched before any
    // reply says how big they are. 1 GB of replies, none of them read.
    let mut burst = head;
    burst.extend_from_slice(&b"GET {g}big\r\n".repeat(4000));
    s.write_all(&burst).await.expect("write the burst");
    common::eventually(
        "the client is disconnected at its output limit",
        Duration::from_secs(30),
        || async { proxy.metric("output_limit_kills_total").await == 1 },
    )
    .await;
    let rss_during = proxy.rss();
    let mut sink = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the connection was not closed");
    // The replies still on their way are dropped as they arrive, and
    // nothing stays counted.
    common::eventually("nothing left counted", Duration::from_secs(30), || async {
        proxy.metric("output_memory_bytes").await == 0
    })
    .await;
    let rss_after = proxy.rss();
    eprintln!(
        "rss {} MB before the burst, {} MB at the kill, {} MB after",
        rss_before >> 20,
        rss_during >> 20,
        rss_after >> 20
    );
    // Uncounted, those replies were 1 GB held for the client.
    let bound = rss_before + (160 << 20);
    assert!(
        rss_during < bound && rss_after < bound,
        "rss {} MB",
        rss_during.max(rss_after) >> 20
    );
    // Others are served once the server's replies to the requests already
    // sent are through the shared connection (they cannot be called back).
    let mut p = common::client(&proxy.id).await;
    common::eventually("another client is served", Duration::from_secs(10), async || {
        let r: redis::RedisResult<String> = redis::cmd("GET").arg("{g}probe").query_async(&mut p).await;
        r.is_ok_and(|v| v == "small")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_output_memory_new_requests_get_an_error_until_readers_leave() {
    let c = Cluster::start().await;
    // A cap of one byte: what a never-reading client of small replies leaves
    // in the proxy once its socket is full is up to a window (1 MB), never
    // nothing, and never more than a window, which would get it
    // disconnected over the cap.
    let proxy = c
        .proxy_process_with(Duration::from_secs(5), None, "max_output_memory = 1")
        .await;
    seed(&proxy).await;
    let bad: Vec<_> = (0..2)
        .map(|_| never_reading_client_of(&proxy.id, "{g}probe", 2_000_000))
        .collect();
    let p = common::client(&proxy.id).await;
    let get_probe = || {
        let mut p = p.clone();
        async move {
            let r: redis::RedisResult<String> = redis::cmd("GET").arg("{g}probe").query_async(&mut p).await;
            r
        }
    };
    common::eventually("requests are refused", Duration::from_secs(10), || async {
        matches!(get_probe().await, Err(e) if e.to_string().contains("max_output_memory"))
    })
    .await;
    assert!(proxy.metric("output_memory_refusals_total").await >= 1);
    // Once they are gone, their memory is given back and requests pass.
    for b in bad {
        drop(b.await.expect("writer"));
    }
    common::eventually("requests pass again", Duration::from_secs(10), || async {
        get_probe().await.is_ok_and(|v| v == "small")
    })
    .await;
    assert_eq!(get_probe().await.expect("get"), "small");
    assert_eq!(proxy.metric("output_memory_bytes").await, 0);
}

/// `max_output_memory` is a bound, not only a refusal of new requests:
/// requests already sent still bring their replies, and 30 clients with
/// four 50 MB GETs each, never reading, took a proxy to 3.9 GB under the
/// 1 GB cap (each under its own 256 MB limit). Now over the cap a client
/// already holding more than a window (1 MB) unread is disconnected when
/// its next reply comes; one that reads is served (a first version also
/// cut off a reading client whose one reply was big).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_output_memory_bounds_what_replies_already_asked_for_can_take() {
    let c = Cluster::start().await;
    let proxy = c
        .proxy_process_with(Duration::from_secs(5), None, "max_output_memory = 4194304")
        .await;
    let mut p = common::client(&proxy.id).await;
    let _: () = redis::cmd("SET")
        .arg("{g}huge")
        .arg(vec![b'x'; 3 << 20])
        .query_async(&mut p)
        .await
        .expect("set");
    let mut bad = Vec::new();
    for _ in 0..6 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("small receive buffer");
        let mut s = socket
            .connect(proxy.id.parse().expect("address"))
            .await
            .expect("connect");
        s.write_all(&b"GET {g}huge\r\n".repeat(4)).await.expect("write");
        bad.push(s);
    }
    common::eventually(
        "clients holding over a window are cut off",
        Duration::from_secs(10),
        async || proxy.metric("output_limit_kills_total").await >= 1,
    )
    .await;
    // What is left is under the cap plus what the survivors may hold.
    common::eventually("held memory is bounded", Duration::from_secs(10), async || {
        proxy.metric("output_memory_bytes").await <= 4 * 1024 * 1024 + 2 * (3 << 20)
    })
    .await;
    // A client that reads is never cut off. The clients that survived may
    // still hold more than the cap between them (two 3 MB replies, each
    // client under two windows, with no next reply to cut it off at): its
    // request is then refused, answered, until they leave.
    let mut p = common::client(&proxy.id).await;
    let get_huge = async |p: &mut redis::aio::MultiplexedConnection| {
        redis::cmd("GET").arg("{g}huge").query_async::<Vec<u8>>(p).await
    };
    match get_huge(&mut p).await {
        Ok(v) => assert_eq!(v.len(), 3 << 20),
        Err(e) => assert!(
            e.to_string().contains("max_output_memory"),
            "a client that reads got {e}"
        ),
    }
    drop(bad);
    common::eventually(
        "the client that reads is served",
        Duration::from_secs(10),
        async || get_huge(&mut p).await.is_ok_and(|v| v.len() == 3 << 20),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_taken_by_clients_that_never_read_is_returned_after_they_leave() {
    let c = Cluster::start().await;
    let proxy = c.proxy_process_with(Duration::from_secs(5), None, "").await;
    let mut p = common::client(&proxy.id).await;
    // The second case: 40 such clients of a 16 KB value.
    let _: () = redis::cmd("SET")
        .arg("{g}big")
        .arg(vec![b'y'; 16 * 1024])
        .query_async(&mut p)
        .await
        .expect("set");
    let rss_before = proxy.rss();
    let bad: Vec<_> = (0..40)
        .map(|_| never_reading_client(&proxy.id, 1_000_000))
        .collect();
    let mut clients = Vec::new();
    for b in bad {
        clients.push(b.await.expect("writer"));
    }
    let rss_peak = proxy.rss();
    drop(clients);
    common::eventually("the 40 clients are gone", Duration::from_secs(10), || async {
        proxy.metric("sessions").await <= 1
    })
    .await;
    // Three quarters of what they took must go back to the system within
    // 30 s (jemalloc's background thread returns pages after about 1 s).
    assert!(rss_peak < rss_before + (256 << 20), "peak {} MB", rss_peak >> 20);
    let returned = |after: u64| after <= rss_before + rss_peak.saturating_sub(rss_before) / 4;
    let rss_after = common::eventually_ok(
        "three quarters of the memory go back",
        Duration::from_secs(30),
        async || {
            let after = proxy.rss();
            if returned(after) {
                Ok(after)
            } else {
                Err(format!(
                    "{} MB before, {} MB at the peak, {} MB now",
                    rss_before >> 20,
                    rss_peak >> 20,
                    after >> 20
                ))
            }
        },
    )
    .await;
    eprintln!(
        "rss before {} MB, with 40 never-reading clients {} MB, after they left {} MB",
        rss_before >> 20,
        rss_peak >> 20,
        rss_after >> 20
    );
    assert!(
        returned(rss_after),
        "not returned: {} MB before, {} MB after",
        rss_before >> 20,
        rss_after >> 20
    );
}
