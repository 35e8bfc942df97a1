#!/usr/bin/env bash
# dev-up.sh - bring up concord's development/test node on Debian bookworm: containerd
# (its own CRI plugin disabled, for concord to drive), runc, CNI plugins, a local
# registry holding locally built test images, and the build dependencies.
#
#   * installs the Debian packages it needs (unless SKIP_APT=1)
#   * builds stand-ins for every image critest v1.26 pulls (Debian busybox + umoci)
#   * starts a local registry (docker-registry) on 127.0.0.1:5000 and pushes them
#   * writes containerd registry host configs that mirror registry.k8s.io, gcr.io,
#     docker.io, public.ecr.aws, ... to that registry (plain http)
#   * writes a CNI bridge network (bridge + host-local + portmap, plus loopback)
#   * writes two containerd configs (CRI plugin enabled / disabled) and starts
#     containerd in the background with the selected one
#
# It is idempotent: re-running it only does what is missing.  It never builds or
# fetches cri-tools (critest/crictl); see README-rig.md for that.
#
# Usage: dev-up.sh [--cri | --no-cri] [--rebuild-images]
#   --no-cri    (default) containerd with the CRI plugin disabled, for concord to drive
#   --cri       containerd with its built-in CRI plugin (io.containerd.grpc.v1.cri): the
#               reference the benchmark compares against
#
# Environment overrides (defaults in brackets):
#   RIG_DIR [/tmp/rig]   CTD_DIR [/tmp/ctd]   CTD_SOCK [$CTD_DIR/containerd.sock]
#   REG_ADDR [127.0.0.1:5000]   CNI_CONF_DIR [/etc/cni/net.d]   CNI_BIN_DIR [/usr/lib/cni]
#   CNI_SUBNET [10.88.0.0/16]   CNI_NETWORK [rig-bridge]   CNI_BRIDGE [cni0]   SANDBOX_IMAGE [registry.k8s.io/pause:3.10.1]
#   SKIP_APT [0]   REBUILD_IMAGES [0]   MAKE_ROOT_RSHARED [1]
#   SKIP_CRIU [0]: 1 skips hack/criu.sh install (Debian 13's criu 4.x beside the system, for
#     CheckpointContainer: bookworm's criu 3.17 cannot dump on recent kernels; it says SKIPPED,
#     never fails, when it cannot download)
#   CTD_METRICS_ADDR [127.0.0.1:1338]: containerd's Prometheus metrics ([metrics] address, path
#     /v1/metrics; hack/prom-proof.sh can scrape it); empty: none. Left out, with a warning,
#     when another process than the rig's containerd listens there (containerd would not start).
#
# Processes it starts get pid files in $RIG_DIR/run; dev-down.sh stops only those.
set -euo pipefail

RIG_DIR=${RIG_DIR:-/tmp/rig}
CTD_DIR=${CTD_DIR:-/tmp/ctd}
CTD_SOCK=${CTD_SOCK:-$CTD_DIR/containerd.sock}
CTD_CRI=${CTD_CRI:-0}
REG_ADDR=${REG_ADDR:-127.0.0.1:5000}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
CNI_SUBNET=${CNI_SUBNET:-10.88.0.0/16}
CNI_NETWORK=${CNI_NETWORK:-rig-bridge}
CNI_BRIDGE=${CNI_BRIDGE:-cni0}
SANDBOX_IMAGE=${SANDBOX_IMAGE:-registry.k8s.io/pause:3.10.1}
SKIP_APT=${SKIP_APT:-0}
REBUILD_IMAGES=${REBUILD_IMAGES:-0}
MAKE_ROOT_RSHARED=${MAKE_ROOT_RSHARED:-1}
SKIP_CRIU=${SKIP_CRIU:-0}
CTD_METRICS_ADDR=${CTD_METRICS_ADDR-127.0.0.1:1338}

# Bump when the image recipes below change (forces a rebuild + re-push).
IMAGES_VERSION=4

for arg in "$@"; do
  case "$arg" in
    --cri) CTD_CRI=1 ;;
    --no-cri) CTD_CRI=0 ;;
    --rebuild-images) REBUILD_IMAGES=1 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

RUN_DIR=$RIG_DIR/run
OCI=$RIG_DIR/oci
BUILD=$RIG_DIR/build
REG_STORE=$RIG_DIR/registry
CTD_CONF_DIR=$RIG_DIR/containerd
HOSTS_DIR=$CTD_CONF_DIR/certs.d

