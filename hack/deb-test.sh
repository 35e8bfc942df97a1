#!/usr/bin/env bash
# deb-test.sh - installs, upgrades and removes concord's Debian package on the dev node
# (hack/dev-up.sh: containerd on $CTD_SOCK, the rig registry, CNI):
#   1. builds the .deb (hack/deb.sh) and a second one of a higher version (+test1);
#   2. dpkg -i; starts the installed unit's ExecStart as systemd would (PID 1 is not systemd here:
#      the EnvironmentFile is read and $CONCORD_OPTS expanded, NOTIFY_SOCKET set to a socket this
#      script listens on) and waits for READY=1; /etc/default/concord points concord at the dev
#      containerd, its own socket, state dir and namespace (the shipped defaults stay untouched);
#   3. runs a pod whose container writes a numbered line every 20 ms;
#   4. dpkg -i of the new version while concord and the container run (the binaries are replaced
#      by rename under the running processes), then the restart systemd would do
#      (restart-after-upgrade): SIGTERM, wait for STOPPING=1 and the exit, ExecStart again, READY=1;
#   5. checks the container kept running and its log has every line, none lost or doubled;
#   6. removes the pod, stops concord, dpkg -r (the conffiles stay), dpkg --purge (nothing stays).
# Environment: PROFILE [release] (hack/deb.sh; dev reuses the tests' debug build),
# CTD_SOCK [/tmp/ctd/containerd.sock], KEEP [0] (1: leave the work dir /tmp/concord-deb-test).
set -euo pipefail
cd "$(dirname "$0")/.."

CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
W=/tmp/concord-deb-test
SOCK=/run/concord-debtest/concord.sock
NS=concord-debtest
POD=debtest-$$
BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.29-2
log() { echo "[deb-test] $*"; }
die() { echo "[deb-test] FAILED: $*" >&2; [ -f "$W/concord.log" ] && tail -30 "$W/concord.log" >&2; exit 1; }

[ -S "$CTD_SOCK" ] || die "no containerd at $CTD_SOCK: run hack/dev-up.sh"
if dpkg-query -W -f '${Status}' concord 2>/dev/null | grep -q "install ok installed\|config-files"; then
  die "a concord package is already installed: this test installs and purges its own"
fi
rm -rf "$W" && mkdir -p "$W"

# ---- 1. the packages ----------------------------------------------------------------------------
# (copied aside: cargo-deb replaces an older .deb of the package in its output directory)
DEB1=$W/$(basename "$(bash hack/deb.sh --fast | tee "$W/deb1")")
cp "$(cat "$W/deb1")" "$DEB1"
version=$(dpkg-deb -f "$DEB1" Version)
DEB2=$(bash hack/deb.sh --fast --deb-version "${version}+test1")
log "packages: $(basename "$DEB1") ($(du -h "$DEB1" | cut -f1)), $(basename "$DEB2")"
dpkg-deb -c "$DEB1" | awk '{print $6}' > "$W/contents"
for f in ./usr/bin/concord ./usr/bin/concord-log-writer ./etc/concord/config.toml ./etc/default/concord \
  ./usr/share/man/man8/concord.8.gz ./usr/share/bash-completion/completions/concord \
  ./usr/share/concord/dashboards/concord.json; do
  grep -qx "$f" "$W/contents" || die "$f missing from the package"
done
grep -q "service" "$W/contents" || die "no unit in the package"
dpkg-deb -f "$DEB1" Depends | grep -q containerd || die "the package does not depend on containerd"

# ---- notify listener and the unit's ExecStart ---------------------------------------------------
python3 - "$W/notify.sock" > "$W/notify.log" <<'EOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    msg = s.recv(4096).decode()
    print(f"{time.time():.3f} {msg!r}", flush=True)
