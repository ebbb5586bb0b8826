"""The cost of `Producer.put_frame` per frame at 1080p30, beside the appliance's per-frame cost, in the same run.

    python bench/producer.py [--seconds 5] [--width 1920 --height 1080 --fps 30 --bitrate 8000000]

The same encoded frames (PyAV libx264, no B-frames, 8 Mbit/s) go, paced in real time, to:
  Producer.put_frame   the library: the checks on the caller's thread (Annex B scan, slice types, timestamp) and the
                       hand-off to the muxer thread; the Producer uploads to the emulator (in this process) meanwhile
  appliance emit       reference: what the appliance's camera thread pays per frame (Pipeline.emit, the hand-off
                       alone), with the same muxer thread and a disk fragment log, no upload
Each call is timed with perf_counter_ns; the table gives median and p99 in microseconds, and the time per frame as a
share of the 33 ms frame interval.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def encode(frames: int, width: int, height: int, fps: int, bitrate: int) -> list[bytes]:
    import av
    import numpy as np

    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate, enc.bit_rate = Fraction(1, fps), Fraction(fps, 1), bitrate
    enc.options = {"preset": "ultrafast", "tune": "zerolatency",
                   "x264-params": f"bframes=0:keyint={fps}:min-keyint={fps}:scenecut=0:repeat-headers=1"}
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    out: list[bytes] = []
    for i in range(frames):
        img = np.roll(base, i * 8, axis=1)
        vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        out += [bytes(p) for p in enc.encode(vf)]
    out += [bytes(p) for p in enc.encode(None)]
    return out


def paced(frames: list[bytes], fps: int, call) -> list[int]:
    costs: list[int] = []
    t0 = time.monotonic()
    for i, f in enumerate(frames):
        delay = t0 + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        a = time.perf_counter_ns()
        call(i, f)
        costs.append(time.perf_counter_ns() - a)
    return costs


def row(name: str, costs: list[int], fps: int) -> str:
    q = statistics.quantiles(costs, n=100)
    med, p99 = statistics.median(costs) / 1000, q[98] / 1000
    return f"| {name:<22} | {med:9.1f} | {p99:9.1f} | {100 * med / (1e6 / fps):7.2f} % |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=8_000_000)
    a = ap.parse_args()

    from kvs_edge import Producer
    from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator
    from kvs_edge.log import FragmentLog
    from kvs_edge.media.frame import Frame
    from kvs_edge.pipeline import Pipeline

    n = int(a.seconds * a.fps)
    print(f"encoding {n} frames {a.width}x{a.height} at {a.bitrate / 1e6:g} Mbit/s ...", file=sys.stderr)
    frames = encode(n, a.width, a.height, a.fps, a.bitrate)
    with tempfile.TemporaryDirectory() as tmp:
        emu = Emulator(Path(tmp) / "kvs")
        emu.start()
        emu.create_stream("bench")
        try:
            p = Producer("bench", region="us-east-1", credentials=(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY),
                         endpoint_url=emu.url)
            t0 = time.time_ns()
            producer = paced(frames, a.fps, lambda i, f: p.put_frame(f, timestamp_ns=t0 + i * 1_000_000_000 // a.fps))
            persisted = p.flush(timeout=60)
            stats = p.stats
            p.close(timeout=0)

            class Idle:
                def start(self, emit):
                    pass

                def stop(self, timeout=0):
                    pass

            pipe = Pipeline(source=Idle(), frag_log=FragmentLog(Path(tmp) / "log", 1 << 30),
                            fragment_seconds=2.0)
            pipe.start()
            m0 = time.monotonic_ns()
            appliance = paced(frames, a.fps, lambda i, f: pipe.emit(Frame(f, m0 + i * 1_000_000_000 // a.fps,
                                                                          i % a.fps == 0)))
            pipe.stop()
        finally:
            emu.stop()
    print(f"\n{len(frames)} frames {a.width}x{a.height} {a.fps} fps, {sum(map(len, frames)) * 8 / a.seconds / 1e6:.1f} "
          f"Mbit/s; Producer: {stats.fragments_persisted} fragments persisted (flush {persisted}), "
          f"{stats.frames_dropped} frames dropped\n")
    print("| per frame              | median us | p99 us    | of 33 ms  |")
    print("|------------------------|-----------|-----------|-----------|")
    print(row("Producer.put_frame", producer, a.fps))
    print(row("appliance emit (ref.)", appliance, a.fps))


if __name__ == "__main__":
    main()
