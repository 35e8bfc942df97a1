#!/usr/bin/env bash
# prom-proof.sh - proves dashboards/concord.json on real data: a Prometheus (Debian's
# /usr/bin/prometheus, 2 s scrape interval) scrapes a concord this script starts and containerd's
# own metrics while a crictl workload runs (pull, pods, containers, exec, logs, an OOM kill, a
# failing CNI plugin, a containerd restart, stop and remove); then every panel query of the
# dashboard is run against Prometheus' HTTP API and printed as `panel | refId | series | max now
# | peak over the run`.
# Exits non-zero naming every query that returned no series.
#
#   * containerd: by default (OWN_CONTAINERD=1) its own containerd under the work dir, with
#     `[metrics] address` set, which the workload restarts. OWN_CONTAINERD=0 uses the rig's
#     ($CONCORD_TEST_CONTAINERD): shared, so it is NOT restarted, and its metrics are scraped only
#     if CTD_METRICS (host:port) names its metrics address (dev-up.sh's config has
#     127.0.0.1:1338 since this script exists; a containerd started before has none).
#   * concord: the built binary ($CONCORD, default $CARGO_TARGET_DIR/debug/concord), its own
#     socket, state, netns and CNI conf dirs under the work dir, flags as tests/common's Daemon.
#
# Needs root, the dev rig (hack/dev-up.sh: registry on 127.0.0.1:5000, CNI plugins) and crictl.
# Takes about 40 s; hack/test.sh runs it. KEEP=1 keeps the work dir.
#
# Environment: CONCORD, CRICTL, OWN_CONTAINERD [1], CONCORD_TEST_CONTAINERD, CTD_METRICS,
#   CONCORD_TEST_REGISTRY [127.0.0.1:5000], CONCORD_TEST_HOSTS_DIR, CONCORD_TEST_CNI_CONF_DIR,
#   CNI_BIN_DIR [/usr/lib/cni], PROMETHEUS [/usr/bin/prometheus], KEEP [0]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONCORD=${CONCORD:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/concord}
CRICTL=${CRICTL:-/usr/local/lib/cri-tools-v1.26.1/crictl}
PROMETHEUS=${PROMETHEUS:-/usr/bin/prometheus}
OWN_CONTAINERD=${OWN_CONTAINERD:-1}
REG=${CONCORD_TEST_REGISTRY:-127.0.0.1:5000}
HOSTS_DIR=${CONCORD_TEST_HOSTS_DIR:-/tmp/rig/containerd/certs.d}
RIG_CNI_CONF=${CONCORD_TEST_CNI_CONF_DIR:-/etc/cni/net.d}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
DASHBOARD=$ROOT/dashboards/concord.json
IMAGE=$REG/e2e-test-images/busybox:1.29-2

