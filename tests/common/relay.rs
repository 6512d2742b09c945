//! A loopback TCP relay in front of ZooKeeper that a test can cut, to make a
//! client lose its connection (and, if the cut lasts, its session) on demand,
//! or slow down, to make every answer late without losing any.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch as channel};
use tokio::time::Instant;

/// A loopback TCP relay in front of ZooKeeper that a test can cut: cutting
/// aborts its connections and refuses new ones, which is how a network partition
/// looks to the client; the server then expires the session.
pub struct Relay {
    pub addr: SocketAddr,
    cut: channel::Sender<bool>,
    delay: channel::Sender<Duration>,
}

impl Relay {
    pub async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (cut, _) = channel::channel(false);
        let (delay, _) = channel::channel(Duration::ZERO);
        let cut_rx = cut.subscribe();
        let delay_rx = delay.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    continue; // dropped: refused
                }
                let mut cut_rx = cut_rx.clone();
                let delay_rx = delay_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_rd, client_wr) = client.into_split();
                    let (server_rd, server_wr) = server.into_split();
                    tokio::select! {
                        _ = pipe(client_rd, server_wr, delay_rx.clone()) => {}
                        _ = pipe(server_rd, client_wr, delay_rx) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Relay { addr, cut, delay }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Delays every byte by `one_way` in each direction, in order.
    pub fn slow_down(&self, one_way: Duration) {
        self.delay.send_replace(one_way);
    }
}

/// Copies `rd` to `wr`, each chunk written `delay` after it was read.
async fn pipe(mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, delay: channel::Receiver<Duration>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + *delay.borrow();
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    // The reader ends first on EOF; the writer then drains what is queued.
    tokio::join!(reader, writer);
}
