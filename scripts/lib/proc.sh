# shellcheck shell=bash
# Sourced by the benchmark scripts (scripts/bench.sh, bench_push.sh,
# bench_migration.sh): logging, stopping what they started, waiting for a
# condition, and a few /proc and redis readings. Set LOG_TAG before sourcing
# (the prefix of every log line). Defines functions only; running it does nothing.

log() { printf '[%s %s] %s\n' "${LOG_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# fail MESSAGE: a failed check that does not stop the run; the script reports FAILURES at the end.
fail() { log "FAILED: $*"; FAILURES+=("$*"); }

# nap SECONDS: a sleep that a trapped INT/TERM interrupts at once (bash runs traps only
# after a foreground command ends, but interrupts `wait`).
nap() { sleep "$1" & wait $!; }

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# trap_cleanup: runs the script's `cleanup` on exit, and logs an interrupt or a TERM first.
trap_cleanup() {
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT
    trap 'log "terminated"; exit 143' TERM
}

# end_cleanup RC: the last step of `cleanup`. Keeps $WORK (logs, raw output) when BENCH_KEEP=1
# or the run failed (not on Ctrl-C or TERM), removes it otherwise, and exits with RC.
end_cleanup() {
    local rc=$1
    if [[ ${BENCH_KEEP:-0} == 1 ]] || ((rc != 0 && rc != 130 && rc != 143)); then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

stop_pid() {   # stop_pid PID GRACE_SECONDS: SIGTERM, wait, then SIGKILL
    local pid=$1 grace=$2 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do alive "$pid" || return 0; sleep 0.1; done
    log "pid $pid did not stop after ${grace}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_for WHAT SECONDS PID CMD...: retries CMD until it succeeds, PID dies or time runs out.
wait_for() {
    local what=$1 secs=$2 pid=$3 i
    shift 3
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        alive "$pid" || { log "$what: process $pid exited"; return 1; }
        sleep 0.1
    done
    log "$what: not ready after ${secs}s"
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }   # something listens on 127.0.0.1:PORT
# cpu_ticks PID: utime + stime in clock ticks (getconf CLK_TCK, 100 here), nothing once the
# process is gone; read after the parenthesized command name, which may hold spaces.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || true; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
redis_pid() { redis-cli -p "$1" INFO server | tr -d '\r' | awk -F: '/^process_id:/ { print $2 }'; }
# ratio A B: A / B to two decimals, "-" when either is missing or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
