#!/usr/bin/env bash
# Slot migration under client load, end to end: `reborn up`, BENCH_KEYS small keys loaded
# through the proxy, then `reborn admin migrate` moves BENCH_SLOTS from group 1 to group 2
# while redis-benchmark (P1) keeps reading and writing those keys through the proxy.
#
#   scripts/bench_migration.sh                          # full run: 1M keys, slots 0-255 (~250k keys)
#   BENCH_KEYS=200000 BENCH_BASELINE_SECS=4 scripts/bench_migration.sh   # quick run
#
# The full run takes about 40 s on 2 cores after the build. It first runs
# scripts/install-deps.sh (redis, ZooKeeper, Rust if missing; nothing else) and
# `cargo build --release`. redis-benchmark and redis-cli come with redis-tools; python3, when
# present, only cross-checks how many keys the slots hold (crc32 % 1024).
#
# Environment (all optional):
#   BENCH_OPEN_RATE      requests/s of the open-loop load (`reborn load`, half SET, half GET,
#                        latency from each request's intended send time); 0 runs the
#                        closed-loop redis-benchmark load described below instead  default 10000
#   BENCH_KEYS           keys loaded (key:000000000000 ... , 16-byte values)     default 1000000
#   BENCH_SLOTS          slots to move, `A-B` or `N`, all owned by group 1       default 0-255
#   BENCH_CLIENTS        redis-benchmark -c of each of the two loads (SET, GET)  default 5
#   BENCH_CHUNK          requests per redis-benchmark run (see "Load" below)     default 10000
#   BENCH_BASELINE_SECS  how long the baseline load runs before the migration    default 10
#   BENCH_MIGRATE_TIMEOUT  seconds to wait for the task to be done               default 900
#   BENCH_PROXY_THREADS  passed to `reborn up --proxy-threads`                   default: reborn up's
#   BENCH_DASHBOARD_CONFIG  passed to `reborn up --dashboard-config` (e.g. a file with a
#                        [migration] section to try other batch/pacing settings)  default: none
#   BENCH_REBORN         a reborn binary to run instead of building this tree (A/B runs
#                        against another commit's `cargo build --release`)          default: none
#   BENCH_REDIS_CONFIG   `CONFIG SET` pairs for all four redis-servers once they are up, e.g.
#                        "appendonly no" (reborn up gives them an AOF, fsync every second)  default: none
#   BENCH_PIN            "R/P": once everything runs, pin the four redis-servers and ZooKeeper to
#                        CPU list R and reborn up (proxy, dashboard, migrator), the load
#                        generator and this script to CPU list P (taskset), e.g. "1/0", to try a
#                        host where the redis-servers do not share cores with the proxy  default: none
#   BENCH_KEEP=1         keep the work dir (reborn up logs, raw redis-benchmark output)
#
# Ports (fixed, so it never collides with a default `reborn up` or the other benchmarks, and
# below the kernel's ephemeral range, where a client connection's TIME_WAIT can hold a port):
#   ZooKeeper 25181, redis 25379-25382 (group 1 = 25379 + replica 25380, group 2 = 25381 +
#   replica 25382), proxy 25900, proxy admin 25080, dashboard 25087.
#
# Open-loop load (the default, issue 10 part 6): `reborn load --rate $BENCH_OPEN_RATE` runs from
# the baseline until the task is done, writing every request's intended send time and latency;
# "before" = the baseline phase (after its first second, up to BENCH_BASELINE_SECS: the script's
# steps between that and the submit are in neither), "during" = requests intended between
# submit and done. Targets: keys/s >= 20,000 and p99 during <= 2x p99 before. The report also
# counts the baseline's whole seconds with a p99 over 3x their median: a host stall there raises
# the p99 before and flatters the ratio.
#
# Closed-loop load (BENCH_OPEN_RATE=0): two loops side by side, one of `-t set`, one of `-t get`, each redis-benchmark
# -c $BENCH_CLIENTS -P 1 -r $BENCH_KEYS -d 16 (10 clients in all by default) run as back-to-back
# short runs of $BENCH_CHUNK requests (redis-benchmark prints its percentiles only at the end of
# a run, so short runs give a latency time series, for both commands at once). The keys
# it touches (key:%012d below BENCH_KEYS) are exactly the loaded ones, so its SETs overwrite and
# the key count stays BENCH_KEYS. "before" = the runs of the baseline phase; "during" = every
# run of the second phase whose time span overlaps the task (submit .. done). Reported: the
# median of the runs' p50 and p99 before, the median p50 and the WORST run's p99 during (the
# switch or the on-access moves may hit one run only); the ratio is worst-during / median-before.
#
# keys/s = keys that left group 1 (DBSIZE before - after, which also counts keys the proxy
# moved on access) / task wall time (from `reborn admin migrate` until its `--wait` sees the task
# done; it asks every 0.1 s). The migrator's own progress.moved is shown beside it.
#
# Exit code: 0 when everything ran, whether or not the performance targets were met (it is a
# report); 1 when something failed to run, when a key was lost or duplicated, or when a client
# got an error reply (redis-benchmark exits on the first one): those are bugs. Everything it
# started is stopped on exit, Ctrl-C or failure. The report is also written to
# /tmp/reborn-bench-migration-report.txt.
set -euo pipefail
export LC_ALL=C   # "." in $EPOCHREALTIME and printf

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEYS=${BENCH_KEYS:-1000000}
SLOTS=${BENCH_SLOTS:-0-255}
CLIENTS=${BENCH_CLIENTS:-5}
CHUNK=${BENCH_CHUNK:-10000}
BASE_SECS=${BENCH_BASELINE_SECS:-10}
MIG_TIMEOUT=${BENCH_MIGRATE_TIMEOUT:-900}
OPEN_RATE=${BENCH_OPEN_RATE:-10000}
VALUE_SIZE=16
FROM_GROUP=1
TO_GROUP=2

