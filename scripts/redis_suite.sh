#!/usr/bin/env bash
# Redis's own test suite (Redis 7.0, from Debian's source package) against a
# server that is already running: the yardstick of Redis compatibility
# (issue 8, docs/compatibility.md "Redis's own test suite").
#
#   scripts/redis_suite.sh [OPTIONS] HOST PORT [UNIT...]
#   scripts/redis_suite.sh [OPTIONS] --direct [UNIT...]
#   scripts/redis_suite.sh [OPTIONS] --reborn BIN [UNIT...]
#
# UNIT is a name under the suite's tests/unit/ (type/string, expire, pubsub, ...);
# the default is the 13 units of the bar (DEFAULT_UNITS below); `extra` stands
# for pubsub pubsubshard multi scripting, `all` for both lists.
#
# Options:
#   --direct           start a stock redis-server on a free port
#                      (--save "" --appendonly no), run against it, stop it
#   --reborn BIN       start `BIN up` (ZooKeeper, two groups of master +
#                      replica, dashboard, proxy) on free ports, run against
#                      its proxy, stop it: what CI measures
#   --min-pass N       exit 1 when fewer than N tests pass (for CI)
#   --unit-timeout S   kill a unit that runs longer than S seconds (default 900)
#   --label NAME       name of the result files (default HOST-PORT, or direct)
#
# Each unit runs as its own `./runtest --single unit/X --host HOST --port PORT
# --singledb --cluster-mode --tags "-needs:debug ..."`, so one unit's crash does
# not hide the others. Prints passed / failed / skipped per unit and a total;
# writes, under target/redis-suite/:
#   failures-LABEL.txt  one failing test a line: unit, test, first message line
#   summary-LABEL.txt   the per-unit table printed at the end
#   logs-LABEL/UNIT.log the whole runtest output of each unit
# REDIS_SUITE_SRC=DIR runs the suite of another (e.g. a patched) source tree.
# REDIS_SUITE_BASEPORT=N passes runtest `--baseport N` (its own ports: two runs
# at once on one machine need different ones; runtest's default is 21111).
# Exit status: 0 whatever the tests say, unless --min-pass is not met; 2 when
# the suite cannot run at all (no source, server unreachable).
#
# The first run installs what is missing (tcl8.6, dpkg-dev, a deb-src entry
# for Debian's archive) and unpacks `apt-get source redis` into
# target/redis-suite/ once; later runs reuse it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/apt.sh
. "$ROOT/scripts/lib/apt.sh"

DEFAULT_UNITS=(type/string type/incr type/hash type/list type/set type/zset
    type/stream type/stream-cgroups expire keyspace bitops hyperloglog geo)
EXTRA_UNITS=(pubsub pubsubshard multi scripting)
# Tags of tests that need what an external server does not give the suite
# (DEBUG, replicas, SAVE, maxmemory, CONFIG RESETSTAT-like resets, PFDEBUG),
# that need a lot of memory, or that are slow.
DENY_TAGS="-needs:debug -needs:repl -needs:save -needs:config-maxmemory -needs:reset -needs:pfdebug -large-memory -slow"
CACHE="$ROOT/target/redis-suite"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

direct=0 reborn="" min_pass="" unit_timeout=900 label=""
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --direct) direct=1 ;;
        --reborn) reborn="${2:?--reborn needs the reborn binary}"; shift ;;
        --min-pass) min_pass="${2:?--min-pass needs a number}"; shift ;;
        --unit-timeout) unit_timeout="${2:?--unit-timeout needs seconds}"; shift ;;
        --label) label="${2:?--label needs a name}"; shift ;;
        -h|--help) usage ;;
        -*) say "unknown option $1"; usage ;;
        *) args+=("$1") ;;
    esac
    shift
done
if [ "$direct" -eq 1 ]; then
    host=127.0.0.1 port=""
    label="${label:-direct}"
elif [ -n "$reborn" ]; then
    host=127.0.0.1 port=""
    label="${label:-reborn}"
else
    [ "${#args[@]}" -ge 2 ] || usage
    host="${args[0]}" port="${args[1]}"
    args=("${args[@]:2}")
    label="${label:-$host-$port}"
fi
units=()
for u in ${args[@]+"${args[@]}"}; do
    case "$u" in
        all) units+=("${DEFAULT_UNITS[@]}" "${EXTRA_UNITS[@]}") ;;
        extra) units+=("${EXTRA_UNITS[@]}") ;;
        *) units+=("${u#unit/}") ;;
    esac
done
[ "${#units[@]}" -gt 0 ] || units=("${DEFAULT_UNITS[@]}")

# --- tools and the suite's source -------------------------------------------------
tclsh_found() { command -v tclsh8.5 || command -v tclsh8.6 || command -v tclsh8.7; } >/dev/null 2>&1
missing=()
tclsh_found || missing+=(tcl8.6)         # runtest wants tclsh8.5, 8.6 or 8.7 by name
command -v dpkg-source >/dev/null 2>&1 || missing+=(dpkg-dev)  # apt-get source unpacks with it
if [ "$direct" -eq 1 ] && ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"

