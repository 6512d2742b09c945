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
#   BENCH_REBORN=BIN     use this reborn binary instead of `cargo build --release`
#   BENCH_BASELINE=BIN   A/B: also run `BIN proxy` (e.g. a release build of an older commit)
#                        on :29001 (admin 21081), on the same ZooKeeper and product as
#                        `reborn up`, with the same thread count, as a fourth target
#                        "baseline" in every round; the report adds its ratios and
#                        reborn/baseline (per case, and per round)
#   BENCH_BASELINE_CONFIG=TOML  the baseline proxy's --config (flags still set its
#                        addresses and ZooKeeper), e.g. a file with write_ack = "replica"
#                        to measure what that mode costs against the default
#
# What it does: installs missing Debian packages (redis-server, redis-tools, zookeeper,
# nutcracker), runs `cargo build --release` (unless BENCH_REBORN), starts `reborn up` (ZooKeeper, 2 groups of
# master + replica, the proxy in-process) and `nutcracker` in front of the same two
# masters, all on non-default ports so it never collides with a running `reborn up`:
#   ZooKeeper 22181, redis 26379-26382 (masters 26379, 26381), reborn proxy 29000
#   (admin 21080), nutcracker 22121 (stats 22122). "direct" = redis-benchmark at 26379.
# Cases (each round runs direct, reborn, twemproxy in turn; the median is reported; with
# BENCH_BASELINE: direct, reborn, baseline, twemproxy, the two proxies swapping places every
# other round so that neither always runs first):
#   SET/GET   -c 50 -r 100000 -n $BENCH_N  at -P 1 and at -P 16
#   MSET      -c 50 -r 100000 -n $BENCH_N  -t mset, -P 1
#   p50 latency of GET at -c 1 -n $BENCH_LAT_N
#   proxy CPU us/request (utime+stime from /proc/<pid>/stat) over the P16 runs
#   RSS per idle client (VmRSS before/after $BENCH_IDLE idle sessions, fresh processes)
# The baseline's CPU is its own process only, reborn's is the whole `reborn up` process
# (proxy plus the idle dashboard), which favours the baseline slightly.
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
BASE_PORT=29001
BASE_ADMIN_PORT=21081
ZK_ROOT=/reborn
PRODUCT=demo
DIRECT_PORT=${REDIS_PORTS[0]}
BASELINE=${BENCH_BASELINE:-}
if [[ -n $BASELINE ]]; then
    PROXIES=(reborn baseline)
    TARGETS=(direct reborn baseline twemproxy)
else
    PROXIES=(reborn)
    TARGETS=(direct reborn twemproxy)
fi
declare -A PORT=([direct]=$DIRECT_PORT [reborn]=$PROXY_PORT [baseline]=$BASE_PORT [twemproxy]=$NC_PORT)

WORK=$(mktemp -d /tmp/reborn-bench.XXXXXX)
RES=$WORK/results          # one file per metric/target, one value per round
mkdir -p "$RES"
UP_PID="" NC_PID="" BASE_PID="" IDLE_PID="" BENCH_PID=""
UP_CHILDREN=()
FAILURES=()

LOG_TAG=bench
# shellcheck source=scripts/lib/proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/proc.sh"

# ---------------------------------------------------------------- cleanup ---------------



cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    stop_pid "$BENCH_PID" 2
    stop_pid "$IDLE_PID" 2
    stop_pid "$NC_PID" 3
    stop_pid "$BASE_PID" 10   # before ZooKeeper goes, so it can leave cleanly
    # reborn up stops its proxy, redis-servers and ZooKeeper itself on SIGTERM.
    stop_pid "$UP_PID" 20
    for pid in "${UP_CHILDREN[@]}"; do stop_pid "$pid" 3; done
    end_cleanup "$rc"
}
trap_cleanup

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

proxy_serves() {   # proxy_serves PORT: a write and a read through the proxy reach a backend
    [[ $(redis-cli -p "$1" SET reborn:bench:probe 1) == OK ]] &&
        [[ $(redis-cli -p "$1" GET reborn:bench:probe) == 1 ]]
}

