"""One error hierarchy (kvs_edge/errors.py): every command exits with the code its error carries (README "Exit
codes"), in one line; and the small defects of issue 18 item 12 seen from the command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvs_edge import errors
from kvs_edge.cli import main as cli_main
from kvs_edge.config import ConfigError
from kvs_edge.kvs.control import ControlPlane, ControlPlaneError
from kvs_edge.kvs.credentials import CredentialsError
from kvs_edge.kvs.transport import TransportError
from kvs_edge.log import FragmentLog
from kvs_edge.pipeline import PipelineFailure
from kvs_edge.sources import SourceError, SourceNotInstalled
from support.appliance import config_dict, wait_until, write_config

ROOT = Path(__file__).resolve().parents[1]
KVS_EDGE = [sys.executable, "-m", "kvs_edge"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _unreachable(buffer: Path, **over) -> dict:
    """A valid configuration whose KVS endpoint is a loopback port nobody listens on."""
    emu = SimpleNamespace(url=f"http://127.0.0.1:{_closed_port()}")
    return config_dict(emu, buffer, **over)


def _env_without_fakes() -> dict:
    env = dict(os.environ)
    # the fake picamera2 (tests/fakes) must not be importable: this is a machine without python3-picamera2
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and "fakes" not in p)
    return env


def test_every_error_class_carries_its_exit_code():
    assert errors.KvsEdgeError("x").exit_code == errors.EXIT_FAILURE == 1
    assert errors.UsageError("x").exit_code == errors.EXIT_USAGE == 2
    assert ConfigError(["f: stream.name: missing"]).exit_code == errors.EXIT_CONFIG == 78
    assert CredentialsError("x").exit_code == 78
    assert SourceError("x").exit_code == 1 and SourceNotInstalled("x").exit_code == 78
    assert TransportError("x").exit_code == 1
    # the control plane: 78 when the client cannot be set up from the configuration, 1 when a call failed
    assert ControlPlaneError("x").exit_code == 78
    assert ControlPlaneError("x", code="ResourceNotFoundException", operation="DescribeStream").exit_code == 1
    with pytest.raises(ControlPlaneError) as ei:
        ControlPlane("", credentials=None)
    assert ei.value.exit_code == 78
    # a pipeline failure exits like its cause
    assert PipelineFailure("camera", SourceNotInstalled("no picamera2")).exit_code == 78
    assert PipelineFailure("camera", SourceError("unplugged")).exit_code == 1
    assert PipelineFailure("muxer failed", RuntimeError("bug")).exit_code == 1
    # per instance, and one line whatever the message holds
    assert errors.KvsEdgeError("a\n  b", exit_code=5).exit_code == 5
    assert errors.KvsEdgeError("a\n  b").message == "a b"
    assert errors.one_line("x" * 300, 20) == "x" * 17 + "..."


def test_a_command_line_error_is_one_line_exit_2_and_bad_settings_exit_78(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 64)
    assert cli_main(["upload", str(video)]) == 2  # no --stream, no --config
    err = capsys.readouterr().err
    assert err.strip() == "kvs-edge upload: give --stream NAME (or --config FILE with stream.name)"
    # --stream goes through the configuration parser like stream.name in a file: the same message, exit 78
    assert cli_main(["upload", str(video), "--stream", "not a valid name"]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stream.name:" in err[0] and "not a valid stream name" in err[0]
    bad = write_config(tmp_path / "bad.yaml", {"stream": {"nmae": "cam"}})
    assert cli_main(["upload", str(video), "--config", str(bad)]) == 78
    assert cli_main(["check-config", str(bad)]) == 2  # check-config's verdict "invalid"


@pytest.mark.timeout(120)
def test_run_without_picamera2_exits_78_with_the_apt_line_and_no_restart(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import picamera2"], capture_output=True, cwd=ROOT,
                           env=_env_without_fakes(), timeout=60)
    if probe.returncode == 0:
        pytest.skip("picamera2 is installed on this machine (a Pi): the missing-package path cannot be shown here")
    buf = tmp_path / "buf"
    cfg = write_config(tmp_path / "c.yaml", _unreachable(buf, source={"type": "picamera"}))
    r = subprocess.run(KVS_EDGE + ["run", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT,
                       env=_env_without_fakes(), timeout=90)
    assert r.returncode == 78, r.stderr
    assert "sudo apt install python3-picamera2" in r.stderr
    assert "so that the service is restarted" not in r.stderr and "Traceback" not in r.stderr
    assert "-1 fragments" not in r.stderr
    assert "kvs-edge stopped (exit 78); 0 fragments kept in the buffer" in r.stderr


@pytest.mark.timeout(120)
def test_run_with_an_unreachable_control_plane_stops_with_the_real_fragment_count(tmp_path):
    buf = tmp_path / "buf"
    cfg = write_config(tmp_path / "c.yaml", _unreachable(buf))
    proc = subprocess.Popen(KVS_EDGE + ["run", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_until(lambda: _status_frags(buf) >= 2, 60,
                   "two fragments buffered while KVS is unreachable")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "-1 fragments" not in err
    line = next(x for x in err.splitlines() if "kvs-edge stopped" in x)
    kept = int(line.split("kvs-edge stopped; ", 1)[1].split()[0])
    log = FragmentLog(buf / "log", 1 << 30)  # what the next start finds
    try:
        assert kept == log.stats().fragments >= 2
    finally:
        log.close()


def _status_frags(buf: Path) -> int:
    import json

    try:
        return json.loads((buf / "status.json").read_text())["backlog"]["fragments"]
    except (OSError, ValueError, KeyError):
        return 0
