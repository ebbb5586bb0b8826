"""The appliance image's build files (image-build/): shellcheck-clean, and one install path.

The pi-gen stage (image-build/pi-gen/stage-kvs-edge) is filled by image-build/pi-gen/prepare.sh and installs kvs-edge
by running image-build/install.sh in the image's chroot; `make image-test` (image-build/image-test.sh) runs that same
stage script against a Debian arm64 tree. Here, fast and without network: the stage prepare.sh writes carries the
repository's own install.sh, units and configuration byte for byte, and the stage's 00-run.sh runs that install.sh
through pi-gen's on_chroot (faked at that boundary: it receives the script on stdin, as pi-gen's does).
The slow half, the real install and service run on arm64, is `make image-test`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from kvs_edge.config import has_placeholders, load_config
from kvs_edge.service.boot_config import import_boot_config

REPO = Path(__file__).resolve().parents[1]
IMAGE_BUILD = REPO / "image-build"
PI_GEN = IMAGE_BUILD / "pi-gen"
STAGE = PI_GEN / "stage-kvs-edge"
BUNDLE = "/var/tmp/kvs-edge-bundle"

SHELL_FILES = [
    IMAGE_BUILD / "install.sh",
    IMAGE_BUILD / "image-test.sh",
    IMAGE_BUILD / "mounts.sh",
    IMAGE_BUILD / "vm" / "build-image.sh",
    IMAGE_BUILD / "vm" / "guest" / "setup.sh",
    IMAGE_BUILD / "vm" / "guest" / "start-feeder.sh",
    PI_GEN / "prepare.sh",
    PI_GEN / "config",
    STAGE / "prerun.sh",
    STAGE / "EXPORT_IMAGE",
    STAGE / "00-kvs-edge" / "00-run.sh",
    STAGE / "01-ssh-key-only" / "00-run.sh",
]


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_clean(path):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: apt-get install shellcheck"
    # -x from the checkout: follow the `. image-build/mounts.sh` of the scripts that share it
    r = subprocess.run([shellcheck, "-x", "--shell=bash", str(path)], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_pi_gen_runs_the_stage_scripts():
    """pi-gen runs prerun.sh and NN-run.sh only when executable, and exports a stage only with EXPORT_IMAGE."""
    for script in (STAGE / "prerun.sh", STAGE / "00-kvs-edge" / "00-run.sh", STAGE / "01-ssh-key-only" / "00-run.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
    assert "copy_previous" in (STAGE / "prerun.sh").read_text()
    assert (STAGE / "EXPORT_IMAGE").is_file()
    assert "python3-picamera2" in package_list(STAGE / "00-kvs-edge" / "00-packages-nr")
    assert {"python3", "python3-venv"} <= set(package_list(STAGE / "00-kvs-edge" / "00-packages"))


def package_list(path: Path) -> list[str]:
    return [word for line in path.read_text().splitlines() for word in line.split("#")[0].split()]


def source_config(extra: str = "") -> dict[str, str]:
    """The pi-gen config as pi-gen's build.sh sees it: sourced by bash."""
    script = f"set -a; . '{PI_GEN / 'config'}'; {extra} env -0"
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    return dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if "=" in item)


def test_pi_gen_config_ssh_with_a_key_and_no_default_password():
    first, second = source_config(), source_config()
    assert first["IMG_NAME"] == "kvs-edge" and first["TARGET_HOSTNAME"] == "kvs-edge"
    assert first["STAGE_LIST"].split() == ["stage0", "stage1", "stage2", STAGE.name]
    assert first["ENABLE_SSH"] == "1" and first["PUBKEY_ONLY_SSH"] == "1"
    assert first["DISABLE_FIRST_BOOT_USER_RENAME"] == "1"
    # pi-gen demands a FIRST_USER_PASS with DISABLE_FIRST_BOOT_USER_RENAME=1: a random one per build, never a default
    assert len(first["FIRST_USER_PASS"]) >= 32 and first["FIRST_USER_PASS"] != second["FIRST_USER_PASS"]
    # ... which the stage then removes
    lock = (STAGE / "01-ssh-key-only" / "00-run.sh").read_text()
    assert "usermod --password '*' \"${FIRST_USER_NAME}\"" in lock


