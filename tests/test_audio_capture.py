"""Issue 14, Show 3 and the device part of Show 4: live audio capture (sources/alsa.py).

There is no sound card on the test machine: the capture reads a WAV file with PyAV, paced in real time (each chunk is
handed over when its last sample would have been captured), through the same code as an ALSA device from the first
decoded frame on. The ALSA open itself (PyAV format "alsa") is exercised only for the device-that-does-not-exist case;
a real loopback device (snd-aloop) belongs to the VM test bed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import av
import pytest

from kvs_edge.clock import KernelClock
from kvs_edge.media import aac
from kvs_edge.retry import Backoff
from kvs_edge.sources.alsa import (SYSTEM_ALSA_CONFIG, AlsaAudio, alsa_config_dir, capture_devices,
                                   no_device_message, open_alsa)
from support.avgen import sound_file

RATE = 48000


def audio_cfg(**kw):
    base = dict(device="hw:1,0", sample_rate=RATE, channels=1, bitrate=64000, codec="aac")
    base.update(kw)
    return SimpleNamespace(**base)


def write_wav(path, seconds: float):
    return sound_file(path, "pcm_s16le", seconds, RATE)


def paced_wav(path, *, fail_after: int | None = None, log: list | None = None):
    """An open_input for AlsaAudio: the WAV's frames, each released when its last sample is 'captured'."""
    def open_input(device, sample_rate, channels):
        c = av.open(str(path))
        t0 = time.monotonic()
        done = 0
        try:
            for i, f in enumerate(c.decode(audio=0)):
                if fail_after is not None and i == fail_after:
                    raise OSError(5, "Input/output error")  # what ALSA says when the USB device is pulled
                done += f.samples
                due = t0 + done / sample_rate
                time.sleep(max(0.0, due - time.monotonic()))
                if log is not None:
                    log.append((time.monotonic_ns(), done))
                yield f
        finally:
            c.close()
    return open_input


@pytest.mark.timeout(60)
def test_paced_capture_is_stamped_on_the_video_clock(tmp_path):
    wav = write_wav(tmp_path / "mic.wav", 4.0)
    got, arrivals = [], []
    t_start = time.monotonic_ns()
    cap = AlsaAudio(audio_cfg(), open_input=paced_wav(wav, log=arrivals), clock=KernelClock())
    cap.start(got.append)
    deadline = time.monotonic() + 30
    while len(got) < 180 and time.monotonic() < deadline:
        time.sleep(0.05)
    cap.stop()
    assert cap.state == "ok" and cap.error is None
    assert aac.parse_asc(cap.audio.asc) == aac.AudioSpecificConfig(2, RATE, 1)
    assert len(got) >= 180
    # continuous: each AAC frame 1024 samples after the previous one (to the ns rounding)
    gaps = {round((b.timestamp_ns - a.timestamp_ns) / 1000) for a, b in zip(got[1:], got[2:])}
    assert gaps <= {21333, 21334}, gaps
    # on the monotonic clock: sample 0 was 'captured' when the paced reading started (within scheduling noise)
    first_real = got[1].timestamp_ns  # got[0] is the encoder's priming frame, one AAC frame earlier
    assert abs(first_real - t_start) < 60_000_000, (first_real - t_start) / 1e6
    # and never stamped after it arrived
    for ns, done in arrivals[5:40]:
        assert first_real + done * 10**9 // RATE <= ns + 5_000_000


@pytest.mark.timeout(60)
def test_a_device_that_disappears_comes_back_with_a_resync(tmp_path, caplog):
    wav = write_wav(tmp_path / "mic.wav", 2.0)
    calls = {"n": 0}
    paced_fail, paced_ok = paced_wav(wav, fail_after=20), paced_wav(wav)

    def open_input(*a):
        calls["n"] += 1
        return paced_fail(*a) if calls["n"] == 1 else paced_ok(*a)

    got = []
    cap = AlsaAudio(audio_cfg(), open_input=open_input, backoff=Backoff(0.05, 0.1))  # not the live backoff
    caplog.set_level("INFO")
    cap.start(got.append)
    deadline = time.monotonic() + 30
    while (cap.reopens < 1 or len(got) < 60) and time.monotonic() < deadline:
        time.sleep(0.05)
    cap.stop()
    assert cap.reopens == 1 and cap.state == "ok"
    gone = [r.message for r in caplog.records if "gone" in r.message]
    assert len(gone) == 1 and "Input/output error" in gone[0] and "video goes on alone" in gone[0]
    assert any("is back" in r.message for r in caplog.records)
    assert cap.timestamps.resyncs >= 1  # the gap re-anchored the clock instead of squeezing time
    ts = [f.timestamp_ns for f in got]
    assert ts == sorted(ts)


def test_a_device_that_does_not_exist_is_one_line_naming_it(caplog):
    cap = AlsaAudio(audio_cfg(device="hw:9,0"), open_input=open_alsa,
                    list_devices=lambda: ["hw:1,0 (USB Audio)"])
    cap.start(lambda f: None)
    cap.stop(timeout=10)
    assert cap.state == "missing"
    assert cap.error == ("source.audio.device hw:9,0: no such ALSA capture device; `arecord -l` lists: "
                         "hw:1,0 (USB Audio); sending video only")
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [cap.error]