EOF
LISTENER=$!
CONCORD=
pod=
# After a failure too: the pod removed, concord stopped, the package purged.
cleanup() {
  if [ -n "$CONCORD" ] && [ -n "$pod" ]; then
    c stop-pod "$pod" >/dev/null 2>&1 || true
    c remove-pod "$pod" >/dev/null 2>&1 || true
  fi
  [ -n "$CONCORD" ] && kill "$CONCORD" 2>/dev/null && wait "$CONCORD" 2>/dev/null || true
  kill "$LISTENER" 2>/dev/null || true
  dpkg-query -W concord >/dev/null 2>&1 && dpkg --purge concord >/dev/null 2>&1 || true
  rm -rf "/var/log/pods/default_${POD}_${POD}-uid" /run/concord-debtest
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
for _ in $(seq 50); do [ -S "$W/notify.sock" ] && break; sleep 0.1; done

unit_file() { dpkg -L concord | grep '/concord\.service$' | head -1; }
unit_key() { sed -n "s/^$1=//p" "$(unit_file)" | head -1; }

# Starts concord as the installed unit says; waits for READY=1; answers the seconds it took.
start_unit() {
  local exec envfile before t0
  exec=$(unit_key ExecStart)
  envfile=$(unit_key EnvironmentFile)
  before=$(grep -c "READY=1" "$W/notify.log" || true)
  t0=$(date +%s.%N)
  (
    set -a
    # shellcheck disable=SC1090
    [ -f "${envfile#-}" ] && . "${envfile#-}"
    set +a
    export NOTIFY_SOCKET=$W/notify.sock
    eval "exec $exec"
  ) >> "$W/concord.log" 2>&1 &
  CONCORD=$!
  for _ in $(seq 300); do
    [ "$(grep -c "READY=1" "$W/notify.log" || true)" -gt "$before" ] && break
    kill -0 "$CONCORD" 2>/dev/null || die "concord exited during start"
    sleep 0.05
  done
  [ "$(grep -c "READY=1" "$W/notify.log" || true)" -gt "$before" ] || die "no READY=1 within 15 s"
  [ -S "$SOCK" ] || die "READY=1 before the socket $SOCK was there"
  log "started $exec (pid $CONCORD): READY=1 after $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
}

stop_unit() {
  local before
  before=$(grep -c "STOPPING=1" "$W/notify.log" || true)
  kill -TERM "$CONCORD"
  wait "$CONCORD" || die "concord exited $? on SIGTERM"
  CONCORD=
  [ "$(grep -c "STOPPING=1" "$W/notify.log" || true)" -gt "$before" ] || die "no STOPPING=1"
}

c() { /usr/bin/concord "$1" -r "$SOCK" --timeout 120s "${@:2}"; }

# ---- 2. install ---------------------------------------------------------------------------------
log "dpkg -i $(basename "$DEB1")"
dpkg -i --force-confold "$DEB1" > "$W/dpkg-install.log" 2>&1 || { cat "$W/dpkg-install.log"; die "dpkg -i"; }
[ "$(/usr/bin/concord config default | sha256sum)" = "$(sha256sum < /etc/concord/config.toml)" ] \
  || die "/etc/concord/config.toml is not concord's default config"
/usr/bin/concord --config /etc/concord/config.toml config show > /dev/null || die "the shipped config does not load"
cat > /etc/default/concord <<EOF
# deb-test.sh: the dev node's containerd, a socket, state dir and namespace of the test's own.
CONCORD_OPTS="--listen=$SOCK --state-dir=$W/state --netns-dir=/run/concord-debtest/netns --containerd-address=$CTD_SOCK --containerd-namespace=$NS --registry-config-path=/tmp/rig/containerd/certs.d --metrics-address= --stream-address=127.0.0.1:0"
EOF
start_unit

# ---- 3. a pod writing numbered lines ------------------------------------------------------------
c pull "$BUSYBOX" > /dev/null
pod=$(c run-pod "$POD")
ctr=$(c run-container "$pod" counter "$BUSYBOX" -- sh -c 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.02; done')
LOG=/var/log/pods/default_${POD}_${POD}-uid/counter.log
sleep 2
lines_before=$(wc -l < "$LOG")
[ "$lines_before" -gt 10 ] || die "the container logged $lines_before lines in 2 s"
writer=$(cat "$W/state/containers/$ctr/log-writer.pid")
log "pod $pod, container $ctr running, log writer pid $writer, $lines_before lines so far"

# ---- 4. upgrade with the container running ------------------------------------------------------
log "dpkg -i $(basename "$DEB2") with concord and the container running"
dpkg -i --force-confold "$DEB2" > "$W/dpkg-upgrade.log" 2>&1 || { cat "$W/dpkg-upgrade.log"; die "dpkg -i (upgrade)"; }
[ "$(dpkg-query -W -f '${Version}' concord)" = "${version}+test1" ] || die "not upgraded"
kill -0 "$CONCORD" || die "concord died during the upgrade"
stop_unit
start_unit
sleep 2

# ---- 5. the container and its log survived ------------------------------------------------------
c containers | grep "${ctr:0:13}" | grep -qi running || { c containers; die "the container is not running after the upgrade"; }
kill -0 "$writer" 2>/dev/null || die "the log writer (pid $writer) is gone"
lines_after=$(wc -l < "$LOG")
[ "$lines_after" -gt "$((lines_before + 100))" ] || die "the log stopped growing ($lines_before -> $lines_after lines)"
awk '{ if ($4 != "line" || $5 != n) { print "line " NR ": expected line " n ", got: " $0; bad = 1; exit 1 } n++ }
     END { if (!bad) print n " lines, 0 to " n - 1 ", none missing or doubled" }' n=0 "$LOG" > "$W/log-check" \
  || die "$(cat "$W/log-check")"
log "after the upgrade: container still running, log writer pid $writer still there, log: $(cat "$W/log-check")"
kill -USR1 "$writer"   # what ReopenContainerLog sends: the old writer still takes it

# ---- 6. remove and purge ------------------------------------------------------------------------
c stop-pod "$pod" > /dev/null
c remove-pod "$pod" > /dev/null
stop_unit
rm -rf "/var/log/pods/default_${POD}_${POD}-uid" /run/concord-debtest
unit=$(unit_file)
dpkg -r concord > "$W/dpkg-remove.log" 2>&1 || { cat "$W/dpkg-remove.log"; die "dpkg -r"; }
for f in /usr/bin/concord /usr/bin/concord-log-writer "$unit" /usr/share/concord; do
  [ ! -e "$f" ] || die "$f left after dpkg -r"
done
[ -f /etc/concord/config.toml ] && [ -f /etc/default/concord ] || die "dpkg -r removed the conffiles"
dpkg --purge concord > "$W/dpkg-purge.log" 2>&1 || { cat "$W/dpkg-purge.log"; die "dpkg --purge"; }
left=$(grep -v '/$' "$W/contents" | sed 's/^\.//' | while read -r f; do [ -e "$f" ] && echo "$f"; done || true)
[ -z "$left" ] || die "left after purge: $left"
for f in /etc/concord /etc/default/concord /etc/systemd/system/multi-user.target.wants/concord.service; do
  [ ! -e "$f" ] || die "$f left after purge"
done
dpkg-query -W -f '${Status}' concord 2>/dev/null | grep -q "installed\|config-files" && die "dpkg still knows concord"
log "purged: no file of the package, no conffile, no unit link left"
log "PASSED"
