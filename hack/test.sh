#!/usr/bin/env bash
# test.sh - the test command: brings up the dev node (hack/dev-up.sh: containerd with its CRI
# plugin disabled, runc, CNI plugins, local registry with locally built images), then runs the
# format check, clippy, every test (unit + integration against the real containerd, with the real
# crictl v1.26.1 and gRPC Python as clients), then the whole critest v1.26.1 conformance suite
# (hack/conformance.sh, serially and with -parallel 2), the dashboard proved on a real Prometheus
# and Grafana's schema, the `concord inspect` demo, then the systemd cgroup driver on a node
# whose PID 1 is systemd (hack/systemd-node-test.sh), then every fuzz target for a bounded time
# (hack/fuzz.sh).
#
# critest and crictl are built from the cri-tools v1.26.1 source archive (CRI_TOOLS_ARCHIVE,
# default ../shared/cri-tools/cri-tools-v1.26.1.tar.gz beside the checkout) or taken from
# CRI_TOOLS_DIR; where neither is there, the crictl tests and the conformance run say SKIPPED
# and the rest still runs.
set -euo pipefail
cd "$(dirname "$0")/.."

export CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
export CRI_TOOLS_DIR=${CRI_TOOLS_DIR:-/usr/local/lib/cri-tools-v1.26.1}
export CRI_TOOLS_ARCHIVE=${CRI_TOOLS_ARCHIVE:-$(pwd)/../shared/cri-tools/cri-tools-v1.26.1.tar.gz}
bash hack/dev-up.sh --no-cri

# gRPC Python, a foreign client of the CRI socket (tests/authority.rs).
if ! python3 -c 'import grpc' 2>/dev/null; then
  echo "[test] installing grpcio (PyPI) for the gRPC Python client test"
  python3 -m pip install -q grpcio 2>&1 | tail -2 || echo "[test] grpcio could not be installed: that test will say SKIPPED"
fi
# crictl and critest, for tests/crictl.rs and the conformance run.
if [ -x "$CRI_TOOLS_DIR/crictl" ] && [ -x "$CRI_TOOLS_DIR/critest" ] && [ -x "$CRI_TOOLS_DIR/ginkgo" ]; then
  echo "[test] cri-tools v1.26.1 in $CRI_TOOLS_DIR"
elif [ -f "$CRI_TOOLS_ARCHIVE" ]; then
  echo "[test] building cri-tools v1.26.1 (critest, crictl, ginkgo) from $CRI_TOOLS_ARCHIVE"
  bash hack/cri-tools.sh "$CRI_TOOLS_ARCHIVE" "$CRI_TOOLS_DIR" >/dev/null
else
  echo "[test] SKIPPED: no cri-tools archive at $CRI_TOOLS_ARCHIVE: the crictl tests and critest will not run"
fi
export CRICTL=$CRI_TOOLS_DIR/crictl

export CONCORD_TEST_CONTAINERD=$CTD_SOCK
export CARGO_TERM_COLOR=never
# One build, run once: incremental state (a quarter of target/debug) buys nothing here.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The free disk where the builds go, printed before each stage: a full disk fails a build with
# ENOSPC, and the log should say which stage took it there.
free_gb() { df -BG --output=avail . | tail -1 | tr -dc 0-9; }
disk() {
  local t; t=$(du -sh target 2>/dev/null | cut -f1) || true
  echo "[test] disk: $(free_gb) GB free, target/ ${t:-absent} (before $1)"
}
disk "clippy"
# A failing test's message, not a backtrace, is what the end of the output should show.
export RUST_BACKTRACE=0
echo "[test] cargo fmt --check"
cargo fmt --check
echo "[test] cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
disk "cargo test"
echo "[test] cargo test"
cargo test --all-targets 2>&1 | tee /tmp/concord-test.log
passed=$(awk '/^test result:/ {p += $4} END {print p + 0}' /tmp/concord-test.log)
failed=$(awk '/^test result:/ {f += $6} END {print f + 0}' /tmp/concord-test.log)

# The operator's view on real data: every dashboard query answered by a real Prometheus
# scraping concord and containerd under a workload (hack/prom-proof.sh); the dashboard
# type-checked against Grafana's published types (hack/dashboard-schema.sh, npm registry); a pod
# whose CNI plugin hangs explained by `concord inspect` and the log (hack/why-demo.sh).
ops_ok=0
ops_failed=0
ops() { # $1: name, rest: command
  local name=$1; shift
  echo "[test] $name"
  if "$@" > "/tmp/concord-$name.log" 2>&1; then ops_ok=$((ops_ok + 1)); tail -3 "/tmp/concord-$name.log"
  else ops_failed=$((ops_failed + 1)); tail -30 "/tmp/concord-$name.log"; echo "[test] $name FAILED"; fi
}
disk "the operator's checks"
# Both drive pods with the stock crictl: without cri-tools they say SKIPPED, as the crictl
# tests and critest do.
if [ -x "$CRICTL" ]; then
  ops prom-proof bash hack/prom-proof.sh