log() { printf '[dev-up] %s\n' "$*" >&2; }
die() { printf '[dev-up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$RIG_DIR" "$RUN_DIR" "$CTD_CONF_DIR"

# --------------------------------------------------------------------------
# 1. Debian packages
# --------------------------------------------------------------------------
PKGS=(containerd runc containernetworking-plugins docker-registry skopeo umoci
      iproute2 iptables util-linux procps curl gcc libc6-dev
      protobuf-compiler prometheus apache2-utils
      criu)  # criu: CheckpointContainer (runc dumps through it); see also hack/criu.sh

install_packages() {
  [ "$SKIP_APT" = 1 ] && { log "SKIP_APT=1: not installing packages"; return; }
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "packages already installed"; return; }
  log "installing: ${missing[*]}"
  # Keep the distro services (system containerd, docker-registry on :5000 with
  # htpasswd auth) from being started by the package scripts.
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# --------------------------------------------------------------------------
# 2. Images
# --------------------------------------------------------------------------
goarch() {
  case "$(dpkg --print-architecture)" in
    amd64) echo amd64 ;; arm64) echo arm64 ;; armhf|armel) echo arm ;;
    ppc64el) echo ppc64le ;; s390x) echo s390x ;; *) dpkg --print-architecture ;;
  esac
}
GOARCH=$(goarch)

# layout-tag  ->  registry repositories (path:tag, without the registry host).
# The registry host is irrelevant: containerd maps registry.k8s.io, gcr.io,
# docker.io, public.ecr.aws, ... all onto $REG_ADDR, keeping the path.
image_map() {
cat <<EOF
busybox e2e-test-images/busybox:1.29-2 library/busybox:latest library/busybox:1.28 library/busybox:1.29 library/busybox:1.36
nginx e2e-test-images/nginx:1.14-2
httpd e2e-test-images/httpd:2.4.39-4
nonewprivs e2e-test-images/nonewprivs:1.3
user-uid k8s-staging-cri-tools/test-image-user-uid:latest
user-username k8s-staging-cri-tools/test-image-user-username:latest
user-uid-group k8s-staging-cri-tools/test-image-user-uid-group:latest
user-username-group k8s-staging-cri-tools/test-image-user-username-group:latest
predefined-group k8s-staging-cri-tools/test-image-predefined-group:latest
hostnet-nginx k8s-staging-cri-tools/hostnet-nginx-$GOARCH:latest
test-image-1 k8s-staging-cri-tools/test-image-1:latest
test-image-2 k8s-staging-cri-tools/test-image-2:latest
test-image-3 k8s-staging-cri-tools/test-image-3:latest
test-image-latest k8s-staging-cri-tools/test-image-latest:latest
test-image-digest k8s-staging-cri-tools/test-image-digest:latest
test-image-tags k8s-staging-cri-tools/test-image-tags:1 k8s-staging-cri-tools/test-image-tags:2 k8s-staging-cri-tools/test-image-tags:3
test-image-tag-test k8s-staging-cri-tools/test-image-tag:test
test-image-tag-all k8s-staging-cri-tools/test-image-tag:all
pause pause:3.10.1 pause:3.9 pause:3.6 pause:3.7 pause:3.8 pause:3.10 pause:latest
ecr-1.35.0-glibc docker/library/busybox:1.35.0-glibc
ecr-1-uclibc docker/library/busybox:1-uclibc
ecr-1 docker/library/busybox:1
ecr-1-glibc docker/library/busybox:1-glibc
ecr-1-musl docker/library/busybox:1-musl
EOF
}