# deb-src entries mirroring the Debian `deb` entries of this machine, in
# either format (deb822 .sources or one-line sources.list).
DEB_SRC_FILE=/etc/apt/sources.list.d/debian-src.sources
add_deb_src() {
    local f out=""
    for f in /etc/apt/sources.list.d/*.sources; do
        if [ ! -f "$f" ] || [ "$f" = "$DEB_SRC_FILE" ]; then continue; fi
        # Keep the paragraphs of Debian's archive whose Types has `deb`.
        out+="$(awk 'BEGIN { RS = "" } {
            n = split($0, line, "\n"); types = ""
            for (i = 1; i <= n; i++) if (line[i] ~ /^Types:/) types = line[i]
            if (types !~ /[: ]deb( |$)/ || $0 !~ /debian/ || $0 ~ /Enabled: *no/) next
            for (i = 1; i <= n; i++) print (line[i] ~ /^Types:/ ? "Types: deb-src" : line[i])
            print ""
        }' "$f")"$'\n\n'
    done
    if [ -z "${out//[[:space:]]/}" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            out+="$(sed -n 's/^deb \(.*debian.*\)$/deb-src \1/p' "$f")"$'\n'
        done
        DEB_SRC_FILE=/etc/apt/sources.list.d/debian-src.list
    fi
    if [ -z "${out//[[:space:]]/}" ]; then
        say "no Debian entry in /etc/apt/sources.list*: add a deb-src line for redis yourself"
        exit 2
    fi
    say "adding deb-src entries in $DEB_SRC_FILE"
    local SUDO=()
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    printf '%s\n' "$out" | "${SUDO[@]}" tee "$DEB_SRC_FILE" >/dev/null
    APT_UPDATED=0
    apt_install  # apt-get update only
}

suite_dir() { { find "$CACHE" -maxdepth 2 -name runtest -path '*/redis-*/runtest' -printf '%h\n' 2>/dev/null || true; } | sort | tail -n 1; }
SRC="${REDIS_SUITE_SRC:-$(suite_dir)}"
if [ -z "$SRC" ]; then
    if [ -z "$(apt-cache showsrc redis 2>/dev/null)" ]; then
        add_deb_src
    fi
    mkdir -p "$CACHE"
    say "apt-get source redis (into $CACHE)"
    (cd "$CACHE" && apt-get source -q redis 2>&1 | grep -v '^dpkg-source: info: applying' >&2)
    SRC="$(suite_dir)"
    if [ -z "$SRC" ]; then
        say "apt-get source redis gave no tree with runtest under $CACHE"
        exit 2
    fi
    # Keep the unpacked tree and the .dsc (it names the exact version).
    rm -f "$CACHE"/redis_*.tar.* "$CACHE"/redis_*.orig.tar.*
fi
version="$({ find "$CACHE" -maxdepth 1 -name 'redis_*.dsc' -printf '%f\n' || true; } | sort | tail -n 1)"
version="${version%.dsc}"
say "suite: $SRC (${version:-unknown Debian version})"

# --- the server -----------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
server_pid=""
workdir=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$server_pid" ]; then
        # reborn up stops its whole cluster on SIGINT, as on Ctrl-C.
        kill -INT "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    [ -z "$workdir" ] || rm -rf "$workdir"
}
trap cleanup EXIT
if [ "$direct" -eq 1 ]; then
    for _ in $(seq 1 50); do
        port=$((40000 + RANDOM % 20000))
        port_open 127.0.0.1 "$port" || break
    done
    workdir="$(mktemp -d)"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$workdir" --logfile "$workdir/redis.log" --daemonize no &
    server_pid=$!
    for _ in $(seq 1 100); do
        port_open 127.0.0.1 "$port" && break
        sleep 0.1
    done
    say "stock $(redis-server --version | cut -d' ' -f1-3) on 127.0.0.1:$port (pid $server_pid)"
fi
# Starts `$reborn up` on eight free ports (ZooKeeper, four redis-servers,
# proxy, proxy admin, dashboard), below the kernel's ephemeral range (32768+)
# where an outgoing connection could take a port between this check and the
# bind. Returns 1, with its output shown, if the proxy never serves.
start_reborn() {
    local ports=() p ready=0
    while [ "${#ports[@]}" -lt 8 ]; do
        p=$((10000 + RANDOM % 9000))
        if ! port_open 127.0.0.1 "$p" && [[ " ${ports[*]} " != *" $p "* ]]; then ports+=("$p"); fi
    done
    port="${ports[5]}"
    workdir="$(mktemp -d)"
    "$reborn" up --no-push --dir "$workdir/up" --zk-port "${ports[0]}" \
        --redis-ports "${ports[1]},${ports[2]},${ports[3]},${ports[4]}" \
        --proxy "127.0.0.1:$port" --proxy-admin "127.0.0.1:${ports[6]}" \
        --dashboard "127.0.0.1:${ports[7]}" >"$workdir/up.log" 2>&1 </dev/null &
    server_pid=$!
    # Ready when the proxy answers a data command (it serves slot traffic only
    # once it has the topology and a ZooKeeper lease).
    for _ in $(seq 1 600); do
        if [ "$(redis-cli -p "$port" set redis-suite:ready 1 2>/dev/null)" = "OK" ]; then ready=1; break; fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    redis-cli -p "$port" del redis-suite:ready >/dev/null 2>&1 || true
    if [ "$ready" -ne 1 ]; then
        say "reborn up did not serve on 127.0.0.1:$port; its output (without backtraces):"
        grep -vE '^ +(at |[0-9]+: )' "$workdir/up.log" | tail -n 30 >&2
        cleanup
        server_pid="" workdir=""
        return 1
    fi
    say "reborn up (proxy 127.0.0.1:$port, pid $server_pid, logs $workdir/up)"
}
if [ -n "$reborn" ]; then
    # A second try on other ports: the cluster is the yardstick's stand, not
    # what is measured.
    start_reborn || start_reborn || exit 2