start_reborn() {
    local ports
    ports=$(IFS=,; echo "${REDIS_PORTS[*]}")
    log "starting reborn up (ZooKeeper :$ZK_PORT, redis :$ports, proxy :$PROXY_PORT)"
    local extra=()
    [[ -z ${BENCH_PROXY_THREADS:-} ]] || extra=(--proxy-threads "$BENCH_PROXY_THREADS")
    "$REBORN" up --no-push --zk-port "$ZK_PORT" --zk-root "$ZK_ROOT" --product "$PRODUCT" --redis-ports "$ports" \
        --proxy "127.0.0.1:$PROXY_PORT" --proxy-admin "127.0.0.1:$PROXY_ADMIN_PORT" \
        --dir "$WORK/up" "${extra[@]}" >"$WORK/reborn-up.log" 2>&1 &
    UP_PID=$!
    if ! wait_for "reborn proxy" 120 "$UP_PID" proxy_serves "$PROXY_PORT"; then
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

# The proxy's data-plane threads as `reborn up` logged them ("proxy online ... threads=N").
up_proxy_threads() {
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/reborn-up.log" | grep -o 'proxy online.*' | grep -o 'threads=[0-9]*' |
        head -n 1 | cut -d= -f2
}

start_baseline() {   # BENCH_BASELINE's proxy on reborn up's ZooKeeper and product
    local threads p
    threads=${BENCH_PROXY_THREADS:-$(up_proxy_threads)}
    [[ -n $threads ]] || die "cannot read the proxy's thread count from $WORK/reborn-up.log"
    for p in "$BASE_PORT" "$BASE_ADMIN_PORT"; do
        ! port_open "$p" || die "port $p is taken (baseline proxy); stop what listens there"
    done
    log "starting the baseline proxy $BASELINE on :$BASE_PORT (admin :$BASE_ADMIN_PORT, threads $threads)"
    local config=()
    [[ -z ${BENCH_BASELINE_CONFIG:-} ]] || config=(--config "$BENCH_BASELINE_CONFIG")
    "$BASELINE" proxy "${config[@]}" --listen "127.0.0.1:$BASE_PORT" --admin-listen "127.0.0.1:$BASE_ADMIN_PORT" \
        --zk "127.0.0.1:$ZK_PORT" --zk-root "$ZK_ROOT" --product "$PRODUCT" --threads "$threads" \
        >"$WORK/baseline.log" 2>&1 &
    BASE_PID=$!
    if ! wait_for "baseline proxy" 60 "$BASE_PID" proxy_serves "$BASE_PORT"; then
        tail -n 30 "$WORK/baseline.log" >&2 || true
        die "the baseline proxy did not serve on :$BASE_PORT"
    fi
    BASE_THREADS=$threads
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

record() { echo "$3" >>"$RES/$1.$2"; }   # record METRIC TARGET VALUE
sample_load() { cut -d' ' -f1 /proc/loadavg >>"$WORK/loadavg"; }

# Called at each round: if a server we started is gone, nothing more can be measured.
check_alive() {
    alive "$NC_PID" || { fail "nutcracker exited during the run"; abort_run; }
    [[ -z $BASELINE ]] || alive "$BASE_PID" ||
        { fail "the baseline proxy exited during the run (its log: $WORK/baseline.log)"; abort_run; }
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
        baseline) echo "$BASE_PID" ;;
        twemproxy) echo "$NC_PID" ;;
    esac
}

# round_targets ROUND: the targets in the order of that round. The two proxies swap places
# every other round, so that neither always runs right after direct.
round_targets() {
    if [[ -n $BASELINE ]] && (($1 % 2 == 0)); then
        echo direct baseline reborn twemproxy
    else
        echo "${TARGETS[@]}"
    fi
}

throughput_case() {   # throughput_case TAG ARGS...
    local tag=$1 round target
    shift
    for ((round = 1; round <= ROUNDS; round++)); do
        log "$tag: round $round/$ROUNDS"
        sample_load
        check_alive
        for target in $(round_targets "$round"); do
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
        for target in $(round_targets "$round"); do
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
        for target in $(round_targets "$round"); do
            run_bench LAT "$target" -c 1 -n "$LAT_N" -r 100000 -t get || true
        done
    done
}

idle_case() {   # RSS per idle client, on fresh processes (before any load)
    local target pid before after got i
    for target in "${PROXIES[@]}" twemproxy; do
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

fmt() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "-") print "-"; else printf "%.*f", d, v }'; }

ROWS=()
row() { ROWS+=("$(IFS='|'; echo "$*")"); }

# The value columns of one case: direct reborn [baseline] twemproxy, then the ratios
# reborn/direct [baseline/direct] reborn/twemproxy [baseline/twemproxy reborn/baseline].
# values METRIC DECIMALS -> sets COLS (array) and D R B T (medians)
values() {
    local metric=$1 dec=$2
    D=$(median "$metric" direct) R=$(median "$metric" reborn) T=$(median "$metric" twemproxy)
    if [[ -n $BASELINE ]]; then
        B=$(median "$metric" baseline)
        COLS=("$(fmt "$D" "$dec")" "$(fmt "$R" "$dec")" "$(fmt "$B" "$dec")" "$(fmt "$T" "$dec")"
            "$(ratio "$R" "$D")" "$(ratio "$B" "$D")" "$(ratio "$R" "$T")" "$(ratio "$B" "$T")"
            "$(ratio "$R" "$B")")
    else
        B=-
        COLS=("$(fmt "$D" "$dec")" "$(fmt "$R" "$dec")" "$(fmt "$T" "$dec")"
            "$(ratio "$R" "$D")" "$(ratio "$R" "$T")")
    fi
}

# throughput_row LABEL METRIC TARGET_TEXT MIN_VS_DIRECT [MIN_VS_TWEMPROXY] (verdict on reborn)
throughput_row() {
    local label=$1 metric=$2 text=$3 min_d=$4 min_t=${5:-} rd rt verdict
    values "$metric" 0
    rd=$(ratio "$R" "$D") rt=$(ratio "$R" "$T")
    verdict=$(awk -v rd="$rd" -v rt="$rt" -v md="$min_d" -v mt="$min_t" 'BEGIN {
        if (rd == "-" || (mt != "" && rt == "-")) { print "n/a"; exit }
        ok = (rd >= md) && (mt == "" || rt >= mt); print ok ? "PASS" : "FAIL" }')
    row "$label" "${COLS[@]}" "$text" "$verdict"
}