def fake_wheel(tmp_path: Path) -> Path:
    """A wheel with metadata and no dependencies: prepare.sh then needs no network."""
    wheel = tmp_path / "kvs_edge-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("kvs_edge/__init__.py", '__version__ = "9.9.9"\n')
        z.writestr("kvs_edge-9.9.9.dist-info/METADATA", "Metadata-Version: 2.1\nName: kvs-edge\nVersion: 9.9.9\n")
    return wheel


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PI_GEN / "prepare.sh"), "--python", sys.executable, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def prepared_stage(tmp_path):
    wheel = fake_wheel(tmp_path)
    dest = tmp_path / "stage"
    r = prepare("--stage-only", "--wheel", str(wheel), str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    return dest, wheel


def test_prepared_stage_carries_the_repository_files_byte_for_byte(prepared_stage):
    dest, wheel = prepared_stage
    files = dest / "00-kvs-edge" / "files"
    same = {
        "image-build/install.sh": REPO / "image-build" / "install.sh",
        "systemd/kvs-edge.service": REPO / "systemd" / "kvs-edge.service",
        "systemd/kvs-edge-boot-config.service": REPO / "systemd" / "kvs-edge-boot-config.service",
        "config/kvs-edge.yaml": REPO / "config" / "kvs-edge.yaml",
        "boot/kvs-edge.yaml": PI_GEN / "kvs-edge.yaml",
        f"dist/{wheel.name}": wheel,
    }
    for rel, original in same.items():
        assert (files / rel).read_bytes() == original.read_bytes(), rel
    assert os.access(files / "image-build" / "install.sh", os.X_OK)
    assert (files / "wheelhouse").is_dir()
    # the stage's own scripts, unchanged
    for script in ("prerun.sh", "EXPORT_IMAGE", "00-kvs-edge/00-run.sh", "01-ssh-key-only/00-run.sh"):
        assert (dest / script).read_bytes() == (STAGE / script).read_bytes()


def test_stage_installs_through_install_sh_in_the_chroot(prepared_stage, tmp_path):
    """00-run.sh as pi-gen runs it: from its folder, ROOTFS_DIR set, on_chroot exported (faked: it keeps the script
    it is given on stdin, and the install.sh that the script would run, as found in the root file system)."""
    dest, wheel = prepared_stage
    rootfs = tmp_path / "rootfs"
    (rootfs / "var" / "tmp").mkdir(parents=True)
    seen = tmp_path / "seen"
    seen.mkdir()
    driver = (
        "on_chroot() { cat > \"$SEEN/script\"; cp \"$ROOTFS_DIR" + BUNDLE + "/image-build/install.sh\" \"$SEEN/\"; "
        "ls -R \"$ROOTFS_DIR" + BUNDLE + "\" > \"$SEEN/bundle\"; }\n"
        "export -f on_chroot\n"
        "./00-run.sh\n"
    )
    r = subprocess.run(["bash", "-ec", driver], cwd=dest / "00-kvs-edge", capture_output=True, text=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "ROOTFS_DIR": str(rootfs), "SEEN": str(seen)})
    assert r.returncode == 0, r.stdout + r.stderr

    script = (seen / "script").read_text()
    command = " ".join(script.replace("\\\n", " ").split())
    assert (f"env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "
            f"bash {BUNDLE}/image-build/install.sh --find-links {BUNDLE}/wheelhouse {BUNDLE}/dist/{wheel.name}"
            ) == command
    # what runs in the chroot is this repository's install.sh
    assert (seen / "install.sh").read_bytes() == (REPO / "image-build" / "install.sh").read_bytes()
    bundle = (seen / "bundle").read_text()
    assert "kvs-edge.service" in bundle and "kvs-edge-boot-config.service" in bundle and wheel.name in bundle
    # the bundle is gone from the image afterwards; the boot-partition sample is in place
    assert not (rootfs / BUNDLE.lstrip("/")).exists()
    sample = rootfs / "boot" / "firmware" / "kvs-edge.yaml.example"
    assert sample.read_bytes() == (PI_GEN / "kvs-edge.yaml").read_bytes()


