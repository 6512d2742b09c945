#!/usr/bin/env python3
"""redis-py, with its default settings (RESP3 in redis-py 8), against a reborn proxy.

Run by tests/clients.rs with the virtualenv that scripts/pyenv.sh makes:

    target/pyenv/bin/python tests/clients/redis_py.py --port 19000 \
        --keys KEY_IN_GROUP_1,KEY_IN_GROUP_2 --checks ping,resp3,pipeline

Each check prints `ok <name>` or `FAIL <name>: <why>`; the exit status is 0 only
if every selected check passed. `--list` prints the checks.
"""

import argparse
import sys
import time
import traceback

import redis


def check_ping(r, keys):
    assert r.ping() is True


def check_resp3(r, keys):
    """The connection really speaks RESP3 (HELLO without a version reports it)."""
    hello = r.execute_command("HELLO")
    proto = hello.get(b"proto", hello.get("proto")) if isinstance(hello, dict) else None
    assert proto == 3, f"HELLO says {hello!r}"


def check_set_get(r, keys):
    k1, k2 = keys
    assert r.set(k1, "v1") is True
    assert r.get(k1) == b"v1"
    assert r.get(k1 + ":missing") is None
    assert r.mget(k1, k1 + ":missing", k2) == [b"v1", None, r.get(k2)]


def check_types(r, keys):
    """RESP3's typed replies come back as Python types."""
    k1, k2 = keys
    h, s, z = k1 + ":h", k2 + ":s", k1 + ":z"
    r.delete(h, s, z)
    r.hset(h, mapping={"a": "1", "b": "2"})
    got = r.hgetall(h)
    assert isinstance(got, dict) and got == {b"a": b"1", b"b": b"2"}, repr(got)
    r.sadd(s, "x", "y")
    assert r.smembers(s) == {b"x", b"y"}
    r.zadd(z, {"m": 1.5})
    assert r.zscore(z, "m") == 1.5
    assert r.zrange(z, 0, -1, withscores=True) == [(b"m", 1.5)]


def check_pipeline(r, keys):
    """A pipeline without a transaction, across keys of both groups."""
    k1, k2 = keys
    pipe = r.pipeline(transaction=False)
    pipe.set(k1, "p1").set(k2, "p2").get(k1).get(k2).mget(k1, k2).delete(k1 + ":none")
    assert pipe.execute() == [True, True, b"p1", b"p2", [b"p1", b"p2"], 0]


def check_client(r, keys):
    assert r.client_setname("redis-py-check") is True
    assert r.client_getname() in (b"redis-py-check", "redis-py-check"), repr(r.client_getname())
    me = r.client_id()
    listed = [c for c in r.client_list() if int(c["id"]) == me]
    assert listed and listed[0]["name"] == "redis-py-check", repr(r.client_list())
    assert r.client_info()["name"] == "redis-py-check"


def check_lock(r, keys):
    """Lock: SET NX to take it, scripts (EVALSHA, SCRIPT LOAD) to release it."""
    lock = r.lock(keys[0] + ":lock", timeout=10)
    assert lock.acquire(blocking=False)
    assert lock.locked() and lock.owned()
    assert not r.lock(keys[0] + ":lock", timeout=10).acquire(blocking=False)
    assert lock.extend(5)
    lock.release()
    assert not lock.locked()


def check_script(r, keys):
    get = r.register_script("return redis.call('GET', KEYS[1])")
    r.set(keys[1], "scripted")
    assert get(keys=[keys[1]]) == b"scripted"
    incr = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    r.delete(keys[0] + ":n")
    assert incr(keys=[keys[0] + ":n"], args=[5]) == 5


def check_transaction(r, keys):
    """MULTI/EXEC on keys of one slot, and a WATCH conflict."""
    tag = "{" + keys[0] + "}"
    a, b = tag + "a", tag + "b"
    r.delete(a, b)
    pipe = r.pipeline(transaction=True)
    pipe.incr(a).incr(a).set(b, "x").get(b)
    assert pipe.execute() == [1, 2, True, b"x"]
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(a)
        r.set(a, "changed")
        pipe.multi()
        pipe.set(a, "lost")
        try:
            pipe.execute()
            raise AssertionError("EXEC ran although the watched key changed")
        except redis.WatchError:
            pass
    assert r.get(a) == b"changed"


def check_scan_iter(r, keys):
    prefix = "scan-iter-check:"
    want = {f"{prefix}{i}".encode() for i in range(200)}
    for k in want:
        r.set(k, "1")
    got = set(r.scan_iter(match=prefix + "*", count=50))
    assert got == want, f"missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]}"


def check_pubsub(r, keys):
    p = r.pubsub()
    p.subscribe("pubsub-check")
    deadline = time.time() + 5
    msg = None
    while time.time() < deadline and (msg is None or msg["type"] != "subscribe"):
        msg = p.get_message(timeout=0.5)
    assert msg and msg["type"] == "subscribe", repr(msg)
    assert r.publish("pubsub-check", "hi") == 1
    msg = None
    while time.time() < deadline and (msg is None or msg["type"] != "message"):
        msg = p.get_message(timeout=0.5)
    assert msg and msg["data"] == b"hi", repr(msg)
    p.close()


CHECKS = {
    name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=19000)
    ap.add_argument("--keys", default="k1,k2", help="two keys, one per group")
    ap.add_argument("--checks", default=",".join(CHECKS), help="comma-separated")
    ap.add_argument("--list", action="store_true", help="print the checks and exit")
    args = ap.parse_args()
    if args.list:
        print("\n".join(CHECKS))
        return 0
    keys = args.keys.split(",")
    if len(keys) != 2:
        ap.error("--keys takes two keys")
    selected = [c for c in args.checks.split(",") if c]
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        ap.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    print(f"redis-py {redis.__version__}, default settings, {args.host}:{args.port}")
    failed = 0
    for name in selected:
        # A fresh client per check, with redis-py's defaults only.
        r = redis.Redis(host=args.host, port=args.port)
        try:
            CHECKS[name](r, keys)
            print(f"ok {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
        finally:
            r.close()
    print(f"passed {len(selected) - failed} of {len(selected)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
