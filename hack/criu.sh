#!/usr/bin/env bash
# criu.sh - a CRIU that can dump on this node, for CheckpointContainer (runc runs `criu swrk`).
#
# Debian 12's criu 3.17.1 cannot run on recent kernels (`criu check`: "vdso: Unexpected rt vDSO
# area bounds", then kerndat_vdso_fill_symtable failed). Debian 13 (trixie) has criu 4.x, built
# for glibc 2.38+, which bookworm (2.36) lacks. This script downloads trixie's criu with every
# shared library it needs, glibc and its dynamic loader included (apt-get download from a private
# apt index: the system's sources and packages are untouched), unpacks them into CRIU_PREFIX and
# writes CRIU_WRAPPER, a `criu` that runs trixie's criu through trixie's loader on the prefix's
# libraries only. /usr/local/sbin comes before /usr/sbin on the usual PATH, so runc (under
# containerd's shim) and concord's "criu on PATH" check find the wrapper. The programs criu
# itself runs (iptables-restore, ip, tar) are the system's, with the system's libraries.
#
# Usage: criu.sh install | check | uninstall
#   install    idempotent; nothing is done when the criu already on PATH passes `criu check`.
#              When the download or trixie's criu fails, it says SKIPPED and exits 0 (the
#              checkpoint test then accepts CRIU's clear failure).
#   check      `criu check` with the criu on PATH; exit status 0 when it can dump here.
#   uninstall  removes the wrapper and the prefix.
#
# Environment (defaults in brackets): CRIU_PREFIX [/opt/concord-criu]
#   CRIU_WRAPPER [/usr/local/sbin/criu]   CRIU_SUITE [trixie]
#   CRIU_MIRROR [http://deb.debian.org/debian]   CRIU_CACHE [/var/cache/concord-criu]
set -euo pipefail

