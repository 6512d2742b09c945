#!/usr/bin/env bash
# What a key moved on access costs with `write_ack = "replica"` (copied ahead
# and confirmed by a replica of the target, then moved) against the default
# mode (one MIGRATE): `tests/write_ack.rs::bench_moves_on_access`, release
# build, both modes side by side in one run (the machine is shared and noisy:
# compare within a run).
#
#   scripts/bench_moves_on_access.sh                  # 4,000 keys, half per mode
#   BENCH_KEYS=20000 scripts/bench_moves_on_access.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh >/dev/null
exec cargo test --release --test write_ack -- --ignored --nocapture bench_moves_on_access
