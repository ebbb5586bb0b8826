#!/usr/bin/env bash
# make image-test: the appliance image's install path, run for real on arm64.
#
# Builds (once, then cached) a Debian bookworm arm64 root file system with debootstrap and the packages of the pi-gen
# stage's 00-packages, runs it under qemu-user-static through binfmt, installs kvs-edge into it by running the pi-gen
# stage's own 00-run.sh (which runs image-build/install.sh in the tree: the one install path), and checks inside the
# arm64 tree: kvs-edge --version, check-config (the shipped example, a broken file), systemd-analyze verify of the
# installed units, the boot-partition import of a staged /boot/firmware/kvs-edge.yaml, and a 20-second test-pattern
# stream from the arm64 `kvs-edge run` (started as the unit starts it) to an emulator on this machine's loopback.
#
# Not covered here: python3-picamera2 (the stage's 00-packages-nr) exists only in Raspberry Pi OS, so the camera source
# runs only on a Pi.
#
#   sudo bash image-build/image-test.sh        (needs root, network to the Debian archive and PyPI, and make venv)
#
# Environment: KVS_EDGE_IMAGE_CACHE (default /var/cache/kvs-edge-image-test), KVS_EDGE_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), PYTHON (this machine's Python with kvs-edge; default .venv/bin/python).
set -euo pipefail

