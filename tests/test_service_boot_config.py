"""Importing kvs-edge.yaml from the boot partition, on a temporary tree standing for /boot/firmware, /boot and /etc."""

from __future__ import annotations

import codecs
import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kvs_edge.config import load_config
from kvs_edge.service.boot_config import import_boot_config

REPO = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSECRETzz9"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"

VALID = f"""\
# written on a laptop
stream:
  name: garden-cam
  region: eu-west-1
aws:
  credentials: static
  access_key_id: {KEY_ID}
  secret_access_key: {SECRET}
source:
  type: testpattern
"""

# A YAML syntax error on the very line that holds the secret, plus an unknown key next to it.
INVALID_SYNTAX = VALID.replace(f"secret_access_key: {SECRET}", f"secret_access_key: [{SECRET}\n  x: ]")
INVALID_VALUES = VALID.replace("region: eu-west-1", "region: 5").replace("source:", "sorce:")
OLD = "stream:\n  name: old-cam\n"


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "boot" / "firmware").mkdir(parents=True)
    (tmp_path / "etc" / "kvs-edge").mkdir(parents=True)
    return tmp_path


def boot_dirs(tree: Path) -> list[Path]:
    return [tree / "boot" / "firmware", tree / "boot"]


def target(tree: Path) -> Path:
    return tree / "etc" / "kvs-edge" / "config.yaml"