log() { printf '[prom-proof] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
for b in "$CONCORD" "$CRICTL" "$PROMETHEUS"; do [ -x "$b" ] || die "$b is not executable"; done

WORK=$(mktemp -d /tmp/prom-proof.XXXXXX)
STARTED=$(date +%s)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CONCORD_PORT=$(free_port); PROM_PORT=$(free_port); CTD_PORT=$(free_port)
SOCK=$WORK/run/concord.sock
CRI=("$CRICTL" -r "unix://$SOCK" -i "unix://$SOCK" -t 60s)
PIDS=()

# ---------------------------------------------------------------- containerd
CTD_PID=
if [ "$OWN_CONTAINERD" = 1 ]; then
  CTD_SOCK=$WORK/ctd/containerd.sock
  CTD_METRICS=127.0.0.1:$CTD_PORT
  mkdir -p "$WORK/ctd"
  cat > "$WORK/ctd/config.toml" <<EOF
version = 2
root = "$WORK/ctd/root"
state = "$WORK/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD_SOCK"
[metrics]
  address = "$CTD_METRICS"
EOF
  start_containerd() {
    /usr/bin/containerd --config "$WORK/ctd/config.toml" >>"$WORK/ctd/containerd.log" 2>&1 &
    CTD_PID=$!
    for _ in $(seq 100); do [ -S "$CTD_SOCK" ] && curl -sf "http://$CTD_METRICS/v1/metrics" >/dev/null && return; sleep 0.1; done
    die "containerd did not come up: $WORK/ctd/containerd.log"
  }
  start_containerd
else
  CTD_SOCK=${CONCORD_TEST_CONTAINERD:-/tmp/ctd/containerd.sock}
  CTD_METRICS=${CTD_METRICS:-}
fi

cleanup() {
  set +e
  if [ -S "$SOCK" ]; then
    for p in $("${CRI[@]}" pods -q 2>/dev/null); do "${CRI[@]}" stopp "$p" >/dev/null 2>&1; "${CRI[@]}" rmp -f "$p" >/dev/null 2>&1; done
  fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ -n "$CTD_PID" ]; then kill -TERM "$CTD_PID" 2>/dev/null; wait "$CTD_PID" 2>/dev/null; fi
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else
    umount -R "$WORK/netns"/* 2>/dev/null; rm -rf "$WORK" 2>/dev/null || log "left $WORK (busy mounts)"
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- CNI: a failing network first
mkdir -p "$WORK/cni" "$WORK/cnibin" "$WORK/netns" "$WORK/logs" "$WORK/run"
cp "$(ls "$RIG_CNI_CONF"/*.conflist | head -n1)" "$WORK/cni/10-bridge.conflist"
# ADD always fails; DEL fails while $WORK/cni-del-fails exists (the sandbox cannot be torn down:
# it stays, failing and retrying), then succeeds.
cat > "$WORK/cnibin/proof-fails" <<EOF
#!/bin/sh
cat >/dev/null
[ "\$CNI_COMMAND" = ADD ] || [ -e "$WORK/cni-del-fails" ] || exit 0
echo '{"cniVersion":"0.4.0","code":11,"msg":"prom-proof: this plugin fails"}'
exit 1
EOF
chmod +x "$WORK/cnibin/proof-fails"
echo '{"cniVersion":"0.4.0","name":"proof-fails","plugins":[{"type":"proof-fails"}]}' > "$WORK/cni/00-fails.conflist"

# ---------------------------------------------------------------- concord
: > "$WORK/config.toml"
"$CONCORD" --config="$WORK/config.toml" --listen="$SOCK" --state-dir="$WORK/state" \
  --containerd-address="$CTD_SOCK" --containerd-namespace="prom-proof-$$" \
  --metrics-address="127.0.0.1:$CONCORD_PORT" --containerd-health-interval-seconds=1 \
  --cni-rescan-interval-seconds=1 --cni-conf-dir="$WORK/cni" --cni-bin-dir="$WORK/cnibin:$CNI_BIN_DIR" \
  --registry-config-path="$HOSTS_DIR" --netns-dir="$WORK/netns" --stats-interval-seconds=2 \
  --cgroup-driver=cgroupfs --log-level=info >"$WORK/concord.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do "${CRI[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${CRI[@]}" version >/dev/null || die "concord did not answer: $WORK/concord.log"
log "concord on $SOCK, metrics 127.0.0.1:$CONCORD_PORT; containerd $CTD_SOCK (metrics: ${CTD_METRICS:-none})"

# ---------------------------------------------------------------- prometheus
{
  printf 'global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\nscrape_configs:\n'
  printf '  - job_name: concord\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' "$CONCORD_PORT"
  if [ -n "$CTD_METRICS" ]; then
    printf '  - job_name: containerd\n    metrics_path: /v1/metrics\n    static_configs:\n      - targets: ["%s"]\n' "$CTD_METRICS"
  fi
} > "$WORK/prometheus.yml"
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
PROM=http://127.0.0.1:$PROM_PORT
for _ in $(seq 100); do curl -sf "$PROM/-/ready" >/dev/null && break; sleep 0.2; done
curl -sf "$PROM/-/ready" >/dev/null || die "prometheus did not start: $WORK/prometheus.log"

# ---------------------------------------------------------------- workload
pod_json() {  # $1 = name
  printf '{"metadata":{"name":"%s","namespace":"prom-proof","uid":"uid-%s","attempt":0},"hostname":"%s","log_directory":"%s"}' \
    "$1" "$1" "$1" "$WORK/logs/$1" > "$WORK/$1.pod.json"
  echo "$WORK/$1.pod.json"
}
ctr_json() {  # $1 = name, $2 = shell command, $3 = memory limit (bytes, 0: none)
  printf '{"metadata":{"name":"%s"},"image":{"image":"%s"},"command":["sh","-c","%s"],"log_path":"%s.log","linux":{"resources":{"memory_limit_in_bytes":%s,"memory_swap_limit_in_bytes":%s}}}' \
    "$1" "$IMAGE" "$2" "$1" "$3" "$3" > "$WORK/$1.ctr.json"
  echo "$WORK/$1.ctr.json"
}
wait_for() {  # $1 = what, $2... = command that must succeed
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  die "timed out waiting for $what"
}
sleep 4

log "a pod on a network whose CNI plugin fails ADD and DEL (the sandbox's teardown retries)"
touch "$WORK/cni-del-fails"
"${CRI[@]}" runp "$(pod_json failing)" >/dev/null 2>&1 && die "the failing CNI plugin did not fail"
wait_for "a failing object" sh -c "curl -s http://127.0.0.1:$CONCORD_PORT/metrics | grep -qx 'concord_reconcile_failing_objects{kind=\"sandbox\"} 1'"
sleep 6
log "DEL works again, the failing network is removed: the bridge network takes over"
rm "$WORK/cni-del-fails" "$WORK/cni/00-fails.conflist"
wait_for "the failed sandbox's teardown" sh -c "curl -s http://127.0.0.1:$CONCORD_PORT/metrics | grep -qx 'concord_reconcile_failing_objects{kind=\"sandbox\"} 0'"
# concord rescans the CNI conf dir when a file in it goes (and every 2 s); the failed sandbox's
# teardown can still end first. A new pod goes on the bridge once Status no longer shows the
# failing network.
wait_for "concord to drop the failing network" sh -c "info=\$('$CRICTL' -r unix://$SOCK info) && ! echo \"\$info\" | grep -q proof-fails"

log "pull $IMAGE, run a pod with a container, exec, logs"
"${CRI[@]}" pull "$IMAGE" >/dev/null
POD=$("${CRI[@]}" runp "$(pod_json web)")
CTR=$("${CRI[@]}" create "$POD" "$(ctr_json ticker 'while true; do echo tick; sleep 1; done' 0)" "$WORK/web.pod.json")
"${CRI[@]}" start "$CTR" >/dev/null
"${CRI[@]}" exec "$CTR" echo streamed >/dev/null
"${CRI[@]}" exec -s "$CTR" echo synced >/dev/null
sleep 2
"${CRI[@]}" logs "$CTR" | grep -q tick || die "no log lines from the ticker"
"${CRI[@]}" inspect no-such-container >/dev/null 2>&1 || true  # a NotFound
"${CRI[@]}" stats >/dev/null; "${CRI[@]}" statsp >/dev/null

log "a container that the kernel OOM-kills (32 MiB limit, tail /dev/zero)"
OOM=$("${CRI[@]}" create "$POD" "$(ctr_json hog 'tail /dev/zero' 33554432)" "$WORK/web.pod.json")
"${CRI[@]}" start "$OOM" >/dev/null
wait_for "the OOM kill" sh -c "'${CRICTL}' -r unix://$SOCK inspect $OOM | grep -q '\"reason\": \"OOMKilled\"'"

if [ "$OWN_CONTAINERD" = 1 ]; then
  log "containerd restart (the script's own containerd)"
  kill -TERM "$CTD_PID"; wait "$CTD_PID" 2>/dev/null || true
  sleep 3
  start_containerd
  # Both: the event stream is back, and the health probe has found containerd ready again (a
  # call that needs containerd asks for a fresh probe and waits for it; the gauge is what shows).
  wait_for "concord to see containerd again" sh -c "m=\$(curl -s http://127.0.0.1:$CONCORD_PORT/metrics); echo \"\$m\" | grep -qx 'concord_containerd_event_stream_connected 1' && echo \"\$m\" | grep -qx 'concord_containerd_up 1'"
else
  log "containerd restart SKIPPED: the rig's containerd is shared (OWN_CONTAINERD=1 restarts its own)"
fi

# A second NotFound: the first made its series (a rate needs an increase after it).
"${CRI[@]}" inspect no-such-container >/dev/null 2>&1 || true
log "stop and remove"
"${CRI[@]}" stop "$CTR" >/dev/null
"${CRI[@]}" rm "$CTR" "$OOM" >/dev/null
"${CRI[@]}" stopp "$POD" >/dev/null
"${CRI[@]}" rmp "$POD" >/dev/null
log "a second pod left running"
POD2=$("${CRI[@]}" runp "$(pod_json idle)")
sleep 6

log "promtool check metrics on a live scrape"
curl -sf "http://127.0.0.1:$CONCORD_PORT/metrics" > "$WORK/scrape.txt"
promtool check metrics < "$WORK/scrape.txt" || die "promtool check metrics failed"

# ---------------------------------------------------------------- every panel query
log "querying every panel target of $DASHBOARD"
python3 - "$DASHBOARD" "$PROM" "127.0.0.1:$CONCORD_PORT" "$CTD_METRICS" "$(( $(date +%s) - STARTED ))" <<'EOF'
import json, sys, urllib.parse, urllib.request
dash, prom, instance, ctd, run = sys.argv[1:6]
subst = {"$__rate_interval": "1m", "$__interval": "10s", "$job": "concord", "$instance": instance}
def query(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.load(urllib.request.urlopen(url))
    if answer["status"] != "success":
        raise SystemExit(f"query failed: {expr}: {answer}")
    return answer["data"]["result"]
def fmt(values):
    vals = [float(v) for v in values if v not in ("NaN", "+Inf", "-Inf")]
    return "%.4g" % max(vals) if vals else "NaN"
panels = []
for p in json.load(open(dash))["panels"]:
    panels += [p] + p.get("panels", [])
empty, rows = [], []
for p in panels:
    for t in p.get("targets", []):
        expr = t["expr"]
        for k, v in subst.items():
            expr = expr.replace(k, v)
        result = query(expr)
        # The peak over the whole run (a subquery at the scrape interval): what a graph shows.
        peak = query(f"max_over_time(({expr})[{run}s:2s])")
        rows.append((p["title"], t["refId"], len(result), fmt([r["value"][1] for r in result]),
                     fmt([r["value"][1] for r in peak])))
        if not result:
            empty.append(f'{p["title"]} ({t["refId"]}): {expr}')
w = max(len(r[0]) for r in rows)
print(f'{"panel":<{w}} | ref | series | now (max) | run peak')
for title, ref, n, mx, pk in rows:
    print(f"{title:<{w}} | {ref:<3} | {n:>6} | {mx:>9} | {pk}")
print(f"{len(rows)} queries, {len(rows) - len(empty)} with data")
if ctd:
    n = len(query('{job="containerd"}'))
    up = query('up{job="containerd"}')
    print(f"containerd metrics ({ctd}): {n} series, up={up[0]['value'][1] if up else 'absent'}")
else:
    print("containerd metrics: not scraped (no metrics address configured)")
if empty:
    print("queries with NO data:\n  " + "\n  ".join(empty), file=sys.stderr)
    sys.exit(1)
EOF
"${CRI[@]}" stopp "$POD2" >/dev/null; "${CRI[@]}" rmp "$POD2" >/dev/null
log "ok"
