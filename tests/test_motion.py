"""The motion detector: a still picture with sensor noise and an object moving through it between 20 s and 25 s.

Pictures are synthesized at 2 per second (the detector's rate); the same scene also goes through libx264 and back
(key frames decoded by KeyFrameLuma) to show the detector works on what an H.264 source gives it.
"""

import numpy as np
import pytest

from kvs_edge.motion import KeyFrameLuma, Motion, MotionDetector
from kvs_edge.upload_policy import Trigger, merge

W, H = 160, 120
RATE = 2  # pictures per second


def scene(t: float, rng, *, mover: bool = True, noise: float = 8.0) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    still = (60 + (x * 0.6) + (y * 0.4)).astype(np.float32)  # a gradient: a wall, a floor
    if mover and 20.0 <= t < 25.0:
        cx = int(10 + (t - 20.0) / 5.0 * (W - 40))  # walks left to right
        still[40:80, cx:cx + 20] = 220
    pic = still + rng.normal(0, noise, size=still.shape)
    return np.clip(pic, 0, 255).astype(np.uint8)


def detector(**kw):
    kw.setdefault("threshold", 25)
    kw.setdefault("area", 0.01)
    kw.setdefault("cooldown_s", 10.0)
    return MotionDetector(**kw)


def run(det, *, seconds=60, **scene_kw):
    rng = np.random.default_rng(7)
    out = []
    for i in range(seconds * RATE):
        t = i / RATE
        r = det.feed(scene(t, rng, **scene_kw), t)
        if r is not None:
            out.append((t, r))
    return out


def test_a_moving_object_makes_exactly_one_event_covering_it():
    det = detector()
    hits = run(det)
    assert det.events == 1
    assert hits[0] == (20.0, Motion.START)
    assert all(r is Motion.CONTINUE for _, r in hits[1:])
    assert 20.0 <= hits[0][0] and hits[-1][0] >= 24.5  # motion seen until the object left (25 s: it disappears)
    # the triggers the appliance would send merge into one event covering 20-25 s
    spans = merge([Trigger(int(t * 1000), "motion") for t, _ in hits], 5000, 5000)
    assert len(spans) == 1 and spans[0].start_ms <= 15_000 and spans[0].end_ms >= 30_000


@pytest.mark.parametrize("noise", [4.0, 8.0, 12.0])
def test_sensor_noise_alone_makes_no_event(noise):
    det = detector()
    assert run(det, mover=False, noise=noise) == []
    assert det.last.changed < det.area


def test_region_of_interest_ignores_motion_outside_it():
    det = detector(roi=(0.0, 0.75, 1.0, 0.25))  # the bottom quarter; the object moves in rows 40-80 (of 120)
    assert run(det) == []
    det = detector(roi=(0.0, 0.25, 1.0, 0.5))
    assert det.events == 0 and run(det) and det.events == 1


def test_a_second_passage_after_the_cooldown_is_a_second_event():
    det = detector(cooldown_s=3.0)
    rng = np.random.default_rng(1)
    starts = []
    for i in range(80 * RATE):
        t = i / RATE
        r = det.feed(scene(t % 40.0, rng), t)  # the object passes at 20-25 s and again at 60-65 s
        if r is Motion.START:
            starts.append(t)
    assert starts == [20.0, 60.0]


def test_key_frames_through_h264_and_back():
    import av
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base = __import__("fractions").Fraction(1, RATE)
    enc.gop_size = RATE  # a key frame a second; the detector sees only those (KeyFrameLuma decodes no P frames)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1:scenecut=0"}
    rng = np.random.default_rng(3)
    luma, det, hits, keys = KeyFrameLuma(), detector(), [], 0
    for i in range(40 * RATE):
        t = i / RATE
        grey = scene(t, rng)
        frame = av.VideoFrame.from_ndarray(np.dstack([grey] * 3), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for pkt in enc.encode(frame):
            if not pkt.is_keyframe:
                continue
            keys += 1
            pic = luma.decode(bytes(pkt))
            if pic is not None and det.feed(pic, t) is not None:
                hits.append(t)
    assert keys == 40
    assert det.events == 1 and 20.0 <= hits[0] <= 21.0 and hits[-1] >= 24.0, hits


def test_motion_tap_in_front_of_the_pipeline_triggers_one_event_in_the_gate(tmp_path):
    """The appliance's wiring: Frames (H.264 key frames) pass through the tap's emit untouched, the detector thread
    decodes and compares them, and the gate records one merged `motion` event covering the object."""
    import fractions
    import time

    import av

    from kvs_edge.config import parse_config
    from kvs_edge.event_service import MotionTap
    from kvs_edge.log.fragment_log import FragmentLog
    from kvs_edge.media.frame import Frame
    from kvs_edge.upload_gate import UploadGate, read_events
    from kvs_edge.upload_policy import Mode
    from fakes.fake_clock import ScriptedClock as Clock

    cfg = parse_config({"stream": {"name": "cam"}, "upload": {"mode": "events"},
                        "events": {"motion": True, "motion_fps": RATE}}, "c.yaml")
    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="b")
    gate = UploadGate(log, mode=Mode.EVENTS, pre_seconds=5, post_seconds=5, retain_seconds=None, clock=Clock(),
                      boot_id="b", folder=tmp_path / "log")
    tap = MotionTap(cfg, gate)
    passed = []
    emit = tap.wrap(passed.append)
    tap.start()
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = W, H, "yuv420p", fractions.Fraction(1, RATE)
    enc.gop_size = 1
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1"}
    rng = np.random.default_rng(5)
    try:
        for i in range(40 * RATE):
            pic = scene(i / RATE, rng)
            f = av.VideoFrame.from_ndarray(np.dstack([pic] * 3), format="rgb24").reformat(format="yuv420p")
            f.pts = i
            for pkt in enc.encode(f):
                emit(Frame(bytes(pkt), i * 1_000_000_000 // RATE, bool(pkt.is_keyframe)))
                deadline = time.monotonic() + 5
                while not tap._queue.empty() and time.monotonic() < deadline:  # one picture at a time
                    time.sleep(0.002)
                time.sleep(0.02)
    finally:
        tap.stop()
        log.close()
    assert len(passed) == 40 * RATE  # the pipeline got every frame
    spans = gate.spans()
    assert len(spans) == 1 and spans[0].label == "motion", spans
    assert 15_000 <= spans[0].start_ms <= 16_000 and spans[0].end_ms >= 29_000
    recorded = read_events(tmp_path / "log")
    assert {e.label for e in recorded} == {"motion"} and [e.continues for e in recorded].count(False) == 1
    assert gate.stats.triggers == 1