fi
if ! port_open "$host" "$port"; then
    say "nothing listens on $host:$port"
    exit 2
fi

# --- the units --------------------------------------------------------------------
logs="$CACHE/logs-$label"
failures="$CACHE/failures-$label.txt"
summary="$CACHE/summary-$label.txt"
rm -rf "$logs"
mkdir -p "$logs"
: >"$failures"
say "runtest --host $host --port $port --singledb --cluster-mode --tags \"$DENY_TAGS\" (one unit at a time, ${unit_timeout}s each)"

# runtest listens for its test clients just below --baseport: a port of our
# own, so two runs at once (two checkouts, a developer and CI) do not collide.
baseport="${REDIS_SUITE_BASEPORT:-$((20064 + (RANDOM % 190) * 64))}"
total_pass=0 total_fail=0 total_skip=0
table="$(printf '%-20s %6s %6s %6s %6s  %s' unit passed failed skipped secs status)"
printf '%s\n' "$table"
for u in "${units[@]}"; do
    log="$logs/${u//\//_}.log"
    start=$SECONDS
    rc=0
    # timeout signals its whole process group: runtest's test client too.
    (cd "$SRC" && TERM=dumb timeout --kill-after=10 "$unit_timeout" ./runtest \
        --host "$host" --port "$port" --singledb --cluster-mode --clients 1 \
        --timeout "$unit_timeout" --tags "$DENY_TAGS" --single "unit/$u" \
        --baseport "$baseport") \
        >"$log" 2>&1 </dev/null || rc=$?
    secs=$((SECONDS - start))
    pass=$(grep -c '^\[ok\]: ' "$log" || true)
    fail=$(grep -c '^\[err\]: ' "$log" || true)
    skip=$(grep -cE '^\[(skip|ignore)\]: ' "$log" || true)
    # A failing test: its name, then the first line of its message.
    awk -v unit="$u" '
        /^\[err\]: / { name = substr($0, 8); sub(/ in tests\/unit\/.*$/, "", name); want = 1; next }
        want { printf "%s\t%s\t%s\n", unit, name, $0; want = 0 }' "$log" >>"$failures"
    if grep -q '^\[exception\]: ' "$log"; then
        # The unit stopped here: an error outside an assertion (e.g. a refused
        # command in its set-up). Its message is on the next lines.
        # runtest prints the message, then a Tcl stack whose first quoted
        # line after "invoked from within" is the test's command (`r ...`).
        msg="$(sed -n 's/^\[exception\]: Executing test client: \(.*\)\.$/\1/p' "$log" | head -n 1)"
        cmd="$(awk '/^ *invoked from within$/ { getline; print substr($0, 1, 80); exit }' "$log")"
        status="stopped at ${cmd:-?}: ${msg}"
        printf '%s\t(unit stopped at %s)\t%s\n' "$u" "${cmd:-?}" "$msg" >>"$failures"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="timed out after ${unit_timeout}s"
        printf '%s\t(unit timed out)\t%ss\n' "$u" "$unit_timeout" >>"$failures"
    elif [ "$rc" -eq 1 ] && [ "$fail" -gt 0 ]; then
        status="ran, with failures"
    elif [ "$rc" -ne 0 ]; then
        status="exit $rc"
    else
        status="ok"
    fi
    line="$(printf '%-20s %6d %6d %6d %6d  %s' "$u" "$pass" "$fail" "$skip" "$secs" "$status")"
    printf '%s\n' "$line"
    table+=$'\n'"$line"
    total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) total_skip=$((total_skip + skip))
done
printf '%s\n' "$table" >"$summary"
say "failing tests: $failures; logs: $logs/"
echo "redis-suite: $total_pass passed, $total_fail failed, $total_skip skipped"
echo "redis-suite: $total_pass passed, $total_fail failed, $total_skip skipped" >>"$summary"

if [ -n "$min_pass" ] && [ "$total_pass" -lt "$min_pass" ]; then
    say "fewer than $min_pass tests passed"
    exit 1
fi
exit 0