PROG=image-test
REPO=$(cd "$(dirname "$0")/.." && pwd)
STAGE_SRC=$REPO/image-build/pi-gen/stage-kvs-edge
SUITE=bookworm
MIRROR=${KVS_EDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${KVS_EDGE_IMAGE_CACHE:-/var/cache/kvs-edge-image-test}
HOST_PY=${PYTHON:-$REPO/.venv/bin/python}
BINFMT=/proc/sys/fs/binfmt_misc
STREAM=kvs-edge-image-test
STREAM_SECONDS=20
FIRST_FRAME_TIMEOUT=300
T0=$SECONDS

WORK=""
ROOT=""
EMU_PID=""
RUN_PID=""
BASE_NOTE=""

say() {
    printf '%s [%4ds] %s\n' "$PROG:" $((SECONDS - T0)) "$*"
}

DIED=0
die() {
    printf '%s [%4ds] FAILED: %s\n' "$PROG:" $((SECONDS - T0)) "$*" >&2
    DIED=1
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
        kill -KILL "$RUN_PID"
        wait "$RUN_PID" 2>/dev/null
    fi
    if [ -n "$EMU_PID" ] && kill -0 "$EMU_PID" 2>/dev/null; then
        kill -TERM "$EMU_PID"
        wait "$EMU_PID" 2>/dev/null
    fi
    if [ -n "$WORK" ]; then
        unmount_under "$WORK"
        if [ -z "$(mounts_under "$WORK")" ]; then
            rm -rf --one-file-system "$WORK"
        else
            echo "$PROG: left $WORK behind: still mounted" >&2
        fi
    fi
    if [ -d "$CACHE" ] && declare -F unmount_under >/dev/null; then unmount_under "$CACHE"; fi  # an interrupted debootstrap
    if [ "$rc" = 0 ]; then
        say "PASSED in $((SECONDS - T0)) s ($BASE_NOTE)"
    elif [ "$DIED" = 0 ]; then
        echo "$PROG: FAILED after $((SECONDS - T0)) s (exit $rc; the messages above say where)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A command inside the arm64 tree, with a clean environment (no host pip settings, proxies or certificates).
in_tree() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        chroot "$ROOT" "$@"
}

# --- can this machine run it? ----------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mount, chroot): sudo make image-test"
# mounts_under, unmount_under, remove_tree
# shellcheck source=image-build/mounts.sh
. "$REPO/image-build/mounts.sh"
[ -x "$HOST_PY" ] || die "no $HOST_PY: run make venv first (the KVS emulator runs on this machine from the checkout)"
"$HOST_PY" -c 'import kvs_edge' 2>/dev/null || die "$HOST_PY cannot import kvs_edge: run make venv"

native=0
[ "$(uname -m)" = aarch64 ] && native=1
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "$native" = 0 ]; then
    [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
fi
if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "needs ${need[*]} and this machine has no apt-get: install them by hand"
    say "installing ${need[*]} with apt"
    apt-get update -qq >/dev/null || die "apt-get update failed: no network to the Debian archive?"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi

if [ "$native" = 0 ]; then
    if [ ! -e "$BINFMT/register" ]; then
        mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null ||
            die "binfmt_misc is not mounted and cannot be mounted at $BINFMT (a container without privileges?):" \
                "this machine cannot run arm64 programs"
        say "mounted binfmt_misc at $BINFMT"
    fi
    if [ ! -e "$BINFMT/qemu-aarch64" ]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if [ ! -e "$BINFMT/qemu-aarch64" ] && [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
        # Where binfmt-support did not register it: systemd-binfmt's line, written as systemd-binfmt would.
        grep -v '^[#;]' /usr/lib/binfmt.d/qemu-aarch64.conf | grep . >"$BINFMT/register" 2>/dev/null || true
    fi
    [ -e "$BINFMT/qemu-aarch64" ] ||
        die "no binfmt handler for arm64 after installing qemu-user-static and binfmt-support:" \
            "try update-binfmts --enable qemu-aarch64"
    grep -qx enabled "$BINFMT/status" || die "binfmt_misc is disabled: echo 1 > $BINFMT/status"
    grep -qx enabled "$BINFMT/qemu-aarch64" || die "the qemu-aarch64 binfmt handler is disabled: update-binfmts --enable qemu-aarch64"
    grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" ||
        die "the qemu-aarch64 binfmt handler lacks the F flag, so a chroot cannot find qemu: reinstall qemu-user-static"
    say "arm64 programs run through $(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64")"
fi

# --- the base tree (cached) ----------------------------------------------------------------------------------------
# The stage's own package list (all in Debian too), plus systemd for systemd-analyze verify.
mapfile -t packages < <(sed 's/#.*//' "$STAGE_SRC/00-kvs-edge/00-packages" | tr -s ' \t' '\n' | grep .)
packages+=(systemd)
key=$(printf '%s\n' recipe-1 "$SUITE" arm64 minbase "$MIRROR" "${packages[@]}" | sha256sum | cut -c1-16)
BASE=$CACHE/base-$SUITE-arm64-$key
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || die "another image test is using $CACHE (lock $CACHE/lock)"

if [ -f "$BASE.ok" ] && [ -d "$BASE" ]; then
    BASE_NOTE="base tree cached"
    say "base tree: cached $BASE (Debian $SUITE arm64: ${packages[*]})"
else
    for old in "$CACHE"/base-*; do
        [ -e "$old" ] || continue
        case "$old" in *.ok) rm -f "$old" ;; *) remove_tree "$old" ;; esac
    done
    say "building the base tree: debootstrap --arch=arm64 $SUITE with ${packages[*]} (minutes under emulation; cached afterwards)"
    t=$SECONDS
    include=$(IFS=,; echo "${packages[*]}")
    if ! debootstrap --arch=arm64 --variant=minbase --include="$include" "$SUITE" "$BASE.partial" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/debootstrap.log" >&2
        [ ! -f "$BASE.partial/debootstrap/debootstrap.log" ] || tail -n 20 "$BASE.partial/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    unmount_under "$BASE.partial"
    chroot "$BASE.partial" apt-get clean
    mv "$BASE.partial" "$BASE"
    touch "$BASE.ok"
    BASE_NOTE="base tree built in $((SECONDS - t)) s"
    say "base tree built in $((SECONDS - t)) s: $BASE"
fi

# --- a throwaway tree on top of it ---------------------------------------------------------------------------------
WORK=$(mktemp -d /var/tmp/kvs-edge-image-test.XXXXXX)
ROOT=$WORK/root
mkdir -p "$WORK/upper" "$WORK/overlay-work" "$ROOT"
if mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/overlay-work" "$ROOT" 2>/dev/null; then
    say "work tree: an overlay on the base tree ($ROOT)"
else
    cp -a "$BASE/." "$ROOT/"
    say "work tree: a copy of the base tree (no overlayfs here) ($ROOT)"
fi
# What pi-gen's on_chroot mounts; /run stays the tree's own folder (no running systemd in it).
mount -t proc proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"

