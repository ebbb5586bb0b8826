#!/usr/bin/env bash
# The real Picamera2 on a real libcamera (virtual camera), built once and cached; used by `make picamera-test`.
#
#   tools/real-picamera/build.sh          build unless cached; prints the cache folder last
#   tools/real-picamera/build.sh --dir    print the cache folder only (no build; tests use it to find the build)
#
# What it makes, under /var/cache/kvs-edge-picamera-<key> (key: the versions below + this script + the patch +
# the camera description; $KVS_EDGE_PICAMERA_CACHE_ROOT replaces /var/cache):
#   prefix/  libcamera from Debian sid's source package, our patch applied (libcamera-0.7.2-virtual.patch),
#            only the `virtual` pipeline, no IPAs, with the Python bindings; virtual.yaml as its camera
#   venv/    Debian's python3 with PyPI's picamera2 and kvs-edge's runtime dependencies (python-prctl and PiDNG build from source), the bindings on
#            its path (a .pth)
#   setup-seconds  how long the build from nothing took; `ready` marks a complete build
# Needs root for apt (the build packages, and `apt-get source` through a private sid deb-src list that leaves the
# system's apt configuration and packages alone).
set -euo pipefail

LIBCAMERA_VERSION=0.7.2    # Debian sid's libcamera source package
# The python3-picamera2 of Raspberry Pi OS bookworm (its apt archive is not reachable from here: not re-checked).
PICAMERA2_VERSION=0.3.31
PY=/usr/bin/python3        # Debian's python3: the bindings are built against its headers (python3-dev)
APT_PACKAGES="dpkg-dev g++ meson ninja-build pkg-config libyuv-dev libudev-dev libyaml-dev libgnutls28-dev
  pybind11-dev python3-dev python3-venv python3-yaml python3-jinja2 python3-ply libcap-dev patch"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# kvs-edge's own runtime dependencies go into the same venv, as on a Pi where kvs-edge's venv sees python3-picamera2.
KVS_EDGE_DEPS=$("$PY" -c 'import sys, tomllib; print(" ".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$HERE/../../pyproject.toml")
PATCH="$HERE/libcamera-${LIBCAMERA_VERSION}-virtual.patch"
KEY=$( { echo "libcamera=$LIBCAMERA_VERSION picamera2=$PICAMERA2_VERSION deps=$KVS_EDGE_DEPS"; cat "$HERE/build.sh" "$PATCH" \
         "$HERE/virtual.yaml"; } | sha256sum | cut -c1-12)
CACHE="${KVS_EDGE_PICAMERA_CACHE_ROOT:-/var/cache}/kvs-edge-picamera-$KEY"

if [ "${1:-}" = "--dir" ]; then
  echo "$CACHE"
  exit 0
fi

started=$(date +%s%N)
elapsed() { local d=$(( $(date +%s%N) - started )); printf '%d.%03d\n' $((d / 1000000000)) $((d / 1000000 % 1000)); }

if [ -f "$CACHE/ready" ]; then
  echo "real-picamera: cached in $CACHE (built in $(cat "$CACHE/setup-seconds") s; found in $(elapsed) s)" >&2
  echo "$CACHE"
  exit 0
fi

missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "real-picamera: missing Debian packages:$missing: run 'sudo apt-get install$missing' (or run as root)" >&2
    exit 1
  fi
  echo "real-picamera: installing$missing with apt" >&2
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

mkdir -p "$(dirname "$CACHE")"
exec 9>"$CACHE.lock"
flock 9
if [ -f "$CACHE/ready" ]; then  # another run built it while we waited for the lock
  echo "$CACHE"
  exit 0
fi
rm -rf "$CACHE"
mkdir -p "$CACHE"
trap 'echo "real-picamera: build failed; see $CACHE/*.log" >&2' ERR

# 1. The source package, through a private apt configuration: only a deb-src line for sid, own lists and cache.
APT="$CACHE/apt"
mkdir -p "$APT/sources" "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/src"
cat >"$APT/sources/sid-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_private=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/sources"
             -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache")
echo "real-picamera: fetching libcamera $LIBCAMERA_VERSION source (Debian sid)" >&2
apt-get -q "${apt_private[@]}" update >"$CACHE/apt.log" 2>&1
(
  cd "$CACHE/src"
  if ! apt-get -q "${apt_private[@]}" source "libcamera=$LIBCAMERA_VERSION-1" >>"$CACHE/apt.log" 2>&1; then
    apt-get -q "${apt_private[@]}" source libcamera >>"$CACHE/apt.log" 2>&1  # a newer Debian revision
  fi
)
SRC="$CACHE/src/libcamera-$LIBCAMERA_VERSION"
test -d "$SRC" || { echo "real-picamera: sid no longer has libcamera $LIBCAMERA_VERSION (see $CACHE/apt.log)" >&2; exit 1; }

# 2. Our patch, then meson: the virtual pipeline only, Python bindings on, apps/docs/tests off.
(cd "$SRC" && patch -p1 --forward <"$PATCH" >"$CACHE/patch.log")
echo "real-picamera: building libcamera (meson, virtual pipeline + Python bindings)" >&2
PATH=/usr/bin:$PATH meson setup "$CACHE/build" "$SRC" --prefix="$CACHE/prefix" --libdir=lib --buildtype=release \
  -Dpipelines=virtual -Dipas= -Dpycamera=enabled -Dudev=enabled -Dwerror=false \
  -Dcam=disabled -Dqcam=disabled -Dgstreamer=disabled -Dv4l2=disabled -Ddocumentation=disabled -Dtest=false \
  -Dlc-compliance=disabled -Dtracing=disabled >"$CACHE/meson.log" 2>&1
PATH=/usr/bin:$PATH ninja -C "$CACHE/build" -j"$(nproc)" install >"$CACHE/ninja.log" 2>&1
install -D -m 0644 "$HERE/virtual.yaml" "$CACHE/prefix/share/libcamera/pipeline/virtual/virtual.yaml"
BINDINGS=$(dirname "$(dirname "$(find "$CACHE/prefix" -name '_libcamera*.so' | head -n1)")")

# 3. picamera2 from PyPI in a venv of the same python, the bindings on its path.
echo "real-picamera: installing picamera2 $PICAMERA2_VERSION from PyPI" >&2
"$PY" -m venv "$CACHE/venv"
"$CACHE/venv/bin/python" -m pip install --quiet --upgrade pip >"$CACHE/pip.log" 2>&1
# shellcheck disable=SC2086 # one word per requirement
"$CACHE/venv/bin/python" -m pip install --quiet "picamera2==$PICAMERA2_VERSION" $KVS_EDGE_DEPS >>"$CACHE/pip.log" 2>&1
site=$("$CACHE/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$BINDINGS" >"$site/kvs-edge-libcamera.pth"
LD_LIBRARY_PATH="$CACHE/prefix/lib" PYTHONPATH="$HERE/standins" "$CACHE/venv/bin/python" -c "import libcamera, picamera2" \
  || { echo "real-picamera: the build does not import (libcamera, picamera2)" >&2; exit 1; }

rm -rf "$CACHE/src" "$CACHE/build" "$APT"
elapsed >"$CACHE/setup-seconds"
touch "$CACHE/ready"
echo "real-picamera: built $CACHE in $(cat "$CACHE/setup-seconds") s" >&2
echo "$CACHE"
