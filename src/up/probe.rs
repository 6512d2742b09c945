//! Tiny blocking clients that talk to the processes we start: ZooKeeper's
//! four-letter words and just enough RESP for `PING`, `INFO` and `REPLICAOF`.
//!
//! Deliberately separate from the proxy's codec: these run on plain threads during
//! start-up and must not depend on the data plane they are used to test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Per-operation socket timeout of the probes.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends a ZooKeeper four-letter word (`ruok`, `conf`, …) and returns the answer.
pub(crate) fn four_letter(addr: &str, word: &str) -> std::io::Result<String> {
    let mut stream = connect(addr)?;
    stream.write_all(word.as_bytes())?;
    // ZooKeeper answers and closes the connection.
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$…`; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`; `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (status, error or bulk), for messages and `INFO`.
    pub(crate) fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Integer(i) => i.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".into(),
            Reply::Array(Some(items)) => items.iter().map(Reply::text).collect::<Vec<_>>().join(" "),
        }
    }
}

/// A blocking RESP connection to a redis-server.
pub(crate) struct RedisConn {
    stream: BufReader<TcpStream>,
}

impl RedisConn {
    /// Connects, and authenticates if `password` is given.
    pub(crate) fn connect(addr: &str, password: Option<&str>) -> std::io::Result<RedisConn> {
        let mut conn = RedisConn {
            stream: BufReader::new(connect(addr)?),
        };
        if let Some(password) = password
            && let Reply::Error(e) = conn.call(&["AUTH", password])?
        {
            return Err(std::io::Error::other(e));
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply.
    pub(crate) fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        self.stream.get_mut().write_all(&request)?;
        read_reply(&mut self.stream)
    }
}

/// Reads one (possibly nested) RESP reply.
fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad length in {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                r.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => {
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(read_reply(r)?);
                }
                Reply::Array(Some(items))
            }
        },
        _ => return Err(bad(format!("not a RESP reply: {line:?}"))),
    })
}

/// Reads a `\r\n`-terminated line, without the terminator.
fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Connects with timeouts on connect, read and write, so a wedged peer cannot
/// hang a start-up wait.
fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = std::io::Error::other(format!("{addr} resolves to no address"));
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
