#!/usr/bin/env bash
# Fill the pi-gen stage with what it installs, built from this checkout: the kvs-edge wheel, its dependencies as
# aarch64 wheels (pip inside the image installs offline), image-build/install.sh, the systemd units, the example
# configuration and the boot-partition sample. Used by the image build and by `make image-test`, so both install
# the same files through the same stage script.
#
#   image-build/pi-gen/prepare.sh --ssh-key ~/.ssh/id_ed25519.pub ~/pi-gen     # a pi-gen checkout (branch arm64)
#   image-build/pi-gen/prepare.sh --stage-only /tmp/stage-kvs-edge             # just the filled stage folder
set -euo pipefail

PROG=prepare.sh
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STAGE_NAME=stage-kvs-edge

SSH_KEY=""
STAGE_ONLY=0
PYVER=3.11      # Raspberry Pi OS and Debian bookworm
GLIBC=2.36
ARCH=aarch64    # the Pi; x86_64 for the VM test bed (image-build/vm)
CACHE=""
PYTHON=${PYTHON:-python3}
WHEEL=""
DEST=""

usage() {
    cat <<EOF
usage: $PROG [options] DEST

  DEST                  a pi-gen checkout: the stage is copied to DEST/$STAGE_NAME, the configuration to
                        DEST/config (with the SSH key), and stage2 stops exporting its own Lite image
  --ssh-key FILE        the public key (one authorized_keys line) of the first user; required for a pi-gen checkout
  --stage-only          DEST is the folder to write the filled stage to (make image-test)
  --python-version X.Y  the image's Python, for the dependency wheels (default $PYVER)
  --glibc X.Y           the image's C library version, for the dependency wheels (default $GLIBC)
  --arch ARCH           the image's machine, for the dependency wheels: aarch64 or x86_64 (default $ARCH)
  --cache DIR           keep the downloaded dependency wheels in DIR (keyed by requirements, Python and glibc)
  --wheel FILE          use this kvs-edge wheel instead of building one from the checkout
  --python PATH         this machine's Python with pip, to build and download wheels (default $PYTHON)
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
        --ssh-key) [ $# -ge 2 ] || die "--ssh-key needs a file"; SSH_KEY=$2; shift 2 ;;
        --stage-only) STAGE_ONLY=1; shift ;;
        --python-version) [ $# -ge 2 ] || die "--python-version needs X.Y"; PYVER=$2; shift 2 ;;
        --glibc) [ $# -ge 2 ] || die "--glibc needs X.Y"; GLIBC=$2; shift 2 ;;
        --arch) [ $# -ge 2 ] || die "--arch needs aarch64 or x86_64"; ARCH=$2; shift 2 ;;
        --cache) [ $# -ge 2 ] || die "--cache needs a folder"; CACHE=$2; shift 2 ;;
        --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$DEST" ] || die "one destination only (got $DEST and $1)"; DEST=$1; shift ;;
    esac
done

[ -n "$DEST" ] || { usage >&2; die "no destination given"; }
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || die "--python-version $PYVER: expected like 3.11"
[[ "$GLIBC" =~ ^2\.[0-9]+$ ]] || die "--glibc $GLIBC: expected like 2.36"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "no such wheel: $WHEEL"
case "$ARCH" in aarch64|x86_64) ;; *) die "--arch $ARCH: expected aarch64 or x86_64" ;; esac
if [ "$STAGE_ONLY" = 1 ]; then
    STAGE_DEST=$DEST
