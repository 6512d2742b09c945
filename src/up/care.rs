//! What `reborn up` does with a process of its own that dies (a crash, a
//! `kill -9` to watch a failover): it reaps it at once, so no zombie is left,
//! starts it again after a delay, and leaves it alone if someone else's
//! process took its port meanwhile (an operator who restarted it by hand).
//! `Servers::tend` drives it for every redis-server and ZooKeeper member.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::error::UpError;

/// A process `reborn up` tends.
pub(super) trait Tended {
    /// What it is, for the log: `redis-server 127.0.0.1:16379`.
    fn what(&self) -> String;
    /// Its exit status if it died by itself, reaping it; `None` while it runs.
    fn ended(&mut self) -> Option<ExitStatus>;
    /// Starts it again on its port, dir and config; blocks until it serves.
    fn restart(&mut self) -> Result<(), UpError>;
}

/// Whether a process runs, waits to be started again, or was left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Care {
    #[default]
    Running,
    /// Died at this instant.
    Died(Instant),
    /// Its port is someone else's now; we leave it alone.
    LeftAlone,
}

impl Care {
    /// Notices that `process` died, or starts it again once it has been dead
    /// for `after`. `then` ends the log line of a death (what comes back).
    pub(super) fn tend(&mut self, process: &mut impl Tended, after: Duration, then: &str, now: Instant) {
        match *self {
            Care::Running => {
                if let Some(status) = process.ended() {
                    let what = process.what();
                    let when = if after.is_zero() {
                        "at once".to_string()
                    } else {
                        format!("in {after:?}")
                    };
                    tracing::warn!(%status, "{what} died; reborn up starts it again {when}{then}");
                    *self = Care::Died(now);
                }
            }
            Care::Died(at) if now.duration_since(at) >= after => {
                let what = process.what();
                *self = match process.restart() {
                    Ok(()) => {
                        tracing::info!("{what} started again");
                        Care::Running
                    }
                    Err(e @ UpError::PortInUse { .. }) => {
                        tracing::warn!("{e}; reborn up leaves {what} to whoever started it");
                        Care::LeftAlone
                    }
                    Err(e) => {
                        tracing::warn!("cannot start {what} again: {e}; trying again in {after:?}");
                        Care::Died(now)
                    }
                };
            }
            Care::Died(_) | Care::LeftAlone => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::RedisServer;

    /// A redis-server on a free port (a few tries: a port can be taken
    /// between the pick and the bind).
    fn redis() -> RedisServer {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            if let Ok(s) = RedisServer::start_in_temp_dir(port) {
                return s;
            }
        }
        panic!("cannot start a redis-server")
    }

    /// SIGKILLs it from outside, as a crash would, and waits for `ended`.
    fn crash(server: &mut RedisServer, care: &mut Care, now: Instant) {
        let pid = server.pid().expect("pid").to_string();
        let killed = std::process::Command::new("kill").args(["-9", &pid]).status();
        assert!(killed.is_ok_and(|s| s.success()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while *care == Care::Running && Instant::now() < deadline {
            care.tend(server, AFTER, "", now);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*care, Care::Died(now), "the death noticed, and reaped");
    }

    const AFTER: Duration = Duration::from_secs(10);

    #[test]
    fn a_dead_server_comes_back_after_the_delay_unless_its_port_was_taken() {
        let mut server = redis();
        let mut care = Care::Running;
        let t0 = Instant::now();
        crash(&mut server, &mut care, t0);
        // Not before the delay.
        care.tend(&mut server, AFTER, "", t0 + AFTER / 2);
        assert_eq!(care, Care::Died(t0));
        care.tend(&mut server, AFTER, "", t0 + AFTER);
        assert_eq!(care, Care::Running);
        assert!(server.ended().is_none(), "started again and running");

        // Someone else's process holds the port when the delay is up: it is
        // left to them, for good.
        crash(&mut server, &mut care, t0);
        let theirs = std::net::TcpListener::bind(server.addr()).expect("take the port");
        care.tend(&mut server, AFTER, "", t0 + AFTER);
        assert_eq!(care, Care::LeftAlone);
        care.tend(&mut server, AFTER, "", t0 + AFTER * 3);
        assert_eq!(care, Care::LeftAlone);
        assert!(server.pid().is_none(), "not started");
        drop(theirs);
    }
}
