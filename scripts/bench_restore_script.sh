#!/usr/bin/env bash
# What restoring inside the migrator's script costs the target, against plain RESTOREs.
#
#   scripts/bench_restore_script.sh            # 20,000 keys per run, 3 runs of each, alternated
#
# With `write_ack = "replica"` the migrator restores each batch inside one
# `EVAL libs::copy_mark::REPLACE_STALE` (it leaves a key the target holds untouched,
# see docs/migration.md); otherwise it pipelines plain `RESTORE … ABSTTL IDLETIME 60`s.
# Both go to one redis-server started here on a free port, in batches of 100, and
# the server's own CPU time (`INFO cpu`) per key restored is printed for each run,
# then the ratio of the medians. The script text is read from src/libs/copy_mark.rs,
# so this measures what the migrator sends. Needs redis-server and the test
# virtualenv (scripts/pyenv.sh, which this calls).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/pyenv.sh >&2
exec "${REBORN_PYENV:-target/pyenv}/bin/python" - <<'PY'
import re, statistics, sys
sys.path.insert(0, "scripts/lib")
import scratch_redis

text = open("src/libs/copy_mark.rs").read()
body = re.search(r'pub const REPLACE_STALE: &str = "(.*?)";', text, re.S).group(1)
script = body.replace("\\\n", "")

with scratch_redis.started("bench-restore-") as r:
    r.set("template", "value of aged:123")
    payload = r.dump("template")
    BATCHES, KEYS = 200, 100

    def plain(run):
        for b in range(BATCHES):
            p = r.pipeline(transaction=False)
            for i in range(KEYS):
                p.execute_command("RESTORE", f"{run}:{b}:{i}", 0, payload, "ABSTTL", "IDLETIME", 60)
            p.execute()

    def scripted(run):
        for b in range(BATCHES):
            keys = [f"{run}:{b}:{i}" for i in range(KEYS)]
            args = [60, 0]
            for _ in keys:
                args += [0, payload, -1]
            replies = r.eval(script, len(keys), *keys, *args)
            assert replies == [1] * KEYS, replies[:3]

    results = {"plain RESTOREs": [], "REPLACE_STALE": []}
    for run in range(3):
        for name, f in (("plain RESTOREs", plain), ("REPLACE_STALE", scripted)):
            r.flushall()
            before = scratch_redis.cpu_seconds(r)
            f(f"{name[0]}{run}")
            us = (scratch_redis.cpu_seconds(r) - before) * 1e6 / (BATCHES * KEYS)
            results[name].append(us)
            print(f"run {run + 1}: {name:15} {us:5.2f} µs of server CPU per key")
    a, b = (statistics.median(v) for v in results.values())
    print(f"median: plain {a:.2f} µs, scripted {b:.2f} µs per key: {b / a:.2f}×, +{b - a:.2f} µs")
PY
