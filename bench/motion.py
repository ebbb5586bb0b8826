"""Motion detector CPU per frame: the comparison alone (a Picamera2 lores Y plane) and with a key frame decoded first
(H.264 sources: rtsp, v4l2, file, testpattern).

    .venv/bin/python bench/motion.py [--frames 200]

Reference in the same run: copying the same picture once (numpy .copy()), the least any per-frame work costs.
CPU is process time (time.process_time) over --frames pictures; "% core at N fps" = ms per frame * N / 10.
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvs_edge.motion import KeyFrameLuma, MotionDetector  # noqa: E402


def pictures(w, h, n, rng):
    base = rng.integers(40, 200, size=(h, w), dtype=np.uint8)
    return [np.clip(base + rng.normal(0, 6, size=(h, w)), 0, 255).astype(np.uint8) for _ in range(n)]


def cpu_ms(fn, items) -> float:
    t0 = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - t0) * 1000 / len(items)


def key_frames(w, h, n, rng):
    import av
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = w, h, "yuv420p", Fraction(1, 30)
    enc.gop_size = 1
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1"}
    out = []
    for i, pic in enumerate(pictures(w, h, n, rng)):
        f = av.VideoFrame.from_ndarray(np.dstack([pic] * 3), format="rgb24").reformat(format="yuv420p")
        f.pts = i
        out += [bytes(p) for p in enc.encode(f)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    n = ap.parse_args().frames
    rng = np.random.default_rng(1)
    rows = []
    for w, h in ((320, 240), (640, 480)):
        pics = pictures(w, h, n, rng)
        det = MotionDetector(threshold=25, area=0.01, cooldown_s=10)
        t = iter(range(10**9))
        rows.append((f"compare lores Y {w}x{h}", cpu_ms(lambda p: det.feed(p, next(t) * 0.5), pics), 2))
        rows.append((f"reference: copy {w}x{h}", cpu_ms(lambda p: p.copy(), pics), 2))
    for w, h in ((640, 480), (1280, 720)):
        keys = key_frames(w, h, max(20, n // 10), rng)
        luma = KeyFrameLuma()
        det = MotionDetector(threshold=25, area=0.01, cooldown_s=10)
        t = iter(range(10**9))
        rows.append((f"decode key frame + compare {w}x{h}",
                     cpu_ms(lambda k: det.feed(luma.decode(k), next(t) * 0.5), keys), 0.5))
    print(f"{'work per picture':<40} {'CPU ms':>8} {'at fps':>7} {'% core':>7}")
    for name, ms, fps in rows:
        print(f"{name:<40} {ms:8.3f} {fps:7.1f} {ms * fps / 10:7.3f}")


if __name__ == "__main__":
    main()
