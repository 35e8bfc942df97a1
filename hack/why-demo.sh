#!/usr/bin/env bash
# why-demo.sh - the operator's view in one run: a pod whose CNI plugin times out, `concord inspect`
# explaining why, the pod's lifecycle grepped from the log by its name; then the plugin fixed
# (SIGHUP) and the pod running. Needs the dev node (hack/dev-up.sh --no-cri) and a debug build
# (cargo build). Prints a transcript; exits non-zero when a step does not say what it should.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-$PWD/target/debug/concord}
CRICTL=${CRICTL:-/usr/local/lib/cri-tools-v1.26.1/crictl}
CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
DIR=${DIR:-/tmp/concord-why}
SOCK=$DIR/run/concord.sock

step() { printf '\n$ %s\n' "$*"; }
fail() { echo "why-demo: $*" >&2; exit 1; }

if [ -f "$DIR/concord.pid" ]; then kill "$(cat "$DIR/concord.pid")" 2>/dev/null || true; sleep 1; fi
rm -rf "$DIR"; mkdir -p "$DIR/cni-bin" "$DIR/cni-conf"
# The network: the rig's bridge, then a plugin that hangs on ADD (a stuck IPAM or a dead
# agent, as in production). concord kills it after cni.plugin_timeout_seconds.
cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback "$DIR/cni-bin/"
cat > "$DIR/cni-bin/stuck" <<'EOF'
#!/bin/sh
cat > /dev/null
case "$CNI_COMMAND" in
  ADD) exec sleep 600 ;;
  VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
  *) : ;;
esac
EOF
chmod +x "$DIR/cni-bin/stuck"
net() { # $1: the chained plugin's JSON ('' for none)
  cat > "$DIR/cni-conf/10-why.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "why", "plugins": [
  {"type": "bridge", "bridge": "cni-why0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]]}}$1]}
EOF
}
net ', {"type": "stuck"}'
cat > "$DIR/config.toml" <<EOF
listen = "$SOCK"
state_dir = "$DIR/state"
netns_dir = "$DIR/netns"
registry_config_path = ["/tmp/rig/containerd/certs.d"]
[containerd]
address = "$CTD_SOCK"
namespace = "concord-why"
[cni]
conf_dir = "$DIR/cni-conf"
bin_dirs = ["$DIR/cni-bin"]
plugin_timeout_seconds = 3
EOF
"$BIN" --config "$DIR/config.toml" --metrics-address 127.0.0.1:0 > "$DIR/concord.log" 2>&1 &
echo $! > "$DIR/concord.pid"
trap 'kill "$(cat "$DIR/concord.pid")" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do "$BIN" status -r "$SOCK" >/dev/null 2>&1 && break; sleep 0.1; done

cat > "$DIR/web-0.json" <<EOF
{"metadata": {"name": "web-0", "namespace": "shop", "uid": "6f1c0e2a-web-0", "attempt": 0},
 "hostname": "web-0", "log_directory": "$DIR/logs/web-0"}
EOF
cr() { "$CRICTL" -r "unix://$SOCK" -t 30s "$@"; }

step "crictl runp web-0.json     # the CNI chain has a plugin that hangs"
if cr runp "$DIR/web-0.json"; then fail "the pod started through a hanging plugin"; fi

step "concord inspect web-0"
out=$("$BIN" inspect web-0 -r "$SOCK"); echo "$out"
grep -q "did not finish within 3s" <<<"$out" || fail "inspect does not say the plugin timed out"

step "grep web-0 concord.log      # journalctl -u concord | grep web-0 on a node"
grep 'web-0' "$DIR/concord.log" | sed -E 's/pod_id="([0-9a-f]{12})[0-9a-f]+"/pod_id="\1…"/g'

step "# the plugin fixed; SIGHUP makes concord read the CNI config again"
net ''
kill -HUP "$(cat "$DIR/concord.pid")"; sleep 1
step "crictl runp web-0.json"
id=$(cr runp "$DIR/web-0.json"); echo "$id"
step "crictl create + start a container in it"
cat > "$DIR/app.json" <<EOF
{"metadata": {"name": "app"}, "image": {"image": "busybox"},
 "command": ["sh", "-c", "echo hello; sleep 2; exit 3"], "log_path": "app.log"}
EOF
cr pull busybox >/dev/null
cid=$(cr create "$id" "$DIR/app.json" "$DIR/web-0.json"); cr start "$cid" >/dev/null; echo "$cid"
sleep 3
step "concord inspect web-0"
"$BIN" inspect web-0 -r "$SOCK"
step "crictl stopp + rmp"
cr stopp "$id" >/dev/null; cr rmp "$id" >/dev/null
step "grep web-0 concord.log      # the whole lifecycle"
grep 'web-0' "$DIR/concord.log" | sed -E 's/(pod|container)_id="([0-9a-f]{12})[0-9a-f]+"/\1_id="\2…"/g'
lines=$(grep 'web-0' "$DIR/concord.log")
for line in "pod failed" "pod sandbox requested" "pod ready" "container started" "container exited" "pod removed"; do
  grep -q "$line" <<<"$lines" || fail "the log has no '$line' line for web-0"
done
echo; echo "why-demo: ok"
