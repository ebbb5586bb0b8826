"""Bytes uploaded over a scripted hour: upload.mode events with a few events, against continuous, in one run.

    .venv/bin/python bench/events.py [--minutes 60]

One real H.264 test clip (320x240, 15 fps, a key frame a second, libx264) is looped to --minutes of 2-s fragments on a
scripted recording clock, written through the real fragmenter into a real FragmentLog while the real Uploader sends
what the upload gate selects to the KVS emulator on loopback (plain HTTP). Events: three triggers (at 10, 25 and 40
minutes of an hour, scaled to --minutes; the second with --seconds 30), pre 5 s, post 5 s. The reference is the same
recording uploaded in continuous mode. Bytes are PutMedia body bytes (uploader.stats.bytes_sent).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FPS = 15


def run(mode, minutes, video, workdir, emu, stream):
    from botocore.credentials import Credentials

    from kvs_edge.clock import FixedOffset
    from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
    from kvs_edge.kvs.control import ControlPlane, DataEndpoint
    from kvs_edge.kvs.uploader import Uploader
    from kvs_edge.log.fragment_log import FragmentLog
    from kvs_edge.media.fragmenter import Fragmenter
    from kvs_edge.recorder import Recorder
    from kvs_edge.upload_gate import UploadGate
    from kvs_edge.upload_policy import Mode
    from fakes.fake_clock import ScriptedClock

    emu.create_stream(stream, retention_hours=24)
    creds = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
    control = ControlPlane("us-east-1", creds, endpoint_url=emu.url)
    start_ms = (int(time.time() * 1000) - (minutes + 10) * 60_000) // 1000 * 1000
    clock = ScriptedClock(start_ms)
    flog = FragmentLog(workdir / stream, 4 << 30, boot_id="b", sync_interval_s=60)
    gate = None
    source = flog
    if mode != "continuous":
        gate = source = UploadGate(flog, mode=Mode(mode), pre_seconds=5, post_seconds=5, retain_seconds=None,
                                   clock=clock, boot_id="b")
    up = Uploader(source, stream_name=stream, region="us-east-1", endpoint=DataEndpoint(control, stream),
                  credentials=creds, timebase=FixedOffset(0), stale_after_s=30)
    stop = threading.Event()
    th = threading.Thread(target=up.run, args=(stop,), daemon=True)
    th.start()
    scale = minutes / 60
    triggers = {int(10 * 60 * scale): ("door", 0), int(25 * 60 * scale): ("motion", 30), int(40 * 60 * scale): ("door", 0)}
    frag, rec = Fragmenter(target_ms=2000), Recorder(flog)
    n = len(video.units)
    recorded = 0
    for i in range(minutes * 60 * FPS):
        ms = start_ms + i * 1000 // FPS
        clock.ms = ms
        if gate is not None and i % FPS == 0 and i // FPS in triggers:
            label, secs = triggers.pop(i // FPS)
            gate.trigger(label, secs)
        u = video.units[i % n]
        rec.apply(frag.push(u.data, ms, u.key and True))
        recorded += len(u.data)
        if i % (FPS * 20) == 0:
            time.sleep(0.01)  # let the uploader run beside the writer
    rec.apply(frag.close())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if gate is None and flog.next_fragment(None, timeout=0) is None:
            break
        if gate is not None and gate.paused() and up.stats.fragments_done >= gate.stats.fragments_uploaded and \
                not up.connected:
            break
        time.sleep(0.2)
    stop.set()
    flog.wake()
    th.join(30)
    frags = flog.stats().fragments + up.stats.fragments_done if gate is None else len(flog.fragments())
    flog.close()
    return {"mode": mode, "fragments": up.stats.fragments_done, "bytes": up.stats.bytes_sent,
            "recorded_frame_bytes": recorded, "fragments_recorded": frags}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    minutes = ap.parse_args().minutes
    from kvs_edge.emulator import Emulator
    from support.h264gen import make_h264

    video = make_h264(frames=60 * FPS, width=320, height=240, fps=FPS, gop=FPS)
    # the clip loops: its first unit must be a key frame and it has a key frame a second
    with tempfile.TemporaryDirectory() as d:
        emu = Emulator(Path(d) / "emu").start()
        try:
            rows = [run("continuous", minutes, video, Path(d), emu, "cont"),
                    run("events", minutes, video, Path(d), emu, "events")]
        finally:
            emu.stop()
    ref = rows[0]["bytes"]
    print(f"scripted {minutes} min, 320x240 {FPS} fps, 2-s fragments; events: 3 triggers (one of 30 s), pre 5 s, post 5 s")
    print(f"{'mode':<12} {'fragments sent':>14} {'MB sent':>9} {'vs continuous':>14}")
    for r in rows:
        print(f"{r['mode']:<12} {r['fragments']:>14} {r['bytes'] / 1e6:9.2f} {r['bytes'] / ref:14.3f}")


if __name__ == "__main__":
    main()
