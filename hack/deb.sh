#!/usr/bin/env bash
# deb.sh - builds concord's Debian package with cargo-deb ([package.metadata.deb] in Cargo.toml):
# the binaries (cargo profile PROFILE), the generated assets in contrib/generated/ (the default
# config that becomes the conffile /etc/concord/config.toml, the man page and the bash, zsh and
# fish completions, all from the binary just built), then the .deb. Prints the .deb's path.
#
#   hack/deb.sh                          # release build, version from Cargo.toml
#   hack/deb.sh --deb-version 0.1.0+x    # same binaries, another package version (no rebuild)
#
# Environment: PROFILE [release] (dev: the debug build the tests use), CARGO_TARGET_DIR [target],
# CARGO_DEB_VERSION [3.8.0] (installed from crates.io into ~/.cargo/bin when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}
case "$PROFILE" in dev) BUILD=$TARGET/debug ;; *) BUILD=$TARGET/$PROFILE ;; esac
log() { echo "[deb] $*" >&2; }

export PATH=$HOME/.cargo/bin:$PATH
if ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb $CARGO_DEB_VERSION (crates.io)"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet >&2
fi

log "building concord and concord-log-writer (profile $PROFILE)"
cargo build --quiet --profile "$PROFILE" --bin concord --bin concord-log-writer >&2

log "generating the default config, the man page and the completions in contrib/generated/"
rm -rf contrib/generated && mkdir -p contrib/generated
"$BUILD/concord" config default > contrib/generated/config.toml
"$BUILD/concord" generate-docs contrib/generated

mkdir -p "$TARGET/debian"
out=$(cargo deb --no-build --profile "$PROFILE" --output "$TARGET/debian" "$@" 2> >(grep -v '^warning: .*license' >&2) | tail -1)
log "built $out"
echo "$out"
