#!/usr/bin/env bash
# The VM test bed's disk (make vm-test; docs/vm-test.md): a Debian bookworm amd64 system with its own kernel, systemd
# as PID 1, udev, v4l2loopback built by DKMS against the image kernel's headers, and kvs-edge installed by the pi-gen
# stage's 00-run.sh, i.e. by image-build/install.sh exactly as the SD-card image is made.
#
# Two cached layers, each keyed by its inputs and rebuilt only when they change:
#   $CACHE_ROOT/kvs-edge-vm-base-KEY   the debootstrap tree (packages below, the v4l2loopback module)
#   $CACHE_ROOT/kvs-edge-vm-disk-KEY   disk.img (ext4, made with mkfs.ext4 -d), vmlinuz, initrd.img: the base tree
#                                      + kvs-edge from this checkout + the test harness units of image-build/vm/image
# Prints the second folder on its last line. Needs root (debootstrap, chroot, mount) and the Debian archive and PyPI.
#
# Environment: KVS_EDGE_VM_CACHE_ROOT (default /var/cache), KVS_EDGE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# PYTHON (this machine's Python with pip, default .venv/bin/python).
set -euo pipefail

PROG=vm-image
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE_ROOT=${KVS_EDGE_VM_CACHE_ROOT:-/var/cache}
MIRROR=${KVS_EDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PY=${PYTHON:-$REPO/.venv/bin/python}
SUITE=bookworm
DISK_SIZE=4G
T0=$SECONDS

say() { printf '%s [%4ds] %s\n' "$PROG:" $((SECONDS - T0)) "$*" >&2; }
die() { printf '%s [%4ds] FAILED: %s\n' "$PROG:" $((SECONDS - T0)) "$*" >&2; exit 1; }

# The system: what the issue measured (systemd-sysv, the Debian kernel, udev, v4l-utils), the pi-gen stage's own
# package list (python3, python3-venv, ...), kmod/iproute2 for the harness, and DKMS with the kernel headers for
# v4l2loopback (a real H.264 capture device fed from a pre-encoded clip).
mapfile -t stage_packages < <(sed 's/#.*//' "$REPO/image-build/pi-gen/stage-kvs-edge/00-kvs-edge/00-packages" |
    tr -s ' \t' '\n' | grep .)
# alsa-utils: aplay/arecord and the ALSA configuration (libasound2-data) for the cameras scenario's sound, played into
# the kernel's snd-aloop loopback card.
SYSTEM_PACKAGES=(systemd-sysv udev dbus kmod iproute2 linux-image-amd64 v4l-utils alsa-utils "${stage_packages[@]}")
MODULE_PACKAGES=(linux-headers-amd64 dkms v4l2loopback-dkms)

# Keep only the newest entry of a cache family (kvs-edge-vm-base, kvs-edge-vm-disk): each is 1-2 GB.
drop_others() {
    local family=$1 keep=$2 old
    for old in "$CACHE_ROOT/$family"-*; do
        [ -e "$old" ] || continue
        case "$old" in "$keep"|"$keep".ok) continue ;; esac
        # a disk a running QEMU still reads (another checkout's vm-test: its overlays name it as their backing file)
        if find /proc/[0-9]*/fd -lname "${old%.ok}/*" -print -quit 2>/dev/null | grep -q .; then
            say "keeping $old: in use"
            continue
        fi
        case "$old" in *.ok|*.lock) rm -f "$old" ;; *) remove_tree "$old" ;; esac
    done
}
chroot_mounts() {
    mount -t proc proc "$1/proc"
    mount --bind /sys "$1/sys"
    mount --bind /dev "$1/dev"
    mount --bind /dev/pts "$1/dev/pts"
}
in_tree() {
    local root=$1
    shift
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"
}

WORK=""
cleanup() {
    local rc=$?
    set +e
    if [ -n "$WORK" ]; then
        unmount_under "$WORK"
        [ -n "$(mounts_under "$WORK")" ] || rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mount, chroot): sudo make vm-test"
