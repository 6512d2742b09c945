#!/usr/bin/env bash
# reborn benchmark: direct Redis vs reborn proxy (two groups) vs twemproxy, in one run.
#
#   scripts/bench.sh                                # full run (BENCH_N=2000000, 3 rounds)
#   BENCH_N=200000 BENCH_ROUNDS=1 scripts/bench.sh  # quick run (~2 min; the full run is ~20-25 min on 2 cores)
#
# Environment (all optional):
#   BENCH_N        requests per throughput run (redis-benchmark -n)      default 2000000
#   BENCH_ROUNDS   rounds per case; targets alternate within each round  default 3
#   BENCH_LAT_N    requests per -c 1 latency run                         default 50000
#   BENCH_IDLE     idle client sessions for the RSS case                 default 10000
#   BENCH_KEEP=1   keep the work dir (logs, raw redis-benchmark output)  default: removed
#   BENCH_PROXY_THREADS  passed to `reborn up --proxy-threads`           default: reborn up's
#
# What it does: installs missing Debian packages (redis-server, redis-tools, zookeeper,
# nutcracker), runs `cargo build --release`, starts `reborn up` (ZooKeeper, 2 groups of
# master + replica, the proxy in-process) and `nutcracker` in front of the same two
# masters, all on non-default ports so it never collides with a running `reborn up`:
#   ZooKeeper 22181, redis 26379-26382 (masters 26379, 26381), reborn proxy 29000
#   (admin 21080), nutcracker 22121 (stats 22122). "direct" = redis-benchmark at 26379.
# Cases (each round runs direct, reborn, twemproxy in turn; the median is reported):
#   SET/GET   -c 50 -r 100000 -n $BENCH_N  at -P 1 and at -P 16
#   MSET      -c 50 -r 100000 -n $BENCH_N  -t mset, -P 1
#   p50 latency of GET at -c 1 -n $BENCH_LAT_N
#   proxy CPU us/request (utime+stime from /proc/<pid>/stat) over the P16 runs
#   RSS per idle client (VmRSS before/after $BENCH_IDLE idle sessions, fresh processes)
# It prints a table with ratios and the targets. Missed targets still exit 0 (it is a
# report); it exits non-zero only if something failed to run. Everything it started is
# stopped on exit, Ctrl-C or failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_N:-2000000}
ROUNDS=${BENCH_ROUNDS:-3}
LAT_N=${BENCH_LAT_N:-50000}
IDLE=${BENCH_IDLE:-10000}

ZK_PORT=22181
REDIS_PORTS=(26379 26380 26381 26382)     # group 1: 26379 + replica 26380; group 2: 26381 + 26382
PROXY_PORT=29000
PROXY_ADMIN_PORT=21080
NC_PORT=22121
NC_STATS_PORT=22122
DIRECT_PORT=${REDIS_PORTS[0]}
TARGETS=(direct reborn twemproxy)
declare -A PORT=([direct]=$DIRECT_PORT [reborn]=$PROXY_PORT [twemproxy]=$NC_PORT)

WORK=$(mktemp -d /tmp/reborn-bench.XXXXXX)
RES=$WORK/results          # one file per metric/target, one value per round
mkdir -p "$RES"
UP_PID="" NC_PID="" IDLE_PID="" BENCH_PID=""
UP_CHILDREN=()
FAILURES=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
fail() { log "FAILED: $*"; FAILURES+=("$*"); }

# ---------------------------------------------------------------- cleanup ---------------

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