else
    { [ -f "$DEST/build.sh" ] && [ -d "$DEST/stage2" ]; } ||
        die "$DEST is not a pi-gen checkout (no build.sh and stage2/): git clone --branch arm64 https://github.com/RPi-Distro/pi-gen"
    [ -n "$SSH_KEY" ] || die "give the first user's public key with --ssh-key FILE (the image has no password)"
    [ -f "$SSH_KEY" ] || die "no such key file: $SSH_KEY"
    key_line=$(grep -v '^[[:space:]]*\(#\|$\)' "$SSH_KEY" | head -n 1 || true)
    [[ "$key_line" =~ ^(ssh-|ecdsa-|sk-)[^[:space:]]+\ [A-Za-z0-9+/=]+ ]] ||
        die "$SSH_KEY does not look like a public key (ssh-ed25519 AAAA...): give the .pub file, never the private key"
    STAGE_DEST=$DEST/$STAGE_NAME
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip: apt install python3-pip (or pass --python)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- the kvs-edge wheel, from a copy of the checkout (a build leaves build/ and *.egg-info behind) -----------------
if [ -z "$WHEEL" ]; then
    mkdir -p "$WORK/src"
    cp -R "$REPO/kvs_edge" "$REPO/pyproject.toml" "$WORK/src/"
    find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
    if [ -f "$REPO/README.md" ]; then cp "$REPO/README.md" "$WORK/src/"; else echo kvs-edge >"$WORK/src/README.md"; fi
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WORK/dist" "$WORK/src" \
        >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; die "building the kvs-edge wheel failed (pip's output above)"; }
    WHEEL=$(echo "$WORK"/dist/kvs_edge-*.whl)
    [ -f "$WHEEL" ] || die "pip built no kvs_edge wheel"
    say "built $(basename "$WHEEL")"
fi

# --- its dependencies as wheels for the image's machine (aarch64 on a Pi) ----------------------------------------
requirements=$("$PYTHON" - "$WHEEL" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(line.split(":", 1)[1].strip())
PY
)
abi=cp${PYVER/./}
platforms=(--platform "manylinux2014_$ARCH")
for ((minor = 17; minor <= ${GLIBC#2.}; minor++)); do
    platforms+=(--platform "manylinux_2_${minor}_$ARCH")
done
key=$(printf '%s\n' "$requirements" "$PYVER" "$GLIBC" "$ARCH" | sha256sum | cut -c1-16)
if [ -n "$CACHE" ] && [ -f "$CACHE/wheelhouse-$key.ok" ]; then
    wheelhouse=$CACHE/wheelhouse-$key
    say "dependency wheels: cached in $wheelhouse"
else
    wheelhouse=$WORK/wheelhouse
    mkdir -p "$wheelhouse"
    mapfile -t reqs < <(printf '%s\n' "$requirements" | tr -d ' ' | grep .)
    if [ "${#reqs[@]}" -gt 0 ] && ! "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        --only-binary=:all: --implementation cp --python-version "$PYVER" --abi "$abi" --abi abi3 --abi none \
        "${platforms[@]}" -d "$wheelhouse" "${reqs[@]}" >"$WORK/pip.log" 2>&1; then
        cat "$WORK/pip.log" >&2
        die "downloading the $ARCH wheels of ${reqs[*]} failed (pip's output above)"
    fi
    say "downloaded $(find "$wheelhouse" -name '*.whl' | wc -l) dependency wheels for Python $PYVER on $ARCH"
    if [ -n "$CACHE" ]; then
        mkdir -p "$CACHE"
        rm -rf "$CACHE"/wheelhouse-*   # only the current set is kept
        cp -R "$wheelhouse" "$CACHE/wheelhouse-$key"
        touch "$CACHE/wheelhouse-$key.ok"
    fi
fi

# --- the stage -----------------------------------------------------------------------------------------------------
rm -rf "$STAGE_DEST"
mkdir -p "$(dirname "$STAGE_DEST")"
cp -R "$HERE/$STAGE_NAME" "$STAGE_DEST"
files=$STAGE_DEST/00-kvs-edge/files
install -D -m 0755 "$REPO/image-build/install.sh" "$files/image-build/install.sh"
install -D -m 0644 -t "$files/systemd" "$REPO/systemd/kvs-edge.service" "$REPO/systemd/kvs-edge-boot-config.service"
install -D -m 0644 "$REPO/config/kvs-edge.yaml" "$files/config/kvs-edge.yaml"
install -D -m 0644 "$HERE/kvs-edge.yaml" "$files/boot/kvs-edge.yaml"
install -D -m 0644 "$WHEEL" "$files/dist/$(basename "$WHEEL")"
mkdir -p "$files/wheelhouse"
cp -R "$wheelhouse"/. "$files/wheelhouse/"
say "stage ready: $STAGE_DEST"

if [ "$STAGE_ONLY" = 0 ]; then
    {
        cat "$HERE/config"
        printf 'PUBKEY_SSH_FIRST_USER=%q\n' "$key_line"
    } >"$DEST/config"
    touch "$DEST/stage2/SKIP_IMAGES"
    say "wrote $DEST/config (login: ssh kvs@kvs-edge.local with the key from $SSH_KEY); build with:" \
        "cd $DEST && sudo ./build.sh   (or ./build-docker.sh)"
fi
