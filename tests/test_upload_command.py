"""`kvs-edge upload`: a file through the file source, the muxer, the fragment log and the uploader, to the emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.appliance import config_dict, write_config
from support.h264gen import SDK_DIR
from test_sources_file import encode_file

ROOT = Path(__file__).resolve().parents[1]


def upload(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvs_edge", "upload", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.timeout(150)
def test_upload_raw_h264_and_mp4_until_persisted(tls_emulator, tmp_path):
    emu = tls_emulator
    emu.create_stream("cam")
    cfg = write_config(tmp_path / "c.yaml", config_dict(emu, tmp_path / "buf"))
    r = upload(SDK_DIR / "in.h264", "--config", cfg, "--fps", 30)
    assert r.returncode == 0, r.stderr
    assert "180 frames" in r.stdout and "PERSISTED" in r.stdout
    assert sum(e.frames for e in emu.archive("cam")) == 180

    # an .mp4 (AVCC inside, timing from the container) into a second stream
    emu.create_stream("cam-mp4")
    mp4 = encode_file(tmp_path / "clip.mp4", frames=60, fps=15, gop=15)
    r = upload(mp4, "--config", cfg, "--stream", "cam-mp4")
    assert r.returncode == 0, r.stderr
    entries = emu.archive("cam-mp4")
    assert sum(e.frames for e in entries) == 60
    gaps = [b.producer_ts_ms - a.producer_ts_ms for a, b in zip(entries, entries[1:])]
    assert gaps == [1000, 1000, 1000], gaps  # 1-s fragments (stream.fragment_seconds) at the file's own pace


def test_upload_errors_are_one_line(emulator, tmp_path):
    emulator.create_stream("cam")
    cfg = write_config(tmp_path / "c.yaml", config_dict(emulator, tmp_path / "buf"))
    r = upload(SDK_DIR / "in.h264", "--config", cfg)  # a raw stream without --fps
    assert r.returncode == 2 and r.stderr.strip() == "kvs-edge upload: a raw .h264 file has no timing: give --fps N"
    r = upload(SDK_DIR / "in.h264", "--config", cfg, "--fps", 30, "--stream", "missing")
    assert r.returncode == 1
    assert "stream 'missing' does not exist" in r.stderr and "create-stream" in r.stderr
    assert "Traceback" not in r.stderr
    garbage = tmp_path / "x.h264"
    garbage.write_bytes(b"not video at all" * 100)
    r = upload(garbage, "--config", cfg, "--fps", 30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
