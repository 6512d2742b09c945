#!/usr/bin/env bash
# Coverage-guided fuzzing of the RESP parsers and the push frame decoder with AFL++
# (cargo-afl, stable Rust).
#
#   scripts/fuzz.sh request 15   # the client request parser, 15 minutes
#   scripts/fuzz.sh reply 15     # the backend reply splitter, 15 minutes
#   scripts/fuzz.sh frame 15     # the push protocol's frame decoder (comet), 15 minutes
#
# Installs cargo-afl when missing (and builds its AFL++ once per rustc), builds the
# targets in fuzz/ (a package of its own, not part of the main build), then runs one
# afl-fuzz instance (one core) for MINUTES. The corpus starts from fuzz/corpus/TARGET
# (the committed, minimized corpus) plus fuzz/seeds/TARGET (frames the unit tests use);
# the run's state is kept in fuzz/out/TARGET and resumed by the next run. At the end
# it prints the executions, the corpus size and every crash, replayed to show its panic.
# Exit status 1 if the run saved any crash.
#
# Environment: FUZZ_MINIMIZE=1 also rewrites fuzz/corpus/TARGET with afl-cmin.
set -euo pipefail

target=${1:?usage: scripts/fuzz.sh request|reply|frame MINUTES}
minutes=${2:?usage: scripts/fuzz.sh request|reply|frame MINUTES}
case $target in request | reply | frame) ;; *) echo "unknown target $target (request|reply|frame)" >&2; exit 2 ;; esac

cd "$(dirname "$0")/../fuzz"
afl_version=0.18.2 # the same as the `afl` dependency in fuzz/Cargo.toml

if ! cargo afl --version 2>/dev/null | grep -q "$afl_version"; then
    cargo install cargo-afl --version "$afl_version" --locked
fi
# Builds AFL++ from the sources cargo-afl ships; refuses (harmlessly) once built.
if ! out=$(cargo afl config --build 2>&1); then
    grep -q 'already built' <<<"$out" || { echo "$out" >&2; exit 1; }
fi

cargo afl build --release --bin "$target"

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
cp seeds/"$target"/* "$seeds"/
if [ -d corpus/"$target" ]; then cp corpus/"$target"/* "$seeds"/; fi

# One instance, not pinned to a core (the machine is shared); no core_pattern or
# CPU governor changes; a run that stopped is resumed.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_AUTORESUME=1 AFL_NO_UI=1
mkdir -p out
echo "fuzzing $target for $minutes min (log: fuzz/out/$target.log)"
cargo afl fuzz -V $((minutes * 60)) -i "$seeds" -o out/"$target" -- target/release/"$target" \
    >out/"$target".log 2>&1 || { tail -20 out/"$target".log >&2; exit 1; }

stats=out/$target/default/fuzzer_stats
for key in run_time execs_done execs_per_sec corpus_count saved_crashes saved_hangs; do
    printf '%-14s %s\n' "$key" "$(awk -v k="$key" '$1 == k { print $3 }' "$stats")"
done

if [ "${FUZZ_MINIMIZE:-0}" = 1 ]; then
    rm -rf corpus/"$target".new
    # afl-cmin.bash: the python afl-cmin that `cargo afl cmin` runs kept 0 files here.
    afl_bin=$(dirname "$(find "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs -name afl-fuzz \
        -path "*afl.rs-$afl_version*" | head -1)")
    AFL_PATH=$afl_bin "$afl_bin"/afl-cmin.bash -i out/"$target"/default/queue -o corpus/"$target".new \
        -- target/release/"$target" >/dev/null
    rm -rf corpus/"$target" && mv corpus/"$target".new corpus/"$target"
    echo "corpus/$target: $(ls corpus/"$target" | wc -l) files, $(cat corpus/"$target"/* | wc -c) bytes"
fi

crashes=$(find out/"$target"/default/crashes -name 'id:*' 2>/dev/null | sort)
if [ -n "$crashes" ]; then
    for c in $crashes; do
        echo "crash: fuzz/$c"
        target/release/"$target" <"$c" 2>&1 | grep -m1 -A1 panicked | tail -1 || true
    done
    exit 1
fi
echo "no crash"
