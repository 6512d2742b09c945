#!/usr/bin/env bash
# Installs what reborn needs on a fresh Debian machine, and skips whatever is
# already there. Called by scripts/up.sh and scripts/test.sh; safe to re-run.
#
#   redis-server, redis-tools  the storage (stock Redis 7), redis-cli, redis-benchmark
#   zookeeper                  the coordinator's jars (pulls in a JRE); we start it
#                              ourselves, so no zookeeperd/systemd service is needed
#   python3, python3-venv      the client tests run redis-py in a virtualenv
#   nodejs, npm                the client tests run ioredis (scripts/nodeenv.sh)
#   openssl                    tests/comet.rs makes the WSS test's certificates with it
#   chromium, chromium-driver  tests/ui.rs drives the web UI in headless Chromium over WebDriver
#   a Rust toolchain           only if cargo is missing (rustup, minimal profile)
set -euo pipefail

# shellcheck source=scripts/lib/apt.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

# --- redis and ZooKeeper ------------------------------------------------------
if command -v redis-server >/dev/null 2>&1 && [ -f /usr/share/java/zookeeper.jar ]; then
    say "redis-server and ZooKeeper already installed"
else
    apt_install redis-server redis-tools zookeeper
fi

# --- Python (tests/clients.rs runs redis-py in a virtualenv) ----------------------
# Debian's python3 lacks ensurepip, so `python3 -m venv` needs python3-venv.
if command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null; then
    say "python3 and python3-venv already installed"
else
    apt_install python3 python3-venv
fi

# --- Node.js (tests/clients.rs runs ioredis from target/nodeenv) -----------------
# Any node >= 12 runs ioredis 5; Debian's nodejs will do where node is missing.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    say "node and npm already installed"
else
    apt_install nodejs npm
fi

# --- openssl (tests/comet.rs signs a certificate for its WSS test) ---------------
if command -v openssl >/dev/null 2>&1; then
    say "openssl already installed"
else
    apt_install openssl
fi

# --- Chromium (tests/ui.rs: the web UI in a real browser, over WebDriver) -------
# Debian's packages; the tests look for exactly these two paths.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    say "chromium and chromium-driver already installed"
else
    apt_install chromium chromium-driver
fi

# --- Rust ---------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    # Debian's own rustc is too old for this crate (edition 2024, Rust >= 1.88).
    command -v curl >/dev/null 2>&1 && command -v cc >/dev/null 2>&1 ||
        apt_install curl ca-certificates build-essential
    say "installing Rust with rustup (https://rustup.rs)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --component rustfmt,clippy
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cc >/dev/null 2>&1; then
    apt_install build-essential  # rustc links with cc
fi