def test_stage_refuses_to_run_without_a_wheel(tmp_path):
    stage = tmp_path / "stage"
    shutil.copytree(STAGE, stage)
    driver = "on_chroot() { cat > /dev/null; }\nexport -f on_chroot\n./00-run.sh\n"
    r = subprocess.run(["bash", "-ec", driver], cwd=stage / "00-kvs-edge", capture_output=True, text=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "ROOTFS_DIR": str(tmp_path / "rootfs")})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"00-run.sh: expected one kvs-edge wheel in {stage / '00-kvs-edge' / 'files' / 'dist'}, found 0: "
        "fill the stage with image-build/pi-gen/prepare.sh"]


def test_image_test_runs_the_stage_script_and_its_package_list():
    """make image-test exercises the pi-gen stage itself, not a copy of its steps."""
    text = (IMAGE_BUILD / "image-test.sh").read_text()
    assert 'bash "$REPO/image-build/pi-gen/prepare.sh" --stage-only "$WORK/stage"' in text
    assert '(cd "$WORK/stage/00-kvs-edge" && ./00-run.sh)' in text
    assert '"$STAGE_SRC/00-kvs-edge/00-packages"' in text
    assert not re.search(r'(bash|exec|chroot|\./)\s+\S*install\.sh', text), "image-test.sh runs install.sh itself"


def pi_gen_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "pi-gen"
    (checkout / "stage2").mkdir(parents=True)
    (checkout / "build.sh").write_text("#!/bin/bash\n")
    return checkout


def test_prepare_writes_the_pi_gen_config_with_the_key(tmp_path):
    checkout = pi_gen_checkout(tmp_path)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvsEdgeTestKeyOnlyForThisTest0000000000000 admin@laptop"
    (tmp_path / "id.pub").write_text(key + "\n")
    r = prepare("--wheel", str(fake_wheel(tmp_path)), "--ssh-key", str(tmp_path / "id.pub"), str(checkout))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (checkout / STAGE.name / "00-kvs-edge" / "files" / "image-build" / "install.sh").is_file()
    assert (checkout / "stage2" / "SKIP_IMAGES").exists()  # one image: kvs-edge's, not also the plain Lite one
    r = subprocess.run(["bash", "-c", f"set -a; . '{checkout / 'config'}'; printf %s \"$PUBKEY_SSH_FIRST_USER\""],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout == key


def test_prepare_refuses_a_private_key_with_one_line(tmp_path):
    checkout = pi_gen_checkout(tmp_path)
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    r = prepare("--wheel", str(fake_wheel(tmp_path)), "--ssh-key", str(private), str(checkout))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"prepare.sh: {private} does not look like a public key (ssh-ed25519 AAAA...): give the .pub file, "
        "never the private key"]
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in r.stdout + r.stderr
    assert not (checkout / "config").exists()


def test_image_test_says_it_needs_root_in_one_line():
    # a copy nobody can read wherever the checkout is (CI's clone may sit in a folder only root can enter)
    folder = Path(tempfile.mkdtemp(prefix="kvs-edge-image-test-"))
    try:
        folder.chmod(0o755)
        script = folder / "image-test.sh"
        shutil.copy(IMAGE_BUILD / "image-test.sh", script)
        script.chmod(0o755)
        # as root: drop to nobody to be a normal user; as a normal user already, run it as it is
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        r = subprocess.run([*as_user, "bash", str(script)], capture_output=True, text=True, timeout=60, cwd=folder)
    finally:
        shutil.rmtree(folder)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "FAILED: must run as root (debootstrap, mount, chroot): sudo make image-test"), r.stderr


def test_boot_partition_sample_is_valid_but_not_importable_as_is(tmp_path):
    """The sample checks out (exit 0 with placeholder warnings) but the import refuses its placeholders, which is
    why the image carries it as kvs-edge.yaml.example and the owner saves a filled-in copy as kvs-edge.yaml."""
    cfg = load_config(PI_GEN / "kvs-edge.yaml")
    assert has_placeholders(cfg)
    assert cfg.source.type == "picamera"
    boot = tmp_path / "boot"
    boot.mkdir()
    shutil.copy(PI_GEN / "kvs-edge.yaml", boot / "kvs-edge.yaml")
    result = import_boot_config([boot], tmp_path / "etc" / "config.yaml")
    assert result.outcome == "invalid"
    assert not (tmp_path / "etc" / "config.yaml").exists()