write_helpers() {   # $1 = dir; writes C sources and shell stand-ins
  local d=$1
  mkdir -p "$d"
  # pause: blocks until SIGINT/SIGTERM, reaps children (same job as k8s pause)
  cat > "$d/pause.c" <<'EOF'
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int signo) { psignal(signo, "Shutting down, got signal"); exit(0); }
static void sigreap(int signo) { (void)signo; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(int argc, char **argv) {
  struct sigaction down = {.sa_handler = sigdown}, reap = {.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP};
  if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v') { printf("rig-pause 1.0\n"); return 0; }
  if (getpid() != 1) fprintf(stderr, "Warning: pause should be the first process\n");
  if (sigaction(SIGINT, &down, NULL) < 0) return 1;
  if (sigaction(SIGTERM, &down, NULL) < 0) return 2;
  if (sigaction(SIGCHLD, &reap, NULL) < 0) return 3;
  for (;;) pause();
  return 42;
}
EOF
  # nnp: setuid-root program printing its effective uid (e2e nonewprivs image)
  cat > "$d/nnp.c" <<'EOF'
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }
EOF
  # nginx stand-in: this script is the "master" (comm=nginx, pid in
  # /var/run/nginx.pid, argv contains "master process"); busybox httpd serves.
  cat > "$d/nginx" <<'EOF'
#!/bin/sh
# nginx stand-in for CRI tests: busybox httpd serves /usr/share/nginx/html.
if [ "$1" != "master process" ]; then
  exec "$0" "master process" "$@"
fi
shift
port=80
conf=/etc/nginx/conf.d/default.conf
if [ -f "$conf" ]; then
  p=$(sed -n 's/^[[:space:]]*listen[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$conf" | head -n 1)
  [ -n "$p" ] && port=$p
fi
mkdir -p /var/run /var/log/nginx
httpd -f -p "$port" -h /usr/share/nginx/html &
worker=$!
echo $$ > /var/run/nginx.pid
trap 'kill -TERM $worker 2>/dev/null; rm -f /var/run/nginx.pid; exit 0' TERM INT QUIT
wait $worker
EOF
  # httpd stand-in (e2e httpd image): logs the apache foreground command line
  cat > "$d/httpd-foreground" <<'EOF'
#!/bin/sh
# Apache httpd stand-in for CRI tests: busybox httpd serves /usr/local/apache2/htdocs.
echo "[mpm_event:notice] [pid $$] AH00489: Apache/2.4.39 (Unix) (busybox httpd stand-in) configured -- resuming normal operations" >&2
echo "[core:notice] [pid $$] AH00094: Command line: 'httpd -D FOREGROUND'" >&2
httpd -f -p 80 -h /usr/local/apache2/htdocs &
worker=$!
trap 'kill -TERM $worker 2>/dev/null; exit 0' TERM INT QUIT WINCH
wait $worker
EOF
  # pgrep/pkill and ipcs are not in Debian's busybox builds
  cat > "$d/pgrep" <<'EOF'
#!/bin/sh
# minimal pgrep/pkill: [-f] [-x] [-SIGNAL] PATTERN (matches comm, or cmdline with -f)
full=0; exact=0; sig=TERM; kill=0
case "${0##*/}" in pkill) kill=1 ;; esac
while [ $# -gt 1 ]; do
  case "$1" in -f) full=1 ;; -x) exact=1 ;; -[0-9]*|-[A-Z]*) sig=${1#-} ;; *) break ;; esac
  shift
done
[ $# -eq 1 ] || { echo "usage: ${0##*/} [-f] [-x] PATTERN" >&2; exit 2; }
pat=$1; [ $exact = 1 ] && pat="^($pat)\$"
rc=1; me=$$
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$me" ] && continue
  if [ $full = 1 ]; then name=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null); else name=$(cat "$d/comm" 2>/dev/null); fi
  [ -n "$name" ] || continue
  [ "$name" = "${0##*/}" ] && continue
  if printf '%s\n' "$name" | grep -Eq -- "$pat"; then
    rc=0
    if [ $kill = 1 ]; then kill -s "$sig" "$pid" 2>/dev/null; else echo "$pid"; fi
  fi
done
exit $rc
EOF
  cat > "$d/ipcs" <<'EOF'
#!/bin/sh
# minimal ipcs (util-linux style listing) from /proc/sysvipc
m=0; q=0; s=0
for a in "$@"; do case "$a" in -m) m=1 ;; -q) q=1 ;; -s) s=1 ;; -a) m=1; q=1; s=1 ;; esac; done
[ $m$q$s = 000 ] && { m=1; q=1; s=1; }
if [ $q = 1 ]; then
  printf '\n------ Message Queues --------\nkey        msqid      owner      perms      used-bytes   messages    \n'
  awk 'NR>1 {printf "0x%08x %-10s %-10s %-10s %-12s %-12s\n", $1, $2, $8, $3, $4, $5}' /proc/sysvipc/msg 2>/dev/null