CRIU_PREFIX=${CRIU_PREFIX:-/opt/concord-criu}
CRIU_WRAPPER=${CRIU_WRAPPER:-/usr/local/sbin/criu}
CRIU_SUITE=${CRIU_SUITE:-trixie}
CRIU_MIRROR=${CRIU_MIRROR:-http://deb.debian.org/debian}
CRIU_CACHE=${CRIU_CACHE:-/var/cache/concord-criu}
MARK='# concord criu wrapper (hack/criu.sh)'

log() { printf '[criu] %s\n' "$*" >&2; }
skip() {
  printf "[criu] SKIPPED: %s: CheckpointContainer uses the system's criu, if any (where it cannot dump: a clear CRIU error)\n" "$*" >&2
  exit 0
}

# `criu check` with criu $1: "Looks good" (criu prints it on stderr) means it can dump here.
criu_works() { "$1" check 2>&1 | grep -q 'Looks good'; }

# apt-get / apt-cache on the private index of $CRIU_SUITE (the system's sources are not read).
apt_private() {
  local tool=$1; shift
  "$tool" -q -o Dir::Etc::SourceList="$CRIU_CACHE/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$CRIU_CACHE/lists" -o Dir::Cache="$CRIU_CACHE/cache" \
    -o Dir::State::status="$CRIU_CACHE/status" -o APT::Sandbox::User=root \
    -o Acquire::Languages=none -o APT::Architectures="$(dpkg --print-architecture)" "$@"
}

# Downloads criu and the packages its libraries come from (Depends, recursively) into $1.
download() {
  local debs=$1 pkgs
  mkdir -p "$CRIU_CACHE/lists/partial" "$CRIU_CACHE/cache/archives/partial" "$debs"
  echo "deb $CRIU_MIRROR $CRIU_SUITE main" > "$CRIU_CACHE/sources.list"
  : > "$CRIU_CACHE/status"
  apt_private apt-get update >/dev/null 2>&1 || return 1
  pkgs=$(apt_private apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances criu 2>/dev/null | grep -E '^[a-z0-9]' | sort -u) || return 1
  grep -qx criu <<<"$pkgs" || return 1
  log "downloading from $CRIU_SUITE: $(echo $pkgs)"
  (cd "$debs" && apt_private apt-get download $pkgs >/dev/null 2>&1)
}

# The loader in prefix $1 (ld-linux-x86-64.so.2 on amd64).
loader_in() { ls "$1"/usr/lib/*-linux-gnu*/ld-linux*.so.* 2>/dev/null | head -n 1; }

write_wrapper() {   # $1 = where, $2 = prefix
  local ld libdir
  ld=$(loader_in "$2"); libdir=$(dirname "$ld")
  mkdir -p "$(dirname "$1")"
  cat > "$1.tmp" <<EOF
#!/bin/sh
$MARK: $CRIU_SUITE's criu through its own dynamic loader
exec $ld --inhibit-cache --library-path $libdir --argv0 criu $2/usr/sbin/criu "\$@"
EOF
  chmod 755 "$1.tmp"; mv -f "$1.tmp" "$1"
}

# Every library of the prefix's criu resolves inside the prefix.
libraries_complete() {   # $1 = prefix
  local ld out
  ld=$(loader_in "$1") || return 1
  out=$("$ld" --inhibit-cache --library-path "$(dirname "$ld")" --list "$1/usr/sbin/criu" 2>&1) || return 1
  ! grep -v -e "=> $1/" -e 'linux-vdso' -e "^[[:space:]]*$1/" <<<"$out" | grep -q .
}

install() {
  local current new=$CRIU_PREFIX.new debs f
  current=$(command -v criu || true)
  if [ -n "$current" ] && ! grep -qsF "$MARK" "$current" && criu_works "$current"; then
    log "$current passes criu check: nothing to install"; return
  fi
  if [ -x "$CRIU_WRAPPER" ] && grep -qsF "$MARK" "$CRIU_WRAPPER" && criu_works "$CRIU_WRAPPER"; then
    log "already installed: $CRIU_WRAPPER -> $CRIU_PREFIX ($("$CRIU_WRAPPER" --version | head -n 1))"; return
  fi
  [ "$(id -u)" = 0 ] || skip "installing needs root"
  debs=$CRIU_CACHE/debs-$CRIU_SUITE
  rm -rf "$debs"
  download "$debs" || skip "cannot download criu from $CRIU_MIRROR $CRIU_SUITE"
  rm -rf "$new"; mkdir -p "$new"
  for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$new"; done
  [ -x "$new/usr/sbin/criu" ] && [ -n "$(loader_in "$new")" ] || skip "no criu or loader in the $CRIU_SUITE packages"
  # The prefix moves into place before the check: the wrapper names its final path.
  rm -rf "$new/usr/share" "$CRIU_PREFIX"; mv "$new" "$CRIU_PREFIX"
  rm -rf "$debs" "$CRIU_CACHE/lists" "$CRIU_CACHE/cache"   # the index is fetched again when needed
  libraries_complete "$CRIU_PREFIX" || { rm -rf "$CRIU_PREFIX"; skip "$CRIU_SUITE's criu needs libraries outside its packages"; }
  write_wrapper "$CRIU_WRAPPER" "$CRIU_PREFIX"
  if ! criu_works "$CRIU_WRAPPER"; then
    log "criu check with $CRIU_SUITE's criu: $("$CRIU_WRAPPER" check 2>&1 | tail -n 3 | tr '\n' ' ')"
    rm -f "$CRIU_WRAPPER"; rm -rf "$CRIU_PREFIX"
    skip "$CRIU_SUITE's criu cannot dump on this kernel either"
  fi
  log "installed $CRIU_WRAPPER ($("$CRIU_WRAPPER" --version | head -n 1), $(du -sh "$CRIU_PREFIX" | cut -f1) in $CRIU_PREFIX): criu check: Looks good"
}

case "${1:-}" in
  install) install ;;
  check) criu_works criu ;;
  uninstall)
    grep -qsF "$MARK" "$CRIU_WRAPPER" && rm -f "$CRIU_WRAPPER"
    rm -rf "$CRIU_PREFIX" "$CRIU_PREFIX.new"; log "removed $CRIU_WRAPPER and $CRIU_PREFIX" ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
