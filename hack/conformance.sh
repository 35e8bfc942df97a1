#!/usr/bin/env bash
# conformance.sh - the whole critest v1.26.1 suite (the CRI validation suite containerd and
# CRI-O run, with kubelet 1.26's own CRI client) against concord on the dev node.
#
#   * critest, crictl and ginkgo (for -parallel): taken from CRI_TOOLS_DIR when built there,
#     else built from the cri-tools v1.26.1 source archive (CRI_TOOLS_ARCHIVE, default
#     ../shared/cri-tools/cri-tools-v1.26.1.tar.gz beside the checkout) with Debian's Go 1.19,
#     offline, unmodified. Without either it says SKIPPED and exits 0 (status 0, nothing run).
#   * the dev node (hack/dev-up.sh --no-cri): images critest pulls are served by the local
#     registry through hosts.toml mirrors.
#   * concord (debug build, as the tests) on its own socket, state dir and containerd namespace.
#   * critest serially, then with -parallel 2; fails on any failed spec. The only spec skipped is
#     the one that pulls an upstream image by digest (it cannot pass offline).
#   * afterwards: no pod, container or shim of the run is left.
#
# Usage: hack/conformance.sh [serial|parallel|both]   (default both)
# Environment: CRI_TOOLS_DIR [/usr/local/lib/cri-tools-v1.26.1]  CRI_TOOLS_ARCHIVE  FOCUS (a
# ginkgo focus regex, for one spec)  CONFORMANCE_DIR [/tmp/concord-conformance]
# CONCORD_FLAGS (more daemon flags, e.g. `--cgroup-driver systemd`)  SKIP_DEV_UP [0] (1: the node
# is up already, e.g. hack/systemd-node.sh's, whose containerd is given as CTD_SOCK)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-both}
CRI_TOOLS_DIR=${CRI_TOOLS_DIR:-/usr/local/lib/cri-tools-v1.26.1}
CRI_TOOLS_ARCHIVE=${CRI_TOOLS_ARCHIVE:-$(pwd)/../shared/cri-tools/cri-tools-v1.26.1.tar.gz}
DIR=${CONFORMANCE_DIR:-/tmp/concord-conformance}
CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
SKIP='public image with digest'
log() { printf '[conformance] %s\n' "$*" >&2; }

# ---- the tools --------------------------------------------------------------------------------
tools_ready() { [ -x "$CRI_TOOLS_DIR/critest" ] && [ -x "$CRI_TOOLS_DIR/crictl" ] && [ -x "$CRI_TOOLS_DIR/ginkgo" ]; }
if ! tools_ready; then
  if [ ! -f "$CRI_TOOLS_ARCHIVE" ]; then
    log "SKIPPED: no critest/crictl in $CRI_TOOLS_DIR and no cri-tools archive at $CRI_TOOLS_ARCHIVE"
    exit 0
  fi
  bash hack/cri-tools.sh "$CRI_TOOLS_ARCHIVE" "$CRI_TOOLS_DIR" >&2
fi
"$CRI_TOOLS_DIR/critest" --version 2>/dev/null | head -1 >&2 || true

# ---- the node and concord ----------------------------------------------------------------------
if [ "${SKIP_DEV_UP:-0}" != 1 ]; then
  bash hack/dev-up.sh --no-cri >/dev/null 2>&1 || bash hack/dev-up.sh --no-cri
fi
cargo build --quiet --bin concord --bin concord-log-writer
CONCORD=${CARGO_TARGET_DIR:-target}/debug/concord
read -r -a CONCORD_FLAGS <<< "${CONCORD_FLAGS:-}"
rm -rf "$DIR"
mkdir -p "$DIR"
SOCK=$DIR/concord.sock
NS=concord-critest
CONCORD_PID=
stop_concord() {
  if [ -n "$CONCORD_PID" ]; then
    kill "$CONCORD_PID" 2>/dev/null || true
    wait "$CONCORD_PID" 2>/dev/null || true
    CONCORD_PID=
  fi
}
trap stop_concord EXIT
start_concord() {
  "$CONCORD" --config /dev/null --listen "$SOCK" --state-dir "$DIR/state" \
    --containerd-address "$CTD_SOCK" --containerd-namespace "$NS" \
    --registry-config-path /tmp/rig/containerd/certs.d --metrics-address 127.0.0.1:0 \
    --netns-dir "$DIR/netns" --stream-address 127.0.0.1:0 --log-level "${CONCORD_LOG_LEVEL:-info}" \
    "${CONCORD_FLAGS[@]}" \
    >> "$DIR/concord.log" 2>&1 &
  CONCORD_PID=$!
  for _ in $(seq 1 200); do
    "$CONCORD" status --listen "$SOCK" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "concord did not start; its log:"; tail -50 "$DIR/concord.log" >&2; exit 1
}

# ---- critest -------------------------------------------------------------------------------------
failed=0
run_critest() { # $1 = label, $2 = nodes
  local label=$1 nodes=$2 out=$DIR/critest-$1.log
  local args=(--runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK"
              "-ginkgo.skip=$SKIP" -ginkgo.no-color)
  [ -n "${FOCUS:-}" ] && args+=("-ginkgo.focus=$FOCUS")
  # (ginkgo's parallel runner writes reports relative to the test binary's temp dir: serial only)
  if [ "$nodes" -gt 1 ]; then args+=("-parallel=$nodes"); else args+=("-ginkgo.json-report=$DIR/critest-$label.json"); fi
  log "critest ($label, $nodes node(s)) against concord at $SOCK"
  local start=$SECONDS rc=0
  PATH=$CRI_TOOLS_DIR:$PATH "$CRI_TOOLS_DIR/critest" "${args[@]}" > "$out" 2>&1 || rc=$?
  # ginkgo's summary: "Ran 79 of 80 Specs in 123.4 seconds" and "SUCCESS! -- 79 Passed | 0 Failed | ..."
  local summary
  summary=$(grep -aE '^(Ran [0-9]+ of [0-9]+ Specs|SUCCESS!|FAIL!)' "$out" | tr '\n' ' ')
  log "critest $label: ${summary:-no summary} (rc=$rc, $((SECONDS - start)) s; log $out)"
  if [ "$rc" != 0 ] || ! grep -aq '^SUCCESS!' "$out"; then
    grep -aE '^\s*\[FAIL\]|^\s*\[PANICKED\]' "$out" | sort -u >&2 || true
    tail -40 "$out" >&2
    failed=1
  fi
}

leftovers() {
  local pods ctrs
  pods=$(PATH=$CRI_TOOLS_DIR:$PATH crictl -r "unix://$SOCK" pods -q 2>/dev/null | wc -l)
  ctrs=$(PATH=$CRI_TOOLS_DIR:$PATH crictl -r "unix://$SOCK" ps -aq 2>/dev/null | wc -l)
  log "left by critest: $pods pod(s), $ctrs container(s)"
}

start_concord
case "$MODE" in
  serial) run_critest serial 1 ;;
  parallel) run_critest parallel 2 ;;
  both) run_critest serial 1; run_critest parallel 2 ;;
  *) echo "usage: $0 [serial|parallel|both]" >&2; exit 2 ;;
esac
leftovers
stop_concord
if [ "$failed" != 0 ]; then
  log "FAILED: critest reported failed specs (concord log: $DIR/concord.log)"
  exit 1
fi
log "critest passed"
