"""The Pi camera source against a fake picamera2/libcamera (tests/fakes) that mirrors picamera2 0.3.x's signatures
and encodes real H.264 with libx264 on its own threads: VC4 hardware-encoder behaviour and the Pi 5 (libav) case,
timestamps, key frames, stall detection, no camera."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from kvs_edge.sources import SourceError, open_source
from kvs_edge.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_types
from kvs_edge.sources.picamera import NO_CAMERA, NOT_INSTALLED, PicameraSource, stall_message

from conftest import _purge_fake_camera_modules as _purge_fake_modules  # noqa: E402


def cfg(**over):
    base = dict(type="picamera", uri=None, width=320, height=240, fps=20, bitrate=400_000, profile="high",
                hflip=False, vflip=False, rotation=0, tuning_file=None, camera_index=0, loop=False)
    base.update(over)
    return SimpleNamespace(**base)


class Collector:
    """emit() for tests: stores frames, notes the thread, signals when `want` frames arrived."""

    def __init__(self, want: int) -> None:
        self.frames = []
        self.threads = set()
        self.want = want
        self.enough = threading.Event()

    def __call__(self, frame) -> None:
        self.frames.append(frame)
        self.threads.add(threading.current_thread().name)
        if len(self.frames) >= self.want:
            self.enough.set()


def run_until(src, want: int, limit: float = 20.0) -> Collector:
    c = Collector(want)
    src.start(c)
    deadline = time.monotonic() + limit
    while not c.enough.is_set() and src.error is None and time.monotonic() < deadline:
        c.enough.wait(0.05)
    src.stop(timeout=3.0)
    return c


def decode(frames) -> list:
    with av.open(io.BytesIO(b"".join(f.data for f in frames)), format="h264") as c:
        return list(c.decode(video=0))


def test_importing_the_module_does_not_import_picamera2():
    code = ("import sys, kvs_edge.sources, kvs_edge.sources.picamera; "
            "print('picamera2' in sys.modules, 'libcamera' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_vc4_frames_have_sensor_timestamps_and_a_key_frame_every_iperiod(sim):
    src = open_source(cfg(rotation=180), fragment_seconds=1.0)
    assert isinstance(src, PicameraSource)
    c = run_until(src, 45)
    assert src.error is None
    frames = c.frames[:45]
    assert len(frames) == 45

    name, kwargs, encoder = sim.world.encoders[0]
    assert name == "H264Encoder"
    assert kwargs["repeat"] is True and kwargs["iperiod"] == 20 and kwargs["framerate"] == 20
    assert kwargs["bitrate"] == 400_000 and kwargs["profile"] == "high"
    camera = sim.world.cameras_opened[0]
    assert camera.camera_config["main"] == {"format": "YUV420", "size": (320, 240)}
    assert camera.camera_config["controls"]["FrameRate"] == 20
    t = camera.camera_config["transform"]
    assert (t.hflip, t.vflip) == (1, 1)  # rotation 180 = both flips
    assert src.name == "picamera 0 (imx708) 320x240@20"

    # capture time = (encoder.firsttimestamp + timestamp) us -> ns: the SensorTimestamp of each frame at us precision
    sensor = sim.world.sensor_timestamps[:45]
    assert [f.timestamp_ns for f in frames] == [s // 1000 * 1000 for s in sensor]
    # one IDR every iperiod = fps x fragment_seconds frames, each with SPS/PPS in front (repeat=True)
    assert [i for i, f in enumerate(frames) if f.key] == [0, 20, 40]
    for f in frames:
        types = nal_types(f.data)
        assert (NAL_IDR in types) == f.key
        if f.key:
            assert NAL_SPS in types and NAL_PPS in types
    # frames are handed over on the encoder's thread, not the source's
    assert c.threads == {"fake-v4l2-encoder"}
    pics = decode(frames)
    assert len(pics) == 45 and (pics[0].width, pics[0].height) == (320, 240)
    assert src.frames == len(c.frames)


def test_pi5_libav_encoder_gets_the_frame_rate_and_no_enable_sps_framerate(sim):
    sim.reset(platform="pisp")
    src = open_source(cfg(fps=25, profile="main"), fragment_seconds=1.0)
    c = run_until(src, 30)
    assert src.error is None, src.error
    name, kwargs, encoder = sim.world.encoders[0]
    assert name == "LibavH264Encoder"
    assert "enable_sps_framerate" not in kwargs  # the real one raises TypeError on it
    assert kwargs["framerate"] == 25 and kwargs["iperiod"] == 25 and kwargs["repeat"] is True
    frames = c.frames[:30]
    assert frames[0].key and all(NAL_SPS in nal_types(f.data) for f in frames if f.key)
    assert [f.timestamp_ns for f in frames] == [s // 1000 * 1000 for s in sim.world.sensor_timestamps[:30]]
    assert len(decode(frames)) == 30


def test_a_size_the_camera_cannot_produce_is_read_back_and_used_with_one_warning(sim, caplog):
    # The real picamera2 on libcamera does the same (tests/test_real_picamera2.py): configure() adjusts silently.
    sim.reset(sizes=[(640, 480), (1280, 720)])
    src = open_source(cfg(width=1000, height=700, fps=20), fragment_seconds=1.0)
    with caplog.at_level("WARNING", logger="kvs_edge.sources.picamera"):
        c = run_until(src, 5)
    assert src.error is None, src.error
    assert (src.width, src.height) == (1280, 720)
    assert src.name == "picamera 0 (imx708) 1280x720@20"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["camera 0 (imx708) cannot produce 1000x700: using the 1280x720 it gives "
                        "(set source.width: 1280 and source.height: 720 to silence this)"]
    pics = decode(c.frames[:5])
    assert (pics[0].width, pics[0].height) == (1280, 720)


def test_a_size_the_camera_produces_gives_no_warning(sim, caplog):
    sim.reset(sizes=[(640, 480), (1280, 720)])
    src = open_source(cfg(width=640, height=480), fragment_seconds=1.0)
    with caplog.at_level("WARNING", logger="kvs_edge.sources.picamera"):
        run_until(src, 3)
    assert src.error is None and (src.width, src.height) == (640, 480)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_pi5_fractional_frame_rate_reaches_the_libav_encoder_as_a_fraction(sim):
    # PyAV's add_stream(rate=29.97) raises AttributeError inside the real LibavH264Encoder; 2997/100 works.
    sim.reset(platform="pisp")
    src = open_source(cfg(fps=29.97), fragment_seconds=1.0)
    c = run_until(src, 3)
    assert src.error is None, src.error
    _, kwargs, _ = sim.world.encoders[0]
    assert kwargs["framerate"] == Fraction(2997, 100)
    assert len(decode(c.frames[:3])) == 3


def test_the_fake_pi5_encoder_rejects_a_float_frame_rate_like_the_real_one(sim):
    sim.reset(platform="pisp")
    from picamera2.encoders import LibavH264Encoder

    enc = LibavH264Encoder(bitrate=1_000_000, framerate=30.0)
    enc.width, enc.height = 64, 64
    with pytest.raises(AttributeError):
        enc._start()


def test_the_fake_pi5_encoder_rejects_enable_sps_framerate_like_the_real_one(sim):
    sim.reset(platform="pisp")
    from picamera2.encoders import H264Encoder, LibavH264Encoder

    assert H264Encoder is LibavH264Encoder
    with pytest.raises(TypeError):
        H264Encoder(bitrate=1_000_000, enable_sps_framerate=True)


def test_a_camera_that_stops_delivering_frames_is_reported_and_stop_does_not_hang(sim):
    sim.reset(stall_after_frames=8)
    src = open_source(cfg(), fragment_seconds=1.0, stall_seconds=0.6)
    got = Collector(10 ** 6)
    src.start(got)
    deadline = time.monotonic() + 15
    while src.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(src.error) == stall_message(0.6)
    assert str(src.error) == "camera stopped delivering frames for 0.6 s: check the ribbon cable and power supply"
    assert len(got.frames) == 8
    src.stop(timeout=0.5)  # the fake's stop() blocks forever, as a stalled Picamera2 can: this must still return
    camera = sim.world.cameras_opened[0]
    assert camera.started  # its stop() really is stuck; we gave up on it instead of waiting


def test_stall_seconds_come_from_the_config_when_given(sim):
    src = open_source(cfg(stall_seconds=7.5), fragment_seconds=2.0)
    assert src.stall_seconds == 7.5
    assert open_source(cfg(), fragment_seconds=2.0).stall_seconds == 5.0


def test_no_camera_gives_one_clear_line(sim):
    sim.reset(cameras=[])
    src = open_source(cfg(), fragment_seconds=2.0)
    c = run_until(src, 1, limit=5)
    assert str(src.error) == NO_CAMERA == "no camera found: check the ribbon cable and that the camera is enabled"
    assert c.frames == []


def test_picamera2s_own_index_error_maps_to_no_camera(sim):
    # picamera2 0.3.x: Picamera2() runs global_camera_info()[camera_num] -> IndexError when there is no camera.
    # Here the camera goes away between our listing and the open, so the fake raises it from that expression.
    import picamera2

    listing = picamera2.Picamera2.global_camera_info

    def list_then_unplug():
        out = listing()
        sim.world.cameras.clear()
        return out

    picamera2.Picamera2.global_camera_info = staticmethod(list_then_unplug)
    src = open_source(cfg(), fragment_seconds=2.0)
    run_until(src, 1, limit=5)
    assert str(src.error) == NO_CAMERA
    assert isinstance(src.error.__cause__, IndexError)


def test_camera_that_cannot_be_opened_says_why(sim):
    sim.reset(init_error=RuntimeError("Camera __init__ sequence did not complete."))
    src = open_source(cfg(), fragment_seconds=2.0)
    run_until(src, 1, limit=5)
    msg = str(src.error)
    assert msg.startswith("camera 0 (imx708) could not be opened (Camera __init__ sequence did not complete.)")
    assert "other program" in msg and "\n" not in msg


def test_camera_index_out_of_range_names_the_cameras_found(sim):
    src = open_source(cfg(camera_index=1), fragment_seconds=2.0)
    run_until(src, 1, limit=5)
    assert str(src.error) == ("source.camera_index 1: no such camera (found 0: imx708); "
                              "set source.camera_index to 0..0")


def test_tuning_file_is_loaded_and_passed(sim, tmp_path):
    tuning = {"version": 2.0, "target": "bcm2835", "algorithms": [{"rpi.agc": {"x": 1}}]}
    path = tmp_path / "imx708_noir.json"
    path.write_text(json.dumps(tuning))
    src = open_source(cfg(tuning_file=str(path)), fragment_seconds=2.0)
    run_until(src, 1)
    assert src.error is None
    assert sim.world.cameras_opened[0].tuning == tuning

    missing = open_source(cfg(tuning_file=str(tmp_path / "nope.json")), fragment_seconds=2.0)
    run_until(missing, 1, limit=5)
    assert str(missing.error).startswith(f"tuning file '{tmp_path / 'nope.json'}' could not be loaded")


def test_rotation_90_is_refused_with_the_reason():
    with pytest.raises(SourceError) as e:
        PicameraSource(cfg(rotation=90), fragment_seconds=2.0)
    assert str(e.value).startswith("source.rotation 90: the camera can only rotate by 0 or 180 degrees")


def test_flips_without_rotation(sim):
    src = open_source(cfg(hflip=True), fragment_seconds=2.0)
    run_until(src, 1)
    t = sim.world.cameras_opened[0].camera_config["transform"]
    assert (t.hflip, t.vflip) == (1, 0)


def test_without_picamera2_installed_the_error_says_how_to_install_it(monkeypatch):
    _purge_fake_modules()
    monkeypatch.setitem(sys.modules, "picamera2", None)  # as on a machine without python3-picamera2
    src = open_source(cfg(), fragment_seconds=2.0)
    run_until(src, 1, limit=5)
    assert str(src.error) == NOT_INSTALLED
    assert "apt install python3-picamera2" in NOT_INSTALLED


PI5_TWO_CAMERAS = [
    {"Model": "imx708", "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a", "Num": 0},
    {"Model": "imx477", "Id": "/base/axi/pcie@120000/rp1/i2c@80000/imx477@1a", "Num": 1},
]


def test_select_camera_by_model_or_port():
    from kvs_edge.sources.picamera import select_camera

    assert select_camera(PI5_TWO_CAMERAS, 0, model="IMX477") == 1
    assert select_camera(PI5_TWO_CAMERAS, 0, port="i2c@88000") == 0
    assert select_camera(PI5_TWO_CAMERAS, 1) == 1
    with pytest.raises(SourceError, match=r"source.camera_model 'imx219': no such camera \(found 0: imx708 at "):
        select_camera(PI5_TWO_CAMERAS, 0, model="imx219")
    two_alike = [dict(PI5_TWO_CAMERAS[0]), dict(PI5_TWO_CAMERAS[0], Id="/base/axi/pcie@120000/rp1/i2c@80000/x")]
    with pytest.raises(SourceError, match="2 cameras match"):
        select_camera(two_alike, 0, model="imx708")
    assert select_camera(two_alike, 0, model="imx708", port="i2c@80000") == 1


def _moving_scene(start: int, stop: int):
    """A still gradient with sensor noise (sigma 8); an object crosses it between frames start and stop."""
    def scene(index: int, width: int, height: int):
        rng = np.random.default_rng(index * 7919 + width)
        y, x = np.mgrid[0:height, 0:width]
        pic = 60 + x * (120 / width) + y * (60 / height)
        if start <= index < stop:
            cx = int((index - start) / (stop - start) * (width * 3 // 4))
            pic[height // 3:height // 3 + height // 5, cx:cx + width // 8] = 230
        return np.clip(pic + rng.normal(0, 8, pic.shape), 0, 255).astype(np.uint8)
    return scene


def _motion_rig(tmp_path, src, fps):
    from kvs_edge.config import parse_config
    from kvs_edge.event_service import MotionTap
    from kvs_edge.log.fragment_log import FragmentLog
    from kvs_edge.upload_gate import UploadGate
    from kvs_edge.upload_policy import Mode
    from fakes.fake_clock import ScriptedClock

    c = parse_config({"stream": {"name": "cam"}, "upload": {"mode": "events"},
                      "events": {"motion": True, "motion_fps": fps}}, "c.yaml")
    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="b")
    gate = UploadGate(log, mode=Mode.EVENTS, pre_seconds=1, post_seconds=1, retain_seconds=None,
                      clock=ScriptedClock(), boot_id="b", folder=tmp_path / "log")
    return MotionTap(c, gate, src), gate, log


def test_motion_reads_the_lores_luma_on_the_camera_thread_and_triggers_one_event(sim, tmp_path):
    """events.motion on the Pi camera: the lores stream (YUV420, 320x240 at most) is configured next to main, its Y
    plane (cut out of the stride-padded buffer) reaches the detector at motion_fps, no key frame is decoded, and an
    object crossing a noisy still picture is one `motion` event inside the crossing."""
    from kvs_edge.upload_gate import read_events

    sim.world.scene = _moving_scene(30, 50)
    src = open_source(cfg(width=400, height=300), fragment_seconds=1.0)
    tap, gate, log = _motion_rig(tmp_path, src, 5)
    seen = []
    real_feed = tap.detector.feed
    tap.detector.feed = lambda pic, t: seen.append((pic.shape, threading.current_thread().name)) or real_feed(pic, t)
    tap.start()
    try:
        c = run_until(src, 90, limit=30.0)
    finally:
        tap.stop()
        log.close()
    assert src.error is None and len(c.frames) >= 90
    camera = sim.world.cameras_opened[0]
    assert camera.camera_config["lores"] == {"format": "YUV420", "size": (320, 240)}
    assert src.lores_size == (320, 240) and tap.lores
    assert seen and {s for s, _ in seen} == {(240, 320)} and {n for _, n in seen} == {"kvs-edge-motion"}
    # 20 fps camera, 5 fps detector: about one picture in four (some dropped while the detector is busy is fine)
    assert len(seen) <= len(sim.world.sensor_timestamps) // 4 + 2
    events = read_events(tmp_path / "log")
    starts = [e for e in events if not e.continues]
    assert len(starts) == 1 and starts[0].label == "motion", events
    ts = sim.world.sensor_timestamps
    assert ts[30] // 1_000_000 <= starts[0].at_ms <= ts[52] // 1_000_000
    assert len(decode(c.frames)) == len(c.frames)  # the main stream's video is untouched


def test_a_camera_without_a_lores_stream_falls_back_to_key_frames_with_one_warning(sim, tmp_path, caplog):
    sim.world.lores = False
    sim.world.scene = _moving_scene(20, 40)
    src = open_source(cfg(), fragment_seconds=0.5)
    tap, gate, log = _motion_rig(tmp_path, src, 5)
    tap.start()
    wrapped = tap.wrap(Collector(60))
    try:
        src.start(wrapped)
        deadline = time.monotonic() + 30
        while len(sim.world.sensor_timestamps) < 60 and src.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        src.stop(timeout=3.0)
    finally:
        tap.stop()
        log.close()
    assert src.error is None and src.lores_size is None and not tap.lores
    assert sim.world.cameras_opened[0].camera_config["lores"] is None
    assert [r.message for r in caplog.records if "low-resolution" in r.message] and tap.compared >= 3