# max_row LABEL METRIC DECIMALS TARGET_TEXT [MAX] (lower is better; verdict on reborn)
max_row() {
    local label=$1 metric=$2 dec=$3 text=$4 max=${5:-} verdict
    values "$metric" "$dec"
    verdict=$(awk -v r="$R" -v m="$max" 'BEGIN {
        if (m == "") print "-"; else if (r == "-") print "n/a"; else print (r <= m) ? "PASS" : "FAIL" }')
    row "$label" "${COLS[@]}" "$text" "$verdict"
}

# round_ratios METRIC A B: A/B round by round (the files hold one value per round, in order).
round_ratios() {
    local a=$RES/$1.$2 b=$RES/$1.$3
    [[ -s $a && -s $b ]] || { echo -; return; }
    paste -d' ' "$a" "$b" | awk '{ printf "%s%s", (NR > 1 ? " " : ""), ($1 == "" || $2 == "" || $2 == 0) ? "-" : sprintf("%.2f", $1 / $2) }'
}

report() {
    local d r t
    # Added p50 latency vs direct, per target.
    d=$(median LAT_GET_p50us direct)
    for t in "${PROXIES[@]}" twemproxy; do
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

    local header="case|direct|reborn|twemproxy|reborn/direct|reborn/twemproxy|target|pass/fail"
    [[ -z $BASELINE ]] ||
        header="case|direct|reborn|baseline|twemproxy|reborn/direct|baseline/direct|reborn/twemproxy|baseline/twemproxy|reborn/baseline|target|pass/fail"
    {
        echo
        echo "reborn benchmark: BENCH_N=$N BENCH_ROUNDS=$ROUNDS BENCH_LAT_N=$LAT_N BENCH_IDLE=$IDLE," \
            "$(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'), ${SECONDS}s"
        echo "load average (1 min) at the start of each case/round: $(paste -sd' ' "$WORK/loadavg")"
        echo "proxy: threads=$(up_proxy_threads) (reborn up);" \
            "medians of $ROUNDS round(s); CPU µs/req: direct = the redis-server at :$DIRECT_PORT, reborn = the" \
            "reborn up process (proxy in-process), twemproxy = nutcracker"
        echo "reborn: $REBORN"
        [[ -z $BASELINE ]] ||
            echo "baseline: $BASELINE proxy, threads=$BASE_THREADS, its own process (CPU: the proxy alone)"
        echo
        {
            echo "$header"
            printf '%s\n' "${ROWS[@]}"
        } | column -t -s '|' -o ' | '
        echo
        if [[ -n $BASELINE ]]; then
            echo "ratios round by round (noise: compare the spread with the difference of the medians):"
            local m
            for m in P1_SET P1_GET P16_SET P16_GET MSET_MSET LAT_GET_p50us cpu_us; do
                printf '  %-14s reborn/direct %-16s baseline/direct %-16s reborn/baseline %s\n' "$m" \
                    "$(round_ratios "$m" reborn direct)" "$(round_ratios "$m" baseline direct)" \
                    "$(round_ratios "$m" reborn baseline)"
            done
            echo
        fi
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

if [[ -n ${BENCH_REBORN:-} ]]; then
    REBORN=$BENCH_REBORN
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
    REBORN=${CARGO_TARGET_DIR:-$ROOT/target}/release/reborn
fi
[[ -x $REBORN ]] || die "no binary at $REBORN"
[[ -z $BASELINE || -x $BASELINE ]] || die "BENCH_BASELINE: no executable at $BASELINE"

# 10k idle clients need as many descriptors in the proxies (children inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= IDLE + 1000)) || log "warning: open-files limit $(ulimit -n) may be too low for $IDLE clients"

for p in "$NC_PORT" "$NC_STATS_PORT"; do
    ! port_open "$p" || die "port $p is taken (nutcracker); stop what listens there"
done
start_reborn
[[ -z $BASELINE ]] || start_baseline
start_nutcracker
DIRECT_REDIS_PID=$(redis_pid "$DIRECT_PORT")
[[ -n $DIRECT_REDIS_PID ]] || die "cannot read the pid of redis-server :$DIRECT_PORT"
log "pids: reborn up $UP_PID, nutcracker $NC_PID, redis :$DIRECT_PORT $DIRECT_REDIS_PID${BASE_PID:+, baseline $BASE_PID}"

idle_case
throughput_case P1 -t set,get
p16_case
throughput_case MSET -t mset
latency_case

alive "$UP_PID" || fail "reborn up exited during the run (see $WORK/reborn-up.log)"
alive "$NC_PID" || fail "nutcracker exited during the run"
[[ -z $BASELINE ]] || alive "$BASE_PID" || fail "the baseline proxy exited during the run (see $WORK/baseline.log)"

report
if ((${#FAILURES[@]})); then
    log "some runs failed:"
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