# mounts_under, unmount_under, remove_tree
# shellcheck source=image-build/mounts.sh
. "$REPO/image-build/mounts.sh"
[ -x "$HOST_PY" ] || die "no $HOST_PY: run make venv first"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ "${#need[@]}" -gt 0 ]; then
    say "installing ${need[*]} with apt"
    if ! { apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
        die "apt-get install ${need[*]} failed"
    fi
fi
LOGS=$CACHE_ROOT/kvs-edge-vm-logs
mkdir -p "$CACHE_ROOT" "$LOGS"
exec 9>"$CACHE_ROOT/kvs-edge-vm.lock"
flock -w 1800 9 || die "another vm-test holds $CACHE_ROOT/kvs-edge-vm.lock"

# --- layer 1: the base tree ----------------------------------------------------------------------------------------
bkey=$(printf '%s\n' vm-base-1 "$SUITE" amd64 "$MIRROR" "${SYSTEM_PACKAGES[@]}" -- "${MODULE_PACKAGES[@]}" |
    sha256sum | cut -c1-12)
BASE=$CACHE_ROOT/kvs-edge-vm-base-$bkey
if [ -f "$BASE.ok" ] && [ -d "$BASE" ]; then
    say "base tree: cached $BASE"
else
    drop_others kvs-edge-vm-base "$BASE"
    remove_tree "$BASE.partial"
    say "building the base tree (Debian $SUITE amd64: ${SYSTEM_PACKAGES[*]}; then ${MODULE_PACKAGES[*]})"
    t=$SECONDS
    include=$(IFS=,; echo "${SYSTEM_PACKAGES[*]}")
    if ! debootstrap --arch=amd64 --variant=minbase --include="$include" "$SUITE" "$BASE.partial" "$MIRROR" \
        >"$LOGS/debootstrap.log" 2>&1; then
        tail -n 20 "$LOGS/debootstrap.log" >&2
        die "debootstrap failed (log: $LOGS/debootstrap.log)"
    fi
    say "debootstrap done in $((SECONDS - t)) s; building v4l2loopback against the image kernel's headers"
    chroot_mounts "$BASE.partial"
    kver=$(find "$BASE.partial/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tail -n 1)
    in_tree "$BASE.partial" apt-get install -y -qq --no-install-recommends "${MODULE_PACKAGES[@]}" \
        >"$LOGS/dkms.log" 2>&1 || { tail -n 30 "$LOGS/dkms.log" >&2;
        die "installing ${MODULE_PACKAGES[*]} failed"; }
    # dkms builds for the running kernel by default: this machine's, not the image's.
    in_tree "$BASE.partial" dkms autoinstall -k "$kver" >>"$LOGS/dkms.log" 2>&1 || true
    in_tree "$BASE.partial" modinfo -k "$kver" v4l2loopback >/dev/null 2>&1 ||
        { tail -n 30 "$LOGS/dkms.log" >&2; die "v4l2loopback did not build for $kver"; }
    in_tree "$BASE.partial" modinfo -k "$kver" vivid >/dev/null 2>&1 || die "the image kernel $kver has no vivid module"
    in_tree "$BASE.partial" modinfo -k "$kver" snd-aloop >/dev/null 2>&1 ||
        die "the image kernel $kver has no snd-aloop module"
    in_tree "$BASE.partial" apt-get clean
    unmount_under "$BASE.partial"
    mv "$BASE.partial" "$BASE"
    touch "$BASE.ok"
    say "base tree built in $((SECONDS - t)) s: $BASE (kernel $kver)"
fi

# --- layer 2: kvs-edge installed, the disk -------------------------------------------------------------------------
inputs() {
    (cd "$REPO" && find kvs_edge pyproject.toml README.md config systemd image-build/install.sh image-build/pi-gen \
        image-build/vm/build-image.sh image-build/vm/image -type f ! -path '*/__pycache__/*' ! -name '*.pyc' |
        LC_ALL=C sort | xargs sha256sum)
}
ikey=$( { echo "$bkey"; inputs; } | sha256sum | cut -c1-12)
IMAGE=$CACHE_ROOT/kvs-edge-vm-disk-$ikey
if [ -f "$IMAGE.ok" ] && [ -f "$IMAGE/disk.img" ]; then
    say "disk: cached $IMAGE"
    echo "$IMAGE"
    exit 0
fi
drop_others kvs-edge-vm-disk "$IMAGE"
t=$SECONDS
WORK=$(mktemp -d /var/tmp/kvs-edge-vm-image.XXXXXX)
ROOT=$WORK/root
mkdir -p "$WORK/upper" "$WORK/ovl-work" "$ROOT"
if ! mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/ovl-work" "$ROOT" 2>/dev/null; then
    cp -a --reflink=auto "$BASE/." "$ROOT/"   # no overlayfs here (a container): a copy
fi
chroot_mounts "$ROOT"
PYVER=$(in_tree "$ROOT" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GLIBC=$(in_tree "$ROOT" getconf GNU_LIBC_VERSION | awk '{print $2}')

say "installing kvs-edge: pi-gen/prepare.sh (x86_64 wheels), then the stage's 00-run.sh -> image-build/install.sh"
bash "$REPO/image-build/pi-gen/prepare.sh" --stage-only "$WORK/stage" --python "$HOST_PY" --python-version "$PYVER" \
    --glibc "$GLIBC" --arch x86_64 --cache "$CACHE_ROOT/kvs-edge-vm-wheels" >"$WORK/prepare.log" 2>&1 ||
    { cat "$WORK/prepare.log" >&2; die "image-build/pi-gen/prepare.sh failed"; }
on_chroot() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        chroot "$ROOTFS_DIR" /bin/bash -e "$@"
}
export -f on_chroot
export ROOTFS_DIR=$ROOT
(cd "$WORK/stage/00-kvs-edge" && ./00-run.sh) >"$WORK/install.log" 2>&1 ||
    { cat "$WORK/install.log" >&2; die "the stage's 00-run.sh (image-build/install.sh in the tree) failed"; }
sed 's/^/    /' "$WORK/install.log" >&2

# The harness: the units that run the host's scripts when the kernel command line says kvs_edge.vmtest, a DHCP
# network, fstab with the FAT boot partition on the second disk, a fixed machine id.
cp -R "$HERE/image/." "$ROOT/"
in_tree "$ROOT" systemctl enable --quiet systemd-networkd.service kvs-edge-vmtest-setup.service \
    kvs-edge-vmtest-agent.service
in_tree "$ROOT" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    2>/dev/null || true
echo kvs-edge-vm >"$ROOT/etc/hostname"
echo 6b76732d656467652d766d2d74657374 >"$ROOT/etc/machine-id"
kver=$(find "$ROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tail -n 1)
unmount_under "$ROOT/proc"; unmount_under "$ROOT/sys"; unmount_under "$ROOT/dev"
mkdir -p "$IMAGE.partial"
cp "$ROOT/boot/vmlinuz-$kver" "$IMAGE.partial/vmlinuz"
cp "$ROOT/boot/initrd.img-$kver" "$IMAGE.partial/initrd.img"
rm -rf "$ROOT/var/tmp/kvs-edge-install"
mkfs.ext4 -q -L kvs-edge-root -d "$ROOT" "$IMAGE.partial/disk.img" "$DISK_SIZE" >&2 || die "mkfs.ext4 -d failed"
printf '{"kernel": "%s", "base": "%s", "python": "%s"}\n' "$kver" "$BASE" "$PYVER" >"$IMAGE.partial/info.json"
rm -rf "$IMAGE"
mv "$IMAGE.partial" "$IMAGE"
touch "$IMAGE.ok"
say "disk built in $((SECONDS - t)) s: $IMAGE (kernel $kver, Python $PYVER)"
echo "$IMAGE"