[ "$(in_tree uname -m)" = aarch64 ] || die "the tree's programs do not run as aarch64 (uname -m: $(in_tree uname -m))"
PYVER=$(in_tree python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GLIBC=$(in_tree getconf GNU_LIBC_VERSION | awk '{print $2}')
say "the tree: $(sed -n 's/^PRETTY_NAME=//p' "$ROOT/etc/os-release" | tr -d '"'), $(in_tree uname -m), Python $PYVER, glibc $GLIBC"

# --- install: the pi-gen stage's 00-run.sh, as pi-gen runs it ------------------------------------------------------
say "preparing the stage: the wheel from this checkout, its dependencies as aarch64 wheels for Python $PYVER"
bash "$REPO/image-build/pi-gen/prepare.sh" --stage-only "$WORK/stage" --python "$HOST_PY" --python-version "$PYVER" \
    --glibc "$GLIBC" --cache "$CACHE" || die "image-build/pi-gen/prepare.sh failed"
wheel=$(basename "$(echo "$WORK"/stage/00-kvs-edge/files/dist/kvs_edge-*.whl)")
version=$(echo "$wheel" | cut -d- -f2)

# pi-gen's on_chroot: a bash script on stdin, run in ROOTFS_DIR (the mounts are in place already).
on_chroot() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        chroot "$ROOTFS_DIR" /bin/bash -e "$@"
}
export -f on_chroot
export ROOTFS_DIR=$ROOT
say "installing: stage-kvs-edge/00-kvs-edge/00-run.sh -> image-build/install.sh in the arm64 tree"
t=$SECONDS
(cd "$WORK/stage/00-kvs-edge" && ./00-run.sh) >"$WORK/install.log" 2>&1 || {
    cat "$WORK/install.log" >&2
    die "the stage's 00-run.sh (image-build/install.sh in the arm64 tree) failed"
}
sed 's/^/    /' "$WORK/install.log"
say "installed in $((SECONDS - t)) s"

# --- checks inside the arm64 tree ----------------------------------------------------------------------------------
got=$(in_tree kvs-edge --version)
[ "$got" = "kvs-edge $version" ] || die "kvs-edge --version printed '$got', expected 'kvs-edge $version'"
arch=$(in_tree /opt/kvs-edge/venv/bin/python -c 'import platform, av; print(platform.machine(), av.__version__)')
say "ok: kvs-edge --version: $got (the venv's Python: $arch)"

# source.audio: the wheel's own libasound must find the image's ALSA configuration, or no device name opens ("Unknown
# PCM"); ALSA's "null" device needs no sound card, only that configuration.
in_tree /opt/kvs-edge/venv/bin/python -c \
    "from kvs_edge.sources.alsa import open_alsa; next(iter(open_alsa('null', 16000, 1)))" >"$WORK/out" 2>"$WORK/err" ||
    { cat "$WORK/err" >&2; die "the installed kvs-edge cannot open ALSA's null device: is libasound2-data missing?"; }
say "ok: ALSA: the installed kvs-edge's libasound opens the image's 'null' device (/usr/share/alsa read)"

rc=0
in_tree kvs-edge check-config /etc/kvs-edge/config.yaml >"$WORK/out" 2>"$WORK/err" || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/err" >&2; die "check-config on the shipped example exited $rc, expected 0"; }
grep -q 'warning: .*CHANGE-ME' "$WORK/err" || die "check-config on the shipped example gave no placeholder warning"
say "ok: check-config /etc/kvs-edge/config.yaml (the shipped example): exit 0, $(grep -c '^warning:' "$WORK/err") placeholder warnings"

rc=0
in_tree kvs-edge check-config /boot/firmware/kvs-edge.yaml.example >"$WORK/out" 2>"$WORK/err" || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/err" >&2; die "check-config on the boot-partition sample exited $rc, expected 0"; }
say "ok: check-config /boot/firmware/kvs-edge.yaml.example (the boot-partition sample): exit 0"