def run_cli(tree: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "kvs_edge", "import-boot-config", "--target", str(target(tree))]
    for d in boot_dirs(tree):
        args += ["--boot", str(d)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_nothing_to_import(tree):
    target(tree).write_text(OLD)
    result = import_boot_config(boot_dirs(tree), target(tree))
    assert result.outcome == "none"
    assert target(tree).read_text() == OLD
    r = run_cli(tree)
    assert r.returncode == 0
    assert "nothing to import" in r.stdout


def test_valid_file_is_applied_backed_up_and_removed(tree):
    target(tree).write_text(OLD)
    os.chmod(target(tree), 0o640)
    boot_file = tree / "boot" / "firmware" / "kvs-edge.yaml"
    boot_file.write_text(VALID)
    (tree / "boot" / "firmware" / "kvs-edge.yaml.error").write_text("about an earlier attempt")

    result = import_boot_config(boot_dirs(tree), target(tree), group="no-such-group-here")

    assert result.outcome == "applied"
    assert target(tree).read_text() == VALID
    assert load_config(target(tree)).stream.name == "garden-cam"
    assert stat.S_IMODE(target(tree).stat().st_mode) == 0o600  # it holds keys; no kvs-edge group on this machine
    backup = target(tree).with_name("config.yaml.bak")
    assert result.backup == backup
    assert backup.read_text() == OLD
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640  # the old file's mode is kept
    assert not boot_file.exists()  # credentials off the FAT partition
    assert sorted(p.name for p in (tree / "boot" / "firmware").iterdir()) == []  # stale .error gone too
    assert sorted(p.name for p in target(tree).parent.iterdir()) == ["config.yaml", "config.yaml.bak"]


def test_applied_file_is_group_readable_by_the_service_group(tree):
    group = grp.getgrgid(os.getgid()).gr_name  # stands for kvs-edge: any group that exists here
    (tree / "boot" / "firmware" / "kvs-edge.yaml").write_text(VALID)
    import_boot_config(boot_dirs(tree), target(tree), group=group)
    st = target(tree).stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == os.getgid()


def test_first_install_without_a_previous_config_and_missing_etc_folder(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "kvs-edge.yaml").write_text(VALID)  # older images: /boot, not /boot/firmware
    dest = tmp_path / "etc" / "kvs-edge" / "config.yaml"
    result = import_boot_config([tmp_path / "boot" / "firmware", tmp_path / "boot"], dest)
    assert result.outcome == "applied" and result.backup is None
    assert dest.read_text() == VALID
    assert not (tmp_path / "boot" / "kvs-edge.yaml").exists()


@pytest.mark.parametrize("encode", [
    pytest.param(lambda t: t.replace("\n", "\r\n").encode(), id="crlf"),
    pytest.param(lambda t: codecs.BOM_UTF8 + t.replace("\n", "\r\n").encode(), id="bom+crlf"),
    pytest.param(lambda t: t.replace("\n", "\r").encode(), id="old-mac-cr"),
    pytest.param(lambda t: t.replace("\n", "\r\n").encode("utf-16"), id="utf16-notepad"),
])
def test_windows_editors(tree, encode):
    (tree / "boot" / "firmware" / "kvs-edge.yaml").write_bytes(encode(VALID))
    result = import_boot_config(boot_dirs(tree), target(tree))
    assert result.outcome == "applied", result.messages
    written = target(tree).read_bytes()
    assert written == VALID.encode("utf-8")  # plain UTF-8, LF, no BOM
    assert load_config(target(tree)).aws.access_key_id == KEY_ID


@pytest.mark.parametrize("text, expected", [
    (INVALID_SYNTAX, "line 9, column"),
    (INVALID_VALUES, "stream.region: expected text"),
])
def test_invalid_file_renamed_with_error_and_old_config_kept(tree, text, expected):
    target(tree).write_text(OLD)
    firmware = tree / "boot" / "firmware"
    (firmware / "kvs-edge.yaml").write_text(text)

    result = import_boot_config(boot_dirs(tree), target(tree))

    assert result.outcome == "invalid"
    assert target(tree).read_text() == OLD
    assert sorted(p.name for p in target(tree).parent.iterdir()) == ["config.yaml"]  # no backup, no temp file
    assert sorted(p.name for p in firmware.iterdir()) == ["kvs-edge.yaml.error", "kvs-edge.yaml.invalid"]
    assert (firmware / "kvs-edge.yaml.invalid").read_text() == text  # the user's file, untouched
    error = (firmware / "kvs-edge.yaml.error").read_bytes().decode()
    assert "\r\n" in error  # readable in Notepad
    assert expected in error
    assert str(firmware / "kvs-edge.yaml") in error  # names the file the user wrote, not a temp file
    assert SECRET not in error and KEY_ID not in error
    assert any(expected in m for m in result.messages)


def test_the_unedited_example_is_refused(tree):
    target(tree).write_text(OLD)
    example = (REPO / "config" / "kvs-edge.yaml").read_text()
    (tree / "boot" / "firmware" / "kvs-edge.yaml").write_text(example)
    result = import_boot_config(boot_dirs(tree), target(tree))
    assert result.outcome == "invalid"
    assert any("placeholder" in m for m in result.messages)
    assert target(tree).read_text() == OLD


def test_never_executed(tree):
    marker = tree / "executed"
    (tree / "boot" / "firmware" / "kvs-edge.yaml").write_text(f"#!/bin/sh\ntouch {marker}\n$(touch {marker})\n")
    (tree / "boot" / "firmware" / "kvs-edge.yaml").chmod(0o755)
    assert import_boot_config(boot_dirs(tree), target(tree)).outcome == "invalid"
    assert not marker.exists()


@pytest.mark.parametrize("text, code", [(VALID, 0), (INVALID_SYNTAX, 2), (INVALID_VALUES, 2)])
def test_cli_never_prints_secrets(tree, text, code):
    target(tree).write_text(f"stream:\n  name: old-cam\naws:\n  credentials: static\n  access_key_id: {KEY_ID}\n"
                            f"  secret_access_key: {SECRET}\n")
    (tree / "boot" / "firmware" / "kvs-edge.yaml").write_text(text)
    r = run_cli(tree)
    assert r.returncode == code, r.stderr
    output = r.stdout + r.stderr
    assert output.strip()
    assert SECRET not in output
    assert KEY_ID not in output
    if code == 2:
        assert "is invalid: renamed to" in r.stderr
    else:
        assert "applied" in r.stdout


def test_cli_reports_io_errors_in_one_line(tree):
    (tree / "boot" / "firmware" / "kvs-edge.yaml").write_text(VALID)
    blocker = tree / "etc" / "kvs-edge" / "config.yaml"
    blocker.mkdir()  # the target is a folder: it cannot be replaced
    r = run_cli(tree)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("cannot import the boot-partition configuration")
    assert (tree / "boot" / "firmware" / "kvs-edge.yaml").exists()  # nothing lost
