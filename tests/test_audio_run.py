"""Issue 14, Show 2 (short version; bench/av_sync.py runs the 10-minute one): the test pattern with audio through
`kvs-edge run` into the emulator; the beep-to-flash offset in the archive is measured for every flash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kvs_edge.media import aac
from support.appliance import config_dict, wait_until, write_config
from support.av_sync import flashes_and_beeps, offsets_ms
from support.avgen import read_tracks

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 30


@pytest.mark.timeout(SECONDS + 120)
def test_testpattern_with_audio_through_run_stays_in_sync(emulator, tmp_path):
    emulator.create_stream("cam")
    data = config_dict(emulator, tmp_path / "buf", fps=15)
    data["source"]["audio"] = {"sample_rate": 48000, "channels": 1}
    cfg = write_config(tmp_path / "c.yaml", data)
    proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status_file = tmp_path / "buf" / "status.json"
    try:
        def span_s():
            e = emulator.archive("cam")
            return len(e) > 1 and (e[-1].producer_ts_ms - e[0].producer_ts_ms) / 1000 >= SECONDS

        wait_until(span_s, SECONDS + 60, f"{SECONDS} s of video and audio archived")
        status = json.loads(status_file.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert status["audio"]["state"] == "ok" and status["audio"]["frames"] > 0, status
    files = emulator.archive_files("cam")
    assert len(files) == 1  # one session: the audio never went missing
    data = Path(files[0]).read_bytes()
    got = read_tracks(data)
    assert got["audio_codec"] == "aac" and len(got["audio_extradata"]) in (2, 5)
    assert aac.parse_asc(got["audio_extradata"]).sample_rate == 48000
    flashes, beeps = flashes_and_beeps(data)
    offs = offsets_ms(data)
    assert len(flashes) >= SECONDS - 3 and len(offs) == len(flashes), (flashes, beeps)
    print(f"{len(offs)} flashes: offset min {min(offs):.1f} max {max(offs):.1f} ms", [round(o, 1) for o in offs])
    assert max(abs(o) for o in offs) <= 20.0, offs
    # no drift trend: the second half is no further off than the first half plus 5 ms
    half = len(offs) // 2
    assert abs(sum(offs[half:]) / len(offs[half:]) - sum(offs[:half]) / half) <= 5.0, offs
