#!/usr/bin/env bash
# The Node.js environment in which tests/clients.rs runs ioredis against the proxy:
# target/nodeenv (or $REBORN_NODEENV), made with
# `npm install --prefix target/nodeenv ioredis@<IOREDIS>` (one pinned version, from the
# npm registry), and reused while it holds that version.
# Called by scripts/test.sh before `cargo test`, and by the test itself when the
# environment is missing. Needs node and npm (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IOREDIS=5.9.3
DIR=${REBORN_NODEENV:-target/nodeenv}
say() { printf '==> %s\n' "$*" >&2; }

has_ioredis() {
    [[ $(node -p 'require(process.argv[1]).version' "$(realpath -m "$DIR")/node_modules/ioredis/package.json" \
        2>/dev/null) == "$IOREDIS" ]]
}

command -v node >/dev/null && command -v npm >/dev/null ||
    { say "node and npm are needed (scripts/install-deps.sh installs them)"; exit 1; }
if has_ioredis; then
    exit 0
fi
say "installing ioredis $IOREDIS into $DIR"
mkdir -p "$DIR"
npm install --prefix "$DIR" --save-exact --no-audit --no-fund --loglevel=error "ioredis@$IOREDIS"
has_ioredis || { say "$DIR does not hold ioredis $IOREDIS after npm install"; exit 1; }