ZK_PORT=25181
REDIS_PORTS=(25379 25380 25381 25382)
SRC_PORT=${REDIS_PORTS[0]}   # master of group 1
DST_PORT=${REDIS_PORTS[2]}   # master of group 2
PROXY_PORT=25900
PROXY_ADMIN_PORT=25080
DASH_PORT=25087
DASH=127.0.0.1:$DASH_PORT
REPORT_COPY=/tmp/reborn-bench-migration-report.txt

# Target from the issue.
TARGET_KEYS_PER_SEC=50000
TARGET_P99_RATIO=3
# Open-loop targets (issue 10, part 6).
TARGET_OPEN_KEYS_PER_SEC=20000
TARGET_OPEN_P99_RATIO=2

[[ $SLOTS =~ ^([0-9]+)(-([0-9]+))?$ ]] || { echo "BENCH_SLOTS must be A-B or N, not '$SLOTS'" >&2; exit 1; }
SLOT_A=${BASH_REMATCH[1]}
SLOT_B=${BASH_REMATCH[3]:-$SLOT_A}

WORK=$(mktemp -d /tmp/reborn-bench-migration.XXXXXX)
RAW=$WORK/raw
mkdir -p "$RAW"
UP_PID=""
LOAD_PID=""
LOOP_PIDS=()
UP_CHILDREN=()

LOG_TAG=bench-migration
# shellcheck source=scripts/lib/proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/proc.sh"

# ---------------------------------------------------------------- cleanup ---------------



stop_loops() {   # the background load loops and the redis-benchmark runs they wait for
    local loop pid
    touch "$WORK/stop.before" "$WORK/stop.during"
    for loop in "${LOOP_PIDS[@]}"; do
        alive "$loop" || continue
        for pid in $(pgrep -P "$loop" || true); do stop_pid "$pid" 3; done   # its `timeout`
        stop_pid "$loop" 3
    done
    LOOP_PIDS=()
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    stop_loops
    stop_pid "${LOAD_PID:-}" 3
    # reborn up stops its proxy, dashboard, redis-servers and ZooKeeper itself on SIGTERM.
    stop_pid "$UP_PID" 30
    for pid in "${UP_CHILDREN[@]}"; do stop_pid "$pid" 3; done
    end_cleanup "$rc"
}
trap_cleanup

# ---------------------------------------------------------------- helpers ---------------

# http_get PORT PATH: prints the body of a 200 answer (HTTP/1.0 over bash's /dev/tcp, so
# neither curl nor jq is needed).
http_get() {
    local resp
    resp=$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        timeout 5 cat <&3
    ) || return 1
    [[ $resp == "HTTP/1."?" 200"* ]] || return 1
    printf '%s' "${resp#*$'\r\n\r\n'}"
}

# json_str/json_num FIELD JSON: the value of the last "FIELD" in JSON (enough for the one
# task of this fresh cluster).
json_str() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$2" | head -n 1; }
json_num() { sed -n "s/.*\"$1\":\\([0-9]*\\).*/\\1/p" <<<"$2" | head -n 1; }

dbsize() { redis-cli -p "$1" DBSIZE; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }
# cmd_errors NAME: errors the proxy counted for command NAME (its /stats JSON)
cmd_errors() {
    local stats
    stats=$(http_get "$PROXY_ADMIN_PORT" /stats) || { echo 0; return; }
    sed -n "s/.*{\"name\":\"$1\",\"calls\":[0-9]*,\"errors\":\\([0-9]*\\).*/\\1/p" <<<"$stats" | head -n 1 | grep . || echo 0
}


proxy_serves() {   # a write, a read and a delete through the proxy reach a backend
    [[ $(redis-cli -p "$PROXY_PORT" SET reborn:bench:probe 1) == OK ]] &&
        [[ $(redis-cli -p "$PROXY_PORT" GET reborn:bench:probe) == 1 ]] &&
        [[ $(redis-cli -p "$PROXY_PORT" DEL reborn:bench:probe) == 1 ]]
}

# ---------------------------------------------------------------- setup -----------------

"$ROOT/scripts/install-deps.sh"
if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if [[ -n ${BENCH_REBORN:-} ]]; then
    REBORN=$BENCH_REBORN   # an A/B run against another build; nothing is built
    [[ -x $REBORN ]] || { echo "BENCH_REBORN=$REBORN is not an executable" >&2; exit 1; }
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release)
    REBORN=$ROOT/target/release/reborn
