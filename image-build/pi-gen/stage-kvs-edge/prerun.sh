#!/bin/bash -e
# pi-gen stage "stage-kvs-edge", after stage2 (Raspberry Pi OS Lite): starts from stage2's root file system.
# pi-gen runs it with ROOTFS_DIR set and its helper functions (copy_previous, on_chroot) exported.

if [ -z "${PUBKEY_SSH_FIRST_USER}" ]; then
	echo "stage-kvs-edge: PUBKEY_SSH_FIRST_USER is empty: the image has no password, so without a key nobody" \
		"could log in; run image-build/pi-gen/prepare.sh --ssh-key ~/.ssh/id_ed25519.pub PI_GEN_DIR" >&2
	exit 1
fi
if ! compgen -G "${STAGE_DIR:-.}/00-kvs-edge/files/dist/kvs_edge-*.whl" >/dev/null; then
	echo "stage-kvs-edge: no kvs-edge wheel in 00-kvs-edge/files/dist: copy the stage with" \
		"image-build/pi-gen/prepare.sh, which builds the wheel and its arm64 dependencies" >&2
	exit 1
fi

if [ ! -d "${ROOTFS_DIR}" ]; then
	copy_previous
fi
