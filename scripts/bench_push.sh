#!/usr/bin/env bash
# Push-system benchmarks (issue 9, part 8): one machine, release binaries, our own load generator
# (`reborn push-bench`, src/im/bench/). Prints a table of figures against the targets and exits 0;
# non-zero only when something failed to run.
#
#   scripts/bench_push.sh
#
# Environment:
#   BENCH_REBORN        a prebuilt reborn binary (default: cargo build --release, target/release/reborn)
#   BENCH_IDLE_GENS     idle generator processes                        default 4
#   BENCH_IDLE_CONNS    idle connections per generator                  default 4750 (4 x 4750 = 19,000)
#   BENCH_ROOM_GENS     room generator processes                        default 4
#   BENCH_ROOM_CONNS    room connections per generator                  default 2500 (10 rooms x 1,000)
#   BENCH_ROOM_RATE     room pushes per second (each reaches 1,000)     default 300
#   BENCH_ROOM_SECS     seconds of room pushing                         default 15
#   BENCH_LAT_RATE      mid pushes per second (latency)                 default 1000
#   BENCH_LAT_SECS      seconds of mid pushing (latency)                default 20
#   BENCH_HTTP_SECS     seconds of closed-loop pushing (accept rate)    default 10
#   BENCH_KEEP=1        keep the work dir (logs, raw generator output)
#
# What runs: `reborn up` (ZooKeeper, 2 redis groups with a replica each, a proxy) on non-default
# ports, then `reborn logic`, `reborn comet` and `reborn job` as separate processes against that
# proxy and ZooKeeper (product "pushbench"). Phases, one after another:
#   1. idle: BENCH_IDLE_GENS generators hold authenticated TCP connections on the comet, each from its
#      own 127.0.0.x addresses; comet VmRSS before/after gives bytes per connection. While they are up,
#      a closed-loop pusher measures logic's accepted /goim/push/mids per second (sessions online).
#   2. room: connections in 10 rooms; /goim/push/room at BENCH_ROOM_RATE; generators count frames.
#      Comet CPU (utime+stime) over the phase / frames delivered = messages per comet core-second.
#   3. latency: 1,000 connections by mid; /goim/push/mids at BENCH_LAT_RATE with a timestamp body.
#   4. accept: closed-loop /goim/push/room to an empty room: logic's accepted pushes per second.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IDLE_GENS=${BENCH_IDLE_GENS:-4}
IDLE_CONNS=${BENCH_IDLE_CONNS:-4750}
ROOM_GENS=${BENCH_ROOM_GENS:-4}
ROOM_CONNS=${BENCH_ROOM_CONNS:-2500}
ROOM_RATE=${BENCH_ROOM_RATE:-300}
ROOM_SECS=${BENCH_ROOM_SECS:-15}
LAT_RATE=${BENCH_LAT_RATE:-1000}
LAT_SECS=${BENCH_LAT_SECS:-20}
HTTP_SECS=${BENCH_HTTP_SECS:-10}

ZK_PORT=23181
REDIS_PORTS=27379,27380,27381,27382
PROXY_PORT=29100
PROXY_ADMIN_PORT=21180
DASH_PORT=21190
COMET_TCP=23101
COMET_WS=23102
COMET_WSS=23103
COMET_GRPC=23109
COMET_ADMIN=23108
JOB_ADMIN=23121
LOGIC_HTTP=23111
LOGIC_GRPC=23119
ZK_ROOT=/reborn
PRODUCT=pushbench

WORK=$(mktemp -d /tmp/reborn-bench-push.XXXXXX)
UP_PID="" LOGIC_PID="" COMET_PID="" JOB_PID=""
UP_CHILDREN=()
GEN_PIDS=()
FAILURES=()

LOG_TAG=bench-push
# shellcheck source=scripts/lib/proc.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/proc.sh"


cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${GEN_PIDS[@]}"; do stop_pid "$pid" 3; done
    stop_pid "$JOB_PID" 10
    stop_pid "$COMET_PID" 10
    stop_pid "$LOGIC_PID" 10
    stop_pid "$UP_PID" 20   # stops its proxy, redis-servers and ZooKeeper itself
    for pid in "${UP_CHILDREN[@]}"; do stop_pid "$pid" 3; done
    end_cleanup "$rc"
}
trap_cleanup

