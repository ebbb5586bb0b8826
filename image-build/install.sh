#!/usr/bin/env bash
# Install or upgrade kvs-edge on Debian / Raspberry Pi OS. The one way it is installed: by hand on a Pi, and by the
# image build inside a debootstrap tree. Idempotent: running it again changes nothing; an upgrade keeps
# /etc/kvs-edge/config.yaml and the fragment log in /var/lib/kvs-edge.
#
#   sudo image-build/install.sh [options] dist/kvs_edge-X.Y.Z-py3-none-any.whl
#
# What it does:
#   - the system user kvs-edge (group kvs-edge, member of video for the camera);
#   - a venv /opt/kvs-edge/venv with --system-site-packages (python3-picamera2 comes from apt, not PyPI),
#     the wheel installed into it, /usr/local/bin/kvs-edge pointing at it;
#   - the systemd units kvs-edge.service and kvs-edge-boot-config.service in /etc/systemd/system, enabled;
#   - the example configuration as /etc/kvs-edge/config.yaml (0640 root:kvs-edge), only when there is none.
set -euo pipefail

PROG=install.sh
VENV=/opt/kvs-edge/venv
UNIT_DEST=/etc/systemd/system
UNITS="kvs-edge-boot-config.service kvs-edge.service"
CONFIG=/etc/kvs-edge/config.yaml
USER_NAME=kvs-edge

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=""
ENABLE=1
NO_DEPS=0
FIND_LINKS=""
CONFIG_EXAMPLE=""
UNITS_DIR="$HERE/../systemd"
PYTHON=/usr/bin/python3
WHEEL=""

usage() {
    cat <<EOF
usage: $PROG [options] WHEEL

  --root DIR            install into the system tree at DIR (a debootstrap/image root): commands that must run
                        on the target (useradd, python3 -m venv, pip) run through chroot DIR
  --no-enable           install the units but do not enable them
  --find-links DIR      offline install: take the wheel's dependencies from the wheelhouse DIR only (pip --no-index)
  --no-deps             install the wheel alone (its dependencies are already in the venv or the system)
  --config-example F    the example configuration to install when $CONFIG is absent
                        (default: config/kvs-edge.yaml next to this script's folder)
  --units-dir DIR       where kvs-edge.service and kvs-edge-boot-config.service are (default: systemd/ next to
                        this script's folder)
  --python PATH         the target's Python 3.11+ (default $PYTHON)
  -h, --help            this help
EOF
}

die() {
    echo "$PROG: $*" >&2
    exit 1
}

say() {
    echo "$PROG: $*"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT=${2%/}; shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        --find-links) [ $# -ge 2 ] || die "--find-links needs a folder"; FIND_LINKS=$2; shift 2 ;;
        --no-deps) NO_DEPS=1; shift ;;
        --config-example) [ $# -ge 2 ] || die "--config-example needs a file"; CONFIG_EXAMPLE=$2; shift 2 ;;
        --units-dir) [ $# -ge 2 ] || die "--units-dir needs a folder"; UNITS_DIR=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$WHEEL" ] || die "one wheel only (got $WHEEL and $1)"; WHEEL=$1; shift ;;
    esac
done

[ -n "$WHEEL" ] || { usage >&2; die "no wheel given; build one with: python3 -m pip wheel --no-deps -w dist ."; }
case "$WHEEL" in *.whl) ;; *) die "$WHEEL is not a wheel (.whl)" ;; esac
[ -f "$WHEEL" ] || die "no such wheel: $WHEEL"
[ "$(id -u)" = 0 ] || die "must run as root (use sudo)"
if [ -n "$ROOT" ]; then
    [ -d "$ROOT/etc" ] || die "--root $ROOT does not look like a system tree (no $ROOT/etc)"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
[ -z "$FIND_LINKS" ] || [ -d "$FIND_LINKS" ] || die "--find-links $FIND_LINKS is not a folder"
for unit in $UNITS; do
    [ -f "$UNITS_DIR/$unit" ] || die "$UNITS_DIR/$unit is missing; pass --units-dir"
done
if [ -z "$CONFIG_EXAMPLE" ] && [ -f "$HERE/../config/kvs-edge.yaml" ]; then
    CONFIG_EXAMPLE="$HERE/../config/kvs-edge.yaml"
fi

# Run a command on the target system: inside the tree when --root is given.
on_target() {
    if [ -n "$ROOT" ]; then
        chroot "$ROOT" "$@"
    else
        "$@"
    fi
}

# Create a folder (0755) unless it exists: an existing one keeps its mode (/var/tmp is 1777).
ensure_dir() {
    [ -d "$1" ] || install -d -m 0755 "$1"
}

# Copy a file unless it is already there with the same content; then set its mode (root-owned).
put_file() {
    local mode=$1 src=$2 dest=$ROOT$3
    if ! cmp -s "$src" "$dest"; then
        install -D -m "$mode" "$src" "$dest"
        say "installed $3"
    fi
    chmod "$mode" "$dest"
}

STAGE=""
cleanup() {
    if [ -n "$STAGE" ]; then
        rm -rf "$STAGE"
    fi
}
trap cleanup EXIT

