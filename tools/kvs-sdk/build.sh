#!/usr/bin/env bash
# Build the official KVS C producer SDK (PIC v1.2.0, then producer-c v1.6.0 against it) from the source archives, for
# the SDK interop test (tests/test_sdk_interop.py). Prints the install folder (holding bin/ with the sample and
# samples/ with its frames) on its last line of stdout.
#
#   tools/kvs-sdk/build.sh [ARCHIVE_DIR]
#
# ARCHIVE_DIR (or $KVS_SDK_ARCHIVES; default ../shared/third-party next to the clone) must hold
#   amazon-kinesis-video-streams-pic-v1.2.0.tar.gz and amazon-kinesis-video-streams-producer-c-v1.6.0.tar.gz.
# The build is cached outside the clone, keyed by the archives' sha256 and this script's:
#   ${KVS_SDK_CACHE:-/var/cache}/kvs-edge-kvs-sdk-<key>   (falls back to ~/.cache when /var/cache is not writable)
# so a second run is instant. Needs cmake, a C compiler, pkg-config, libcurl4-openssl-dev, libssl-dev
# (`make sdk-tools` installs them with apt).
# Exit codes: 0 built (or cached), 3 archives absent, 4 build tools missing, 1 the build failed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
archives="${1:-${KVS_SDK_ARCHIVES:-$repo/../shared/third-party}}"
pic_tgz="$archives/amazon-kinesis-video-streams-pic-v1.2.0.tar.gz"
prod_tgz="$archives/amazon-kinesis-video-streams-producer-c-v1.6.0.tar.gz"

for f in "$pic_tgz" "$prod_tgz"; do
  if [ ! -f "$f" ]; then
    echo "kvs-sdk: $(basename "$f") is missing from $archives: put the official source archives there or set KVS_SDK_ARCHIVES" >&2
    exit 3
  fi
done
for tool in cmake cc make pkg-config; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "kvs-sdk: $tool is missing: run 'make sdk-tools' (apt: cmake build-essential pkg-config libcurl4-openssl-dev libssl-dev)" >&2
    exit 4
  fi
done
for pc in libcurl openssl; do
  if ! pkg-config --exists "$pc"; then
    echo "kvs-sdk: the $pc development files are missing: run 'make sdk-tools' (apt: libcurl4-openssl-dev libssl-dev)" >&2
    exit 4
  fi
done

key="$(cat "$pic_tgz" "$prod_tgz" "$0" | sha256sum | cut -c1-16)"
cache_root="${KVS_SDK_CACHE:-/var/cache}"
if ! { mkdir -p "$cache_root" && [ -w "$cache_root" ]; } 2>/dev/null; then
  cache_root="${XDG_CACHE_HOME:-$HOME/.cache}"
  mkdir -p "$cache_root"
fi
out="$cache_root/kvs-edge-kvs-sdk-$key"
if [ -f "$out/.done" ]; then
  echo "$out"
  exit 0
fi

# Build in a private folder, then move it into place: a half-finished build is never taken for a cached one, and two
# concurrent builds do not write into each other.
work="$(mktemp -d "$cache_root/kvs-edge-kvs-sdk-$key.tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
jobs="${KVS_SDK_JOBS:-2}"
{
  tar -xzf "$pic_tgz" -C "$work"
  tar -xzf "$prod_tgz" -C "$work"
  prefix="$work/out"
  cmake -S "$work/amazon-kinesis-video-streams-pic" -B "$work/build-pic" -DBUILD_DEPENDENCIES=OFF \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix"
  cmake --build "$work/build-pic" -j "$jobs"
  cmake --install "$work/build-pic"
  # producer-c's CMakeLists drops the PIC include directory pkg-config found: pass it as a C flag.
  PKG_CONFIG_PATH="$prefix/lib/pkgconfig" cmake -S "$work/amazon-kinesis-video-streams-producer-c" \
        -B "$work/build-producer" -DBUILD_DEPENDENCIES=OFF -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_C_FLAGS="-I$prefix/include" -DCMAKE_INSTALL_PREFIX="$prefix"
  cmake --build "$work/build-producer" -j "$jobs" --target kvsVideoOnlyRealtimeStreamingSample
} > "$work/build.log" 2>&1 || { echo "kvs-sdk: the build failed; its log:" >&2; tail -40 "$work/build.log" >&2; exit 1; }

mkdir -p "$work/final/bin" "$work/final/lib"
cp "$work/build-producer/kvsVideoOnlyRealtimeStreamingSample" "$work/final/bin/"
# shared libraries the sample links (producer-c's own, PIC's if any)
find "$work/build-producer" "$prefix/lib" -maxdepth 1 -name '*.so*' -exec cp -a {} "$work/final/lib/" \;
cp -r "$work/amazon-kinesis-video-streams-producer-c/samples/h264SampleFrames" "$work/final/"
mkdir -p "$work/final/samples" && mv "$work/final/h264SampleFrames" "$work/final/samples/"
cp "$work/build.log" "$work/final/"
printf '%s\n%s\n' "$(sha256sum "$pic_tgz")" "$(sha256sum "$prod_tgz")" > "$work/final/SOURCES"
touch "$work/final/.done"
if ! mv -T "$work/final" "$out" 2>/dev/null; then
  [ -f "$out/.done" ] || { echo "kvs-sdk: cannot move the build into $out" >&2; exit 1; }
fi
echo "$out"
