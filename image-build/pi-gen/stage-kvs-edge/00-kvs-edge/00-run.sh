#!/bin/bash -e
# Installs kvs-edge into the image with image-build/install.sh: the one install path, the same script a Pi owner
# runs by hand to upgrade, and the same file that `make image-test` runs (it runs THIS script, against a Debian arm64
# tree under qemu-user-static). pi-gen runs it from this folder with ROOTFS_DIR set and on_chroot exported.
#
# files/ is filled by image-build/pi-gen/prepare.sh and mirrors the source tree, so install.sh finds the units and
# the example configuration next to itself: image-build/install.sh, systemd/*.service, config/kvs-edge.yaml,
# dist/kvs_edge-*.whl, wheelhouse/ (the wheel's dependencies for aarch64: pip installs offline), boot/.

BUNDLE=/var/tmp/kvs-edge-bundle

shopt -s nullglob
wheels=(files/dist/kvs_edge-*.whl)
if [ "${#wheels[@]}" -ne 1 ]; then
	echo "00-run.sh: expected one kvs-edge wheel in $PWD/files/dist, found ${#wheels[@]}:" \
		"fill the stage with image-build/pi-gen/prepare.sh" >&2
	exit 1
fi
wheel=$(basename "${wheels[0]}")

rm -rf "${ROOTFS_DIR:?}${BUNDLE}"
install -d -m 0755 "${ROOTFS_DIR}${BUNDLE}"
cp -R files/. "${ROOTFS_DIR}${BUNDLE}/"

# A clean environment: none of the build host's pip settings, proxies or certificates reach pip in the image.
on_chroot <<CHROOT
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
	bash ${BUNDLE}/image-build/install.sh --find-links ${BUNDLE}/wheelhouse ${BUNDLE}/dist/${wheel}
CHROOT

rm -rf "${ROOTFS_DIR:?}${BUNDLE}"

# On the FAT boot partition: the file to fill in and save as kvs-edge.yaml (kvs-edge-boot-config.service imports
# kvs-edge.yaml at boot and removes it; the example's placeholders are refused, so it is not named kvs-edge.yaml).
install -D -m 0644 files/boot/kvs-edge.yaml "${ROOTFS_DIR}/boot/firmware/kvs-edge.yaml.example"