fi

start_reborn() {
    local ports extra=()
    ports=$(IFS=,; echo "${REDIS_PORTS[*]}")
    [[ -z ${BENCH_PROXY_THREADS:-} ]] || extra+=(--proxy-threads "$BENCH_PROXY_THREADS")
    [[ -z ${BENCH_DASHBOARD_CONFIG:-} ]] || extra+=(--dashboard-config "$BENCH_DASHBOARD_CONFIG")
    log "starting reborn up (ZooKeeper :$ZK_PORT, redis :$ports, proxy :$PROXY_PORT, dashboard :$DASH_PORT)"
    "$REBORN" up --no-push --zk-port "$ZK_PORT" --redis-ports "$ports" \
        --proxy "127.0.0.1:$PROXY_PORT" --proxy-admin "127.0.0.1:$PROXY_ADMIN_PORT" \
        --dashboard "$DASH" --dir "$WORK/up" "${extra[@]}" >"$WORK/reborn-up.log" 2>&1 &
    UP_PID=$!
    if ! wait_for "reborn up" 120 "$UP_PID" grep -q 'is running' "$WORK/reborn-up.log" ||
        ! wait_for "reborn proxy" 60 "$UP_PID" proxy_serves ||
        ! wait_for "dashboard" 60 "$UP_PID" http_get "$DASH_PORT" /api/slots; then
        log "reborn up log (last 30 lines):"
        tail -n 30 "$WORK/reborn-up.log" >&2 || true
        die "reborn up did not come up (proxy :$PROXY_PORT, dashboard :$DASH_PORT)"
    fi
    # Safety net for cleanup: reborn up's children (redis, ZooKeeper, their orphan guards).
    mapfile -t UP_CHILDREN < <(pgrep -P "$UP_PID" || true)
}

# The slots must all be online in group 1 (a fresh `reborn up` gives it 0-511).
check_slots() {
    local slots
    slots=$(http_get "$DASH_PORT" /api/slots) || die "GET /api/slots failed"
    tr '{' '\n' <<<"$slots" | awk -v a="$SLOT_A" -v b="$SLOT_B" -v g="$FROM_GROUP" '
        match($0, /"start":[0-9]+/) { s = substr($0, RSTART + 8, RLENGTH - 8) + 0 }
        match($0, /"end":[0-9]+/)   { e = substr($0, RSTART + 6, RLENGTH - 6) + 0 }
        /"state":"online"/ && $0 ~ "\"group\":" g "," && s <= a && b <= e { ok = 1 }
        END { exit !ok }' ||
        die "slots $SLOT_A-$SLOT_B are not all online in group $FROM_GROUP: $slots"
}

load_keys() {
    local out t0
    (($(dbsize "$SRC_PORT") + $(dbsize "$DST_PORT") == 0)) || die "the masters are not empty before loading"
    log "loading $KEYS keys through the proxy (redis-cli --pipe)"
    t0=$EPOCHREALTIME
    out=$(awk -v n="$KEYS" -v size="$VALUE_SIZE" 'BEGIN {
            for (i = 0; i < n; i++) {
                k = sprintf("key:%012d", i); v = sprintf("%0" size "d", i)
                printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v
            } }' | timeout 900 redis-cli -p "$PROXY_PORT" --pipe 2>&1) ||
        die "loading failed: $out"
    grep -q "errors: 0, replies: $KEYS\$" <<<"$out" || die "loading: unexpected redis-cli --pipe result: $out"
    LOAD_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    G1_BEFORE=$(dbsize "$SRC_PORT")
    G2_BEFORE=$(dbsize "$DST_PORT")
    ((G1_BEFORE + G2_BEFORE == KEYS)) ||
        die "after loading, DBSIZE $G1_BEFORE + $G2_BEFORE != $KEYS"
    log "loaded in ${LOAD_SECS}s: group 1 holds $G1_BEFORE keys, group 2 $G2_BEFORE"
}

# Keys of the slots, computed independently (crc32 % 1024) when python3 is around.
expected_in_slots() {
    command -v python3 >/dev/null 2>&1 || { echo "-"; return; }
    python3 - "$KEYS" "$SLOT_A" "$SLOT_B" <<'EOF'
import sys, zlib
n, a, b = map(int, sys.argv[1:])
print(sum(1 for i in range(n) if a <= zlib.crc32(b"key:%012d" % i) % 1024 <= b))
EOF
}

# ---------------------------------------------------------------- load ------------------

