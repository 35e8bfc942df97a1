#!/usr/bin/env bash
# systemd-node.sh - a node whose PID 1 is systemd, on a host whose PID 1 is not: Debian's
# systemd runs as PID 1 of its own pid, mount, uts, ipc and cgroup namespaces (as kind's
# entrypoint and systemd-nspawn run nodes), with dbus and a containerd of its own under it, for
# concord's systemd cgroup driver (`runtime.cgroup_driver = "systemd"`) to be tested for real.
#
#   up      start the node (idempotent); prints its PID 1 (a host pid)
#   down    stop it (SIGRTMIN+4 to its systemd: poweroff) and remove its cgroups
#   run CMD run CMD inside the node (its namespaces, in a transient systemd unit), cwd kept
#   status  whether it runs; its units' states
#
# The node:
#   * root: a tmpfs with the host's /usr bound read-only (merged /usr: bin, lib, sbin are
#     links), a copy of /etc, /var and /tmp on host disk under $NODE_DIR, /work, /root and
#     /tmp/rig (registry mirrors) bound from the host; a private /dev (basic nodes, devpts).
#   * cgroups (the hard part): on this hybrid v1 host every v1 hierarchy, the name=systemd one
#     and the cgroup2 `unified` one get a `$CG` cgroup; the launcher moves itself there and
#     unshares the cgroup namespace, so that inside, freshly mounted hierarchies are rooted at
#     `$CG` and writable, as systemd-nspawn lays them out (tmpfs /sys/fs/cgroup, one mount per
#     controller, name=systemd at systemd/, cgroup2 at unified/). A unified (v2) host gets one
#     cgroup2 mount instead.
#   * network: the host's (the rig's registry on 127.0.0.1:5000 is reachable); pods get their
#     own bridge ($NODE_BRIDGE, $NODE_SUBNET) and IPAM directory, not the rig's.
#   * units: default target concord-node.target = dbus.socket + containerd.service (the
#     rig's CRI-less config, with its own root/state/socket under /var/lib/concord-node, /run).
#     Everything that would touch the host (sysctl, modules, udev, tmpfiles in /dev, getty,
#     timers) is masked.
#
# Environment: NODE_DIR [/tmp/concord-sdnode]  NODE_BRIDGE [cni-sd0]  NODE_SUBNET [10.89.0.0/16]
set -euo pipefail
NODE_DIR=${NODE_DIR:-/tmp/concord-sdnode}
NODE_BRIDGE=${NODE_BRIDGE:-cni-sd0}
NODE_SUBNET=${NODE_SUBNET:-10.89.0.0/16}
CG=concord-sdnode
CGROOT=/sys/fs/cgroup
PIDFILE=$NODE_DIR/pid1
SELF=$(readlink -f "$0")
REPO=${REPO:-$(cd "$(dirname "$SELF")/.." && pwd)}
# Inside the node:
NODE_CTD_SOCK=/run/concord-node/containerd.sock
log() { printf '[systemd-node] %s\n' "$*" >&2; }
die() { printf '[systemd-node] ERROR: %s\n' "$*" >&2; exit 1; }

pid1() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && cat "$PIDFILE"; }