# --- the user ------------------------------------------------------------------------------------------------------
on_target "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is missing or older than 3.11 on the target: apt install python3"
on_target "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "the Python venv module is missing on the target: apt install python3-venv"

# video: the camera devices; audio: the sound devices (the unit's SupplementaryGroups= names both: it fails to start
# when one does not exist).
for group in video audio; do
    if ! on_target getent group "$group" >/dev/null; then
        on_target groupadd --system "$group"
    fi
done
if on_target getent passwd "$USER_NAME" >/dev/null; then
    if ! on_target id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx video; then
        on_target usermod --append --groups video "$USER_NAME"
        say "added $USER_NAME to the video group"
    fi
else
    on_target useradd --system --user-group --groups video --home-dir /var/lib/kvs-edge --no-create-home \
        --shell /usr/sbin/nologin --comment "kvs-edge camera streamer" "$USER_NAME"
    say "created the system user $USER_NAME"
fi

# --- the venv and the wheel ----------------------------------------------------------------------------------------
ensure_dir "$ROOT/opt/kvs-edge"
if ! on_target "$VENV/bin/python" -c '' 2>/dev/null; then
    # Missing, or broken by a Python upgrade of the system: (re)create it. --system-site-packages makes apt's
    # python3-picamera2 (and libcamera's bindings, not on PyPI) importable.
    on_target "$PYTHON" -m venv --clear --system-site-packages "$VENV"
    say "created the venv $VENV"
fi

# The chroot cannot see host paths: stage the wheel (and the wheelhouse) inside the tree.
wheel_path=$WHEEL
links_path=$FIND_LINKS
if [ -n "$ROOT" ]; then
    # A fixed name: pip records the wheel's location in direct_url.json, and a rerun must leave the same tree.
    STAGE=$ROOT/var/tmp/kvs-edge-install
    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    cp "$WHEEL" "$STAGE/"
    wheel_path=${STAGE#"$ROOT"}/$(basename "$WHEEL")
    if [ -n "$FIND_LINKS" ]; then
        mkdir "$STAGE/wheelhouse"
        cp -R "$FIND_LINKS"/. "$STAGE/wheelhouse/"
        links_path=${STAGE#"$ROOT"}/wheelhouse
    fi
fi
pip_opts=(--no-cache-dir --disable-pip-version-check --no-input --quiet)
if [ -n "$links_path" ]; then
    pip_opts+=(--no-index --find-links "$links_path")
fi
if [ "$NO_DEPS" = 0 ]; then
    # Dependencies first (a no-op when satisfied), then exactly this wheel, even when its version is unchanged.
    on_target "$VENV/bin/python" -m pip install "${pip_opts[@]}" "$wheel_path"
fi
on_target "$VENV/bin/python" -m pip install "${pip_opts[@]}" --force-reinstall --no-deps "$wheel_path"
version=$(on_target "$VENV/bin/kvs-edge" --version)
say "installed $version in $VENV"
ensure_dir "$ROOT/usr/local/bin"
ln -sfn "$VENV/bin/kvs-edge" "$ROOT/usr/local/bin/kvs-edge"

# --- units and configuration ---------------------------------------------------------------------------------------
for unit in $UNITS; do
    put_file 0644 "$UNITS_DIR/$unit" "$UNIT_DEST/$unit"
done

ensure_dir "$ROOT/etc/kvs-edge"
if [ -e "$ROOT$CONFIG" ]; then
    say "kept the existing $CONFIG"
elif [ -n "$CONFIG_EXAMPLE" ]; then
    [ -f "$CONFIG_EXAMPLE" ] || die "--config-example $CONFIG_EXAMPLE: no such file"
    install -m 0640 "$CONFIG_EXAMPLE" "$ROOT$CONFIG"
    on_target chown "root:$USER_NAME" "$CONFIG"
    say "installed the example configuration $CONFIG: edit it (stream.name, keys), or put kvs-edge.yaml on the boot partition"
else
    say "warning: no example configuration found (--config-example); write $CONFIG before starting kvs-edge" >&2
fi

# --- enable --------------------------------------------------------------------------------------------------------
if [ "$ENABLE" = 1 ]; then
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        # shellcheck disable=SC2086  # UNITS is a list of names without spaces
        systemctl enable --quiet $UNITS
        # An upgrade: restart a running service on the new code (a stopped one stays stopped).
        systemctl try-restart kvs-edge.service
    else
        # No running systemd (an image tree, a chroot): what `systemctl enable` would do, from [Install] WantedBy=.
        for unit in $UNITS; do
            wanted_by=$(sed -n 's/^WantedBy=//p' "$UNITS_DIR/$unit")
            for target in $wanted_by; do
                ensure_dir "$ROOT$UNIT_DEST/$target.wants"
                ln -sfn "$UNIT_DEST/$unit" "$ROOT$UNIT_DEST/$target.wants/$unit"
            done
        done
    fi
    say "enabled $UNITS"
fi
say "done. Check the configuration with: kvs-edge check-config; then: systemctl start kvs-edge; kvs-edge status"
