#!/usr/bin/env bash
# test.sh - the test command: brings up the dev node (hack/dev-up.sh: containerd with its CRI
# plugin disabled, runc, CNI plugins, local registry with locally built images), then runs the
# format check, clippy and every test (unit + integration against the real containerd).
set -euo pipefail
cd "$(dirname "$0")/.."

export CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
bash hack/dev-up.sh --no-cri

export CONCORD_TEST_CONTAINERD=$CTD_SOCK
export CARGO_TERM_COLOR=never
# A failing test's message, not a backtrace, is what the end of the output should show.
export RUST_BACKTRACE=0
echo "[test] cargo fmt --check"
cargo fmt --check
echo "[test] cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "[test] cargo test"
cargo test --all-targets 2>&1 | tee /tmp/concord-test.log
