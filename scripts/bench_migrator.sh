#!/usr/bin/env bash
# Background migrator throughput (src/topo/manager/migrator): keys/s moved between two
# local redis-servers by `migrate_slots`, once per `inflight` setting.
#
#   scripts/bench_migrator.sh                          # 1M keys, 256 of 1024 slots move (~250k keys)
#   BENCH_KEYS=200000 BENCH_INFLIGHT=4 scripts/bench_migrator.sh   # quick run
#
# Environment (all optional):
#   BENCH_KEYS      small string keys loaded on the source     default 1000000
#   BENCH_INFLIGHT  comma-separated `inflight` values to run   default 1,2,4,8
#   BENCH_BATCH     keys per MIGRATE (`batch_keys`)            default 500
#   BENCH_REPLICA_ACK  1: give the target a replica and run each setting twice,
#                   without and with the WAIT that `write_ack = "replica"` proxies
#                   make the migrator do; prints the ratio      default off
#
# Each setting runs on fresh servers (started by the test harness on free ports,
# stopped afterwards). The time counts both passes: the one that moves the keys
# and the confirming one that finds none left. The machine is shared and noisy:
# compare settings within one run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --release --test migrator -- --ignored --nocapture --test-threads 1 bench_migrator_throughput
