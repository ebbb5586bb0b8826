"""`kvs-edge demo [--seconds N]`: the appliance's own code, end to end, without an AWS account.

Starts the KVS emulator in-process on a free port, streams the test pattern through the same Appliance and
Supervisor as `kvs-edge run` for N seconds with a live status line, waits until every fragment is PERSISTED, then
checks the archive (frames in = frames archived, PyAV decodes them) and says where the MKV is and how to play it.

`--watch` in a terminal (what `make demo` runs): after the check the test pattern keeps streaming and the emulator
stays up until Ctrl-C; the last line is the URL of the emulator's web console, which plays it live (HLS). Without a
terminal (CI, pipes) --watch changes nothing.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kvs_edge import logsetup
from kvs_edge.errors import EXIT_FAILURE, EXIT_OK

log = logging.getLogger("kvs_edge")

STREAM = "kvs-edge-demo"


def demo_config(emulator_url: str, buffer_dir: str, *, width=640, height=480, fps=15):
    """The demo's settings, through the same parser as a configuration file (stream.fragment_seconds and every other
    setting not named here keep config.py's defaults)."""
    from kvs_edge.config import parse_config
    from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

    return parse_config({
        "stream": {"name": STREAM, "region": "us-east-1"},
        "aws": {"credentials": "static", "access_key_id": DEFAULT_ACCESS_KEY_ID,
                "secret_access_key": DEFAULT_SECRET_ACCESS_KEY, "endpoint_url": emulator_url},
        "source": {"type": "testpattern", "width": width, "height": height, "fps": fps, "bitrate": "1M",
                   "profile": "baseline"},
        "buffer": {"path": buffer_dir, "max_bytes": "256MiB"},
        # containers and CI machines report the clock unsynchronized forever
        # (docs/pi-camera-and-service.md, "Time on a Pi")
        "time": {"require_sync": False},
        "health": {"status_file": str(Path(buffer_dir) / "status.json")},
    }, "<demo>")


def _progress(status: dict, t0: float, seconds: float, tty: bool) -> None:
    app_lat = status.get("_latency")
    line = (f"\r{time.monotonic() - t0:5.1f}/{seconds:.0f} s  frames {status['camera']['frames']:5d}  "
            f"persisted {status['fragments_persisted']:3d}  backlog {status['backlog']['fragments']:2d}  "
            f"latency {app_lat if app_lat else '-':>6}  {status['connection']['state']:<10}")
    if tty:
        sys.stdout.write(line)
        sys.stdout.flush()


def main(args) -> int:
    logsetup.configure("warning", getattr(args, "verbose", False))
    from kvs_edge.appliance import Appliance
    from kvs_edge.emulator import Emulator
    from kvs_edge.supervisor import Supervisor

    data_dir = Path(args.data_dir or "demo-data").resolve()
    shutil.rmtree(data_dir / "emulator", ignore_errors=True)
    buffer_dir = tempfile.mkdtemp(prefix="kvs-edge-demo-buffer-")
    tty = sys.stdout.isatty()
    watch = bool(getattr(args, "watch", False)) and tty
    seconds = float(args.seconds)
    with Emulator(data_dir / "emulator", port=0) as emu:
        emu.create_stream(STREAM, retention_hours=24)
        print(f"KVS emulator at {emu.url} (archive in {data_dir / 'emulator'})")
        if watch:
            print(f"web console (live while the demo runs): {emu.url}/")
        cfg = demo_config(emu.url, buffer_dir)
        app = Appliance(cfg)
        sup = Supervisor(app)
        t0 = time.monotonic()
        latencies: list[float] = []

        def tick(status: dict) -> None:
            lat = app.pipeline.counters.latencies
            status["_latency"] = f"{lat[-1]:.2f}s" if lat else None
            _progress(status, t0, seconds, tty)

        print(f"streaming a {cfg.source.width}x{cfg.source.height} test pattern at {cfg.source.fps} fps for "
              f"{seconds:.0f} s through the kvs-edge pipeline ...")
        code = sup.run(until=lambda: _capture_done(app, t0, seconds), on_tick=tick)
        if tty:
            print()
        latencies = sorted(app.pipeline.counters.latencies)
        produced = app.source.frames
        entries = emu.archive(STREAM)
        archived = sum(e.frames for e in entries)
        files = emu.archive_files(STREAM)
        shutil.rmtree(buffer_dir, ignore_errors=True)
        if code != 0:
            print("demo failed: see the messages above", file=sys.stderr)
            return code
        code = _report(produced, archived, entries, files, latencies)
        if watch and code == EXIT_OK:
            code = _watch(emu)
    return code


def _report(produced: int, archived: int, entries, files, latencies) -> int:
    decoded = _decode_count(files)
    print(f"frames captured {produced}, archived {archived} in {len(entries)} fragments, decoded by PyAV {decoded}")
    if latencies:
        p50 = latencies[len(latencies) // 2]
        print(f"capture -> PERSISTED latency: p50 {p50:.2f} s, max {latencies[-1]:.2f} s")
    for f in files:
        print(f"archived MKV: {f}")
    if files:
        print(f"play it with: ffplay {files[0]}   (or vlc / mpv; python -c \"import av; ...\" decodes it too)")
    if produced == 0 or archived != produced or decoded != produced:
        print("demo: the archive does not hold every captured frame", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _watch(emu) -> int:
    """Stream the test pattern again (a fresh buffer) until Ctrl-C, the emulator's console playing it live."""
    from kvs_edge.appliance import Appliance
    from kvs_edge.supervisor import Supervisor

    buffer_dir = tempfile.mkdtemp(prefix="kvs-edge-demo-buffer-")
    try:
        sup = Supervisor(Appliance(demo_config(emu.url, buffer_dir)))
        sup.install_signal_handlers()  # Ctrl-C (SIGINT) and SIGTERM end the loop cleanly
        print("streaming the test pattern live until Ctrl-C; watch it in a browser at the web console:")
        print(f"{emu.url}/", flush=True)
        code = sup.run()
    finally:
        shutil.rmtree(buffer_dir, ignore_errors=True)
    print("stopped")
    return code


def _capture_done(app, t0: float, seconds: float) -> bool:
    """Capture for `seconds`, then stop the camera and wait (bounded) until the uploader emptied the log."""
    if time.monotonic() - t0 < seconds:
        return False
    if not getattr(app, "_capture_stopped", False):
        app._capture_stopped = True
        app.pipeline.stop_capture()
        app._drain_deadline = time.monotonic() + 30
    return app.fragment_log.stats().fragments == 0 or time.monotonic() > app._drain_deadline


def _decode_count(files) -> int:
    import av

    n = 0
    for f in files:
        with av.open(str(f)) as c:
            for _ in c.decode(video=0):
                n += 1
    return n
