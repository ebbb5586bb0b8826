#!/bin/bash -e
# No password in the image: the first user (FIRST_USER_NAME) logs in over SSH with the key from
# PUBKEY_SSH_FIRST_USER only (the config sets PUBKEY_ONLY_SSH=1), and sudo asks for no password.
# pi-gen insists on a FIRST_USER_PASS when DISABLE_FIRST_BOOT_USER_RENAME=1; the config makes it a random string
# nobody sees, and this step replaces it with no password at all.

if [ -z "${FIRST_USER_NAME}" ]; then
	echo "01-ssh-key-only: FIRST_USER_NAME is not set" >&2
	exit 1
fi

on_chroot <<CHROOT
usermod --password '*' "${FIRST_USER_NAME}"
CHROOT

install -d -m 0750 "${ROOTFS_DIR}/etc/sudoers.d"
printf '%s ALL=(ALL) NOPASSWD: ALL\n' "${FIRST_USER_NAME}" >"${ROOTFS_DIR}/etc/sudoers.d/010_kvs-edge-admin"
chmod 0440 "${ROOTFS_DIR}/etc/sudoers.d/010_kvs-edge-admin"
