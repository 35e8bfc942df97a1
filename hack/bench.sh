#!/usr/bin/env bash
# bench.sh - concord against containerd's own CRI plugin, same machine, same run.
#   * the dev node (hack/dev-up.sh: local registry, images, CNI, containerd configs)
#   * two fresh containerds with their own root, state and socket, so both start empty:
#     one WITH its CRI plugin (the reference), one without it (for concord)
#   * concord (release build) on the second
#   * concord-bench: the same CRI calls against both; p50/p99 and ratios
#   * idle RSS: concord's process vs what the CRI plugin adds to containerd
# Usage: hack/bench.sh [ITERATIONS] [images|sandboxes|containers|streaming]   (one section; all by default)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
ONLY=${2:-}
BENCH_DIR=${BENCH_DIR:-/tmp/concord-bench}
REF_DIR=$BENCH_DIR/ctd-ref
OWN_DIR=$BENCH_DIR/ctd-concord
log() { printf '[bench] %s\n' "$*" >&2; }

bash hack/dev-up.sh --no-cri >/dev/null 2>&1 || bash hack/dev-up.sh --no-cri
cargo build --release --quiet --bins
rm -rf "$BENCH_DIR"
mkdir -p "$REF_DIR" "$OWN_DIR"

# A containerd on its own paths from one of the dev configs: $1 = config, $2 = dir.
start_containerd() {
  sed -e "s#^root = .*#root = \"$2/root\"#" -e "s#^state = .*#state = \"$2/state\"#" \
      -e "s#^  address = .*#  address = \"$2/containerd.sock\"#" "$1" > "$2/config.toml"
  containerd --config "$2/config.toml" > "$2/containerd.log" 2>&1 &
  echo $!
}
REF_PID=$(start_containerd /tmp/rig/containerd/config-cri.toml "$REF_DIR")
OWN_PID=$(start_containerd /tmp/rig/containerd/config-nocri.toml "$OWN_DIR")
CONCORD_PID=
cleanup() {
  [ -n "$CONCORD_PID" ] && kill "$CONCORD_PID" 2>/dev/null || true
  kill "$REF_PID" "$OWN_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -S "$REF_DIR/containerd.sock" ] && [ -S "$OWN_DIR/containerd.sock" ] && break; sleep 0.1; done

target/release/concord --listen "$BENCH_DIR/concord.sock" --state-dir "$BENCH_DIR/state" \
  --containerd-address "$OWN_DIR/containerd.sock" \
  --registry-config-path /tmp/rig/containerd/certs.d --metrics-address 127.0.0.1:9399 \
  --netns-dir "$BENCH_DIR/netns" \
  > "$BENCH_DIR/concord.log" 2>&1 &
CONCORD_PID=$!
for _ in $(seq 1 100); do target/release/concord status --listen "$BENCH_DIR/concord.sock" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
log "idle RSS (kB): concord $(rss "$CONCORD_PID"); containerd with CRI $(rss "$REF_PID"); containerd without CRI $(rss "$OWN_PID")"

target/release/concord-bench --concord "$BENCH_DIR/concord.sock" --reference "$REF_DIR/containerd.sock" --iterations "$N" \
  --concord-pid "$CONCORD_PID" --reference-pid "$REF_PID" --own-containerd-pid "$OWN_PID" --log-dir "$BENCH_DIR/logs" \
  ${ONLY:+--only "$ONLY"}
log "RSS after the run (kB): concord $(rss "$CONCORD_PID") + its containerd $(rss "$OWN_PID"); containerd with CRI $(rss "$REF_PID")"
