#!/usr/bin/env bash
# demo.sh - the main job in one command: sets up the dev node (containerd with its own CRI plugin
# disabled, runc, CNI, local registry with locally built images), builds concord and runs it on
# /run/concord/concord.sock against that containerd, then shows what kubelet would see.
# Leaves concord running; stop it with: kill $(cat /tmp/concord-demo/concord.pid)
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-/tmp/concord-demo}
CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
LISTEN=${LISTEN:-/run/concord/concord.sock}
log() { printf '[demo] %s\n' "$*" >&2; }

bash hack/dev-up.sh --no-cri
if ! command -v cargo >/dev/null; then
  log "cargo not found: install Rust (rustup) first"; exit 1
fi
log "building concord (release)"
cargo build --release --quiet
mkdir -p "$DEMO_DIR"
if [ -f "$DEMO_DIR/concord.pid" ] && kill -0 "$(cat "$DEMO_DIR/concord.pid")" 2>/dev/null; then
  log "stopping the previous demo concord"
  kill "$(cat "$DEMO_DIR/concord.pid")"; sleep 1
fi
BIN=target/release/concord
ARGS=(--listen "$LISTEN" --containerd-address "$CTD_SOCK" --state-dir "$DEMO_DIR/state"
      --registry-config-path /tmp/rig/containerd/certs.d --containerd-namespace concord-demo)
log "starting: $BIN ${ARGS[*]}"
nohup "$BIN" "${ARGS[@]}" > "$DEMO_DIR/concord.log" 2>&1 &
echo $! > "$DEMO_DIR/concord.pid"
for _ in $(seq 1 100); do "$BIN" status --listen "$LISTEN" >/dev/null 2>&1 && break; sleep 0.1; done

log "CRI Version + Status (what kubelet asks first):"
"$BIN" status --listen "$LISTEN"
log "pulling docker.io/library/busybox:latest (hosts.toml maps docker.io to the local registry):"
"$BIN" pull --listen "$LISTEN" busybox
log "loading an image archive built locally (skopeo: OCI layout -> docker save tar):"
rm -f "$DEMO_DIR/httpd.tar"
skopeo copy --quiet oci:/tmp/rig/oci:httpd "docker-archive:$DEMO_DIR/httpd.tar:example.test/demo/httpd:1"
"$BIN" load --listen "$LISTEN" "$DEMO_DIR/httpd.tar"
log "images:"
"$BIN" images --listen "$LISTEN"
log "running a pod (network namespace + CNI bridge address + the locally built pause image), host port 18080 -> 80:"
# A demo pod left NotReady by an earlier run (its pause died, say a reboot) is replaced.
# The listings' JSON (`-o json`) is what scripts read; the tables are for people.
pods_named() { # $1: name, $2: python condition on the pod `p` (True: any)
  "$BIN" pods --listen "$LISTEN" -o json | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p["metadata"]["name"] == sys.argv[1] and ('"$2"'):
        print(p["id"])' "$1"
}
# (CRI enums are numbers in the JSON: a pod's state 0 is SANDBOX_READY, a container's 1 RUNNING.)
for stale in $(pods_named demo 'p["state"] != 0'); do
  "$BIN" remove-pod --listen "$LISTEN" "$stale"
done
POD=$("$BIN" run-pod --listen "$LISTEN" --publish 18080:80 demo)
"$BIN" pods --listen "$LISTEN"
log "running the locally built httpd image (loaded above) in the pod:"
running_web=$("$BIN" containers --listen "$LISTEN" -o json | python3 -c '
import json, sys
print(sum(c["metadata"]["name"] == "web" and c["state"] == 1 for c in json.load(sys.stdin)))')
[ "$running_web" != 0 ] || "$BIN" run-container --listen "$LISTEN" "$POD" web example.test/demo/httpd:1
"$BIN" containers --listen "$LISTEN"
POD_IP=$("$BIN" inspect --listen "$LISTEN" "$POD" -o json | python3 -c '
import json, sys
print(next(o["desired"]["ips"][0] for o in json.load(sys.stdin)["objects"] if o["kind"] == "sandbox"))')
HOST_IP=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://$POD_IP:80/" 2>/dev/null && break; sleep 0.1; done
log "GET http://$POD_IP:80/ (the pod's address) and http://$HOST_IP:18080/ (hostPort):"
curl -sS -o /dev/null -w '  pod address: HTTP %{http_code}\n' "http://$POD_IP:80/"
curl -sS -o /dev/null -w '  hostPort:    HTTP %{http_code}\n' "http://$HOST_IP:18080/"
log "its log (CRI format, written by concord's log writer under the shim):"
head -3 /var/log/pods/default_demo_demo-uid/web.log
log "reconcile loop objects and journal:"
"$BIN" inspect --listen "$LISTEN"
log "metrics: curl -s http://127.0.0.1:9338/metrics | grep ^concord_"
curl -s http://127.0.0.1:9338/metrics | grep -E '^concord_(build_info|containerd_up|network_ready|containerd_event_stream_connected|sandboxes)'
log "pod $POD stays running; remove it with: $BIN remove-pod --listen $LISTEN $POD"
log "concord is running (pid $(cat "$DEMO_DIR/concord.pid"), log $DEMO_DIR/concord.log)."
log "kubelet: --container-runtime-endpoint=unix://$LISTEN"
