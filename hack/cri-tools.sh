#!/usr/bin/env bash
# cri-tools.sh ARCHIVE [OUT_DIR] - builds critest and crictl v1.26.1 and the ginkgo CLI that
# `critest -parallel` runs, from the cri-tools v1.26.1 source archive (with its vendor/ tree),
# offline, with Debian's Go 1.19 (installed when missing). Nothing in the source is changed.
# Idempotent: what is already built in OUT_DIR is kept. Prints OUT_DIR.
set -euo pipefail
ARCHIVE=${1:?usage: cri-tools.sh ARCHIVE [OUT_DIR]}
OUT=${2:-/usr/local/lib/cri-tools-v1.26.1}
if [ -x "$OUT/critest" ] && [ -x "$OUT/crictl" ] && [ -x "$OUT/ginkgo" ]; then echo "$OUT"; exit 0; fi
if [ ! -x /usr/lib/go-1.19/bin/go ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-1.19 >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-1.19 >/dev/null; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$ARCHIVE" -C "$work"
mkdir -p "$OUT"
(
  cd "$work"/cri-tools-*
  export PATH=/usr/lib/go-1.19/bin:$PATH GOFLAGS=-mod=vendor GOPROXY=off GOCACHE="$work/gocache" CGO_ENABLED=0
  ver=-X=github.com/kubernetes-sigs/cri-tools/pkg/version.Version=v1.26.1
  [ -x "$OUT/crictl" ] || go build -ldflags "$ver" -o "$OUT/crictl" ./cmd/crictl
  [ -x "$OUT/critest" ] || go test -c -ldflags "$ver" -o "$OUT/critest" ./cmd/critest
  # The ginkgo CLI of the same vendored version: critest -parallel N runs `ginkgo --nodes=N`.
  [ -x "$OUT/ginkgo" ] || go build -o "$OUT/ginkgo" ./vendor/github.com/onsi/ginkgo/v2/ginkgo
) >&2
echo "$OUT"