fi
if [ $m = 1 ]; then
  printf '\n------ Shared Memory Segments --------\nkey        shmid      owner      perms      bytes      nattch     status      \n'
  awk 'NR>1 {printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", $1, $2, $8, $3, $4, $7}' /proc/sysvipc/shm 2>/dev/null
fi
if [ $s = 1 ]; then
  printf '\n------ Semaphore Arrays --------\nkey        semid      owner      perms      nsems     \n'
  awk 'NR>1 {printf "0x%08x %-10s %-10s %-10s %-10s\n", $1, $2, $5, $3, $4}' /proc/sysvipc/sem 2>/dev/null
fi
echo
EOF
}

# The image busybox is Debian's *dynamic* busybox package (downloaded, not
# installed) plus the host's glibc.  busybox-static is built with
# FEATURE_SH_STANDALONE: its ash runs applets in-process instead of exec'ing
# them from PATH, which breaks e.g. the MaskedPaths test (/bin/ls masked).
fetch_busybox() {
  local dir=$RIG_DIR/cache f
  mkdir -p "$dir"
  f=$(ls "$dir"/busybox_*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$f" ]; then
    log "downloading Debian package busybox (apt-get download)"
    (cd "$dir" && apt-get download busybox >/dev/null 2>&1) \
      || { apt-get update -qq && (cd "$dir" && apt-get download busybox >/dev/null); } \
      || die "cannot download the Debian busybox package"
    f=$(ls "$dir"/busybox_*.deb | head -n 1)
  fi
  rm -rf "$BUILD/busybox-deb"
  dpkg-deb -x "$f" "$BUILD/busybox-deb"
  BB=$BUILD/busybox-deb/bin/busybox
  [ -x "$BB" ] || die "no bin/busybox in $f"
}

busybox_rootfs() {   # $1 = dir: a rootfs like docker.io/library/busybox (glibc flavour)
  local r=$1 a lib
  rm -rf "$r"
  mkdir -p "$r"/{bin,dev,etc,home,proc,root,sys,tmp,usr/sbin,usr/bin,var/spool/mail,var/www,var/run}
  chmod 1777 "$r/tmp"; chmod 700 "$r/root"
  install -m 0755 "$BB" "$r/bin/busybox"
  for a in $("$BB" --list); do
    [ "$a" = busybox ] || ln -f "$r/bin/busybox" "$r/bin/$a"
  done
  # shared libraries busybox needs (libc, libresolv, the dynamic loader)
  for lib in $(ldd "$BB" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
  done
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\nprotocols: files\n' > "$r/etc/nsswitch.conf"
  install -m 0755 "$BUILD/helpers/pgrep" "$r/bin/pgrep"
  ln -f "$r/bin/pgrep" "$r/bin/pkill"
  install -m 0755 "$BUILD/helpers/ipcs" "$r/bin/ipcs"
  cat > "$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
  cat > "$r/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
EOF
  sed 's/^\([^:]*\):.*/\1:*:10933:0:99999:7:::/' "$r/etc/passwd" > "$r/etc/shadow"
  sed -i 's/^root:\*:/root::/' "$r/etc/shadow"
  chmod 640 "$r/etc/shadow"
}

U() { umoci --log error "$@"; }

build_images() {
  local stamp=$OCI/.rig-images-v$IMAGES_VERSION
  if [ -f "$stamp" ] && [ "$REBUILD_IMAGES" != 1 ]; then log "images already built ($OCI)"; return; fi
  log "building images into $OCI"
  rm -rf "$OCI" "$BUILD"; mkdir -p "$BUILD"
  write_helpers "$BUILD/helpers"
  fetch_busybox
  gcc -static -Os -s -o "$BUILD/helpers/pause" "$BUILD/helpers/pause.c"
  gcc -static -Os -s -o "$BUILD/helpers/nnp" "$BUILD/helpers/nnp.c"
  local env_path='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  local L d

  U init --layout "$OCI"
  U new --image "$OCI:scratch"

  # busybox (registry.k8s.io/e2e-test-images/busybox:1.29-2, docker.io/library/busybox)
  busybox_rootfs "$BUILD/busybox"
  chroot "$BUILD/busybox" /bin/sh -c 'PATH=/nonexistent; ls' >/dev/null 2>&1 \
    && die "busybox shell runs applets without PATH (standalone shell); need Debian's dynamic busybox"
  chroot "$BUILD/busybox" /bin/sh -c 'id -nu; ls / >/dev/null' >/dev/null || die "busybox rootfs does not work"
  U insert --image "$OCI:scratch" --tag busybox --history.created_by "rig: Debian busybox + glibc rootfs" "$BUILD/busybox" /
  U config --image "$OCI:busybox" --config.env "$env_path" --config.cmd sh

  # distinct busybox variants for the benchmark's image-listing defaults (public.ecr.aws/docker/library/busybox:*)
  for v in 1.35.0-glibc 1-uclibc 1 1-glibc 1-musl; do
    d=$BUILD/ecr-$v; mkdir -p "$d/etc"; echo "$v" > "$d/etc/rig-busybox-variant"
    U insert --image "$OCI:busybox" --tag "ecr-$v" "$d" /
  done

  # nginx stand-in (e2e-test-images/nginx:1.14-2): port 80
  d=$BUILD/nginx; mkdir -p "$d/usr/sbin" "$d/usr/share/nginx/html" "$d/etc/nginx/conf.d" "$d/var/run" "$d/var/log/nginx"
  install -m 0755 "$BUILD/helpers/nginx" "$d/usr/sbin/nginx"
  printf '<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1></body></html>\n' > "$d/usr/share/nginx/html/index.html"
  printf 'server {\n    listen       80;\n    server_name  localhost;\n}\n' > "$d/etc/nginx/conf.d/default.conf"
  U insert --image "$OCI:busybox" --tag nginx "$d" /
  U config --image "$OCI:nginx" --config.exposedports 80/tcp --config.stopsignal SIGTERM \
    --config.cmd nginx --config.cmd=-g --config.cmd "daemon off;"

  # hostnet-nginx stand-in (gcr.io/k8s-staging-cri-tools/hostnet-nginx-<arch>): listens on 12003
  d=$BUILD/hostnet-nginx; mkdir -p "$d/etc/nginx/conf.d"
  printf 'server {\n    listen       12003;\n    server_name  localhost;\n}\n' > "$d/etc/nginx/conf.d/default.conf"
  U insert --image "$OCI:nginx" --tag hostnet-nginx "$d" /

  # httpd stand-in (e2e-test-images/httpd:2.4.39-4): port 80, logs "httpd -D FOREGROUND"
  d=$BUILD/httpd; mkdir -p "$d/usr/local/bin" "$d/usr/local/apache2/htdocs"
  install -m 0755 "$BUILD/helpers/httpd-foreground" "$d/usr/local/bin/httpd-foreground"
  echo '<html><body><h1>It works!</h1></body></html>' > "$d/usr/local/apache2/htdocs/index.html"
  U insert --image "$OCI:busybox" --tag httpd "$d" /
  U config --image "$OCI:httpd" --config.exposedports 80/tcp --config.workingdir /usr/local/apache2 \
    --config.env "PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.cmd httpd-foreground

  # nonewprivs (e2e-test-images/nonewprivs:1.3): setuid-root binary printing "Effective uid: N"
  d=$BUILD/nonewprivs; mkdir -p "$d/usr/local/bin"
  install -o 0 -g 0 -m 4755 "$BUILD/helpers/nnp" "$d/usr/local/bin/nnp"
  U insert --image "$OCI:busybox" --tag nonewprivs "$d" /
  U config --image "$OCI:nonewprivs" --config.cmd /usr/local/bin/nnp

  # image-user images (cri-tools images/image-user: FROM busybox; USER $USER)
  U config --image "$OCI:busybox" --tag user-uid --config.user 1002
  U config --image "$OCI:busybox" --tag user-username --config.user www-data
  U config --image "$OCI:busybox" --tag user-uid-group --config.user 1003:1004
  U config --image "$OCI:busybox" --tag user-username-group --config.user www-data:1004

  # image-predefined-group: default-user(1000) in group-defined-in-image(50000); USER 1000
  d=$BUILD/predefined-group; mkdir -p "$d/etc" "$d/home/default-user"
  cp "$BUILD/busybox/etc/passwd" "$BUILD/busybox/etc/group" "$BUILD/busybox/etc/shadow" "$d/etc/"
  echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >> "$d/etc/passwd"
  echo 'default-user:x:1000:' >> "$d/etc/group"
  echo 'group-defined-in-image:x:50000:default-user' >> "$d/etc/group"
  echo 'default-user:!:19000:0:99999:7:::' >> "$d/etc/shadow"
  chmod 640 "$d/etc/shadow"; chown 1000:1000 "$d/home/default-user"
  U insert --image "$OCI:busybox" --tag predefined-group "$d" /
  U config --image "$OCI:predefined-group" --config.user 1000

  # image-test images (FROM busybox; ADD $TEST $TEST) - one distinct image per name
  for L in test-image-1 test-image-2 test-image-3 test-image-latest test-image-digest; do
    d=$BUILD/$L; mkdir -p "$d"; : > "$d/$L"
    U insert --image "$OCI:busybox" --tag "$L" "$d" /
  done
  d=$BUILD/test-image-tags; mkdir -p "$d"; : > "$d/same-image"
  U insert --image "$OCI:busybox" --tag test-image-tags "$d" /
  for L in test all; do
    d=$BUILD/test-image-tag-$L; mkdir -p "$d"; : > "$d/$L"
    U insert --image "$OCI:busybox" --tag "test-image-tag-$L" "$d" /
  done

  # pause (sandbox image): static binary, runs as 65535:65535 like registry.k8s.io/pause
  d=$BUILD/pause; mkdir -p "$d"; install -m 0755 "$BUILD/helpers/pause" "$d/pause"
  U insert --image "$OCI:scratch" --tag pause --history.created_by "rig: static pause" "$d" /
  U config --image "$OCI:pause" --config.user 65535:65535 --config.entrypoint /pause

  U rm --image "$OCI:scratch"
  U gc --layout "$OCI"
  touch "$stamp"
  log "built $(U ls --layout "$OCI" | wc -l) images"
}

# --------------------------------------------------------------------------
# 3. Registry
# --------------------------------------------------------------------------
proc_alive() {   # $1 = pidfile, $2 = expected executable basename
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$2" ]
}

registry_answers() { curl -sf -m 2 "http://$REG_ADDR/v2/" >/dev/null 2>&1; }

start_registry() {
  local pidf=$RUN_DIR/registry.pid cfg=$RIG_DIR/registry-config.yml i
  mkdir -p "$REG_STORE"
  cat > "$cfg" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG_STORE
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $REG_ADDR
EOF
  if proc_alive "$pidf" docker-registry; then
    log "registry already running (pid $(cat "$pidf"))"
  else
    registry_answers && die "something not started by this rig already answers on http://$REG_ADDR/v2/ - stop it or set REG_ADDR"
    log "starting docker-registry on $REG_ADDR (storage $REG_STORE)"
    start-stop-daemon --start --background --make-pidfile --pidfile "$pidf" \
      --output "$RUN_DIR/registry.log" --chdir / --exec /usr/bin/docker-registry -- serve "$cfg"
  fi
  for i in $(seq 1 100); do registry_answers && { log "registry answers on http://$REG_ADDR/v2/"; return; }; sleep 0.2; done
  die "registry did not come up, see $RUN_DIR/registry.log"
}

push_images() {
  local sum stamp line L refs r
  # The layout and the tag map: a tag added to image_map is pushed without rebuilding images.
  sum=$({ cat "$OCI/index.json"; image_map; } | sha256sum | cut -c1-16)
  stamp=$REG_STORE/.rig-pushed-$sum
  if [ -f "$stamp" ]; then log "images already pushed to $REG_ADDR"; return; fi
  log "pushing images to $REG_ADDR"
  while read -r L refs; do
    for r in $refs; do
      skopeo copy --quiet --format v2s2 --dest-tls-verify=false "oci:$OCI:$L" "docker://$REG_ADDR/$r" >/dev/null \
        || die "push of $L -> $r failed"
    done
  done < <(image_map)
  rm -f "$REG_STORE"/.rig-pushed-*
  touch "$stamp"
  log "pushed $(image_map | awk '{n+=NF-1} END{print n}') tags"
}

# --------------------------------------------------------------------------
# 4. CNI
# --------------------------------------------------------------------------
write_cni() {
  mkdir -p "$CNI_CONF_DIR"
  cat > "$CNI_CONF_DIR/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$CNI_SUBNET" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
EOF
  cat > "$CNI_CONF_DIR/99-loopback.conf" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "lo",
  "type": "loopback"
}
EOF
  local f
  for f in "$CNI_CONF_DIR"/*.conf "$CNI_CONF_DIR"/*.conflist "$CNI_CONF_DIR"/*.json; do
    [ -e "$f" ] || continue
    case "$(basename "$f")" in 10-bridge.conflist|99-loopback.conf) continue ;; esac
    if [[ "$(basename "$f")" < 10-bridge.conflist ]]; then
      log "WARNING: $f sorts before 10-bridge.conflist; containerd (max_conf_num=1) will use it instead"
    fi
  done
  for p in bridge host-local portmap loopback; do
    [ -x "$CNI_BIN_DIR/$p" ] || die "CNI plugin $CNI_BIN_DIR/$p missing"
  done
  log "CNI config in $CNI_CONF_DIR (network $CNI_NETWORK, bridge $CNI_BRIDGE, $CNI_SUBNET, portmap, loopback)"
}

# --------------------------------------------------------------------------
# 5. containerd
# --------------------------------------------------------------------------
# CAP_SYS_RESOURCE missing from the bounding set (e.g. some VM/container sandboxes)
# => runc cannot lower oom_score_adj (CRI uses -998 for sandboxes) and every
# RunPodSandbox fails with "can't get final child's PID from pipe: EOF".
have_cap_sys_resource() {
  local bnd
  bnd=$(awk '/^CapBnd:/{print $2}' /proc/self/status)
  [ $(( (0x$bnd >> 24) & 1 )) = 1 ]
}

# containerd's [metrics] section: CTD_METRICS_ADDR, unless another process than the rig's
# containerd listens there.
containerd_metrics_section() {
  [ -n "$CTD_METRICS_ADDR" ] || return 0
  local holder
  holder=$(ss -Hltnp "sport = :${CTD_METRICS_ADDR##*:}" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)
  if [ -n "$holder" ] && [ "$holder" != "$(cat "$RUN_DIR/containerd.pid" 2>/dev/null)" ]; then
    log "WARNING: $CTD_METRICS_ADDR is taken (pid $holder): containerd gets no metrics address"
    return 0
  fi
  printf '\n[metrics]\n  address = "%s"\n' "$CTD_METRICS_ADDR"
}

write_containerd_configs() {
  local h srv restrict_oom=false metrics
  have_cap_sys_resource || restrict_oom=true
  metrics=$(containerd_metrics_section)
  # registry host configs (containerd hosts.toml format, used via registry.config_path)
  for h in registry.k8s.io k8s.gcr.io gcr.io docker.io public.ecr.aws quay.io ghcr.io; do
    case "$h" in docker.io) srv=https://registry-1.docker.io ;; *) srv=https://$h ;; esac
    mkdir -p "$HOSTS_DIR/$h"
    cat > "$HOSTS_DIR/$h/hosts.toml" <<EOF
server = "$srv"

[host."http://$REG_ADDR"]
  capabilities = ["pull", "resolve"]
EOF
  done
  for h in "$REG_ADDR" "localhost:${REG_ADDR##*:}"; do
    mkdir -p "$HOSTS_DIR/$h"
    printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' \
      "$REG_ADDR" "$REG_ADDR" > "$HOSTS_DIR/$h/hosts.toml"
  done

  cat > "$CTD_CONF_DIR/config-cri.toml" <<EOF
# containerd 1.6 config, built-in CRI plugin ENABLED (dev-up.sh)
version = 2
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"

[grpc]
  address = "$CTD_SOCK"
$metrics

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # true when this host lacks CAP_SYS_RESOURCE (see have_cap_sys_resource)
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$HOSTS_DIR"
EOF

  cat > "$CTD_CONF_DIR/config-nocri.toml" <<EOF
# containerd 1.6 config, built-in CRI plugin DISABLED (dev-up.sh --no-cri):
# plain containerd for a separate CRI server to drive.  Registry mirrors for such
# a server: hosts.toml files in $HOSTS_DIR (e.g. ctr --hosts-dir $HOSTS_DIR ...).
version = 2
root = "$CTD_DIR/root"
state = "$CTD_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$CTD_SOCK"
$metrics
EOF
}

ctd_answers() { ctr --address "$CTD_SOCK" --timeout 2s version >/dev/null 2>&1; }

stop_own_containerd() {
  local pidf=$RUN_DIR/containerd.pid pid i
  proc_alive "$pidf" containerd || { rm -f "$pidf"; return 0; }
  pid=$(cat "$pidf"); log "stopping rig containerd (pid $pid) to switch config"
  kill -TERM "$pid"
  for i in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  [ -d "/proc/$pid" ] && kill -KILL "$pid"
  rm -f "$pidf"
}

start_containerd() {
  local pidf=$RUN_DIR/containerd.pid cfg want i
  if [ "$CTD_CRI" = 1 ]; then cfg=$CTD_CONF_DIR/config-cri.toml; else cfg=$CTD_CONF_DIR/config-nocri.toml; fi
  want=$(sha256sum "$cfg" | cut -d' ' -f1)
  if proc_alive "$pidf" containerd; then
    if [ "$(cat "$RUN_DIR/containerd.config" 2>/dev/null)" = "$cfg $want" ]; then
      log "containerd already running (pid $(cat "$pidf"), $cfg)"
    else
      stop_own_containerd
    fi
  fi
  if ! proc_alive "$pidf" containerd; then
    ctd_answers && die "a containerd not started by this rig already serves $CTD_SOCK (pid(s): $(pgrep -x containerd | tr '\n' ' ')); stop it or set CTD_DIR/CTD_SOCK"
    mkdir -p "$CTD_DIR" "$(dirname "$CTD_SOCK")"
    log "starting containerd ($cfg) on $CTD_SOCK"
    start-stop-daemon --start --background --make-pidfile --pidfile "$pidf" \
      --output "$RUN_DIR/containerd.log" --chdir / --exec /usr/bin/containerd -- --config "$cfg"
    echo "$cfg $want" > "$RUN_DIR/containerd.config"
  fi
  for i in $(seq 1 150); do ctd_answers && break; sleep 0.2; done
  ctd_answers || die "containerd did not come up, see $RUN_DIR/containerd.log"
  if [ "$CTD_CRI" = 1 ]; then
    for i in $(seq 1 50); do
      ctr --address "$CTD_SOCK" plugins ls 2>/dev/null | awk '$1=="io.containerd.grpc.v1" && $2=="cri" && $4=="ok"' | grep -q . && break
      sleep 0.2
    done
    ctr --address "$CTD_SOCK" plugins ls | awk '$1=="io.containerd.grpc.v1" && $2=="cri" && $4=="ok"' | grep -q . \
      || die "containerd CRI plugin is not ok, see $RUN_DIR/containerd.log"
    log "containerd up with CRI plugin: unix://$CTD_SOCK (pid $(cat "$pidf"))"
  else
    log "containerd up, CRI plugin disabled: $CTD_SOCK (pid $(cat "$pidf"))"
  fi
}

host_prep() {
  # Bidirectional (rshared) mount propagation needs / to be a shared mount
  # (systemd does this by default; minimal inits do not).
  if [ "$MAKE_ROOT_RSHARED" = 1 ] && [ "$(findmnt -n -o PROPAGATION /)" != shared ]; then
    log "making / rshared (mount --make-rshared /)"
    mount --make-rshared /
  fi
  # bridge plugin (isGateway) enables forwarding itself; make sure anyway
  sysctl -qw net.ipv4.ip_forward=1 || true
}

install_packages
# A criu that can dump on this kernel (runc, under containerd's shims, finds it on PATH).
if [ "$SKIP_CRIU" = 1 ]; then log "SKIP_CRIU=1: not installing hack/criu.sh's criu"
else bash "$(dirname "$0")/criu.sh" install || log "WARNING: hack/criu.sh install failed"; fi
build_images
start_registry
push_images
write_cni
host_prep
write_containerd_configs
start_containerd

cat >&2 <<EOF
[dev-up] ready:
  registry   http://$REG_ADDR   (pid $(cat "$RUN_DIR/registry.pid"), log $RUN_DIR/registry.log)
  containerd unix://$CTD_SOCK   (pid $(cat "$RUN_DIR/containerd.pid"), CRI plugin $([ "$CTD_CRI" = 1 ] && echo enabled || echo disabled), log $RUN_DIR/containerd.log)
  CNI        $CNI_CONF_DIR/10-bridge.conflist
EOF