stop_pid() {   # stop_pid PID GRACE_SECONDS: SIGTERM, wait, then SIGKILL
    local pid=$1 grace=$2 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do alive "$pid" || return 0; sleep 0.1; done
    log "pid $pid did not stop after ${grace}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    stop_pid "$BENCH_PID" 2
    stop_pid "$IDLE_PID" 2
    stop_pid "$NC_PID" 3
    # reborn up stops its proxy, redis-servers and ZooKeeper itself on SIGTERM.
    stop_pid "$UP_PID" 20
    for pid in "${UP_CHILDREN[@]}"; do stop_pid "$pid" 3; done
    # Keep logs and raw output when asked, or when something failed (not on Ctrl-C/TERM).
    if [[ ${BENCH_KEEP:-0} == 1 ]] || ((rc != 0 && rc != 130 && rc != 143)); then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- setup -----------------

install_missing() {
    local need=()
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null || need+=(redis-tools)
    [[ -e /usr/share/java/zookeeper.jar ]] || need+=(zookeeper)
    command -v nutcracker >/dev/null || need+=(nutcracker)
    ((${#need[@]})) || return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
    log "installing ${need[*]}"
    # Update the package lists only when the install cannot find the packages.
    "${apt[@]}" install -y "${need[@]}" ||
        { "${apt[@]}" update && "${apt[@]}" install -y "${need[@]}"; } ||
        die "could not install ${need[*]}"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for WHAT SECONDS PID CMD...: retries CMD until it succeeds, PID dies or time runs out.
wait_for() {
    local what=$1 secs=$2 pid=$3 i
    shift 3
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        alive "$pid" || return 1
        sleep 0.1
    done
    log "$what: not ready after ${secs}s"
    return 1
}

proxy_serves() {   # a write and a read through the proxy reach a backend
    [[ $(redis-cli -p "$PROXY_PORT" SET reborn:bench:probe 1) == OK ]] &&
        [[ $(redis-cli -p "$PROXY_PORT" GET reborn:bench:probe) == 1 ]]
}

start_reborn() {
    local ports
    ports=$(IFS=,; echo "${REDIS_PORTS[*]}")
    log "starting reborn up (ZooKeeper :$ZK_PORT, redis :$ports, proxy :$PROXY_PORT)"
    local extra=()
    [[ -z ${BENCH_PROXY_THREADS:-} ]] || extra=(--proxy-threads "$BENCH_PROXY_THREADS")
    "$REBORN" up --zk-port "$ZK_PORT" --redis-ports "$ports" \
        --proxy "127.0.0.1:$PROXY_PORT" --proxy-admin "127.0.0.1:$PROXY_ADMIN_PORT" \
        --dir "$WORK/up" "${extra[@]}" >"$WORK/reborn-up.log" 2>&1 &
    UP_PID=$!
    if ! wait_for "reborn proxy" 120 "$UP_PID" proxy_serves; then
        log "reborn up log (last 30 lines):"
        tail -n 30 "$WORK/reborn-up.log" >&2 || true
        die "reborn up did not come up with a serving proxy on :$PROXY_PORT"
    fi
    # Safety net for cleanup: reborn up's children (redis, ZooKeeper, their orphan guards).
    mapfile -t UP_CHILDREN < <(pgrep -P "$UP_PID" || true)
    # Both groups must own keys, or "two groups" would be one.
    local i
    for ((i = 0; i < 64; i++)); do echo "SET reborn:bench:shard:$i $i"; done |
        redis-cli -p "$PROXY_PORT" >/dev/null
    for i in "${REDIS_PORTS[0]}" "${REDIS_PORTS[2]}"; do
        (($(redis-cli -p "$i" DBSIZE) > 0)) || die "no key reached the master :$i through the proxy"
    done
}

start_nutcracker() {
    cat >"$WORK/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$NC_PORT
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  server_connections: 1
  preconnect: true
  servers:
    - 127.0.0.1:${REDIS_PORTS[0]}:1 group1
    - 127.0.0.1:${REDIS_PORTS[2]}:1 group2
EOF
    log "starting nutcracker :$NC_PORT (stats :$NC_STATS_PORT)"
    nutcracker -c "$WORK/nutcracker.yml" -v 4 -s "$NC_STATS_PORT" -a 127.0.0.1 \
        -o "$WORK/nutcracker.log" >"$WORK/nutcracker.out" 2>&1 &
    NC_PID=$!
    wait_for "nutcracker" 20 "$NC_PID" redis-cli -p "$NC_PORT" SET reborn:bench:probe 1 ||
        { cat "$WORK/nutcracker.out" "$WORK/nutcracker.log" >&2 || true; die "nutcracker did not start"; }
}

# ---------------------------------------------------------------- measuring -------------

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || true; }   # utime+stime
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
redis_pid() { redis-cli -p "$1" INFO server | tr -d '\r' | awk -F: '/^process_id:/ { print $2 }'; }
record() { echo "$3" >>"$RES/$1.$2"; }   # record METRIC TARGET VALUE
sample_load() { cut -d' ' -f1 /proc/loadavg >>"$WORK/loadavg"; }

# Called at each round: if a server we started is gone, nothing more can be measured.
check_alive() {
    alive "$NC_PID" || { fail "nutcracker exited during the run"; abort_run; }
    alive "$UP_PID" && [[ $(redis-cli -p "$DIRECT_PORT" PING 2>&1) == PONG ]] && return 0
    fail "reborn up (or its redis-server) exited during the run (its log: $WORK/reborn-up.log)"
    tail -n 12 "$WORK/reborn-up.log" >&2 || true
    abort_run
}
abort_run() {   # report what was measured, then fail
    report || true
    log "aborted; failures:"
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
}

# run_bench TAG TARGET ARGS...: one redis-benchmark --csv run; records rps (and p50 µs)
# per test under the metric "<TAG>_<test>". Returns 1 (and records the failure) on error.
run_bench() {
    local tag=$1 target=$2 out rc=0
    shift 2
    out="$WORK/raw.$tag.$target.$(date +%s%N)"
    # redis-benchmark spins forever at a port nobody listens on: check first.
    if [[ $(redis-cli -p "${PORT[$target]}" PING 2>&1) != PONG ]]; then
        fail "$tag on $target: :${PORT[$target]} does not answer PING"
        return 1
    fi
    # In the background + wait, so that SIGTERM/Ctrl-C reach our trap at once.
    timeout $((120 + N / 2000)) redis-benchmark -p "${PORT[$target]}" --csv "$@" >"$out" 2>"$out.err" &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    if ((rc != 0)); then
        local why="redis-benchmark exit $rc"
        ((rc != 124)) || why+=" (timeout)"
        why+=": $(grep -v 'Could not fetch server CONFIG' "$out.err" | tail -n 3 | tr '\n' ' ')"
        fail "$tag on $target: $why"
        return 1
    fi
    # "SET","123456.79","0.351","0.072","0.335",... -> test rps p50
    local test rps p50
    while IFS=, read -r test rps _ _ p50 _; do
        test=${test//\"/} rps=${rps//\"/} p50=${p50//\"/}
        [[ $test == test ]] && continue
        test=${test%% *}                       # "MSET (10 keys)" -> "MSET"
        record "${tag}_$test" "$target" "$rps"
        [[ $tag != LAT ]] ||
            record "${tag}_${test}_p50us" "$target" "$(awk -v ms="$p50" 'BEGIN { printf "%.1f", ms * 1000 }')"
        printf '  %-8s %-10s %-5s %12s ops/s  p50 %s ms\n' "$tag" "$target" "$test" "$rps" "$p50" >&2
    done <"$out"
}

# CPU of the process serving TARGET (reborn up / nutcracker / the direct redis-server).
serving_pid() {
    case $1 in
        direct) echo "$DIRECT_REDIS_PID" ;;
        reborn) echo "$UP_PID" ;;
        twemproxy) echo "$NC_PID" ;;
    esac
}

throughput_case() {   # throughput_case TAG ARGS...
    local tag=$1 round target
    shift
    for ((round = 1; round <= ROUNDS; round++)); do
        log "$tag: round $round/$ROUNDS"
        sample_load
        check_alive
        for target in "${TARGETS[@]}"; do
            run_bench "$tag" "$target" -c 50 -r 100000 -n "$N" "$@" || true
        done
    done
}

p16_case() {   # like throughput_case, plus the serving process's CPU per request
    local round target pid t0 t1 reqs
    for ((round = 1; round <= ROUNDS; round++)); do
        log "P16: round $round/$ROUNDS"
        sample_load
        check_alive
        for target in "${TARGETS[@]}"; do
            pid=$(serving_pid "$target")
            t0=$(cpu_ticks "$pid")
            run_bench P16 "$target" -c 50 -r 100000 -n "$N" -P 16 -t set,get || continue
            t1=$(cpu_ticks "$pid")
            [[ -n $t0 && -n $t1 ]] || { fail "CPU of $target (pid $pid): process gone"; continue; }
            reqs=$((2 * N))
            record cpu_us "$target" "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n=$reqs \
                'BEGIN { printf "%.3f", d / hz * 1e6 / n }')"
        done
    done
}

latency_case() {
    local round target
    for ((round = 1; round <= ROUNDS; round++)); do
        log "latency: round $round/$ROUNDS"
        sample_load
        check_alive
        for target in "${TARGETS[@]}"; do
            run_bench LAT "$target" -c 1 -n "$LAT_N" -r 100000 -t get || true
        done
    done
}

idle_case() {   # RSS per idle client, on fresh processes (before any load)
    local target pid before after got i
    for target in reborn twemproxy; do
        pid=$(serving_pid "$target")
        sleep 1
        before=$(rss_kb "$pid")
        log "idle: $IDLE sessions to $target (VmRSS before ${before} kB)"
        python3 "$ROOT/scripts/bench_idle_clients.py" "${PORT[$target]}" "$IDLE" \
            >"$WORK/idle.$target.out" 2>"$WORK/idle.$target.err" &
        IDLE_PID=$!
        got=""
        for ((i = 0; i < 1200; i++)); do
            got=$(grep -o '^ready [0-9]*' "$WORK/idle.$target.out" || true)
            [[ -n $got ]] && break
            alive "$IDLE_PID" || break
            sleep 0.1
        done
        if [[ -z $got ]]; then
            fail "idle clients on $target: $(tail -n 2 "$WORK/idle.$target.err" | tr '\n' ' ')"
        else
            sleep 2
            after=$(rss_kb "$pid")
            record rss_kb "$target" "$(awk -v a="$after" -v b="$before" -v n="$IDLE" \
                'BEGIN { printf "%.2f", (a - b) / n }')"
            log "idle: $target VmRSS ${before} -> ${after} kB"
        fi
        stop_pid "$IDLE_PID" 5
        wait "$IDLE_PID" 2>/dev/null || true
        IDLE_PID=""
    done
}

# ---------------------------------------------------------------- report ----------------

median() {   # median METRIC TARGET -> value or "-"
    local f="$RES/$1.$2"
    [[ -s $f ]] || { echo -; return; }
    sort -g "$f" | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%s", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "-") print "-"; else printf "%.*f", d, v }'; }

ROWS=()
row() { ROWS+=("$(IFS='|'; echo "$*")"); }

# throughput_row LABEL METRIC TARGET_TEXT MIN_VS_DIRECT [MIN_VS_TWEMPROXY]
throughput_row() {
    local label=$1 metric=$2 text=$3 min_d=$4 min_t=${5:-}
    local d r t rd rt verdict
    d=$(median "$metric" direct) r=$(median "$metric" reborn) t=$(median "$metric" twemproxy)
    rd=$(ratio "$r" "$d") rt=$(ratio "$r" "$t")
    verdict=$(awk -v rd="$rd" -v rt="$rt" -v md="$min_d" -v mt="$min_t" 'BEGIN {
        if (rd == "-" || (mt != "" && rt == "-")) { print "n/a"; exit }
        ok = (rd >= md) && (mt == "" || rt >= mt); print ok ? "PASS" : "FAIL" }')
    row "$label" "$(fmt "$d" 0)" "$(fmt "$r" 0)" "$(fmt "$t" 0)" "$rd" "$rt" "$text" "$verdict"
}

# max_row LABEL METRIC DECIMALS TARGET_TEXT [MAX] (lower is better; verdict on reborn)
max_row() {
    local label=$1 metric=$2 dec=$3 text=$4 max=${5:-} d r t verdict
    d=$(median "$metric" direct) r=$(median "$metric" reborn) t=$(median "$metric" twemproxy)
    verdict=$(awk -v r="$r" -v m="$max" 'BEGIN {
        if (m == "") print "-"; else if (r == "-") print "n/a"; else print (r <= m) ? "PASS" : "FAIL" }')
    row "$label" "$(fmt "$d" "$dec")" "$(fmt "$r" "$dec")" "$(fmt "$t" "$dec")" \
        "$(ratio "$r" "$d")" "$(ratio "$r" "$t")" "$text" "$verdict"
}

report() {
    local d r t
    # Added p50 latency vs direct, per target.
    d=$(median LAT_GET_p50us direct)
    for t in reborn twemproxy; do
        r=$(median LAT_GET_p50us "$t")
        [[ $d != - && $r != - ]] && record added_p50us "$t" "$(awk -v a="$r" -v b="$d" 'BEGIN { printf "%.1f", a - b }')"
    done

    throughput_row "SET P1 ops/s" P1_SET "≥0.9× direct" 0.9
    throughput_row "GET P1 ops/s" P1_GET "≥0.9× direct" 0.9
    throughput_row "SET P16 ops/s" P16_SET "≥0.7× direct, ≥1.5× twem" 0.7 1.5
    throughput_row "GET P16 ops/s" P16_GET "≥0.7× direct, ≥1.5× twem" 0.7 1.5
    throughput_row "MSET P1 ops/s" MSET_MSET "≥0.65× direct" 0.65
    max_row "GET p50 c=1 (µs)" LAT_GET_p50us 1 "-"
    max_row "added p50 vs direct (µs)" added_p50us 1 "≤20 µs" 20
    max_row "CPU µs/req P16" cpu_us 2 "≤1.5 µs (reborn)" 1.5
    max_row "RSS KB/idle client" rss_kb 2 "≤20 KB" 20

    {
        echo
        echo "reborn benchmark: BENCH_N=$N BENCH_ROUNDS=$ROUNDS BENCH_LAT_N=$LAT_N BENCH_IDLE=$IDLE," \
            "$(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'), ${SECONDS}s"
        echo "load average (1 min) at the start of each case/round: $(paste -sd' ' "$WORK/loadavg")"
        echo "proxy: $(grep -o 'proxy online.*' "$WORK/reborn-up.log" | grep -o 'threads=[0-9]*' | head -n 1) (reborn up);" \
            "medians of $ROUNDS round(s); CPU µs/req: direct = the redis-server at :$DIRECT_PORT, reborn = the" \
            "reborn up process (proxy in-process), twemproxy = nutcracker"
        echo
        {
            echo "case|direct|reborn|twemproxy|reborn/direct|reborn/twemproxy|target|pass/fail"
            printf '%s\n' "${ROWS[@]}"
        } | column -t -s '|' -o ' | '
        echo
        echo "per-round values (metric.target: values):"
        local f
        for f in "$RES"/*; do printf '  %-28s %s\n' "$(basename "$f")" "$(paste -sd' ' "$f")"; done
    } | tee "$WORK/report.txt"
    cp "$WORK/report.txt" "${BENCH_REPORT:-/tmp/reborn-bench-report.txt}"
}

# ---------------------------------------------------------------- main ------------------

sample_load
install_missing
command -v python3 >/dev/null || die "python3 is needed for the idle-clients case"
CLK_TCK=$(getconf CLK_TCK)

log "cargo build --release"
(cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
REBORN=${CARGO_TARGET_DIR:-$ROOT/target}/release/reborn
[[ -x $REBORN ]] || die "no binary at $REBORN"

# 10k idle clients need as many descriptors in the proxies (children inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= IDLE + 1000)) || log "warning: open-files limit $(ulimit -n) may be too low for $IDLE clients"

for p in "$NC_PORT" "$NC_STATS_PORT"; do
    ! port_taken "$p" || die "port $p is taken (nutcracker); stop what listens there"
done
start_reborn
start_nutcracker
DIRECT_REDIS_PID=$(redis_pid "$DIRECT_PORT")
[[ -n $DIRECT_REDIS_PID ]] || die "cannot read the pid of redis-server :$DIRECT_PORT"
log "pids: reborn up $UP_PID, nutcracker $NC_PID, redis :$DIRECT_PORT $DIRECT_REDIS_PID"

idle_case
throughput_case P1 -t set,get
p16_case
throughput_case MSET -t mset
latency_case

alive "$UP_PID" || fail "reborn up exited during the run (see $WORK/reborn-up.log)"
alive "$NC_PID" || fail "nutcracker exited during the run"

report
if ((${#FAILURES[@]})); then
    log "some runs failed:"
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
