#!/usr/bin/env bash
# dev-down.sh - stop the processes dev-up.sh started, identified only by the pid
# files in $RIG_DIR/run (containerd, docker-registry).  Nothing else is touched.
#
# Usage: dev-down.sh [--purge] [--keep-registry]
#   --purge          before stopping containerd, remove all CRI pods (with crictl,
#                    if one is found: $CRICTL, PATH) and
#                    kill/delete leftover tasks and containers in containerd's
#                    "k8s.io" namespace (so no shim processes stay behind)
#   --keep-registry  leave the registry running
#
# Environment: RIG_DIR [/tmp/rig]  CTD_SOCK [as recorded by dev-up.sh]
set -euo pipefail

RIG_DIR=${RIG_DIR:-/tmp/rig}
RUN_DIR=$RIG_DIR/run
PURGE=0
KEEP_REGISTRY=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    --keep-registry) KEEP_REGISTRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[dev-down] %s\n' "$*" >&2; }

# socket of the containerd dev-up.sh started (from its recorded config)
if [ -z "${CTD_SOCK:-}" ]; then
  cfg=$(awk '{print $1}' "$RUN_DIR/containerd.config" 2>/dev/null || true)
  if [ -n "$cfg" ] && [ -f "$cfg" ]; then
    CTD_SOCK=$(sed -n 's/^[[:space:]]*address[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$cfg" | head -n 1)
  fi
  CTD_SOCK=${CTD_SOCK:-/tmp/ctd/containerd.sock}
fi

pid_of() {   # $1 = pidfile, $2 = expected executable basename; prints pid if it is ours and alive
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$2" ] || return 1
  echo "$pid"
}

stop_one() {   # $1 = name, $2 = pidfile, $3 = executable basename
  local pid i
  if ! pid=$(pid_of "$2" "$3"); then
    log "$1: not running (no live pid in $2)"
    rm -f "$2"
    return 0
  fi
  log "$1: stopping pid $pid"
  kill -TERM "$pid"
  for i in $(seq 1 150); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then
    log "$1: pid $pid still alive after 30s, sending SIGKILL"
    kill -KILL "$pid"
  fi
  rm -f "$2"
}

purge_cri() {
  local crictl="" ns=k8s.io t c
  pid_of "$RUN_DIR/containerd.pid" containerd >/dev/null || return 0
  for c in "${CRICTL:-}" "$(command -v crictl 2>/dev/null || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { crictl=$c; break; }
  done
  if [ -n "$crictl" ] && "$crictl" -r "unix://$CTD_SOCK" -i "unix://$CTD_SOCK" --timeout 10s version >/dev/null 2>&1; then
    log "removing all CRI pods via $crictl"
    "$crictl" -r "unix://$CTD_SOCK" -i "unix://$CTD_SOCK" --timeout 60s rmp -fa >/dev/null 2>&1 || true
  fi
  # leftovers (or CRI disabled): kill tasks and delete containers in the CRI namespace
  for t in $(ctr --address "$CTD_SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
    ctr --address "$CTD_SOCK" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for t in $(ctr --address "$CTD_SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
    ctr --address "$CTD_SOCK" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
  done
  for c in $(ctr --address "$CTD_SOCK" -n "$ns" containers ls -q 2>/dev/null); do
    ctr --address "$CTD_SOCK" -n "$ns" containers rm "$c" >/dev/null 2>&1 || true
  done
}

[ "$PURGE" = 1 ] && purge_cri
stop_one containerd "$RUN_DIR/containerd.pid" containerd
rm -f "$RUN_DIR/containerd.config"
[ "$KEEP_REGISTRY" = 1 ] || stop_one registry "$RUN_DIR/registry.pid" docker-registry
log "done"
