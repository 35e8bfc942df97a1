#!/usr/bin/env bash
# bench.sh - concord against containerd's own CRI plugin, same machine, same run.
#   * the dev node (hack/dev-up.sh: local registry, images, CNI, containerd configs)
#   * two fresh containerds with their own root, state and socket, so both start empty:
#     one WITH its CRI plugin (the reference), one without it (for concord)
#   * concord (release build) on the second
#   * concord-bench: the same CRI calls against both; p50/p99 and ratios
#   * idle RSS: concord's process vs what the CRI plugin adds to containerd
#   * critest: critest v1.26.1's own benchmark (`critest -benchmark`, kubelet 1.26's client) against
#     both, alternately, ROUNDS rounds each; p50/p90 per operation and the ratio
#   * density (asked for by name): ITERATIONS pods x 3 containers started 10 pods at a time on
#     each side, then List*/Status/stats at 300 and 1,000 containers, RSS, CPU seconds, journal
# Usage: hack/bench.sh [ITERATIONS] [images|sandboxes|containers|streaming|density|critest]
#        (one section; all but density and critest by default).  critest: ITERATIONS = pods/containers/images per round,
#        ROUNDS (env, default 2) rounds per runtime.
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
      -e "/^\[grpc\]/,/^\[/ s#^  address = .*#  address = \"$2/containerd.sock\"#" \
      -e "/^\[metrics\]/,/^\[/ s#^  address = .*#  address = \"\"#" "$1" > "$2/config.toml"
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

if [ "$ONLY" = critest ]; then
  CRI_TOOLS_DIR=${CRI_TOOLS_DIR:-/usr/local/lib/cri-tools-v1.26.1}
  if [ ! -x "$CRI_TOOLS_DIR/critest" ]; then
    bash hack/cri-tools.sh "${CRI_TOOLS_ARCHIVE:-$(pwd)/../shared/cri-tools/cri-tools-v1.26.1.tar.gz}" "$CRI_TOOLS_DIR" >/dev/null
  fi
  cat > "$BENCH_DIR/critest-params.yaml" <<PARAMS
containersNumber: $N
containersNumberParallel: 1
podsNumber: $N
podsNumberParallel: 1
imagesNumber: $N
imagesNumberParallel: 1
imagePullingBenchmarkImage: registry.k8s.io/e2e-test-images/busybox:1.29-2
imageListingBenchmarkImages: [registry.k8s.io/e2e-test-images/busybox:1.29-2, registry.k8s.io/pause:3.9]
PARAMS
  for round in $(seq 1 "${ROUNDS:-2}"); do
    for who in reference concord; do
      sock=$REF_DIR/containerd.sock; [ "$who" = concord ] && sock=$BENCH_DIR/concord.sock
      out=$BENCH_DIR/critest-$who-$round
      mkdir -p "$out"
      log "critest -benchmark round $round: $who"
      "$CRI_TOOLS_DIR/critest" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
        -benchmark -benchmarking-params-file "$BENCH_DIR/critest-params.yaml" \
        -benchmarking-output-dir "$out" -ginkgo.no-color > "$out/critest.log" 2>&1 \
        || { log "critest -benchmark failed against $who: $out/critest.log"; tail -20 "$out/critest.log" >&2; exit 1; }
    done
  done
  # Where concord's time went: its per-step histograms, summed over the run.
  python3 - <<'PY' > "$BENCH_DIR/concord-steps.txt" || true
import re, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:9399/metrics", timeout=5).read().decode()
sums, counts = {}, {}
for line in body.splitlines():
    m = re.match(r'(concord_\w+_duration_seconds)_(sum|count)(?:\{(.*)\})? (\S+)', line)
    if m:
        (sums if m.group(2) == "sum" else counts)[(m.group(1), m.group(3) or "")] = float(m.group(4))
print(f"{'histogram':<48} {'labels':<44} {'n':>6} {'mean ms':>9}")
for k in sorted(sums):
    n = counts.get(k, 0)
    if n:
        print(f"{k[0]:<48} {k[1]:<44} {n:>6.0f} {sums[k] / n * 1000:>9.2f}")
PY
  log "concord's steps (mean per step): $BENCH_DIR/concord-steps.txt"
  cat "$BENCH_DIR/concord-steps.txt" >&2
  python3 - "$BENCH_DIR" <<'PY'
