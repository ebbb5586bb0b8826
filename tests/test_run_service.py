"""`kvs-edge run` as systemd runs it: a subprocess, signals, the notify socket, the status file, metrics, restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvs_edge.log import FragmentLog
from support.appliance import archived_frames, config_dict, wait_until, write_config

ROOT = Path(__file__).resolve().parents[1]
KVS_EDGE = [sys.executable, "-m", "kvs_edge"]
FAKE_CAMERA = [sys.executable, str(ROOT / "tests" / "support" / "run_with_fake_camera.py")]


def _start(cmd, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, timeout=15):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)  # a hang guard: systemd's stop timeout is 10 s
    return proc.returncode, out, err


def _frames_left(buffer: Path) -> int:
    log = FragmentLog(buffer / "log", 1 << 30)
    n = 0
    seq = None
    while (info := log.next_fragment(seq, timeout=0)) is not None:
        n += info.frames
        seq = info.seq
    log.close()
    return n


@pytest.mark.timeout(120)
def test_sigterm_exits_cleanly_and_keeps_everything(emulator, tmp_path):
    emulator.create_stream("cam")
    buf = tmp_path / "buf"
    cfg = write_config(tmp_path / "c.yaml", config_dict(emulator, buf))
    proc = _start(KVS_EDGE + ["run", "--config", str(cfg)])
    wait_until(lambda: _status(buf / "status.json").get("fragments_persisted", 0) >= 2, 60, "fragments persisted")
    code, _, err = _stop(proc)
    assert code == 0, err
    frames = _status(buf / "status.json")["camera"]["frames"]
    assert "stopped" in err
    # every captured frame is either archived or still in the log for the next start
    assert archived_frames(emulator) + _frames_left(buf) == frames


@pytest.mark.timeout(180)
def test_outage_across_a_restart_loses_nothing(emulator, tmp_path):
    """60 s of KVS refusing connections, with the service restarted in the middle of it."""
    emulator.create_stream("cam")
    buf = tmp_path / "buf"
    cfg = write_config(tmp_path / "c.yaml", config_dict(emulator, buf))
    status = buf / "status.json"
    proc = _start(KVS_EDGE + ["run", "--config", str(cfg)])
    wait_until(lambda: _status(status).get("fragments_persisted", 0) >= 2, 60, "fragments persisted")
    emulator.faults.set_offline(True)
    t_off = time.monotonic()
    archived_at_outage = len(emulator.archive("cam"))
    wait_until(lambda: time.monotonic() - t_off > 30, 40, "half the outage")
    assert _status(status)["backlog"]["fragments"] >= 20  # 1-s fragments held on disk
    code, _, err = _stop(proc)
    assert code == 0, err
    frames_first = _status(status)["camera"]["frames"]
    proc = _start(KVS_EDGE + ["run", "--config", str(cfg)])
    wait_until(lambda: time.monotonic() - t_off > 60, 40, "the rest of the outage")
    assert len(emulator.archive("cam")) == archived_at_outage
    emulator.faults.set_offline(False)
    wait_until(lambda: _status(status).get("state") == "streaming" and _status(status)["backlog"]["fragments"] <= 2,
               90, "the backlog to drain and the stream to be live again")
    code, _, err = _stop(proc)
    assert code == 0, err
    frames_second = _status(status)["camera"]["frames"]
    entries = emulator.archive("cam")
    # The cut connection may have taken the PERSISTED ACK of a fragment already archived: it is sent again after the
    # outage (at-least-once, as with the service; the read side resolves such duplicates by producer timestamp).
    first_seen: dict[int, int] = {}
    for i, e in enumerate(entries):
        j = first_seen.setdefault(e.first_frame_ms, i)
        if j != i:
            a = entries[j]
            assert (a.frames, a.last_frame_ms, a.size) == (e.frames, e.last_frame_ms, e.size), "a resend differs"
            assert archived_at_outage - 2 <= j < archived_at_outage, \
                f"fragment {j} sent twice, but it was not in flight when the connection was cut ({archived_at_outage})"
    unique = [entries[i] for i in sorted(first_seen.values())]  # in arrival order
    assert all(a.last_frame_ms < b.first_frame_ms for a, b in zip(unique, unique[1:])), "out of order"
    assert sum(e.frames for e in unique) + _frames_left(buf) == frames_first + frames_second
    assert emulator.stats("cam").error_acks == []


class NotifySocket:
    """The datagram socket systemd listens on; records (monotonic time, message)."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if m.startswith(prefix)]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.mark.timeout(120)