else
  echo "[test] SKIPPED: prom-proof (no crictl at $CRICTL)"
fi
if npm view "@grafana/schema@11.6.9" version >/dev/null 2>&1; then
  ops dashboard-schema bash hack/dashboard-schema.sh
else
  echo "[test] SKIPPED: dashboard schema check (the npm registry does not answer)"
fi
if [ -x "$CRICTL" ]; then
  ops why-demo bash hack/why-demo.sh
else
  echo "[test] SKIPPED: why-demo (no crictl at $CRICTL)"
fi
failed=$((failed + ops_failed))
passed=$((passed + ops_ok))
echo "[test] critest v1.26.1 conformance (hack/conformance.sh)"
bash hack/conformance.sh both 2>&1 | tee /tmp/concord-conformance.log
specs=$( (grep -aoE 'SUCCESS! -- [0-9]+ Passed' /tmp/concord-conformance.log || true) | awk '{s += $3} END {print s + 0}')

# The systemd cgroup driver on a node whose PID 1 is systemd (hack/systemd-node.sh): the
# systemd, pod-cgroup, sandbox and container suites and critest serially inside it. SKIPPED
# (counted as nothing) where systemd cannot run as PID 1 of its own namespaces, or with
# SYSTEMD_NODE=0.
sd_passed=0
sd_failed=0
if [ "${SYSTEMD_NODE:-1}" != 0 ]; then
  disk "the systemd node"
  echo "[test] systemd cgroup driver on a systemd node (hack/systemd-node-test.sh)"
  bash hack/systemd-node-test.sh 2>&1 | tee /tmp/concord-systemd-node.log || true
  sd_passed=$(awk '/^systemd node:/ {print $3}' /tmp/concord-systemd-node.log | tail -1)
  sd_failed=$(awk '/^systemd node:/ {print $5}' /tmp/concord-systemd-node.log | tail -1)
  [ -n "$sd_passed" ] || { sd_passed=0; sd_failed=1; }
else
  echo "[test] SKIPPED: systemd node (SYSTEMD_NODE=0)"
fi

# The fuzz targets (fuzz/, cargo-fuzz with libFuzzer): saved crash inputs replayed, then each
# target run for FUZZ_SECONDS (20 s each by default; 0 skips the stage).
fuzz_ok=0
fuzz_failed=0
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ "$FUZZ_SECONDS" != 0 ]; then
  # The fuzz build (every dependency again, with ASan and coverage) needs several GB; nothing
  # after this point runs from target/debug, so it goes where the disk is short.
  if [ "$(free_gb)" -lt "${FUZZ_MIN_FREE_GB:-12}" ]; then
    disk "removing target/debug for the fuzz build"
    rm -rf target/debug
  fi
  disk "the fuzz build"
  echo "[test] fuzzing: every target in fuzz/ for $FUZZ_SECONDS s (hack/fuzz.sh)"
  fuzz_rc=0
  bash hack/fuzz.sh "$FUZZ_SECONDS" >/tmp/concord-fuzz.log 2>&1 || fuzz_rc=$?
  cat /tmp/concord-fuzz.log
  fuzz_ok=$(awk '$1 ~ /^[a-z_]+$/ && $6 == "0" {n++} END {print n + 0}' /tmp/concord-fuzz.log)
  fuzz_failed=$(awk '$1 ~ /^[a-z_]+$/ && $6 == "1" {n++} END {print n + 0}' /tmp/concord-fuzz.log)
  if grep -q "fuzz build failed\|a regression input crashes again" /tmp/concord-fuzz.log; then
    fuzz_failed=$((fuzz_failed + 1))
  fi
  # A run that ended otherwise (killed, a tool missing) is a failure too.
  if [ "$fuzz_rc" != 0 ] && [ "$fuzz_failed" = 0 ]; then
    echo "[test] hack/fuzz.sh exited $fuzz_rc"
    fuzz_failed=1
  fi
else
  echo "[test] SKIPPED: fuzzing (FUZZ_SECONDS=0)"
fi
disk "the end"
echo "[test] cargo test: $passed passed, $failed failed; critest: $specs specs passed (serial + parallel); systemd node: $sd_passed passed, $sd_failed failed; fuzz: $fuzz_ok targets clean, $fuzz_failed failed"
echo "tests: $((passed + specs + sd_passed + fuzz_ok)) passed, $((failed + sd_failed + fuzz_failed)) failed"
[ "$((failed + sd_failed + fuzz_failed))" = 0 ]