# bench_loop PHASE CMD: back-to-back redis-benchmark runs of CMD until $WORK/stop.PHASE
# exists. One line per run in $WORK/runs.CMD: PHASE INDEX CMD START END RC.
bench_loop() {
    local phase=$1 cmd=$2 i=0 start end rc
    while [[ ! -e $WORK/stop.$phase ]]; do
        start=$EPOCHREALTIME
        rc=0
        timeout 300 redis-benchmark -p "$PROXY_PORT" -c "$CLIENTS" -n "$CHUNK" -r "$KEYS" \
            -d "$VALUE_SIZE" -P 1 -t "$cmd" --csv \
            >"$RAW/$phase.$cmd.$i.csv" 2>"$RAW/$phase.$cmd.$i.err" || rc=$?
        end=$EPOCHREALTIME
        echo "$phase $i $cmd $start $end $rc" >>"$WORK/runs.$cmd"
        i=$((i + 1))
    done
}
start_loops() {   # start_loops PHASE (closed loop only; the open loop runs throughout)
    local cmd
    ((OPEN_RATE == 0)) || return 0
    for cmd in SET GET; do
        bench_loop "$1" "$cmd" &
        LOOP_PIDS+=($!)
    done
}
wait_loops() {   # wait_loops PHASE: stop after the current runs
    local pid
    touch "$WORK/stop.$1"
    for pid in "${LOOP_PIDS[@]}"; do wait "$pid"; done
    LOOP_PIDS=()
}

# ---------------------------------------------------------------- run -------------------

start_reborn
if [[ -n ${BENCH_REDIS_CONFIG:-} ]]; then
    for port in "${REDIS_PORTS[@]}"; do
        # shellcheck disable=SC2086   # the pairs are words on purpose
        out=$(redis-cli -p "$port" CONFIG SET $BENCH_REDIS_CONFIG 2>&1)
        [[ $out == OK ]] || die "redis :$port CONFIG SET $BENCH_REDIS_CONFIG: $out"
    done
    log "every redis-server: CONFIG SET $BENCH_REDIS_CONFIG"
fi
check_slots
load_keys
EXPECTED=$(expected_in_slots)
SRC_PID=$(redis_pid "$SRC_PORT")
DST_PID=$(redis_pid "$DST_PORT")
SRC_REPLICA_PID=$(redis_pid "${REDIS_PORTS[1]}")
DST_REPLICA_PID=$(redis_pid "${REDIS_PORTS[3]}")

if ((OPEN_RATE > 0)); then
    log "baseline: ${BASE_SECS}s of open-loop load, $OPEN_RATE requests/s (reborn load)"
    T_LOAD_START=$EPOCHREALTIME
    "$REBORN" load --addr "127.0.0.1:$PROXY_PORT" --rate "$OPEN_RATE" --secs 100000 --keys "$KEYS" \
        --value-size "$VALUE_SIZE" --samples "$WORK/samples" --stop-file "$WORK/stop.load" \
        >"$WORK/load.csv" 2>"$WORK/load.err" &
    LOAD_PID=$!
else
    log "baseline: ${BASE_SECS}s of redis-benchmark runs (SET and GET side by side, -c $CLIENTS -P 1 -n $CHUNK each)"
