# shellcheck shell=bash
# Sourced by the scripts that install Debian packages on demand
# (scripts/install-deps.sh, scripts/redis_suite.sh): `say` and `apt_install`.
# Defines functions only; running it does nothing.

say() { printf '==> %s\n' "$*" >&2; }

APT_UPDATED=0
# apt_install PKG...: apt-get install, after one apt-get update per run.
# Set APT_UPDATED=0 again after changing apt's sources to update once more.
apt_install() {
    # apt needs root; use sudo when we are not root and it exists.
    local SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            say "not root and no sudo: run as root, or apt-get install $* yourself"
            exit 1
        fi
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=300
        APT_UPDATED=1
    fi
    if [ "$#" -gt 0 ]; then
        say "apt-get install $*"
        # Another apt (unattended-upgrades, a sibling job) may hold the lock: wait.
        "${SUDO[@]}" apt-get install -y -q -o DPkg::Lock::Timeout=300 "$@"
    fi
}