import glob, json, os, sys
base = sys.argv[1]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
ops = {}  # (file, op) -> who -> [ms]
for who in ("reference", "concord"):
    for f in glob.glob(f"{base}/critest-{who}-*/*_benchmark_data.json"):
        d = json.load(open(f))
        kind = os.path.basename(f).replace("_benchmark_data.json", "")
        for dp in d["datapoints"]:
            for name, ns in zip(d["operationsNames"], dp["operationsDurationsNs"]):
                ops.setdefault((kind, name), {}).setdefault(who, []).append(ns / 1e6)
print(f"{'benchmark':<16} {'operation':<16} {'n':>5} {'containerd p50':>14} {'p90':>8} {'concord p50':>12} {'p90':>8} {'ratio p50':>9} {'p90':>6}")
for (kind, name), by in sorted(ops.items()):
    r, c = by.get("reference", []), by.get("concord", [])
    if not r or not c:
        continue
    rp50, rp90, cp50, cp90 = pct(r, 50), pct(r, 90), pct(c, 50), pct(c, 90)
    ratio = lambda a, b: f"{a / b:.2f}x" if b > 0 else "-"
    print(f"{kind:<16} {name:<16} {len(c):>5} {rp50:>11.2f} ms {rp90:>8.2f} {cp50:>9.2f} ms {cp90:>8.2f} {ratio(rp50, cp50):>9} {ratio(rp90, cp90):>6}")
print("ratio = containerd's CRI / concord (above 1: concord is faster); times in ms")

# The lifecycles the issue's goals are stated in (sums of p50s, concord / containerd), and the
# pod's floor: what the pod's own steps outside concord (snapshot, pause container, runc through
# the shim, CNI) take on this machine with no concord time at all, stop's task and CNI DEL
# overlapped as concord runs them.
p50 = lambda kind, name, who: pct(ops.get((kind, name), {}).get(who, []) or [0], 50)
for label, kind, names in (("pod lifecycle", "pod", ("CreatePod", "StopPod", "RemovePod")),
                           ("container lifecycle", "container",
                            ("CreateContainer", "StartContainer", "StopContainer", "RemoveContainer"))):
    r = sum(p50(kind, n, "reference") for n in names)
    c = sum(p50(kind, n, "concord") for n in names)
    if r > 0 and c > 0:
        print(f"{label}: containerd {r:.1f} ms, concord {c:.1f} ms: {c / r:.3f} of containerd's")
steps = {}
try:
    for line in open(f"{base}/concord-steps.txt"):
        f = line.split()
        if f and f[0] == "concord_sandbox_step_duration_seconds":
            steps[f[1].split('"')[1]] = float(f[3])
except OSError:
    pass
need = ("snapshot", "container_create", "task_start", "task_stop", "cni_del", "container_remove")
if all(k in steps for k in need):
    floor = (steps["snapshot"] + steps["container_create"] + steps["task_start"]
             + max(steps["task_stop"], steps["cni_del"]) + steps["container_remove"])
    r = sum(p50("pod", n, "reference") for n in ("CreatePod", "StopPod", "RemovePod"))
    if r > 0:
        print(f"pod lifecycle floor (mean steps outside concord: snapshot + pause create + task start"
              f" + max(task stop {steps['task_stop']:.1f}, CNI DEL {steps['cni_del']:.1f}) + pause remove):"
              f" {floor:.1f} ms = {floor / r:.3f} of containerd's")
PY
  exit 0
fi

target/release/concord-bench --concord "$BENCH_DIR/concord.sock" --reference "$REF_DIR/containerd.sock" --iterations "$N" \
  --concord-pid "$CONCORD_PID" --reference-pid "$REF_PID" --own-containerd-pid "$OWN_PID" --log-dir "$BENCH_DIR/logs" \
  --concord-metrics http://127.0.0.1:9399/metrics --concord-journal "$BENCH_DIR/state/journal.redb" \
  ${ONLY:+--only "$ONLY"}
log "RSS after the run (kB): concord $(rss "$CONCORD_PID") + its containerd $(rss "$OWN_PID"); containerd with CRI $(rss "$REF_PID")"
