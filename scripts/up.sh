#!/usr/bin/env bash
# A whole reborn cluster on this machine, for a first look:
#   installs what is missing (redis, ZooKeeper, Rust), builds reborn (release),
#   then runs `reborn up`: ZooKeeper, 2 groups of redis-servers, the dashboard,
#   the proxy, and the push system (logic, one comet, one job; --no-push: none).
# It prints every address, the push demo page's URL and commands to try.
# Ctrl-C stops everything. Arguments go to `reborn up` (see --help), e.g.
#   scripts/up.sh --proxy 127.0.0.1:29000 --logic-http-port 4111 --dir ./reborn-data
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
cargo build --release
exec target/release/reborn up "$@"
