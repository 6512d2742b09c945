#!/usr/bin/env python3
"""Regenerates src/proxy/commands.json from a live redis-server's COMMAND reply.

The proxy routes by key position; Redis 7 describes those positions itself
(COMMAND's key specs), so the table is data taken from the server, not typed by
hand. Usage: scripts/gen_command_table.py [port]   (a redis-server 7 on 127.0.0.1)
"""
import json
import subprocess
import sys

port = sys.argv[1] if len(sys.argv) > 1 else "6379"
raw = subprocess.check_output(["redis-cli", "-p", port, "--json", "COMMAND"])
FLAGS = {"write", "readonly", "blocking", "movablekeys"}


def spec(c):
    return {
        "name": c[0].split("|")[-1],
        "arity": c[1],
        "flags": [f for f in c[2] if f in FLAGS],
        "key_specs": [{"begin_search": k["begin_search"], "find_keys": k["find_keys"]} for k in c[8]],
        "subcommands": [spec(s) for s in sorted(c[9] if len(c) > 9 else [], key=lambda s: s[0])],
    }


cmds = [spec(c) for c in sorted(json.loads(raw), key=lambda c: c[0])]
print("[")
print(",\n".join(json.dumps(c, separators=(",", ":")) for c in cmds))
print("]")