fi
if [[ -n ${BENCH_PIN:-} ]]; then
    [[ $BENCH_PIN == */* ]] || die "BENCH_PIN=$BENCH_PIN: want REDIS_CPUS/REBORN_CPUS, e.g. 1/0"
    command -v taskset >/dev/null || die "BENCH_PIN needs taskset (util-linux)"
    PIN_REDIS=${BENCH_PIN%%/*}
    PIN_REBORN=${BENCH_PIN#*/}
    for pid in "$SRC_PID" "$DST_PID" "$SRC_REPLICA_PID" "$DST_REPLICA_PID" $(pgrep -P "$UP_PID" java || true); do
        taskset -apc "$PIN_REDIS" "$pid" >/dev/null || die "taskset $PIN_REDIS $pid"
    done
    # This shell too, so what it starts later (redis-benchmark loops, admin migrate) inherits it.
    for pid in "$UP_PID" ${LOAD_PID:+"$LOAD_PID"} $$; do
        taskset -apc "$PIN_REBORN" "$pid" >/dev/null || die "taskset $PIN_REBORN $pid"
    done
    log "pinned: redis-servers and ZooKeeper to CPUs $PIN_REDIS, reborn up, the load and this script to CPUs $PIN_REBORN"
fi
LOAD_BEFORE=$(loadavg)
start_loops before
nap "$BASE_SECS"
# The open-loop "before" ends here: the steps below (curl, redis-cli, /proc reads) cost the
# load a burst of slow requests of their own (~150 in one run), which belong to neither phase.
T_BASE_END=$EPOCHREALTIME
wait_loops before

log "migration: the same load, then reborn admin migrate --slots $SLOT_A-$SLOT_B --to $TO_GROUP"
ERR_SET0=$(cmd_errors set)
ERR_GET0=$(cmd_errors get)
redis-cli -p "$SRC_PORT" CONFIG RESETSTAT >/dev/null   # commandstats/latencystats of the task only
start_loops during
nap 1
LOAD_DURING_START=$(loadavg)
declare -A CPU0
LOAD_CPU_PID=$LOAD_PID   # LOAD_PID is cleared once the load stops; the report still names it
CPU_PIDS=("$SRC_PID" "$DST_PID" "$SRC_REPLICA_PID" "$DST_REPLICA_PID" "$UP_PID" ${LOAD_CPU_PID:+"$LOAD_CPU_PID"})
for p in "${CPU_PIDS[@]}"; do CPU0[$p]=$(cpu_ticks "$p"); done
T_SUBMIT=$EPOCHREALTIME
# One process follows the task (`--wait` asks the dashboard every 0.1 s over HTTP): a polling
# loop of curl/sed/awk here forked ~10 processes per poll, and those bursts of CPU every ~120 ms
# were most of the latency this benchmark blamed on the migration.
timeout "$MIG_TIMEOUT" "$REBORN" admin migrate --slots "$SLOT_A-$SLOT_B" --to "$TO_GROUP" --dashboard "$DASH" \
    --wait >"$WORK/migrate.out" 2>&1 ||
    die "reborn admin migrate --wait failed or timed out after ${MIG_TIMEOUT}s: $(tail -n 3 "$WORK/migrate.out")
$(http_get "$DASH_PORT" /api/tasks)"
log "$(head -n 1 "$WORK/migrate.out")"
# "task N: <what> after S s" -> T_SUBMIT + S
at() {
    awk -v t="$T_SUBMIT" -v what="$1" 'index($0, what) { for (i = 1; i < NF; i++) if ($i == "after") { printf "%.6f", t + $(i + 1); exit } }' \
        "$WORK/migrate.out"
}
T_CLAIMED=$(at ": migrating after")
T_SWITCHED=$(at "keys moving after")
T_DONE=$(at ": done after")
[[ -n $T_DONE ]] || die "no end in the output of reborn admin migrate --wait: $(cat "$WORK/migrate.out")"
TASKS=$(http_get "$DASH_PORT" /api/tasks) || TASKS=""
declare -A CPU1
for p in "${CPU_PIDS[@]}"; do CPU1[$p]=$(cpu_ticks "$p"); done
LOAD_DURING_END=$(loadavg)
SRC_INFO=$(redis-cli -p "$SRC_PORT" INFO all | tr -d '\r')
if [[ -n $LOAD_PID ]]; then
    nap 1
    touch "$WORK/stop.load"
    wait "$LOAD_PID" || die "reborn load failed: $(cat "$WORK/load.err")"
    LOAD_PID=""
fi
wait_loops during
ERR_SET=$(($(cmd_errors set) - ERR_SET0))
ERR_GET=$(($(cmd_errors get) - ERR_GET0))
log "task done; load stopped"

# ---------------------------------------------------------------- results ---------------

G1_AFTER=$(dbsize "$SRC_PORT")
G2_AFTER=$(dbsize "$DST_PORT")
LEFT=$((G1_BEFORE - G1_AFTER))
ARRIVED=$((G2_AFTER - G2_BEFORE))
TASK_MOVED=$(json_num moved "$TASKS")
TASK_ERRORS=$(json_num errors "$TASKS")
secs() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.2f", b - a }'; }
# log_time REGEX: epoch time of the first reborn-up.log line matching REGEX (the dashboard
# and the proxy log every action they write and acknowledge), or "" when there is none.
log_time() {
    local ts
    ts=$(grep -m1 -E "$1" "$WORK/reborn-up.log" | awk '{ print $1 }') || true
    [[ -z $ts ]] || date -u -d "$ts" +%s.%N 2>/dev/null || true
}
T_PRE=$(log_time 'action written .*phase=PreMigrate')
T_PRE_ACK=$(log_time 'action acknowledged .*phase=PreMigrate')
T_MIG_ACK=$(log_time 'action acknowledged .*phase=Migrate ')
T_ONLINE=$(log_time 'action written .*phase=Online')
T_ONLINE_ACK=$(log_time 'action acknowledged .*phase=Online')
WALL=$(secs "$T_SUBMIT" "$T_DONE")
KPS=$(awk -v k="$LEFT" -v s="$WALL" 'BEGIN { printf "%d", k / s }')
KPS_TASK=$(awk -v k="$TASK_MOVED" -v s="$WALL" 'BEGIN { printf "%d", k / s }')
cpu_pct() { awk -v a="${CPU0[$1]}" -v b="${CPU1[$1]}" -v s="$WALL" 'BEGIN { printf "%d%%", (b - a) / s }'; }   # ticks/100 over s, in %

# One row per run: PHASE INDEX CMD START END RC RPS P50_US P99_US MAX_US. The runs of the
# second phase that overlap the task are "during", the others "outside".
while read -r phase i cmd start end rc; do
    if [[ $phase == during ]]; then
        awk -v s="$start" -v e="$end" -v a="$T_SUBMIT" -v b="$T_DONE" 'BEGIN { exit !(s < b && e > a) }' ||
            phase=outside
    fi
    row=$(awk -F'"' 'NR == 2 { printf "%s %d %d %d", $4, $10 * 1000 + 0.5, $14 * 1000 + 0.5, $16 * 1000 + 0.5 }' \
        "$RAW/${phase/outside/during}.$cmd.$i.csv" 2>/dev/null || true)
    echo "$phase $i $cmd $start $end $rc ${row:-- - - -}"
done < <(cat "$WORK/runs.SET" "$WORK/runs.GET" 2>/dev/null || true) >"$WORK/rows"

# What MIGRATE cost the source master (stats reset at submit): Redis runs MIGRATE
# synchronously, so its event loop serves nobody else while a batch travels to the target.
migrate_stats() {
    local calls usec lat
    calls=$(awk -F'[:=,]' '/^cmdstat_migrate:/ { print $3 }' <<<"$SRC_INFO")
    usec=$(awk -F'[:=,]' '/^cmdstat_migrate:/ { print $5 }' <<<"$SRC_INFO")
    lat=$(sed -n 's/^latency_percentiles_usec_migrate://p' <<<"$SRC_INFO")
    [[ -n $calls ]] || { echo "no MIGRATE counted"; return; }
    echo "$calls MIGRATE calls (migrator batches and on-access moves), $(awk -v u="$usec" -v s="$WALL" \
        'BEGIN { printf "%.2f s inside MIGRATE = %d%% of the task", u / 1e6, u / 1e4 / s }'), per call (us) ${lat:-?}"
}

# pstat PHASE CMD COLUMN median|max
pstat() {
    awk -v ph="$1" -v c="$2" -v f="$3" '$1 == ph && $3 == c && $(f) != "-" { print $(f) }' "$WORK/rows" |
        sort -g | awk -v fn="$4" '{ a[NR] = $1 }
            END {
                if (NR == 0) { print "-"; exit }
                if (fn == "max") print a[NR]
                else if (NR % 2) print a[(NR + 1) / 2]
                else printf "%d\n", (a[NR / 2] + a[NR / 2 + 1]) / 2
            }'
}
runs_of() { awk -v ph="$1" -v c="$2" '$1 == ph && $3 == c' "$WORK/rows" | wc -l; }

# Client errors: failed runs and anything on stderr but the harmless CONFIG warning.
: >"$WORK/client-errors"
while read -r phase i cmd start end rc _; do
    f=$RAW/${phase/outside/during}.$cmd.$i.err
    other=$(grep -v '^WARNING: Could not fetch server CONFIG' "$f" || true)
    if [[ $rc != 0 || -n $other ]]; then
        printf '%s run %s (%s, %s..%s s after submit) exit %s: %s\n' "$phase" "$i" "$cmd" \
            "$(secs "$T_SUBMIT" "$start")" "$(secs "$T_SUBMIT" "$end")" "$rc" \
            "$(tr '\n' ' ' <<<"$other")" >>"$WORK/client-errors"
    fi
done <"$WORK/rows"
N_CLIENT_ERRORS=$(wc -l <"$WORK/client-errors")

pf() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { if (v == "-") print "FAIL"; else if (op == "ge") print (v >= t ? "PASS" : "FAIL"); else print (v <= t ? "PASS" : "FAIL") }'; }

DATA_OK=PASS
((G1_AFTER + G2_AFTER == KEYS)) || DATA_OK=FAIL
((LEFT == ARRIVED)) || DATA_OK=FAIL
[[ $EXPECTED == - || $EXPECTED == "$LEFT" ]] || DATA_OK=FAIL

# open_stat FROM TO: "p50 p99 p999 max errors count" (us) of the requests intended in [FROM, TO) (epoch s)
open_stat() {
    awk -v a="$1" -v b="$2" '{ t = $1 / 1e6 } t >= a && t < b { print $2; e += $3 } END { print "E " e + 0 > "/dev/stderr" }' \
        "$WORK/samples" 2>"$WORK/open.errors" | sort -n | awk '{ v[NR] = $1 }
        END {
            if (NR == 0) { print "- - - - 0"; exit }
            printf "%d %d %d %d %d\n", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], v[int(NR * 0.999) + 1], v[NR], NR
        }'
    awk '{ print $2 }' "$WORK/open.errors"
}

