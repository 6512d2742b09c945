#!/usr/bin/env bash
# The Python virtualenv in which tests/clients.rs runs redis-py against the proxy:
# target/pyenv (or $REBORN_PYENV), made with `python3 -m venv` and
# `pip install 'redis>=8,<9'`, and reused while it imports redis 8.
# Called by scripts/test.sh before `cargo test`, and by the test itself when the
# virtualenv is missing. Needs python3 and python3-venv (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${REBORN_PYENV:-target/pyenv}
say() { printf '==> %s\n' "$*" >&2; }

has_redis8() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import sys, redis
sys.exit(0 if redis.__version__.split(".")[0] == "8" else 1)
PY
}

if has_redis8; then
    exit 0
fi
say "creating the Python virtualenv $VENV (redis-py 8)"
python3 -m venv --clear "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'redis>=8,<9'
has_redis8 || { say "$VENV does not import redis 8 after pip install"; exit 1; }
