"""A scratch redis-server for the micro-benchmarks in scripts/ that measure what a
command costs the server itself (bench_restore_script.sh, bench_source_call.sh).

`started()` runs one on a free loopback port, without persistence, and yields a
redis-py client once it answers; `cpu_seconds(r)` is the server's own CPU time
(user + system, `INFO cpu`), read before and after a run.
"""
import contextlib
import socket
import subprocess
import tempfile
import time

import redis


@contextlib.contextmanager
def started(prefix="bench-"):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix=prefix)
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield r
    finally:
        server.terminate()
        server.wait()


def cpu_seconds(r):
    c = r.info("cpu")
    return c["used_cpu_user"] + c["used_cpu_sys"]
