"""IoT device credentials from the boot partition (issue 16): moved with 0600, wiped from the FAT side, never shown."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

from kvs_edge.service.iot_provision import import_iot_credentials

REPO = Path(__file__).resolve().parents[1]
CERT = b"-----BEGIN CERTIFICATE-----\nMIIDWTCCAkGgAwIBAgIUcertificatebodyXYZ\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAsecretkeybodyQQQ\n-----END RSA PRIVATE KEY-----\n"
CA = b"-----BEGIN CERTIFICATE-----\nMIIDQTCCAimgAwIBAgITBmyfz5m/jAo54vB4ikPmljZbyjANBgkq\n-----END CERTIFICATE-----\n"


def drop(boot: Path, files: dict[str, bytes]) -> Path:
    folder = boot / "kvs-edge-iot"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_console_downloads_are_installed_owner_only_and_wiped(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    boot, etc = tmp_path / "boot/firmware", tmp_path / "etc/kvs-edge/iot"
    folder = drop(boot, {"a1b2-certificate.pem.crt": CERT, "a1b2-private.pem.key": KEY, "AmazonRootCA1.pem": CA})
    os.link(folder / "a1b2-private.pem.key", tmp_path / "same-blocks")  # sees what was on the FAT side's blocks
    result = import_iot_credentials([boot], etc)
    assert (tmp_path / "same-blocks").read_bytes() == b"\0" * len(KEY)  # overwritten with zeros before removal
    assert result.outcome == "installed"
    assert {p.name: p.read_bytes() for p in etc.iterdir()} == {
        "certificate.pem.crt": CERT, "private.pem.key": KEY, "AmazonRootCA.pem": CA}
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in etc.iterdir())
    assert not folder.exists()  # wiped and removed from the FAT side
    text = result.summary() + caplog.text
    assert b"certificatebody" not in text.encode() and b"secretkeybody" not in text.encode()


def test_a_file_that_is_not_a_key_installs_nothing_and_wipes_nothing(tmp_path):
    boot, etc = tmp_path / "boot", tmp_path / "iot"
    folder = drop(boot, {"certificate.pem": CERT, "private.key": b"secretkeybodyQQQ but no PEM\n"})
    result = import_iot_credentials([boot], etc)
    assert result.outcome == "invalid"
    assert result.messages == (f"{folder / 'private.key'}: not a PEM private key (no PRIVATE KEY block)",)
    assert not etc.exists() and sorted(p.name for p in folder.iterdir()) == ["certificate.pem", "private.key"]


def test_missing_key_is_named(tmp_path):
    folder = drop(tmp_path / "boot", {"certificate.pem": CERT})
    result = import_iot_credentials([tmp_path / "boot"], tmp_path / "iot")
    assert result.messages == (f"{folder}: no private key file (*private.pem.key as the IoT console names it)",)


def test_nothing_on_the_boot_partition(tmp_path):
    assert import_iot_credentials([tmp_path], tmp_path / "iot").outcome == "none"


def test_cli_imports_credentials_and_never_prints_them(tmp_path):
    boot = tmp_path / "boot"
    drop(boot, {"x-certificate.pem.crt": CERT, "x-private.pem.key": KEY})
    target = tmp_path / "etc/kvs-edge/config.yaml"
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "import-boot-config", "--boot", str(boot), "--target",
                        str(target)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "installed IoT certificate as" in r.stdout
    assert "certificatebody" not in r.stdout + r.stderr and "secretkeybody" not in r.stdout + r.stderr
    key = target.parent / "iot/private.pem.key"
    assert key.read_bytes() == KEY and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert not (boot / "kvs-edge-iot").exists()
