"""Each kind of source driven through the whole appliance (pipeline, fragment log, uploader) to the emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import pytest

from kvs_edge.appliance import Appliance
from kvs_edge.config import parse_config
from support.appliance import applied, archived_frames, config_dict, wait_until
from support.h264gen import make_h264

ROOT = Path(__file__).resolve().parents[1]


def _stream_until(app, fragments: int, timeout: float = 40) -> None:
    app.start()
    try:
        wait_until(lambda: applied(app).pipeline.counters.fragments_persisted >= fragments, timeout, f"{fragments} fragments")
        app.pipeline.stop_capture()
        wait_until(lambda: app.fragment_log.stats().fragments == 0, 30, "every fragment to be acknowledged")
    finally:
        app.stop()


def _decoded_frames(emu, stream="cam") -> int:
    n = 0
    for f in emu.archive_files(stream):
        with av.open(str(f)) as c:
            n += sum(1 for _ in c.decode(video=0))
    return n


@pytest.mark.parametrize("platform", ["vc4", "pisp"])
@pytest.mark.timeout(120)
def test_pi_camera_through_the_appliance(sim, emulator, tmp_path, platform):
    """The fake Picamera2 (real H.264 inside; `pisp` is the Pi 5, where H264Encoder is libav) to the emulator."""
    world = sim.reset(platform=platform)
    emulator.create_stream("cam")
    data = config_dict(emulator, tmp_path / "buf", source={"type": "picamera", "width": 160, "height": 120,
                                                            "fps": 15, "bitrate": "300k", "profile": "high"})
    app = Appliance(parse_config(data, "<test>"))
    _stream_until(app, 3)
    assert world.encoders, "no encoder was created"
    assert archived_frames(emulator) == app.source.frames == _decoded_frames(emulator)
    entries = emulator.archive("cam")
    assert all(not e.defects for e in entries)
    # producer timestamps are the sensor timestamps moved to the wall clock: fragments of at least the 1-s target,
    # cut at key frames (the Pi 5's libav encoder keeps x264's scene-cut key frames, so a GOP can run longer)
    gaps = [b.producer_ts_ms - a.producer_ts_ms for a, b in zip(entries, entries[1:])]
    assert gaps and all(900 <= g <= 2100 for g in gaps), gaps


@pytest.mark.timeout(120)
def test_file_source_through_the_appliance(emulator, tmp_path):
    enc = make_h264(45, 160, 120, fps=15, gop=15)
    video = tmp_path / "clip.h264"
    video.write_bytes(enc.annexb)
    emulator.create_stream("cam")
    data = config_dict(emulator, tmp_path / "buf", source={"type": "file", "uri": str(video), "fps": 15})
    app = Appliance(parse_config(data, "<test>"))
    app.start()
    try:
        wait_until(lambda: app.source.finished, 30, "the file to be played in real time")
        app.pipeline.stop_capture()
        wait_until(lambda: app.fragment_log.stats().fragments == 0, 30, "every fragment to be acknowledged")
    finally:
        app.stop()
    assert archived_frames(emulator) == 45 == _decoded_frames(emulator)


@pytest.mark.timeout(120)
def test_demo_command_from_the_cli(tmp_path):
    """What `make demo` runs: exit 0, every captured frame archived and decodable, where the MKV is."""
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "demo", "--seconds", "6", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=110)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("frames captured"))
    numbers = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
    captured, archived, _fragments, decoded = numbers
    assert captured > 0 and captured == archived == decoded
    mkv = [Path(x.split(": ", 1)[1]) for x in r.stdout.splitlines() if x.startswith("archived MKV: ")]
    assert mkv and all(p.is_file() and p.is_relative_to(tmp_path) for p in mkv)