printf 'stream:\n  name: image-test\nsource:\n  fps: fast\n' >"$ROOT/tmp/broken.yaml"
rc=0
in_tree kvs-edge check-config /tmp/broken.yaml >"$WORK/out" 2>"$WORK/err" || rc=$?
[ "$rc" = 2 ] || { cat "$WORK/err" >&2; die "check-config on a broken file exited $rc, expected 2"; }
grep -q 'source.fps' "$WORK/err" || die "check-config on a broken file did not name source.fps: $(cat "$WORK/err")"
say "ok: check-config on a broken file: exit 2: $(head -n 1 "$WORK/err")"

units=(/etc/systemd/system/kvs-edge.service /etc/systemd/system/kvs-edge-boot-config.service)
rc=0
in_tree systemd-analyze verify "${units[@]}" >"$WORK/verify" 2>&1 || rc=$?
if [ "$rc" != 0 ] || [ -s "$WORK/verify" ]; then
    cat "$WORK/verify" >&2
    die "systemd-analyze verify of the installed units (in the arm64 tree) exited $rc or printed the problems above"
fi
say "ok: systemd-analyze verify ${units[*]}: clean (the tree's own arm64 systemd-analyze)"

# The emulator on this machine: the chroot shares its network namespace, so loopback reaches it.
"$HOST_PY" -m kvs_edge emulator --host 127.0.0.1 --port 0 --data-dir "$WORK/emulator" >"$WORK/emulator.log" 2>&1 &
EMU_PID=$!
url=""
for _ in $(seq 1 60); do
    url=$(sed -n 's/^{"url": "\([^"]*\)".*/\1/p' "$WORK/emulator.log")
    [ -z "$url" ] || break
    kill -0 "$EMU_PID" 2>/dev/null || { cat "$WORK/emulator.log" >&2; die "the emulator did not start"; }
    sleep 0.5
done
[ -n "$url" ] || die "the emulator printed no URL in 30 s"
say "emulator on this machine: $url"

# First boot: kvs-edge.yaml on the boot partition, imported by the command kvs-edge-boot-config.service runs.
cat >"$ROOT/boot/firmware/kvs-edge.yaml" <<EOF
stream:
  name: $STREAM
  create: true
  fragment_seconds: 2
aws:
  credentials: static
  access_key_id: AKIAKVSEDGEEMULATOR0
  secret_access_key: kvs-edge-emulator-secret
  endpoint_url: $url
source:
  type: testpattern
  width: 320
  height: 240
  fps: 15
  bitrate: 300k
  profile: baseline
buffer:
  path: /var/lib/kvs-edge/buffer
  max_bytes: 64MiB
time:
  require_sync: false
EOF
cp "$ROOT/boot/firmware/kvs-edge.yaml" "$WORK/imported.yaml"
unit_value() {
    sed -n "s/^$2=//p" "$ROOT/etc/systemd/system/$1" | tail -n 1
}
read -r -a import_cmd <<<"$(unit_value kvs-edge-boot-config.service ExecStart)"
rc=0
in_tree "${import_cmd[@]}" >"$WORK/out" 2>"$WORK/err" || rc=$?
[ "$rc" = 0 ] || { cat "$WORK/out" "$WORK/err" >&2; die "${import_cmd[*]} exited $rc, expected 0"; }
[ ! -e "$ROOT/boot/firmware/kvs-edge.yaml" ] || die "the import left kvs-edge.yaml on the boot partition"
cmp -s "$WORK/imported.yaml" "$ROOT/etc/kvs-edge/config.yaml" || die "/etc/kvs-edge/config.yaml is not the imported file"
[ -f "$ROOT/etc/kvs-edge/config.yaml.bak" ] || die "the import kept no config.yaml.bak"
mode=$(in_tree stat -c '%a %U:%G' /etc/kvs-edge/config.yaml)
[ "$mode" = "640 root:kvs-edge" ] || die "/etc/kvs-edge/config.yaml is $mode after the import, expected 640 root:kvs-edge"
say "ok: ${import_cmd[*]}: $(cat "$WORK/out")"