if ((OPEN_RATE > 0)); then
    read -r B50 B99 B999 BMAX BN < <(open_stat "$(awk -v t="$T_LOAD_START" 'BEGIN { printf "%.6f", t + 1 }')" "$T_BASE_END")
    # Errors count over the whole time before the submit: a failed request is one wherever it falls.
    BERR=$(open_stat "$T_LOAD_START" "$T_SUBMIT" | tail -n 1)
    read -r D50 D99 D999 DMAX DN < <(open_stat "$T_SUBMIT" "$T_DONE")
    DERR=$(open_stat "$T_SUBMIT" "$T_DONE" | tail -n 1)
    R99=$(ratio "$D99" "$B99")
    # How calm the baseline was: its whole seconds (load.csv lines, each the second before its
    # time) whose p99 exceeds 3x their median. A host stall in the baseline raises the p99
    # before, which flatters the ratio.
    read -r BSECS BMED BNOISY < <(awk -F, -v a="$T_LOAD_START" -v b="$T_BASE_END" \
        'NR > 1 && $2 > 0 && $1 / 1000 - 1 >= a + 1 && $1 / 1000 <= b { print $5 }' "$WORK/load.csv" | sort -n |
        awk '{ v[++n] = $1 } END { m = n ? v[int((n + 1) / 2)] : 0; for (i = 1; i <= n; i++) c += v[i] > 3 * m; print n + 0, m, c + 0 }')
    {
        echo "reborn slot migration under an open-loop load: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
        echo "keys $KEYS (16-byte values), slots $SLOT_A-$SLOT_B group $FROM_GROUP -> $TO_GROUP; load: reborn load" \
            "--rate $OPEN_RATE (half SET, half GET, 10 connections), latency from each request's intended send time"
        echo "load average (1 min): before $LOAD_BEFORE, at submit $LOAD_DURING_START, at done $LOAD_DURING_END"
        echo "keys: left group 1 $LEFT, arrived in group 2 $ARRIVED, expected (crc32) $EXPECTED, after: $((G1_AFTER + G2_AFTER))"
        echo "source master over the task: $(migrate_stats)"
        echo "task timeline (s after submit), from admin migrate --wait: claimed $(secs "$T_SUBMIT" "$T_CLAIMED")," \
            "keys moving $(secs "$T_SUBMIT" "$T_SWITCHED"), done $WALL"
        echo "CPU over the task (100% = one core): source master $(cpu_pct "$SRC_PID"), its replica $(cpu_pct "$SRC_REPLICA_PID")," \
            "target master $(cpu_pct "$DST_PID"), its replica $(cpu_pct "$DST_REPLICA_PID"), reborn up (proxy + dashboard) $(cpu_pct "$UP_PID")," \
            "reborn load $(cpu_pct "$LOAD_CPU_PID")"
        echo
        printf '%-30s %12s %12s %8s %-10s %s\n' metric before during ratio target pass/fail
        printf '%-30s %12s %12s %8s %-10s %s\n' "requests" "$BN" "$DN" - - -
        printf '%-30s %12s %12s %8s %-10s %s\n' "seconds (submit -> done)" - "$WALL" - - -
        printf '%-30s %12s %12s %8s %-10s %s\n' "keys/s" - "$KPS" - ">=$TARGET_OPEN_KEYS_PER_SEC" \
            "$(pf "$KPS" "$TARGET_OPEN_KEYS_PER_SEC" ge)"
        printf '%-30s %12s %12s %8s %-10s %s\n' "p50 us" "$B50" "$D50" "$(ratio "$D50" "$B50")" - -
        printf '%-30s %12s %12s %8s %-10s %s\n' "p99 us" "$B99" "$D99" "$R99" "<=${TARGET_OPEN_P99_RATIO}x" \
            "$(pf "$R99" "$TARGET_OPEN_P99_RATIO" le)"
        printf '%-30s %12s %12s %8s %-10s %s\n' "p99.9 us" "$B999" "$D999" "$(ratio "$D999" "$B999")" - -
        printf '%-30s %12s %12s %8s %-10s %s\n' "max us" "$BMAX" "$DMAX" "$(ratio "$DMAX" "$BMAX")" - -
        printf '%-30s %12s %12s %8s %-10s %s\n' "client errors" "$BERR" "$DERR" - 0 \
            "$( ((BERR + DERR == 0)) && echo PASS || echo FAIL)"
        printf '%-30s %12s %12s %8s %-10s %s\n' "nothing lost (sum, moved = expected)" "$KEYS" "$((G1_AFTER + G2_AFTER))" - - "$DATA_OK"
        echo "baseline: $BNOISY of $BSECS whole seconds had a p99 over 3x their median ($BMED us)$( ((BNOISY)) &&
            echo "; a noisy baseline raises the p99 before, and a ratio under 2x then says little")"
        echo
        echo "per second (unix ms, requests, errors, p50/p99/max us):"
        sed 's/^/  /' "$WORK/load.csv"
    } | tee "$WORK/report.txt"
    cp "$WORK/report.txt" "$REPORT_COPY"
    log "report written to $REPORT_COPY"
    if [[ $DATA_OK != PASS ]] || ((BERR + DERR)); then
        log "FAILED: keys lost or duplicated, or clients got errors (see above)"
        exit 1
    fi
    exit 0
