//! One client can never hurt another (issue 10, part 4), with real sockets: a
//! proxy child process under a small open-file limit refuses the clients past
//! it with an error instead of leaving them hanging in the accept queue.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
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