# kvs-edge.service, as systemd would start it: its User=, Group=, SupplementaryGroups=, StateDirectory= and
# RuntimeDirectory=, and its ExecStart= command line.
svc=kvs-edge.service
user=$(unit_value $svc User)
group=$(unit_value $svc Group)
supplementary=$(unit_value $svc SupplementaryGroups)
read -r -a run_cmd <<<"$(unit_value $svc ExecStart)"
uid=$(in_tree id -u "$user")
gid=$(in_tree getent group "$group" | cut -d: -f3)
groups=$(for g in $supplementary; do in_tree getent group "$g" | cut -d: -f3; done | paste -sd,)
in_tree install -d -o "$user" -g "$group" -m "$(unit_value $svc StateDirectoryMode)" "/var/lib/$(unit_value $svc StateDirectory)"
in_tree install -d -o "$user" -g "$group" -m "$(unit_value $svc RuntimeDirectoryMode)" "/run/$(unit_value $svc RuntimeDirectory)"
status_file=$ROOT/run/kvs-edge/status.json

say "starting the arm64 service: ${run_cmd[*]} (as $user)"
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/kvs-edge LC_ALL=C.UTF-8 \
    chroot --userspec="$uid:$gid" --groups="$groups" "$ROOT" "${run_cmd[@]}" >"$WORK/run.log" 2>&1 &
RUN_PID=$!
status_value() {
    "$HOST_PY" -c 'import json, sys
try:
    s = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print(0); sys.exit()
v = s
for k in sys.argv[2].split("."):
    v = v[k]
print(v)' "$status_file" "$1"
}
t=$SECONDS
until [ "$(status_value camera.frames)" -gt 0 ]; do
    kill -0 "$RUN_PID" 2>/dev/null || { tail -n 30 "$WORK/run.log" >&2; die "kvs-edge run exited before its first frame"; }
    [ $((SECONDS - t)) -lt "$FIRST_FRAME_TIMEOUT" ] ||
        { tail -n 30 "$WORK/run.log" >&2; die "no frame from kvs-edge run after $FIRST_FRAME_TIMEOUT s"; }
    sleep 1
done
say "first frames after $((SECONDS - t)) s; streaming for $STREAM_SECONDS s"
sleep "$STREAM_SECONDS"
kill -0 "$RUN_PID" 2>/dev/null || { tail -n 30 "$WORK/run.log" >&2; die "kvs-edge run exited while streaming"; }
rc=0
in_tree kvs-edge status >"$WORK/status.txt" 2>&1 || rc=$?
sed 's/^/    /' "$WORK/status.txt"
[ "$rc" = 0 ] || die "kvs-edge status exited $rc while the service was streaming, expected 0 (healthy)"

kill -TERM "$RUN_PID"
t=$SECONDS
while kill -0 "$RUN_PID" 2>/dev/null && [ $((SECONDS - t)) -lt 60 ]; do
    sleep 0.5
done
kill -0 "$RUN_PID" 2>/dev/null && die "kvs-edge run did not exit within 60 s of SIGTERM"
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=""
[ "$rc" = 0 ] || { tail -n 30 "$WORK/run.log" >&2; die "kvs-edge run exited $rc after SIGTERM, expected 0"; }
frames=$(status_value camera.frames)
persisted=$(status_value fragments_persisted)
state=$(status_value state)
say "ok: kvs-edge run stopped on SIGTERM with exit 0 after $((SECONDS - t)) s; its status: state $state," \
    "$frames frames captured, $persisted fragments persisted"
[ "$persisted" -gt 0 ] || { tail -n 30 "$WORK/run.log" >&2; die "no fragment was acknowledged (PERSISTED)"; }

"$HOST_PY" -m kvs_edge emulator --list "$STREAM" --data-dir "$WORK/emulator" >"$WORK/archive" 2>"$WORK/archive.err" ||
    { cat "$WORK/archive.err" >&2; die "the emulator has no archive for $STREAM"; }
read -r fragments _ archived _ < <(tail -n 1 "$WORK/archive.err" | tr -d ',')
{ [ "${fragments:-0}" -gt 0 ] && [ "${archived:-0}" -gt 0 ]; } ||
    die "the emulator's archive holds ${fragments:-0} fragments, ${archived:-0} frames"
[ "$fragments" -ge "$persisted" ] || die "$persisted fragments acknowledged but only $fragments archived"
say "ok: the emulator's archive of $STREAM: $fragments fragments, $archived frames"
