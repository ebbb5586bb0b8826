"""The sd_notify protocol against a datagram socket the test owns, and the watchdog gate's decisions."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from kvs_edge.service.notify import Notifier, WatchdogGate, watchdog_interval


def _receive(sock: socket.socket) -> list[str]:
    sock.settimeout(2.0)
    return sock.recv(4096).decode().split("\n")


@pytest.fixture
def path_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_socket():
    name = f"kvs-edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield "@" + name, sock
    sock.close()


def test_path_socket_receives_ready_watchdog_status_stopping(path_socket):
    path, sock = path_socket
    with Notifier(environ={"NOTIFY_SOCKET": path}) as n:
        assert n.enabled
        assert n.ready("streaming to cam1")
        assert _receive(sock) == ["READY=1", "STATUS=streaming to cam1"]
        assert n.watchdog()
        assert _receive(sock) == ["WATCHDOG=1"]
        assert n.status("offline for 12 s,\nbacklog 6 fragments")
        assert _receive(sock) == ["STATUS=offline for 12 s, backlog 6 fragments"]
        assert n.reloading()
        assert _receive(sock) == ["RELOADING=1"]
        assert n.stopping()
        assert _receive(sock) == ["STOPPING=1"]


def test_abstract_socket_named_with_at(abstract_socket):
    name, sock = abstract_socket
    n = Notifier(environ={"NOTIFY_SOCKET": name})
    assert n.ready()
    assert _receive(sock) == ["READY=1"]
    assert n.watchdog()
    assert _receive(sock) == ["WATCHDOG=1"]
    n.close()


def test_reads_notify_socket_from_the_process_environment(path_socket, monkeypatch):
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.status("hello")
    assert _receive(sock) == ["STATUS=hello"]
    n.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path, caplog):
    n = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.watchdog() is False
    assert n.watchdog() is False
    warnings = [r for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]
    assert len(warnings) == 1  # said once, not at every ping
    n.close()


def test_watchdog_interval_is_half_the_period():
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1234"}, pid=1234) == 1.5


@pytest.mark.parametrize("env", [
    {},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"},  # meant for another process
    {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "x"},
])
def test_no_watchdog_expected(env):
    assert watchdog_interval(env, pid=4242) is None


def test_gate_pings_only_while_frames_flow_and_the_uploader_turns():
    gate = WatchdogGate(stall_seconds=5.0, wedge_seconds=30.0)
    assert not gate.should_ping(100.0)
    assert "no frame" in gate.problem(100.0)

    gate.frame(100.0)
    assert gate.problem(100.5) == "uploader not running yet"
    gate.uploader_beat(100.5)
    assert gate.should_ping(101.0)

    # frames keep arriving: pings keep being deserved
    for t in range(101, 140):
        gate.frame(float(t))
        if t % 10 == 0:
            gate.uploader_beat(float(t))
        assert gate.should_ping(t + 0.5), t


def test_gate_stops_when_the_camera_stalls():
    gate = WatchdogGate(stall_seconds=5.0, wedge_seconds=30.0)
    gate.frame(10.0)
    gate.uploader_beat(10.0)
    assert gate.should_ping(14.9)
    assert not gate.should_ping(15.0)
    assert gate.problem(17.25) == "camera stalled: no frame for 7.2 s"
    gate.frame(18.0)  # the camera came back
    assert gate.should_ping(18.1)


def test_gate_stops_when_the_uploader_is_wedged_even_with_frames():
    gate = WatchdogGate(stall_seconds=5.0, wedge_seconds=30.0)
    gate.uploader_beat(0.0)
    for t in range(0, 40):
        gate.frame(float(t))
    assert not gate.should_ping(39.5)
    assert gate.problem(39.5).startswith("uploader wedged")
    gate.uploader_beat(39.6)
    assert gate.should_ping(39.7)