fi

{
    echo "reborn slot migration under load: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
        "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "keys $KEYS (16-byte values, loaded in ${LOAD_SECS}s), slots $SLOT_A-$SLOT_B group $FROM_GROUP -> $TO_GROUP;" \
        "load: redis-benchmark -c $CLIENTS -P 1 -r $KEYS -d $VALUE_SIZE, SET and GET side by side, runs of $CHUNK requests"
    echo "load average (1 min): before $LOAD_BEFORE, at submit $LOAD_DURING_START, at done $LOAD_DURING_END"
    echo
    echo "task timeline (s after submit), from admin migrate --wait: claimed $(secs "$T_SUBMIT" "$T_CLAIMED")," \
        "keys moving $(secs "$T_SUBMIT" "$T_SWITCHED"), done $WALL"
    echo "  from reborn-up.log: pre_migrate written $(secs "$T_SUBMIT" "$T_PRE"), acked $(secs "$T_SUBMIT" "$T_PRE_ACK")," \
        "migrate acked $(secs "$T_SUBMIT" "$T_MIG_ACK") (slots held at most $(secs "$T_PRE" "$T_MIG_ACK") s)," \
        "online written $(secs "$T_SUBMIT" "$T_ONLINE") (keys moving $(secs "$T_MIG_ACK" "$T_ONLINE")), online acked $(secs "$T_SUBMIT" "$T_ONLINE_ACK")"
    echo "keys: left group 1 $LEFT, arrived in group 2 $ARRIVED, expected (crc32) $EXPECTED," \
        "migrator progress.moved $TASK_MOVED (errors ${TASK_ERRORS:-0}); after: $G1_AFTER + $G2_AFTER = $((G1_AFTER + G2_AFTER))"
    echo "CPU over the task (100% = one core): source master $(cpu_pct "$SRC_PID"), its replica $(cpu_pct "$SRC_REPLICA_PID")," \
        "target master $(cpu_pct "$DST_PID"), its replica $(cpu_pct "$DST_REPLICA_PID"), reborn up (proxy + dashboard) $(cpu_pct "$UP_PID")"
    echo "source master over the task: $(migrate_stats)"
    echo "runs: before $(runs_of before SET) SET + $(runs_of before GET) GET; overlapping the task" \
        "$(runs_of during SET) SET + $(runs_of during GET) GET"
    echo
    printf '%-38s %12s %12s %8s %-10s %s\n' metric before during ratio target pass/fail
    printf '%-38s %12s %12s %8s %-10s %s\n' "keys moved" - "$LEFT" - - -
    printf '%-38s %12s %12s %8s %-10s %s\n' "seconds (submit -> done)" - "$WALL" - - -
    printf '%-38s %12s %12s %8s %-10s %s\n' "keys/s" - "$KPS" - ">=$TARGET_KEYS_PER_SEC" "$(pf "$KPS" "$TARGET_KEYS_PER_SEC" ge)"
    printf '%-38s %12s %12s %8s %-10s %s\n' "keys/s by progress.moved" - "$KPS_TASK" - - -
    for c in SET GET; do
        b50=$(pstat before $c 8 median) d50=$(pstat during $c 8 median)
        b99=$(pstat before $c 9 median) d99=$(pstat during $c 9 max) d99m=$(pstat during $c 9 median)
        bmax=$(pstat before $c 10 max) dmax=$(pstat during $c 10 max)
        brps=$(pstat before $c 7 median) drps=$(pstat during $c 7 median)
        r99=$(ratio "$d99" "$b99")
        printf '%-38s %12s %12s %8s %-10s %s\n' "$c ops/s (median run)" "$brps" "$drps" "$(ratio "$drps" "$brps")" - -
        printf '%-38s %12s %12s %8s %-10s %s\n' "$c p50 us (median run)" "$b50" "$d50" "$(ratio "$d50" "$b50")" - -
        printf '%-38s %12s %12s %8s %-10s %s\n' "$c p99 us (before median, during worst)" "$b99" "$d99" "$r99" \
            "<=${TARGET_P99_RATIO}x" "$(pf "$r99" "$TARGET_P99_RATIO" le)"
        printf '%-38s %12s %12s %8s %-10s %s\n' "$c p99 us (median run)" "$b99" "$d99m" "$(ratio "$d99m" "$b99")" - -
        printf '%-38s %12s %12s %8s %-10s %s\n' "$c max us (worst run)" "$bmax" "$dmax" "$(ratio "$dmax" "$bmax")" - -
    done
    printf '%-38s %12s %12s %8s %-10s %s\n' "client errors (runs that failed)" - "$N_CLIENT_ERRORS" - 0 \
        "$( ((N_CLIENT_ERRORS == 0)) && echo PASS || echo FAIL)"
    printf '%-38s %12s %12s %8s %-10s %s\n' "proxy /stats errors, SET / GET" - "$ERR_SET / $ERR_GET" - 0 \
        "$( ((ERR_SET + ERR_GET == 0)) && echo PASS || echo FAIL)"
    printf '%-38s %12s %12s %8s %-10s %s\n' "nothing lost (sum, moved = expected)" "$KEYS" "$((G1_AFTER + G2_AFTER))" - - "$DATA_OK"
    if ((N_CLIENT_ERRORS)); then
        echo
        echo "client errors:"
        cat "$WORK/client-errors"
    fi
    echo
    echo "per run (s after submit, us): phase cmd start end ops/s p50 p99 max"
    awk -v a="$T_SUBMIT" '{ printf "  %-6s %s %7.2f %7.2f %8s %6s %6s %7s%s\n", $1, $3, $4 - a, $5 - a, $7, $8, $9, $10, ($6 != 0 ? "  exit " $6 : "") }' "$WORK/rows"
} | tee "$WORK/report.txt"
cp "$WORK/report.txt" "$REPORT_COPY"
log "report written to $REPORT_COPY"

if [[ $DATA_OK != PASS ]] || ((N_CLIENT_ERRORS + ERR_SET + ERR_GET)); then
    log "FAILED: keys lost or duplicated, or clients got errors (see above)"
    exit 1
fi