def test_alsa_config_dir_points_at_the_system_config_unless_the_user_set_one():
    assert alsa_config_dir({}, exists=lambda p: p == f"{SYSTEM_ALSA_CONFIG}/alsa.conf") == SYSTEM_ALSA_CONFIG
    assert alsa_config_dir({}, exists=lambda p: False) is None
    assert alsa_config_dir({"ALSA_CONFIG_DIR": "/opt/alsa"}, exists=lambda p: True) is None
    assert alsa_config_dir({"ALSA_CONFIG_PATH": "/opt/alsa/my.conf"}, exists=lambda p: True) is None


@pytest.mark.skipif(not os.path.exists(f"{SYSTEM_ALSA_CONFIG}/alsa.conf"),
                    reason=f"no {SYSTEM_ALSA_CONFIG}/alsa.conf: apt install libasound2-data")
def test_pyav_libasound_reads_the_system_alsa_config():
    """PyAV's bundled libasound, through open_alsa, in a fresh process: the device name is parsed with the system's
    configuration (it looks for the card), not refused for want of one ("Cannot access file .../alsa.conf")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALSA_")}
    code = ("from kvs_edge.sources.alsa import open_alsa\n"
            "try:\n    next(iter(open_alsa('plughw:CARD=NoSuchCard,DEV=1', 16000, 1)))\n"
            "except OSError as e:\n    print('refused', e.errno)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "refused" in p.stdout, p.stdout + p.stderr
    assert "Cannot access file" not in p.stderr, p.stderr
    assert "NoSuchCard" in p.stderr and "card index" in p.stderr, p.stderr


def test_capture_devices_reads_proc_asound_pcm(tmp_path):
    pcm = tmp_path / "pcm"
    pcm.write_text("00-00: bcm2835 PCM : bcm2835 PCM : playback 8\n"
                   "01-00: USB Audio : USB Audio : playback 1 : capture 1\n")
    assert capture_devices(str(pcm)) == ["hw:1,0 (USB Audio)"]
    assert capture_devices(str(tmp_path / "none")) == []
    assert no_device_message("default", []).endswith("lists: none (no sound card found); sending video only")


@pytest.mark.timeout(90)
def test_pipeline_degrades_to_video_only_and_back(tmp_path, caplog):
    """Test pattern video + the paced 'microphone', which is unplugged for ~2.5 s: the fragment log holds an
    audio session, a video-only session, then an audio session again; the video never stops."""
    from kvs_edge.log import FragmentLog
    from kvs_edge.pipeline import Pipeline
    from kvs_edge.sources.testpattern import TestPatternSource
    from support.h264gen import read_kvs_mkv

    wav = write_wav(tmp_path / "mic.wav", 12.0)
    first, later = paced_wav(wav, fail_after=120), paced_wav(wav)  # ~2.6 s of sound, then the plug is pulled
    state = {"n": 0, "gone_at": None}

    def open_input(*a):
        state["n"] += 1
        if state["n"] == 1:
            return first(*a)
        if time.monotonic() - state["gone_at"] < 2.5:
            raise OSError(19, "No such device")
        return later(*a)

    def tracking(*a):
        try:
            yield from open_input(*a)
        except OSError:
            if state["gone_at"] is None:
                state["gone_at"] = time.monotonic()
            raise

    video = TestPatternSource(SimpleNamespace(width=96, height=64, fps=15, bitrate=200_000, profile="baseline"),
                              fragment_seconds=1)
    mic = AlsaAudio(audio_cfg(), open_input=tracking, backoff=Backoff(0.2, 0.4))
    log = FragmentLog(str(tmp_path / "log"), 64 << 20, sync_interval_s=3600)
    p = Pipeline(source=video, frag_log=log, fragment_seconds=1, audio_source=mic)
    caplog.set_level("INFO")
    p.start()
    deadline = time.monotonic() + 60
    while (mic.reopens < 1 or time.monotonic() - (state["gone_at"] or time.monotonic()) < 6) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    p.stop_capture()
    headers, seqs, info = [], [], log.next_fragment(None, 1.0)
    while info is not None:
        body, _ = log.read(info.seq, 0, 1 << 24, 1.0)
        if not headers or headers[-1][0] != info.header_id:
            headers.append((info.header_id, log.header(info.header_id), []))
        headers[-1][2].append(body)
        info = log.next_fragment(info.seq, 0.1)
    p.stop()
    tracks = [read_kvs_mkv(h + b"".join(bodies)).tracks for _, h, bodies in headers]
    assert tracks[:3] == [2, 1, 2], tracks
    assert p.counters.frames_dropped == 0 and p.fragmenter.stats.frames_written == p.counters.frames_in
    assert sum(1 for r in caplog.records if "gone" in r.message) == 1


def test_audio_beside_a_camera_only(caplog):
    from kvs_edge.sources import audio_beside

    for kind in ("picamera", "v4l2"):
        assert isinstance(audio_beside(SimpleNamespace(type=kind, audio=audio_cfg())), AlsaAudio)
    for kind in ("file", "testpattern", "rtsp"):  # they bring their own sound (tests/test_sources_rtsp_audio.py)
        assert audio_beside(SimpleNamespace(type=kind, audio=audio_cfg(device="auto"))) is None
    assert audio_beside(SimpleNamespace(type="picamera", audio=None)) is None
    assert caplog.records == []
    assert AlsaAudio(audio_cfg(device="auto")).device == "default"
