#!/usr/bin/env bash
# THE test command of reborn (CI runs it through .ci/run):
#   installs what is missing (redis, ZooKeeper, Python, Node.js, Rust), makes
#   the redis-py virtualenv and the ioredis packages of tests/clients.rs
#   (scripts/pyenv.sh, scripts/nodeenv.sh), then
#   cargo fmt --check, cargo clippy -D warnings, cargo test (unit + integration),
#   and Redis's own test suite through a local cluster (scripts/redis_suite.sh).
# Integration tests start their own real ZooKeeper and redis-servers on free
# ports and stop them afterwards; nothing needs to be running beforehand.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test harness);
# without any, Redis's own test suite then runs through a reborn up cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
# rustup installs components on demand only for the toolchain in use.
for tool in rustfmt clippy; do
    if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$tool"
    fi
done

step() { printf '\n==> %s\n' "$*" >&2; }

step "Python virtualenv for the client tests (scripts/pyenv.sh)"
scripts/pyenv.sh

step "Node.js packages for the client tests (scripts/nodeenv.sh)"
scripts/nodeenv.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test $*"
cargo test "$@"

if [ "$#" -eq 0 ]; then
    # Redis compatibility must not quietly regress (issue 8): Redis 7.0's own
    # tests through a whole `reborn up` cluster (docs/compatibility.md). The
    # 13 units of the bar are gated; the extra ones are printed for the record.
    step "Redis's own test suite through reborn up's proxy (scripts/redis_suite.sh)"
    scripts/redis_suite.sh --reborn target/debug/reborn --unit-timeout 300 --min-pass 1060
    scripts/redis_suite.sh --reborn target/debug/reborn --unit-timeout 300 --label reborn-extra extra
fi

step "all green"
