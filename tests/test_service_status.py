"""The status file (atomic write, read), the health assessment, and the `kvs-edge status` command's output and exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from kvs_edge.service.status import StatusError, assess, format_human, read_status, remove_status, write_status

NOW = 1_780_000_000.0


def healthy_status(now: float = NOW, **changes) -> dict:
    status = {
        "version": 1, "pid": os.getpid(), "updated_at": now - 1.0, "started_at": now - 3600.0, "stream": "cam1",
        "state": "streaming",
        "camera": {"state": "ok", "frames": 108000, "last_frame_age_s": 0.03},
        "connection": {"state": "connected", "since": now - 1800.0},
        "backlog": {"fragments": 1, "bytes": 250_000, "seconds": 1.5},
        "last_persisted_age_s": 1.2, "fragments_persisted": 1790, "frames_dropped": 0, "fragments_evicted": 0,
        "clock_synced": True, "last_error": None,
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(status.get(key), dict):
            status[key] = {**status[key], **value}
        else:
            status[key] = value
    return status


# ---------------------------------------------------------------------------------------------------- file I/O

def test_write_then_read_round_trips_with_mode_0644(tmp_path):
    path = tmp_path / "status.json"
    old_umask = os.umask(0o077)  # the service runs with UMask=0077; the status file must still be readable
    try:
        write_status(path, healthy_status())
    finally:
        os.umask(old_umask)
    assert read_status(path) == healthy_status()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temp file left behind


def test_readers_never_see_a_partial_file(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, healthy_status(camera={"frames": -1}))
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def reader():
        while not stop.is_set():
            try:
                seen.append(read_status(path)["camera"]["frames"])
            except Exception as exc:  # a torn or missing file would land here
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    big = "x" * 200_000  # large enough that a non-atomic write would be observed half done
    for i in range(300):
        write_status(path, healthy_status(camera={"frames": i}, last_error=big if i % 2 else None))
    stop.set()
    t.join()
    assert errors == []
    assert seen and seen == sorted(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_status(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StatusError, match="not a kvs-edge status file"):
        read_status(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(StatusError):
        read_status(bad)
    remove_status(bad)
    remove_status(bad)  # twice is fine
    assert not bad.exists()


# ---------------------------------------------------------------------------------------------------- assess

def test_healthy():
    assert assess(healthy_status(), NOW, process_alive=True) == (True, [])


@pytest.mark.parametrize("changes, expected", [
    ({"updated_at": NOW - 45}, "status last updated 45 s ago: the service is not running or hangs"),
    ({"camera": {"state": "stalled", "last_frame_age_s": 12.0}}, "camera stalled: no frame for 13 s"),
    ({"connection": {"state": "offline", "since": NOW - 300}}, "offline for 5 min"),
    ({"last_persisted_age_s": 75.0}, "no fragment PERSISTED by KVS for 76 s while frames flow"),
    ({"last_persisted_age_s": None, "started_at": NOW - 90}, "no fragment PERSISTED by KVS since the start 90 s ago"),
    ({"state": "waiting_for_clock", "clock_synced": False}, "waiting for the clock to synchronize"),
    ({"last_error": "PutMedia: ERROR 4002\nnot authorized"}, "last error: PutMedia: ERROR 4002 not authorized"),
    ({"state": "stopping"}, "the service is stopping"),
    ({"version": 2}, "unknown status file version 2"),
])
def test_each_unhealthy_condition_gives_its_reason(changes, expected):
    healthy, reasons = assess(healthy_status(**changes), NOW, process_alive=True)
    assert not healthy
    assert any(r.startswith(expected) for r in reasons), reasons


def test_process_gone_is_unhealthy_even_with_a_fresh_file():
    healthy, reasons = assess(healthy_status(), NOW, process_alive=False)
    assert not healthy and "is gone" in reasons[0]


def test_not_persisting_is_not_blamed_while_waiting_for_the_clock_or_with_a_stalled_camera():
    _, reasons = assess(healthy_status(state="waiting_for_clock", last_persisted_age_s=600.0), NOW)
    assert not any("PERSISTED" in r for r in reasons)
    _, reasons = assess(healthy_status(camera={"state": "stalled"}, last_persisted_age_s=600.0), NOW)
    assert not any("PERSISTED" in r for r in reasons)


def test_clock_not_synced_without_require_sync_is_healthy():
    # require_sync false: the service streams ("streaming") with an unsynchronized clock
    assert assess(healthy_status(clock_synced=False), NOW) == (True, [])


def test_an_outage_gives_several_reasons_at_once():
    status = healthy_status(connection={"state": "offline", "since": NOW - 120}, last_persisted_age_s=119.0,
                            backlog={"fragments": 60, "bytes": 15_000_000, "seconds": 120.0},
                            last_error="connect to kinesisvideo.us-east-1.amazonaws.com:443: timed out")
    healthy, reasons = assess(status, NOW)
    assert not healthy
    assert [r.split(" ")[0] for r in reasons] == ["offline", "no", "last"]


def test_format_human_shows_the_figures_and_the_reasons():
    text = format_human(healthy_status(backlog={"fragments": 60, "bytes": 15_728_640, "seconds": 120.0},
                                       connection={"state": "offline", "since": NOW - 100}), NOW)
    assert text.startswith("kvs-edge: UNHEALTHY (streaming)")
    assert "60 fragments, 15.0 MiB, 120.0 s of video" in text
    assert "108000 frames" in text
    assert "! offline for 100 s" in text
    assert format_human(healthy_status(), NOW).startswith("kvs-edge: healthy (streaming)")


# ---------------------------------------------------------------------------------------------------- the command

def run_status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvs_edge", "status", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_healthy_exit_0_and_json(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, healthy_status(time.time()))
    r = run_status("--file", str(path))
    assert r.returncode == 0, r.stderr
    assert "kvs-edge: healthy" in r.stdout
    r = run_status("--json", "--file", str(path))
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["healthy"] is True and doc["reasons"] == [] and doc["stream"] == "cam1"


def test_cli_unhealthy_exit_1_with_reasons(tmp_path):
    path = tmp_path / "status.json"
    now = time.time()
    write_status(path, healthy_status(now, connection={"state": "offline", "since": now - 90},
                                      backlog={"fragments": 45, "bytes": 11_000_000, "seconds": 90.0}))
    r = run_status("--file", str(path))
    assert r.returncode == 1
    assert "! offline for 90 s" in r.stdout
    doc = json.loads(run_status("--json", "--file", str(path)).stdout)
    assert doc["healthy"] is False and doc["backlog"]["fragments"] == 45
    assert doc["reasons"][0].startswith("offline for")


def test_cli_dead_process_exit_1(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "status.json"
    write_status(path, healthy_status(time.time(), pid=int(gone.stdout)))
    r = run_status("--json", "--file", str(path))
    assert r.returncode == 1
    assert "is gone" in json.loads(r.stdout)["reasons"][0]


def test_cli_no_file_exit_3_and_garbage_exit_2(tmp_path):
    r = run_status("--file", str(tmp_path / "status.json"))
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr.strip().startswith("kvs-edge is not running: no status file")
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "status.json").write_text("garbage")
    r = run_status("--file", str(tmp_path / "status.json"))
    assert r.returncode == 2
    assert "not a kvs-edge status file" in r.stderr
