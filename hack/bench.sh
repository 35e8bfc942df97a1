#!/usr/bin/env bash
# bench.sh - concord against containerd's own CRI plugin, same machine, same run.
#   * the dev node (hack/dev-up.sh: containerd with CRI disabled, local registry, images)
#   * a second, reference containerd WITH its CRI plugin (own root, state and socket)
#   * concord (release build) on the dev containerd
#   * concord-bench: the same CRI calls against both; p50/p99 and ratios
#   * idle RSS: concord's process vs what the CRI plugin adds to containerd
# Usage: hack/bench.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
BENCH_DIR=${BENCH_DIR:-/tmp/concord-bench}
REF_DIR=$BENCH_DIR/ctd-ref
log() { printf '[bench] %s\n' "$*" >&2; }

bash hack/dev-up.sh --no-cri >/dev/null 2>&1 || bash hack/dev-up.sh --no-cri
cargo build --release --quiet --bins
mkdir -p "$REF_DIR"

# Reference containerd: the dev config with the CRI plugin, on its own paths.
sed -e "s#^root = .*#root = \"$REF_DIR/root\"#" -e "s#^state = .*#state = \"$REF_DIR/state\"#" \
    -e "s#^  address = .*#  address = \"$REF_DIR/containerd.sock\"#" \
    /tmp/rig/containerd/config-cri.toml > "$REF_DIR/config.toml"
containerd --config "$REF_DIR/config.toml" > "$REF_DIR/containerd.log" 2>&1 &
REF_PID=$!
CONCORD_PID=
cleanup() {
  [ -n "$CONCORD_PID" ] && kill "$CONCORD_PID" 2>/dev/null || true
  kill "$REF_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -S "$REF_DIR/containerd.sock" ] && break; sleep 0.1; done

rm -rf "$BENCH_DIR/state"
target/release/concord --listen "$BENCH_DIR/concord.sock" --state-dir "$BENCH_DIR/state" \
  --containerd-address /tmp/ctd/containerd.sock --containerd-namespace concord-bench \
  --registry-config-path /tmp/rig/containerd/certs.d --metrics-address 127.0.0.1:9399 \
  > "$BENCH_DIR/concord.log" 2>&1 &
CONCORD_PID=$!
for _ in $(seq 1 100); do target/release/concord status --listen "$BENCH_DIR/concord.sock" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
DEV_CTD_PID=$(cat /tmp/rig/run/containerd.pid)
log "idle RSS (kB): concord $(rss "$CONCORD_PID"); reference containerd with CRI $(rss "$REF_PID"); dev containerd without CRI $(rss "$DEV_CTD_PID")"

target/release/concord-bench --concord "$BENCH_DIR/concord.sock" --reference "$REF_DIR/containerd.sock" --iterations "$N"
log "RSS after the run (kB): concord $(rss "$CONCORD_PID"); reference containerd $(rss "$REF_PID")"
