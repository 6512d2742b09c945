//! One client can never hurt another (issue 10, part 4), with real sockets: a
//! proxy child process under a small open-file limit refuses the clients past
//! it with an error instead of leaving them hanging in the accept queue; a
//! client that never reads its replies is held back (and past
//! `client_output_limit` disconnected) while another client of the same group
//! keeps its latency, and the proxy's memory stays bounded.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ProxyProcess};
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

/// 256 KB, the value of the never-reading client.
const BIG: usize = 256 * 1024;

/// Writes `GET {g}big` as fast as the proxy reads them and never reads a
/// reply, until the socket is closed or `n` requests are out.
fn never_reading_client(proxy: &str, n: usize) -> tokio::task::JoinHandle<(TcpStream, usize)> {
    let proxy = proxy.to_string();
    tokio::spawn(async move {
        let mut s = TcpStream::connect(&proxy).await.expect("connect");
        let chunk = b"GET {g}big\r\n".repeat(1000);
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
async fn over_max_output_memory_new_requests_get_an_error_until_readers_leave() {
    let c = Cluster::start().await;
    // Two never-reading clients fill about 1 MB each (the window).
    let proxy = c
        .proxy_process_with(Duration::from_secs(5), None, "max_output_memory = 1500000")
        .await;
    seed(&proxy).await;
    let bad: Vec<_> = (0..2)
        .map(|_| never_reading_client(&proxy.id, 1_000_000))
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
    assert!(proxy.metric("output_memory_bytes").await >= 1_500_000);
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