proxy_serves() { [[ $(redis-cli -p "$PROXY_PORT" SET reborn:bench:probe 1) == OK ]]; }
comet_known() { curl -sf "http://127.0.0.1:$LOGIC_HTTP/goim/nodes/instances" | grep -q "$COMET_TCP"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
field() { grep -o "$2=[^ ]*" "$1" | tail -n 1 | cut -d= -f2; }   # field FILE KEY

# ---------------------------------------------------------------- setup -----------------

for t in redis-server redis-cli curl; do command -v "$t" >/dev/null || die "$t is needed"; done
[[ -e /usr/share/java/zookeeper.jar ]] || die "ZooKeeper is needed (/usr/share/java/zookeeper.jar)"
for p in $ZK_PORT ${REDIS_PORTS//,/ } $PROXY_PORT $PROXY_ADMIN_PORT $DASH_PORT $COMET_TCP $COMET_WS \
    $COMET_GRPC $COMET_ADMIN $JOB_ADMIN $LOGIC_HTTP $LOGIC_GRPC; do
    port_open "$p" && die "port $p is taken (another bench_push.sh running?)"
done
FD_LIMIT=$(ulimit -n)
NEED=$((IDLE_GENS * IDLE_CONNS + 100))
((NEED <= FD_LIMIT)) || log "warning: $NEED descriptors wanted on the comet, ulimit -n is $FD_LIMIT"

if [[ -n ${BENCH_REBORN:-} ]]; then
    REBORN=$BENCH_REBORN
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    REBORN=$ROOT/target/release/reborn
fi
[[ -x $REBORN ]] || die "no reborn binary at $REBORN"
log "binary: $REBORN; work dir: $WORK; ulimit -n: $FD_LIMIT; load: $(loadavg)"

log "starting reborn up (ZooKeeper :$ZK_PORT, redis :$REDIS_PORTS, proxy :$PROXY_PORT)"
"$REBORN" up --no-push --zk-port "$ZK_PORT" --zk-root "$ZK_ROOT" --product "$PRODUCT" --redis-ports "$REDIS_PORTS" \
    --proxy "127.0.0.1:$PROXY_PORT" --proxy-admin "127.0.0.1:$PROXY_ADMIN_PORT" \
    --dashboard "127.0.0.1:$DASH_PORT" --dir "$WORK/up" >"$WORK/up.log" 2>&1 &
UP_PID=$!
if ! wait_for "reborn proxy" 120 "$UP_PID" proxy_serves; then
    tail -n 30 "$WORK/up.log" >&2 || true
    die "reborn up did not come up with a serving proxy on :$PROXY_PORT"
fi
mapfile -t UP_CHILDREN < <(pgrep -P "$UP_PID" || true)

ZK_TOML="[zk]
addr = \"127.0.0.1:$ZK_PORT\"
root = \"$ZK_ROOT\"
product = \"$PRODUCT\""
cat >"$WORK/logic.toml" <<TOML
[http]
addr = "127.0.0.1:$LOGIC_HTTP"
[grpc]
addr = "127.0.0.1:$LOGIC_GRPC"
[cluster]
addrs = ["127.0.0.1:$PROXY_PORT"]
[node]
tcp_port = $COMET_TCP
ws_port = $COMET_WS
wss_port = $COMET_WSS
$ZK_TOML
TOML
cat >"$WORK/comet.toml" <<TOML
admin_listen = "127.0.0.1:$COMET_ADMIN"
[tcp]
listen = "127.0.0.1:$COMET_TCP"
[websocket]
listen = "127.0.0.1:$COMET_WS"
tls_listen = "127.0.0.1:$COMET_WSS"
[grpc]
listen = "127.0.0.1:$COMET_GRPC"
$ZK_TOML
TOML
cat >"$WORK/job.toml" <<TOML
admin_listen = "127.0.0.1:$JOB_ADMIN"
[cluster]
addrs = ["127.0.0.1:$PROXY_PORT"]
$ZK_TOML
TOML

log "starting logic (:$LOGIC_HTTP), comet (:$COMET_TCP) and job"
"$REBORN" logic --config "$WORK/logic.toml" >"$WORK/logic.log" 2>&1 &
LOGIC_PID=$!
wait_for "logic" 60 "$LOGIC_PID" port_open "$LOGIC_HTTP" || die "logic did not start (see $WORK/logic.log)"
"$REBORN" comet --config "$WORK/comet.toml" >"$WORK/comet.log" 2>&1 &
COMET_PID=$!
"$REBORN" job --config "$WORK/job.toml" >"$WORK/job.log" 2>&1 &
JOB_PID=$!
wait_for "comet" 60 "$COMET_PID" port_open "$COMET_TCP" || die "comet did not start (see $WORK/comet.log)"
wait_for "comet in logic's view" 60 "$LOGIC_PID" comet_known || die "logic never saw the comet"
sleep 2   # job follows the comets through ZooKeeper too
alive "$JOB_PID" || die "job exited (see $WORK/job.log)"
log "pids: up $UP_PID, logic $LOGIC_PID, comet $COMET_PID, job $JOB_PID"

# gens MODE COUNT CONNS MID_BASE SRC_BASE EXTRA...: start COUNT generators (each its own 127.0.0.x
# block of 4 addresses from SRC_BASE), wait until each has printed its "ready" line.
gens() {
    local mode=$1 count=$2 conns=$3 mid=$4 src=$5 g a b
    shift 5
    GEN_PIDS=()
    for ((g = 0; g < count; g++)); do
        a=$((src + 4 * g)) b=$((src + 4 * g + 3))
        "$REBORN" push-bench "$mode" --comet "127.0.0.1:$COMET_TCP" --conns "$conns" \
            --src "127.0.0.$a-127.0.0.$b" --mid-base $((mid + 100000 * g)) "$@" \
            >"$WORK/$mode.$g.out" 2>"$WORK/$mode.$g.err" &
        GEN_PIDS+=($!)
    done
    for ((g = 0; g < count; g++)); do
        wait_for "$mode generator $g" 600 "${GEN_PIDS[g]}" grep -q '^ready' "$WORK/$mode.$g.out" ||
            { fail "$mode generator $g: $(tail -n 3 "$WORK/$mode.$g.err" | tr '\n' ' ')"; return 1; }
    done
}
stop_gens() {   # TERM the generators; each prints its "done" line
    local pid
    for pid in "${GEN_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${GEN_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    GEN_PIDS=()
}
sum_field() {   # sum_field MODE COUNT LINE KEY
    local s=0 g v
    for ((g = 0; g < $2; g++)); do
        v=$(grep "^$3 " "$WORK/$1.$g.out" | grep -o "$4=[0-9]*" | cut -d= -f2 || true)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

# ---------------------------------------------------------------- 1. idle ---------------

declare -A R   # results
log "1. idle: $IDLE_GENS x $IDLE_CONNS connections (load $(loadavg))"
RSS0=$(rss_kb "$COMET_PID")
if gens idle "$IDLE_GENS" "$IDLE_CONNS" 1000000 10 --heartbeat 120s --concurrency 64; then
    sleep 3
    RSS1=$(rss_kb "$COMET_PID")
    UP=$(sum_field idle "$IDLE_GENS" ready up)
    R[idle_up]=$UP R[idle_rss0]=$RSS0 R[idle_rss1]=$RSS1 R[idle_load]=$(loadavg)
    if ((UP > 0)); then
        R[idle_bytes]=$(((RSS1 - RSS0) * 1024 / UP))
    fi
    log "idle: $UP up, comet VmRSS $RSS0 -> $RSS1 kB"
    log "1b. logic accepted /goim/push/mids, closed loop, ${HTTP_SECS}s, mids online"
    "$REBORN" push-bench push --http "127.0.0.1:$LOGIC_HTTP" --target mids --mid-base 1000000 \
        --mids "$IDLE_CONNS" --rate 0 --http-conns 32 --duration "${HTTP_SECS}s" >"$WORK/accept-mids.out" ||
        fail "push (mids)"
    R[acc_mids]=$(field "$WORK/accept-mids.out" ok_per_sec) R[acc_mids_load]=$(loadavg)
    R[acc_mids_err]=$(($(field "$WORK/accept-mids.out" rejected) + $(field "$WORK/accept-mids.out" errors)))
    stop_gens
    R[idle_still]=$(sum_field idle "$IDLE_GENS" done up)
fi
alive "$COMET_PID" || die "comet exited during the idle phase (see $WORK/comet.log)"
sleep 2

# ---------------------------------------------------------------- 2. room ---------------

log "2. room: $ROOM_GENS x $ROOM_CONNS connections in 10 rooms (load $(loadavg))"
if gens room "$ROOM_GENS" "$ROOM_CONNS" 2000000 40 --rooms 10 --heartbeat 120s --concurrency 64; then
    sleep 1
    CPU0=$(cpu_ticks "$COMET_PID")
    "$REBORN" push-bench push --http "127.0.0.1:$LOGIC_HTTP" --target room --rooms 10 \
        --rate "$ROOM_RATE" --http-conns 8 --duration "${ROOM_SECS}s" >"$WORK/room-push.out" ||
        fail "push (room)"
    R[room_load]=$(loadavg)
    sleep 3   # let the last batches drain
    CPU1=$(cpu_ticks "$COMET_PID")
    stop_gens
    RECV=$(sum_field room "$ROOM_GENS" done received)
    FIRST=$(for ((g = 0; g < ROOM_GENS; g++)); do field "$WORK/room.$g.out" first_ms; done | grep -v '^0$' | sort -n | head -n 1)
    LAST=$(for ((g = 0; g < ROOM_GENS; g++)); do field "$WORK/room.$g.out" last_ms; done | sort -n | tail -n 1)
    HZ=$(getconf CLK_TCK)
    R[room_recv]=$RECV R[room_ok]=$(field "$WORK/room-push.out" ok)
    R[room_expect]=$((R[room_ok] * ROOM_GENS * ROOM_CONNS / 10))
    R[room_cpu]=$(awk -v a="$CPU0" -v b="$CPU1" -v hz="$HZ" 'BEGIN {printf "%.2f", (b - a) / hz}')
    if [[ -n $FIRST && -n $LAST ]] && ((LAST > FIRST)); then
        R[room_rate]=$(awk -v n="$RECV" -v ms=$((LAST - FIRST)) 'BEGIN {printf "%.0f", n * 1000 / ms}')
    fi
    R[room_percore]=$(awk -v n="$RECV" -v c="${R[room_cpu]}" 'BEGIN {if (c > 0) printf "%.0f", n / c; else print 0}')
    log "room: ${R[room_ok]} pushes accepted, $RECV frames received (expected ${R[room_expect]}), comet CPU ${R[room_cpu]}s"
fi
alive "$COMET_PID" || die "comet exited during the room phase (see $WORK/comet.log)"

# ---------------------------------------------------------------- 3. latency ------------

log "3. latency: 1000 connections by mid, $LAT_RATE mid pushes/s for ${LAT_SECS}s (load $(loadavg))"
if "$REBORN" push-bench latency --comet "127.0.0.1:$COMET_TCP" --conns 1000 --src 127.0.0.80-127.0.0.83 \
    --mid-base 3000000 --http "127.0.0.1:$LOGIC_HTTP" --rate "$LAT_RATE" --http-conns 8 \
    --duration "${LAT_SECS}s" >"$WORK/latency.out" 2>"$WORK/latency.err"; then
    for k in p50_us p90_us p99_us max_us sent received rate; do R[lat_$k]=$(field "$WORK/latency.out" $k); done
    R[lat_load]=$(loadavg)
else
    fail "latency: $(tail -n 3 "$WORK/latency.err" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- 4. accept -------------

log "4. logic accepted /goim/push/room, closed loop, ${HTTP_SECS}s (load $(loadavg))"
"$REBORN" push-bench push --http "127.0.0.1:$LOGIC_HTTP" --target room --room-prefix nobody --rooms 10 \
    --rate 0 --http-conns 32 --duration "${HTTP_SECS}s" >"$WORK/accept-room.out" || fail "push (room, closed loop)"
R[acc_room]=$(field "$WORK/accept-room.out" ok_per_sec) R[acc_room_load]=$(loadavg)
R[acc_room_err]=$(($(field "$WORK/accept-room.out" rejected) + $(field "$WORK/accept-room.out" errors)))

for p in "$UP_PID" "$LOGIC_PID" "$COMET_PID" "$JOB_PID"; do
    alive "$p" || fail "process $p exited during the run (logs in $WORK)"
done

# ---------------------------------------------------------------- report ----------------

v() { echo "${R[$1]:-n/a}"; }
kb() { awk -v b="${R[$1]:-}" 'BEGIN {if (b == "") print "n/a"; else printf "%.1f KB", b / 1024}'; }
per_m() { awk -v b="${R[$1]:-}" 'BEGIN {if (b == "") print "n/a"; else printf "%.1f GB", b * 1e6 / 1024 / 1024 / 1024}'; }
ms() { awk -v u="${R[$1]:-}" 'BEGIN {if (u == "") print "n/a"; else printf "%.2f ms", u / 1000}'; }
echo
echo "Push system benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
printf '%-44s %-22s %-14s %s\n' "figure" "measured" "target" "load avg (1/5/15 min)"
printf '%-44s %-22s %-14s %s\n' "idle: connections up (of $((IDLE_GENS * IDLE_CONNS)))" "$(v idle_up)" "~19,000" "$(v idle_load)"
printf '%-44s %-22s %-14s %s\n' "idle: comet VmRSS before -> after" "$(v idle_rss0) -> $(v idle_rss1) kB" "" ""
printf '%-44s %-22s %-14s %s\n' "idle: comet RSS per connection" "$(kb idle_bytes)" "<= 8 KB" "(goim ~14 KB)"
printf '%-44s %-22s %-14s %s\n' "idle: 1M connections by that figure" "$(per_m idle_bytes)" "" ""
printf '%-44s %-22s %-14s %s\n' "room: frames delivered (expected)" "$(v room_recv) ($(v room_expect))" "" "$(v room_load)"
printf '%-44s %-22s %-14s %s\n' "room: delivered per second" "$(v room_rate)/s" "" "(at $ROOM_RATE pushes/s)"
printf '%-44s %-22s %-14s %s\n' "room: comet CPU over the phase" "$(v room_cpu) s" "" ""
printf '%-44s %-22s %-14s %s\n' "room: messages per comet core-second" "$(v room_percore)" ">= 1,000,000" "(goim ~1.5M)"
printf '%-44s %-22s %-14s %s\n' "latency: pushes sent / received" "$(v lat_sent) / $(v lat_received)" "" "$(v lat_load)"
printf '%-44s %-22s %-14s %s\n' "latency: rate achieved" "$(v lat_rate)/s" "1,000/s" ""
printf '%-44s %-22s %-14s %s\n' "latency: p50 POST -> receipt" "$(ms lat_p50_us)" "" ""
printf '%-44s %-22s %-14s %s\n' "latency: p90" "$(ms lat_p90_us)" "" ""
printf '%-44s %-22s %-14s %s\n' "latency: p99" "$(ms lat_p99_us)" "<= 5 ms" ""
printf '%-44s %-22s %-14s %s\n' "latency: max" "$(ms lat_max_us)" "" ""
printf '%-44s %-22s %-14s %s\n' "logic: accepted /push/mids per second" "$(v acc_mids) (errors $(v acc_mids_err))" "" "$(v acc_mids_load)"
printf '%-44s %-22s %-14s %s\n' "logic: accepted /push/room per second" "$(v acc_room) (errors $(v acc_room_err))" "" "$(v acc_room_load)"
echo
if ((${#FAILURES[@]})); then
    log "failures: ${FAILURES[*]}"
    exit 1
fi
