#!/usr/bin/env python3
"""Opens COUNT idle client sessions to a RESP server and holds them.

Helper of scripts/bench.sh (RSS per idle client). Each connection sends one
PING and reads +PONG, so it is a real session on the server, not a half-open
socket in its accept queue. When all are up it prints "ready COUNT" on stdout
and holds them until SIGTERM or SIGINT.

    scripts/bench_idle_clients.py PORT COUNT [HOST]

Exit status 1 (with the reason on stderr) if any connection fails.
"""
import resource
import signal
import socket
import sys

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(f"bench_idle_clients: open-files limit {soft} < {needed} needed")


def open_session(host, port):
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(PING)
    got = b""
    while len(got) < len(PONG):
        chunk = sock.recv(len(PONG) - len(got))
        if not chunk:
            raise ConnectionError(f"closed by server after {got!r}")
        got += chunk
    if got != PONG:
        raise ConnectionError(f"unexpected reply {got!r}")
    return sock


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    port, count = int(sys.argv[1]), int(sys.argv[2])
    host = sys.argv[3] if len(sys.argv) == 4 else "127.0.0.1"
    raise_nofile(count + 64)

    # Sequential connect + PING: never overflows the server's accept backlog.
    socks = []
    for i in range(count):
        try:
            socks.append(open_session(host, port))
        except OSError as e:
            sys.exit(f"bench_idle_clients: connection {i + 1} of {count} to {host}:{port} failed: {e}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"ready {len(socks)}", flush=True)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
