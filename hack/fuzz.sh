#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time, then prints a table:
# executions, corpus units, coverage, crashes. A crash fails the run; its input is saved under
# fuzz/artifacts/<target>/ (commit it under fuzz/regressions/<target>/ with the fix: every run
# replays those first).
#
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 20 s, every target)
#
# cargo-fuzz needs nightly rustc flags (-Z sanitizer); this machine has only the stable
# toolchain, so RUSTC_BOOTSTRAP=1 lets stable rustc take them (the same compiler, nightly
# features unlocked). --cap-lints=warn: vendor/h2 is a path dependency, and h2 built with
# `--cfg fuzzing` has public items without docs that its own deny(missing_docs) refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
export RUSTC_BOOTSTRAP=1 RUSTFLAGS="--cap-lints=warn"
if ! command -v cargo-fuzz >/dev/null; then
    cargo install --locked cargo-fuzz@0.13.2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^concord-fuzz$')
fi
build_log=$(mktemp)
if ! (cd fuzz && cargo fuzz build) >"$build_log" 2>&1; then
    grep -v '^\s*\(at \|[0-9]*:\)' "$build_log" | tail -40
    echo "fuzz build failed"
    exit 1
fi
rm -f "$build_log"

bin=fuzz/target/x86_64-unknown-linux-gnu/release
failed=0
printf '%-16s %12s %8s %8s %8s %s\n' target executions corpus cov ft crashes
for t in "${targets[@]}"; do
    work=fuzz/corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t" "fuzz/seeds/$t"
    log=$(mktemp)
    # Regressions first: each saved crash input must now pass.
    if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls -A "fuzz/regressions/$t")" ]; then
        if ! "$bin/$t" -runs=0 "fuzz/regressions/$t"/* >"$log" 2>&1; then
            echo "$t: a regression input crashes again:"; tail -30 "$log"; failed=1; continue
        fi
    fi
    crashes=0
    if ! "$bin/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=262144 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
        "$work" "fuzz/seeds/$t" >"$log" 2>&1; then
        crashes=1
        failed=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    done_line=$(grep -E '^#[0-9]+\s+DONE' "$log" | tail -1 || true)
    [ -z "$done_line" ] && done_line=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
    units=$(ls "$work" | wc -l)
    printf '%-16s %12s %8s %8s %8s %s\n' "$t" "${execs:-?}" "$units" "${cov:-?}" "${ft:-?}" "$crashes"
    if [ "$crashes" = 1 ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
    fi
    rm -f "$log"
done
exit $failed
