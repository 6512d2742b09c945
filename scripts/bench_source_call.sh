#!/usr/bin/env bash
# What the proxy's source call costs the source, per request, against the bare command.
#
#   scripts/bench_source_call.sh
#
# A request of a migrating slot goes to the source wrapped in a Lua script that runs it
# only if the source holds its keys (`proxy::source_call`, docs/migration.md): `READS`
# for a command that only reads, `WRITES` (which also reports the keys the command
# removed) for one that may write. This sends 20,000 `GET`s and 20,000 `SET`s of keys
# the server holds, in pipelines of 100, bare and through each script (as `EVALSHA`),
# to one redis-server started here on a free port, and prints the server's own CPU
# time (`INFO cpu`) per request: 3 runs of each, alternated, then the medians. The
# scripts are read from src/proxy/source_call.rs. Needs redis-server and the test
# virtualenv (scripts/pyenv.sh, which this calls).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/pyenv.sh >&2
exec "${REBORN_PYENV:-target/pyenv}/bin/python" - <<'PY'
import re, statistics, sys
sys.path.insert(0, "scripts/lib")
import scratch_redis

source = open("src/proxy/source_call.rs").read()
scripts = {name: re.search(rf'pub const {name}: Script = Script {{\s*text: "(.*?)",', source, re.S)
           .group(1).replace("\\\n", "") for name in ("READS", "WRITES")}

with scratch_redis.started("bench-source-call-") as r:
    KEYS, BATCHES, PIPE = 1000, 200, 100
    r.mset({f"k:{i}": "value of k" for i in range(KEYS)})
    shas = {name: r.script_load(text) for name, text in scripts.items()}

    def run(sha, words):
        for b in range(BATCHES):
            p = r.pipeline(transaction=False)
            for i in range(PIPE):
                key = f"k:{(b * PIPE + i) % KEYS}"
                cmd = [w.replace("KEY", key) for w in words]
                if sha is None:
                    p.execute_command(*cmd)
                else:
                    p.execute_command("EVALSHA", sha, 1, key, *cmd)
            for reply in p.execute():
                assert not isinstance(reply, Exception), reply

    ways = {"bare": None, **shas}
    results = {}
    for rnd in range(3):
        for cmd in (["GET", "KEY"], ["SET", "KEY", "value of k"]):
            for name, sha in ways.items():
                before = scratch_redis.cpu_seconds(r)
                run(sha, cmd)
                us = (scratch_redis.cpu_seconds(r) - before) * 1e6 / (BATCHES * PIPE)
                results.setdefault((cmd[0], name), []).append(us)
                print(f"run {rnd + 1}: {cmd[0]:3} {name:24} {us:5.2f} µs of server CPU per request")
    print("medians:")
    for cmd in ("GET", "SET"):
        bare = statistics.median(results[(cmd, "bare")])
        line = ", ".join(f"{name} {statistics.median(results[(cmd, name)]):.2f}"
                         for name in ways if name != "bare")
        print(f"  {cmd}: bare {bare:.2f} µs; {line} µs")
PY
