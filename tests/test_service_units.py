"""The systemd units: `systemd-analyze verify` is clean and the main unit's exposure is at most 1.8, while the camera
devices stay reachable."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = ["kvs-edge.service", "kvs-edge-boot-config.service"]
EXEC = "/opt/kvs-edge/venv/bin/kvs-edge"
ANALYZE = shutil.which("systemd-analyze")



@pytest.fixture
def unit_dir(tmp_path):
    """The units with ExecStart pointing at a stub, because verify insists that the binary exists."""
    assert ANALYZE, "systemd-analyze is not installed: apt-get install systemd"
    stub = tmp_path / "bin" / "kvs-edge"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        assert EXEC in text
        (tmp_path / name).write_text(text.replace(EXEC, str(stub)))
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_verify_is_clean(unit_dir):
    r = analyze("verify", *UNITS, cwd=unit_dir)
    # verify exits 0 even for unknown keys or unparsable values; it only prints them. So: no output at all.
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_verify_would_catch_a_mistake(unit_dir):
    bad = unit_dir / "kvs-edge.service"
    bad.write_text(bad.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    r = analyze("verify", "kvs-edge.service", cwd=unit_dir)
    assert "Unknown key" in r.stdout + r.stderr


def exposure(unit_dir: Path, unit: str) -> float:
    r = analyze("security", "--offline=yes", unit, cwd=unit_dir)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def test_main_unit_exposure_at_most_1_8(unit_dir):
    score = exposure(unit_dir, "kvs-edge.service")
    print(f"kvs-edge.service exposure {score}")
    assert score <= 1.8


def test_boot_config_unit_exposure(unit_dir):
    score = exposure(unit_dir, "kvs-edge-boot-config.service")
    print(f"kvs-edge-boot-config.service exposure {score}")
    assert score <= 1.8


def parse_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> all values (systemd keys repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in (REPO / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_main_unit_contract():
    s = parse_unit("kvs-edge.service")["Service"]
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{EXEC} run --config /etc/kvs-edge/config.yaml"]
    assert s["RestartPreventExitStatus"] == ["78"]  # kvs_edge.cli.EXIT_CONFIG
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["kvs-edge"] and s["SupplementaryGroups"] == ["video audio"]
    assert s["StateDirectory"] == ["kvs-edge"] and s["ConfigurationDirectory"] == ["kvs-edge"]
    # the camera stays reachable
    assert "PrivateDevices" not in s and "PrivateUsers" not in s
    assert s["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert {"char-video4linux", "char-media", "/dev/dma_heap/linux,cma", "/dev/dma_heap/system", "char-alsa"} <= allowed
    families = s["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    # kvs_edge/clock.py asks the kernel whether the clock is synchronized: the syscall must stay allowed
    assert "ProtectClock" not in s
    assert "adjtimex" in s["SystemCallFilter"][0] and "clock_adjtime" in s["SystemCallFilter"][0]
    after = parse_unit("kvs-edge.service")["Unit"]["After"][0].split()
    assert {"network-online.target", "time-sync.target", "kvs-edge-boot-config.service"} <= set(after)


def test_exit_code_matches_the_cli():
    from kvs_edge.cli import EXIT_CONFIG

    assert parse_unit("kvs-edge.service")["Service"]["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]


def test_boot_config_unit_runs_before_the_service():
    u = parse_unit("kvs-edge-boot-config.service")
    assert u["Service"]["Type"] == ["oneshot"]
    assert u["Service"]["ExecStart"] == [f"{EXEC} import-boot-config"]
    assert "kvs-edge.service" in u["Unit"]["Before"][0].split()
    assert sorted(u["Unit"]["ConditionPathExists"]) == ["|/boot/firmware/kvs-edge.yaml", "|/boot/kvs-edge.yaml"]
