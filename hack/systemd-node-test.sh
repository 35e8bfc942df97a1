#!/usr/bin/env bash
# systemd-node-test.sh - concord with `runtime.cgroup_driver = "systemd"` on a node whose PID 1
# is systemd (hack/systemd-node.sh): the systemd-driver, pod-cgroup (stats), sandbox and
# container suites, the log suite (journald format into the node's real journal), then critest v1.26.1 serially, all inside the node against its containerd.
# When systemd cannot be started as PID 1 here it says SKIPPED (with the reason) and exits 0.
# Prints "systemd node: N passed, M failed" last; exits non-zero on a failure.
#
# Environment: SUITES [systemd_cgroup pod_cgroup sandboxes containers logs]  CRITEST [1]  KEEP_NODE [0]
set -uo pipefail
cd "$(dirname "$0")/.."
SUITES=${SUITES:-systemd_cgroup pod_cgroup sandboxes containers logs}
LOGS=${SYSTEMD_NODE_LOGS:-/tmp/concord-systemd-node}
log() { printf '[systemd-node-test] %s\n' "$*" >&2; }
mkdir -p "$LOGS"
if ! bash hack/systemd-node.sh up > "$LOGS/up.log" 2>&1; then
  log "SKIPPED: systemd cannot run as PID 1 of its own namespaces here:"
  tail -20 "$LOGS/up.log" >&2
  echo "systemd node: 0 passed, 0 failed (skipped)"
  exit 0
fi
[ "${KEEP_NODE:-0}" = 1 ] || trap 'bash hack/systemd-node.sh down >/dev/null 2>&1' EXIT
export CONCORD_TEST_CONTAINERD=/run/concord-node/containerd.sock CONCORD_TEST_CGROUP_DRIVER=systemd
export CONCORD_TEST_POD_SUBNET=10.89. CONCORD_TEST_IPAM_DIR=/var/lib/concord-node/cni/sdnode-bridge
export CRICTL=${CRICTL:-/usr/local/lib/cri-tools-v1.26.1/crictl} RUST_BACKTRACE=0
passed=0 failed=0
for t in $SUITES; do
  start=$SECONDS
  bash hack/systemd-node.sh run cargo test --test "$t" > "$LOGS/$t.log" 2>&1
  p=$(awk '/^test result:/ {n += $4} END {print n + 0}' "$LOGS/$t.log")
  f=$(awk '/^test result:/ {n += $6} END {print n + 0}' "$LOGS/$t.log")
  grep -q '^test result:' "$LOGS/$t.log" || f=$((f + 1))
  log "$t: $p passed, $f failed ($((SECONDS - start)) s; log $LOGS/$t.log)"
  passed=$((passed + p)) failed=$((failed + f))
done
if [ "${CRITEST:-1}" = 1 ]; then
  start=$SECONDS
  SKIP_DEV_UP=1 CTD_SOCK=$CONCORD_TEST_CONTAINERD CONCORD_FLAGS="--cgroup-driver systemd" \
    CONFORMANCE_DIR=/tmp/concord-conformance-systemd \
    bash hack/systemd-node.sh run bash hack/conformance.sh serial > "$LOGS/critest.log" 2>&1
  p=$( (grep -aoE 'SUCCESS! -- [0-9]+ Passed' "$LOGS/critest.log" || true) | awk '{s += $3} END {print s + 0}')
  f=$( (grep -aoE '[0-9]+ Failed' "$LOGS/critest.log" || true) | awk '{s += $1} END {print s + 0}')
  grep -q 'critest passed\|SKIPPED' "$LOGS/critest.log" || f=$((f + 1))
  log "critest (serial): $p specs passed, $f failed ($((SECONDS - start)) s; log $LOGS/critest.log)"
  passed=$((passed + p)) failed=$((failed + f))
fi
echo "systemd node: $passed passed, $failed failed"
[ "$failed" = 0 ]
