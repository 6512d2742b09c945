#!/usr/bin/env bash
# The chaos soak (issue 10, part 8): real ZooKeeper, two groups of persistent
# redis-servers (master + replica), two `reborn proxy` and a `reborn dashboard`
# process, and the push system (logic, a comet, job), on loopback, for a
# bounded time. Writers and readers check every reply, and a pusher sends
# numbered pushes to two clients, while masters, replicas, a proxy, the
# dashboard, logic and job are SIGKILLed and restarted, ZooKeeper is SIGSTOPped
# for 3 s, and slots migrate; at the end every acknowledged write is compared
# with what the cluster holds, and every accepted push with what the clients got.
# The test itself is tests/soak.rs (ignored by a plain `cargo test`).
#
#   scripts/soak.sh                  # 10 minutes in each write_ack mode
#   SOAK_SECS=120 SOAK_MODES=replica scripts/soak.sh
#
# Environment:
#   SOAK_SECS         seconds of faults per mode                 default 600
#   SOAK_MODES        write_ack modes to run, in turn            default "master replica"
#   SOAK_FAULT_EVERY  seconds between two faults                 default 6
#   SOAK_PROFILE      cargo profile flag ("--release" or "")     default --release
# Exits non-zero when a run fails: acknowledged writes or accepted pushes lost
# in `replica` mode,
# a value no client wrote, a dead master not replaced within 15 s, a cluster
# that does not heal, or a migration that never ends. The report of each run
# (operations, faults, client errors, writes lost) is printed at its end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh >/dev/null
SECS=${SOAK_SECS:-600}
MODES=${SOAK_MODES:-master replica}
PROFILE=${SOAK_PROFILE---release}

status=0
for mode in $MODES; do
    printf '\n==> soak: %s s, write_ack = %s\n' "$SECS" "$mode" >&2
    # shellcheck disable=SC2086
    if ! SOAK_SECS=$SECS SOAK_WRITE_ACK=$mode \
        cargo test $PROFILE --test soak -- --ignored --nocapture; then
        status=1
    fi
done
exit $status
