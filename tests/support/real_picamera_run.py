"""Drive kvs-edge's PicameraSource through the REAL picamera2 on a real libcamera (virtual camera), in its own process.

Run by tests/test_real_picamera2.py with the interpreter of the venv that tools/real-picamera/build.sh made (real
picamera2 from PyPI, libcamera's Python bindings from the patched build). It records what the source emitted and
what picamera2/libcamera reported, and writes them to OUT (frames.h264, result.json); the test asserts on them.

Stand-ins (the only fakes, see tools/real-picamera/standins): pykms (no display), a memfd-backed DMA heap (no
/dev/dma_heap here), and picamera2.encoders.H264Encoder bound to LibavH264Encoder, which is what picamera2 itself
does on a Pi 5 (this machine's platform probe says VC4, whose H264Encoder needs the /dev/video11 hardware encoder).

    python real_picamera_run.py OUT --width 640 --height 480 --fps 30 --seconds 4 --fragment-seconds 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tools" / "real-picamera" / "standins"


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fragment-seconds", type=float, default=1.0)
    ap.add_argument("--bitrate", type=int, default=1_000_000)
    ap.add_argument("--lores-fps", type=float, default=0.0, help="> 0: ask for the lores stream (motion) at this rate")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sys.path[:0] = [str(REPO), str(STANDINS)]
    logs = LogLines()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(logs)

    import memfd_dma_heap  # noqa: E402  (stand-in)
    import picamera2  # noqa: E402  (the real one)
    import picamera2.encoders as encoders  # noqa: E402
    import pykms  # noqa: E402  (stand-in)

    from kvs_edge.sources.picamera import PicameraSource  # noqa: E402

    assert getattr(pykms, "STAND_IN", False), "the pykms stand-in was not the one imported"
    memfd_dma_heap.install()
    platform = picamera2.platform.get_platform().name
    encoders.H264Encoder = encoders.LibavH264Encoder  # what picamera2's encoders/__init__.py does on a Pi 5

    cfg = SimpleNamespace(type="picamera", width=args.width, height=args.height, fps=args.fps, bitrate=args.bitrate,
                          profile="high", hflip=False, vflip=False, rotation=0, tuning_file=None, camera_index=0)
    src = PicameraSource(cfg, fragment_seconds=args.fragment_seconds)
    lores: list[dict] = []  # what the lores sink received: shape, SensorTimestamp, thread, luma mean

    def lores_sink(luma, ts_ns: int) -> None:
        lores.append({"shape": list(luma.shape), "dtype": str(luma.dtype), "ts_ns": ts_ns,
                      "thread": threading.current_thread().name, "mean": float(luma.mean()),
                      "std": float(luma.std())})

    if args.lores_fps > 0:
        src.want_lores(lores_sink, args.lores_fps)

    frames: list[tuple[int, bool, bytes, int, str]] = []  # (ts_ns, key, data, monotonic_ns at emit, thread)
    got_first = threading.Event()

    def emit(frame) -> None:
        frames.append((frame.timestamp_ns, frame.key, frame.data, time.monotonic_ns(),
                       threading.current_thread().name))
        got_first.set()

    result: dict = {"platform_probe": platform, "requested": [args.width, args.height]}
    before_ns = time.monotonic_ns()
    src.start(emit)
    got_first.wait(30.0)  # opening + configuring; the clock below counts from the first frame
    first_ns = time.monotonic_ns()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and src.error is None:
        time.sleep(0.05)
    recording_ns = time.monotonic_ns()
    camera = src._camera
    if camera is not None:
        result["camera_config_main"] = {k: v for k, v in camera.camera_config["main"].items()
                                        if isinstance(v, (int, str, tuple, list, bool))}
        lores_cfg = camera.camera_config.get("lores")
        result["camera_config_lores"] = None if lores_cfg is None else {
            k: v for k, v in lores_cfg.items() if isinstance(v, (int, str, tuple, list, bool))}
        result["camera_controls"] = {"FrameDurationLimits": list(camera.camera_controls["FrameDurationLimits"])}
    src.stop(timeout=10.0)
    after_ns = time.monotonic_ns()

    result.update({
        "error": str(src.error) if src.error else None,
        "name": src.name, "model": src.model, "size": [src.width, src.height],
        "iperiod": src.iperiod, "camera_info": picamera2.Picamera2.global_camera_info(),
        "before_ns": before_ns, "first_ns": first_ns, "recording_ns": recording_ns, "after_ns": after_ns,
        "stopped": src._camera is None and not (src._thread and src._thread.is_alive()),
        "main_thread": threading.main_thread().name,
        "memfd_buffers": sum(h.allocated for h in memfd_dma_heap.heaps),
        "frames": [{"ts_ns": ts, "key": key, "bytes": len(data), "emit_ns": at, "thread": thread}
                   for ts, key, data, at, thread in frames],
        "log": logs.lines,
        "lores": lores, "lores_size": src.lores_size,
    })
    (out / "frames.h264").write_bytes(b"".join(f[2] for f in frames))
    (out / "result.json").write_text(json.dumps(result, default=list, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
