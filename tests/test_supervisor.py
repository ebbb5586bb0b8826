"""Supervisor on its own: a real Appliance (test pattern -> emulator), a real notify socket, an injected loop clock.

The status file is replaced atomically (a new inode per write), so the test can see each publication.
"""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from kvs_edge.appliance import Appliance
from kvs_edge.config import parse_config
from kvs_edge.service.notify import Notifier
from kvs_edge.supervisor import STATUS_EVERY_S, Supervisor
from support.appliance import config_dict


class SteppedClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5.0)
    yield str(path), sock
    sock.close()


def _messages(sock) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out += sock.recv(4096).decode().split("\n")
    except BlockingIOError:
        return out


@pytest.mark.timeout(120)
def test_runs_until_told_publishes_on_its_clock_and_stops_clean(emulator, tmp_path, notify_socket, caplog):
    caplog.set_level(logging.INFO)
    emulator.create_stream("cam")
    cfg = parse_config(config_dict(emulator, tmp_path / "buf"), "<test>")
    app = Appliance(cfg)
    clock = SteppedClock()
    path, sock = notify_socket
    sup = Supervisor(app, status_file=cfg.health.status_file, notifier=Notifier(path), tick_s=0.02, clock=clock)
    inodes = []  # the status file's inode after each tick: a new one per publication
    msgs: list[str] = []  # read as systemd does, so that the datagram queue never fills (a full one blocks sendto)
    ticks = 0

    def on_tick(status):
        nonlocal ticks
        ticks += 1
        msgs.extend(_messages(sock))
        inodes.append(os.stat(cfg.health.status_file).st_ino)
        clock.now += 0.5  # a quarter of STATUS_EVERY_S per tick

    code = sup.run(until=lambda: app.pipeline.counters.fragments_persisted >= 3, on_tick=on_tick)
    assert code == 0
    assert STATUS_EVERY_S == 2.0
    publications = 1 + sum(1 for a, b in zip(inodes, inodes[1:]) if a != b)
    assert publications == 1 + (ticks - 1) // 4, (ticks, inodes)

    final = json.loads(open(cfg.health.status_file).read())
    assert final["state"] == "stopping" and final["stream"] == "cam"
    assert final["fragments_persisted"] >= 3 and final["last_error"] is None
    lat = final["latency_s"]
    assert lat["count"] == final["fragments_persisted"] and 0 < lat["p50"] <= lat["max"]
    msgs += _messages(sock)
    assert "READY=1" in msgs and "STOPPING=1" in msgs
    kept = app.fragment_log.stats().fragments
    assert f"kvs-edge stopped; {kept} fragment{'' if kept == 1 else 's'} kept in the buffer for the next start" \
        in caplog.text
    assert "upload connected" in caplog.text


class _DyingSource:
    """A camera that fails for good once started (the boundary the pipeline watches through `error`)."""
    name = "dying camera"
    finished = False
    connected = True

    def __init__(self) -> None:
        self.error = None

    def start(self, emit):
        self.error = "the camera went away: check the cable"

    def stop(self, timeout=3.0):
        pass


@pytest.mark.timeout(60)
def test_a_failed_part_ends_the_run_with_1_and_the_reason_in_the_status(emulator, tmp_path):
    emulator.create_stream("cam")
    cfg = parse_config(config_dict(emulator, tmp_path / "buf"), "<test>")
    app = Appliance(cfg, source=_DyingSource())
    sup = Supervisor(app, status_file=cfg.health.status_file, notifier=Notifier(""), tick_s=0.02,
                     clock=SteppedClock())
    assert sup.run() == 1
    final = json.loads(open(cfg.health.status_file).read())
    assert final["state"] == "stopping" and final["last_error"] == "the camera went away: check the cable"