# The host hierarchies (v1: one per mount under /sys/fs/cgroup, plus unified; v2: the root).
hierarchies() {
  if [ -e $CGROOT/cgroup.controllers ]; then echo "$CGROOT"; return; fi
  local d
  for d in $CGROOT/*/; do
    d=${d%/}
    [ -L "$d" ] && continue
    [ -e "$d/cgroup.procs" ] && echo "$d"
  done
}

# The launcher's own cgroup `$CG` in every hierarchy (cpuset given its parent's cpus/mems).
make_cgroups() {
  local h
  for h in $(hierarchies); do
    mkdir -p "$h/$CG"
    if [ -e "$h/cpuset.cpus" ] && [ ! -e "$h/cgroup.controllers" ]; then
      [ -s "$h/$CG/cpuset.cpus" ] || cat "$h/cpuset.cpus" > "$h/$CG/cpuset.cpus"
      [ -s "$h/$CG/cpuset.mems" ] || cat "$h/cpuset.mems" > "$h/$CG/cpuset.mems"
    fi
  done
  if [ -e $CGROOT/cgroup.controllers ]; then
    # v2: the node's systemd must be able to enable the controllers below its root.
    sed 's/\([a-z_]*\)/+\1/g' $CGROOT/cgroup.subtree_control > $CGROOT/$CG/cgroup.subtree_control 2>/dev/null || true
  fi
}

remove_cgroups() {
  local h
  for h in $(hierarchies); do
    [ -d "$h/$CG" ] || continue
    # Depth first: every cgroup the node's systemd left.
    find "$h/$CG" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# The node's /etc: a copy of the host's, with the units it runs and the ones it must not.
write_etc() {
  local etc=$1
  rm -rf "$etc"; mkdir -p "$etc"
  cp -a /etc/. "$etc/"
  rm -f "$etc/machine-id"; : > "$etc/machine-id"
  echo concord-node > "$etc/hostname"
  local sd=$etc/systemd/system
  rm -rf "$sd"/*.wants "$sd"/*.target.wants
  local u
  for u in systemd-sysctl.service systemd-modules-load.service systemd-udevd.service \
           systemd-udev-trigger.service systemd-udev-settle.service systemd-tmpfiles-setup-dev.service \
           systemd-random-seed.service systemd-timesyncd.service systemd-hwdb-update.service \
           ldconfig.service systemd-firstboot.service systemd-networkd.service systemd-resolved.service \
           getty.target console-getty.service getty-static.service cron.service \
           systemd-tmpfiles-clean.timer apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
           fstrim.timer docker-registry.service systemd-binfmt.service \
           sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
           dev-hugepages.mount dev-mqueue.mount proc-sys-fs-binfmt_misc.automount; do
    ln -sf /dev/null "$sd/$u"
  done
  cat > "$sd/concord-node.target" <<'EOF'
[Unit]
Description=concord systemd test node
Requires=basic.target
Wants=dbus.socket dbus.service containerd.service
After=basic.target dbus.service containerd.service
AllowIsolate=yes
EOF
  ln -sf concord-node.target "$sd/default.target"
  mkdir -p "$sd/containerd.service.d"
  cat > "$sd/containerd.service.d/concord-node.conf" <<EOF
[Service]
ExecStartPre=
ExecStart=
ExecStart=/usr/bin/containerd --config /etc/concord-node/containerd.toml
EOF
  mkdir -p "$etc/concord-node" "$etc/concord-node/net.d"
  cat > "$etc/concord-node/containerd.toml" <<EOF
# containerd for the systemd node (CRI plugin disabled: concord drives it)
version = 2
root = "/var/lib/concord-node/containerd"
state = "/run/concord-node/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$NODE_CTD_SOCK"
EOF
  cat > "$etc/concord-node/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sdnode-bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "/var/lib/concord-node/cni",
        "ranges": [[{ "subnet": "$NODE_SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat > "$etc/concord-node/net.d/99-loopback.conf" <<'EOF'
{ "cniVersion": "0.4.0", "name": "lo", "type": "loopback" }
EOF
  # The node's default CNI dir gets the node's network (the host's would share its bridge
  # with a separate IPAM store).
  rm -rf "$etc/cni/net.d"; mkdir -p "$etc/cni"
  cp -a "$etc/concord-node/net.d" "$etc/cni/net.d"
}

# Runs as PID 1 of the new namespaces (still the launcher's bash): builds the root, mounts the
# cgroup hierarchies rooted at $CG, pivots and execs systemd (which stays PID 1).
stage2() {
  local R=$NODE_DIR/root
  mount --make-rprivate /
  mkdir -p "$R"
  mount -t tmpfs -o mode=755 node-root "$R"
  mkdir -p "$R"/{usr,etc,var,run,tmp,proc,sys,dev,root,work,home,opt,mnt,srv}
  for l in bin lib lib64 sbin; do ln -s "usr/$l" "$R/$l"; done
  mount --bind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"
  mount --bind "$NODE_DIR/etc" "$R/etc"
  mkdir -p "$NODE_DIR/var/lib/concord-node" "$NODE_DIR/var/log" "$NODE_DIR/var/tmp" "$NODE_DIR/var/cache" "$NODE_DIR/tmp"
  mount --bind "$NODE_DIR/var" "$R/var"
  mount --bind "$NODE_DIR/tmp" "$R/tmp"; chmod 1777 "$NODE_DIR/tmp"
  mount --rbind /work "$R/work"
  mount --rbind /root "$R/root"
  mkdir -p "$R/tmp/rig"; [ -d /tmp/rig ] && mount --bind /tmp/rig "$R/tmp/rig"
  # The checkout the suites run from, at the same path (test binaries name their sources by
  # absolute path; CI's clean clone may be anywhere, /tmp included: a mount point, which the
  # node's tmpfiles cleaning of /tmp does not cross, as with /tmp/rig above).
  case $REPO in
    /work|/work/*|/root|/root/*) ;;
    *) mkdir -p "$R$REPO"; mount --rbind "$REPO" "$R$REPO" ;;
  esac
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
  mount -t proc proc "$R/proc"
  mount -t sysfs sysfs "$R/sys"
  # /dev: private, as systemd-nspawn makes it.
  mount -t tmpfs -o mode=755,nosuid dev "$R/dev"
  for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0 fuse:10:229; do
    IFS=: read -r name ma mi <<<"$n"; mknod -m 666 "$R/dev/$name" c "$ma" "$mi"
  done
  mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue" "$R/dev/net"
  mknod -m 666 "$R/dev/net/tun" c 10 200
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
  mount -t mqueue mqueue "$R/dev/mqueue"
  ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
  ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
  # cgroups, rooted at $CG by the cgroup namespace.
  local c=$R/sys/fs/cgroup
  if [ -e $CGROOT/cgroup.controllers ]; then
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$c"
  else
    mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup "$c"
    local h name opts
    for h in $(hierarchies); do
      name=$(basename "$h"); mkdir -p "$c/$name"
      case $name in
        unified) mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$c/$name" ;;
        systemd) mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup "$c/$name" ;;
        *) opts=$(awk -v m="$h" '$5==m {print $NF}' /proc/self/mountinfo | tr ',' '\n' | grep -vE '^(rw|ro)$' | paste -sd,)
           mount -t cgroup -o "nosuid,nodev,noexec,$opts" cgroup "$c/$name" ;;
      esac
    done
  fi
  mount -o remount,bind,ro "$R/sys" 2>/dev/null || true
  mkdir -p "$R/.oldroot"
  cd "$R"
  pivot_root . .oldroot
  umount -l /.oldroot; rmdir /.oldroot
  export container=concord-node
  exec /lib/systemd/systemd --log-target=console --show-status=false
}

up() {
  if p=$(pid1); then log "already up: PID 1 is host pid $p"; echo "$p"; return; fi
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -x /lib/systemd/systemd ] || die "no systemd at /lib/systemd/systemd"
  mkdir -p "$NODE_DIR"
  write_etc "$NODE_DIR/etc"
  make_cgroups
  : > "$NODE_DIR/console.log"
  # The launcher joins $CG in every hierarchy, then unshares; its child is PID 1.
  (
    for h in $(hierarchies); do echo "$BASHPID" > "$h/$CG/cgroup.procs"; done
    exec unshare --pid --fork --mount --uts --ipc --cgroup --propagation private \
      env -i PATH=/usr/sbin:/usr/bin NODE_DIR="$NODE_DIR" CG="$CG" REPO="$REPO" \
      bash "$SELF" __stage2 </dev/null >>"$NODE_DIR/console.log" 2>&1
  ) &
  local launcher=$! i p=
  for i in $(seq 1 100); do
    p=$(pgrep -P "$launcher" -x systemd 2>/dev/null || true)
    [ -z "$p" ] && p=$(pgrep -P "$(pgrep -P "$launcher" unshare 2>/dev/null || echo 0)" 2>/dev/null || true)
    [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd ] && break
    kill -0 "$launcher" 2>/dev/null || break
    p=; sleep 0.1
  done
  if [ -z "$p" ]; then
    p=$(pgrep -x systemd -P "$launcher" || true)
  fi
  [ -n "$p" ] || { tail -40 "$NODE_DIR/console.log" >&2; die "systemd did not start as PID 1 (console above)"; }
  echo "$p" > "$PIDFILE"
  # Ready: the default target reached (containerd answers).
  for i in $(seq 1 300); do
    if run_in "$p" systemctl is-active --quiet concord-node.target 2>/dev/null; then
      log "up: systemd $(run_in "$p" systemctl --version | head -1) is PID 1 (host pid $p); containerd at $NODE_CTD_SOCK inside"
      echo "$p"; return 0
    fi
    kill -0 "$p" 2>/dev/null || break
    sleep 0.2
  done
  tail -60 "$NODE_DIR/console.log" >&2
  run_in "$p" systemctl --failed --no-pager >&2 2>&1 || true
  die "the node did not reach concord-node.target (console above)"
}

# Enters the node's namespaces (no unit: for systemctl and friends).
run_in() { local p=$1; shift; nsenter -t "$p" -a -- "$@"; }

run() {
  local p; p=$(pid1) || die "the node is not up (hack/systemd-node.sh up)"
  local envs=() v
  for v in $(compgen -e); do
    case $v in CONCORD_*|CRICTL|RUST_*|CARGO_*|FOCUS|PATH|HOME|SKIP_DEV_UP|CTD_SOCK|CONFORMANCE_*|CRI_TOOLS_*) envs+=("--setenv=$v=${!v}") ;; esac
  done
  nsenter -t "$p" -a -- systemd-run --quiet --wait --pipe --collect --service-type=exec \
    -p Delegate=yes -p KillMode=mixed --working-directory="$(pwd)" "${envs[@]}" -- "$@"
}

down() {
  local p; p=$(pid1) || { log "not up"; remove_cgroups; return 0; }
  kill -s SIGRTMIN+4 "$p" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && { log "still running after 30 s: SIGKILL to its PID 1 (ends the pid namespace)"; kill -9 "$p"; sleep 1; }
  rm -f "$PIDFILE"
  remove_cgroups
  log "down"
}

case ${1:-} in
  __stage2) stage2 ;;
  up) up ;;
  down) down ;;
  run) shift; run "$@" ;;
  status) p=$(pid1) || { echo "down"; exit 1; }; echo "up: host pid $p"; run_in "$p" systemctl list-units --no-pager --state=running,failed ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