def test_watchdog_pings_only_while_the_camera_delivers(emulator, tmp_path):
    emulator.create_stream("cam")
    buf = tmp_path / "buf"
    stall_s = 4
    data = config_dict(emulator, buf, source={"type": "picamera", "width": 160, "height": 120, "fps": 15,
                                              "bitrate": "300k", "profile": "baseline"},
                       health={"stall_seconds": stall_s})
    cfg = write_config(tmp_path / "c.yaml", data)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        # 8 s of frames, then the camera stops; the watchdog period is 1 s (pings every 0.5 s)
        proc = _start(FAKE_CAMERA + ["run", "--config", str(cfg)],
                      {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
                       "FAKE_CAMERA_STALL_AFTER_FRAMES": "120"})
        out, err = proc.communicate(timeout=60)
    finally:
        notify.close()
    assert proc.returncode == 1, err  # non-zero: systemd restarts the service
    assert "camera" in err and "stall" in err
    ready = notify.times("READY=1")
    pings = notify.times("WATCHDOG=1")
    stopping = notify.times("STOPPING=1")
    assert ready and stopping and len(pings) >= 8, notify.messages
    assert ready[0] <= pings[0]
    # while frames flowed (8 s) it pinged every 0.5 s; pings stop at half the stall limit, the process exits at the
    # limit: the last 1.2 s before it gave up hold no ping (they would hold two if it kept pinging)
    quiet = [t for t in pings if t > stopping[0] - 1.2]
    assert quiet == [], (quiet, stopping)
    assert any(m.startswith("STATUS=") for _, m in notify.messages)


@pytest.mark.timeout(150)
def test_status_and_metrics_follow_an_outage(emulator, tmp_path):
    emulator.create_stream("cam")
    buf = tmp_path / "buf"
    port = _free_port()
    cfg = write_config(tmp_path / "c.yaml", config_dict(emulator, buf, health={"metrics_listen": f"127.0.0.1:{port}"}))
    status_file = buf / "status.json"
    proc = _start(KVS_EDGE + ["run", "--config", str(cfg)])

    def status_cli(*extra):
        r = subprocess.run(KVS_EDGE + ["status", "--file", str(status_file), *extra], capture_output=True, text=True,
                           cwd=ROOT)
        return r.returncode, r.stdout

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        values = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                values[s.name] = s.value
        return values

    try:
        wait_until(lambda: status_cli()[0] == 0 and _status(status_file).get("fragments_persisted", 0) >= 2, 60,
                   "a healthy status")
        code, human = status_cli()
        assert "streaming" in human
        m1 = scrape()
        assert m1["kvs_edge_frames_total"] > 0 and m1["kvs_edge_fragments_persisted_total"] >= 2
        assert m1["kvs_edge_connected"] == 1
        emulator.faults.set_offline(True)
        wait_until(lambda: status_cli()[0] == 1, 40, "the status to turn unhealthy")
        wait_until(lambda: _status(status_file)["backlog"]["fragments"] >= 5, 30, "the backlog to grow")
        code, out = status_cli("--json")
        js = json.loads(out)
        assert code == 1 and js["healthy"] is False and js["reasons"]
        assert js["connection"]["state"] != "connected"
        m2 = scrape()
        assert m2["kvs_edge_backlog_fragments"] >= 5 and m2["kvs_edge_connected"] == 0
        assert m2["kvs_edge_frames_total"] > m1["kvs_edge_frames_total"]
        emulator.faults.set_offline(False)
        wait_until(lambda: status_cli()[0] == 0, 60, "healthy again after the outage")
        m3 = scrape()
        assert m3["kvs_edge_fragments_persisted_total"] > m2["kvs_edge_fragments_persisted_total"]
        assert m3["kvs_edge_capture_to_persisted_seconds_count"] > 0
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err
    assert "secret" not in err.lower()


def test_invalid_config_exits_78_without_restart_loop(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream:\n  nmae: cam\n")
    r = subprocess.run(KVS_EDGE + ["run", "--config", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 78
    assert "stream.nmae: unknown key, did you mean stream.name?" in r.stderr


@pytest.mark.timeout(120)
def test_sighup_reloads_a_valid_config_and_keeps_running_on_a_broken_one(emulator, tmp_path):
    emulator.create_stream("cam")
    emulator.create_stream("cam2")
    buf = tmp_path / "buf"
    cfg_path = tmp_path / "c.yaml"
    data = config_dict(emulator, buf)
    write_config(cfg_path, data)
    status_file = buf / "status.json"
    proc = _start(KVS_EDGE + ["run", "--config", str(cfg_path)])
    try:
        wait_until(lambda: _status(status_file).get("fragments_persisted", 0) >= 2, 60, "streaming to cam")
        cfg_path.write_text("stream:\n  nmae: cam\n")  # a broken edit: reported, the running configuration stays
        proc.send_signal(signal.SIGHUP)
        persisted = _status(status_file)["fragments_persisted"]
        wait_until(lambda: _status(status_file).get("fragments_persisted", 0) >= persisted + 2, 30,
                   "streaming to go on after a broken reload")
        assert proc.poll() is None
        data["stream"]["name"] = "cam2"  # a valid edit: the pipeline restarts on the new stream
        write_config(cfg_path, data)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(emulator.archive("cam2")) >= 2, 40, "fragments in the new stream")
    finally:
        code, _, err = _stop(proc)
    assert code == 0, err
    assert "reload refused" in err and "stream.nmae: unknown key, did you mean stream.name?" in err
    assert "configuration changed" in err
