"""`kvs-edge run` in upload.mode events as a real process: `kvs-edge trigger` over the control socket, kill -9 while
recording, an event after the restart that reaches back into video recorded before it, `kvs-edge events`, and
`kvs-edge export` of a span that crosses the restart (decoded by PyAV: every frame, in order)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from kvs_edge.dvr import recorded_fragments
from kvs_edge.log import FragmentLog
from support.appliance import config_dict, wait_until, write_config

ROOT = Path(__file__).resolve().parents[1]
KVS_EDGE = [sys.executable, "-m", "kvs_edge"]
PRE, POST = 8, 2


def _run(*args, timeout=60):
    return subprocess.run(KVS_EDGE + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _start(cfg):
    return subprocess.Popen(KVS_EDGE + ["run", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


@pytest.mark.timeout(240)
def test_events_mode_survives_kill_9_and_an_event_reaches_back_before_the_restart(emulator, tmp_path):
    emulator.create_stream("cam")
    buf = tmp_path / "buf"
    sock = tmp_path / "run" / "control.sock"
    data = config_dict(emulator, buf, upload={"mode": "events"},
                       events={"pre_seconds": PRE, "post_seconds": POST, "control_socket": str(sock)})
    cfg = write_config(tmp_path / "c.yaml", data)
    status = buf / "status.json"

    first = _start(cfg)
    try:
        wait_until(lambda: ((_status(status).get("upload") or {}).get("retained_s") or 0) >= 5, 60, "5 s recorded")
        assert _status(status)["upload"]["mode"] == "events"
        assert (sock.stat().st_mode & 0o777) == 0o600
        wait_until(lambda: _status(status).get("state") == "recording", 30, "state recording")
        st = _run("status", "--file", str(status))
        assert st.returncode == 0, st.stdout + st.stderr  # recording only is healthy, not "nothing persisted"
        assert "upload:        events" in st.stdout
        killed_ms = int(time.time() * 1000)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert emulator.archive("cam") == [], "events mode uploaded without an event"
    before = [f for f in recorded_fragments(buf) if f.wall_ms is not None and f.wall_ms < killed_ms]
    assert len(before) >= 4, "the retained span did not survive kill -9"

    second = _start(cfg)
    try:
        wait_until(lambda: _status(status).get("pid") == second.pid
                   and (_status(status).get("camera") or {}).get("state") == "ok", 60, "the restarted service recording")
        trig = _run("trigger", "--socket", str(sock), "--label", "door")
        assert trig.returncode == 0, trig.stderr
        trigger_ms = int(time.time() * 1000)
        assert trigger_ms - killed_ms < PRE * 1000, "the restart took longer than pre_seconds: widen PRE"
        wait_until(lambda: any(e.producer_ts_ms > trigger_ms + 1000 for e in emulator.archive("cam")), 60,
                   "the event uploaded past its trigger")
        time.sleep(POST + 3)  # let the post roll finish
        bad = _run("trigger", "--socket", str(sock), "--label", "AWS_nope")
        assert bad.returncode == 1 and "AWS" in bad.stderr
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=20)
    assert second.returncode == 0

    got = sorted(emulator.archive("cam"), key=lambda e: e.producer_ts_ms)
    assert all("kvs-edge.event=door" in e.tags for e in got)
    # the event reached back into video recorded by the killed process
    assert got[0].producer_ts_ms < killed_ms, (got[0].producer_ts_ms, killed_ms)
    assert got[0].producer_ts_ms >= trigger_ms - PRE * 1000 - 1500
    assert got[-1].producer_ts_ms <= trigger_ms + (POST + 3) * 1000
    # nothing outside the event: the last uploaded fragment starts within post + a fragment of the trigger
    ev = _run("events", "--dir", str(buf))
    assert ev.returncode == 0 and "door" in ev.stdout

    # export the whole recording (it crosses the restart), decode every frame
    frags = recorded_fragments(buf)
    assert any(f.wall_ms < killed_ms for f in frags) and any(f.wall_ms > killed_ms for f in frags)
    clip = tmp_path / "clip.mp4"
    start_s, end_s = frags[0].wall_ms / 1000, (frags[-1].wall_ms + frags[-1].duration_ms) / 1000
    out = _run("export", "--dir", str(buf), "--from", f"{start_s:.3f}", "--to", f"{end_s:.3f}", "-o", str(clip))
    assert out.returncode == 0, out.stderr
    expected = sum(f.frames for f in frags)
    with av.open(str(clip)) as c:
        pts = [fr.pts for fr in c.decode(video=0)]
    assert len(pts) == expected
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    # the clip's timeline is the wall clock's, the restart's gap included
    with av.open(str(clip)) as c:
        tb = float(c.streams.video[0].time_base)
    span_s = (frags[-1].wall_ms + frags[-1].duration_ms - frags[0].wall_ms) / 1000
    assert abs((pts[-1] - pts[0]) * tb - span_s) < 0.15, ((pts[-1] - pts[0]) * tb, span_s)


def _motion_clip(path: Path, seconds: int = 32, fps: int = 10) -> None:
    """A still picture with sensor noise, an object moving through it from 20 s to 25 s; raw H.264, a key frame a
    second (libx264)."""
    from fractions import Fraction

    import numpy as np

    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = 160, 120, "yuv420p", Fraction(1, fps)
    enc.gop_size = fps
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1:scenecut=0"}
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:120, 0:160]
    still = (60 + x * 0.6 + y * 0.4).astype(np.float32)
    with open(path, "wb") as out:
        for i in range(seconds * fps):
            t = i / fps
            pic = still.copy()
            if 20.0 <= t < 25.0:
                cx = int(10 + (t - 20.0) / 5.0 * 120)
                pic[40:80, cx:cx + 20] = 220
            grey = np.clip(pic + rng.normal(0, 8, pic.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.dstack([grey] * 3), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for pkt in enc.encode(frame):
                out.write(bytes(pkt))
        for pkt in enc.encode(None):
            out.write(bytes(pkt))


@pytest.mark.timeout(180)
def test_motion_in_the_running_appliance_uploads_one_event_around_it(emulator, tmp_path):
    """A file source played in real time by the appliance, motion detection on its key frames: one event, the video
    from 5 s before the object appears to 5 s after it was last seen, tagged motion, and nothing else."""
    from kvs_edge.appliance import Appliance
    from kvs_edge.config import parse_config
    from support.appliance import applied

    clip = tmp_path / "motion.h264"
    _motion_clip(clip)
    emulator.create_stream("cam")
    data = config_dict(emulator, tmp_path / "buf", source={"type": "file", "uri": str(clip), "fps": 10},
                       upload={"mode": "events"},
                       events={"motion": True, "pre_seconds": 5, "post_seconds": 5,
                               "control_socket": str(tmp_path / "c.sock")})
    app = Appliance(parse_config(data, "<test>"))
    app.start()
    try:
        wait_until(lambda: app.source.finished, 90, "the clip to be played in real time")
        app.pipeline.stop_capture()
        gate = app.events.gate
        wait_until(lambda: gate.stats.triggers and gate.idle and not app.link.uploader.connected, 60,
                   "the event uploaded")
    finally:
        app.stop()
    applied(app)
    got = sorted(emulator.archive("cam"), key=lambda e: e.producer_ts_ms)
    frags = recorded_fragments(tmp_path / "buf")
    t0 = frags[0].wall_ms  # the clip's first frame
    rel = [(e.producer_ts_ms - t0) / 1000 for e in got]
    assert gate.stats.triggers == 1, rel
    assert rel and 14.0 <= rel[0] <= 16.0 and 28.0 <= rel[-1] <= 31.0, rel
    assert all("kvs-edge.event=motion" in e.tags for e in got)
    ev = _run("events", "--dir", str(tmp_path / "buf"))
    assert ev.stdout.count("motion") == 1, ev.stdout


@pytest.mark.timeout(120)
def test_retention_holds_while_kvs_cannot_be_reached(emulator, tmp_path):
    """buffer.retain_seconds bounds the recorded span also when the uploader never gets to ask for fragments (the
    control plane refuses connections), which is when a device records the longest."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: every control-plane call is refused
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    buf = tmp_path / "buf"
    data = config_dict(emulator, buf, upload={"mode": "events"},
                       events={"pre_seconds": 2, "post_seconds": 1, "control_socket": str(tmp_path / "c.sock")},
                       buffer={"retain_seconds": 3})
    data["aws"]["endpoint_url"] = f"http://127.0.0.1:{dead}"
    status = buf / "status.json"
    proc = _start(write_config(tmp_path / "c.yaml", data))
    try:
        wait_until(lambda: _status(status).get("state") is not None, 60, "the status file")
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 12 and (_status(status).get("camera") or {}).get("frames"),
                   60, "12 s of recording")
        up = _status(status)["upload"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert up["fragments_expired"] > 0, (up, err[-2000:])
    # 3 s kept, plus the fragment being written, the one just closed and one pass of the 1 s timer
    assert up["retained_s"] <= 3 + 1 + 1 + 1.5, (up, err[-2000:])
