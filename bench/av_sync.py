"""A/V sync over a long run (issue 14): the test pattern with audio through `kvs-edge run` into the emulator, then the
beep-to-flash offset measured in the archive for every flash (tests/support/av_sync.py).

    python bench/av_sync.py [--seconds 600] [--fps 15]

Prints one table: flashes measured, min / max / mean offset, max |offset|, and the drift trend (least-squares slope of
offset over time, ms per 10 minutes), with the first and last minute's mean as the reference each is compared with.
Targets (issue 14): max |offset| <= 20 ms, no drift trend.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--fps", type=int, default=15)
    a = ap.parse_args()
    import numpy as np

    from kvs_edge.emulator.server import Emulator
    from support.appliance import config_dict, write_config
    from support.av_sync import flashes_and_beeps

    with tempfile.TemporaryDirectory(prefix="kvs-edge-avsync-") as tmp:
        emu = Emulator(Path(tmp) / "emu")
        emu.start()
        emu.create_stream("cam")
        data = config_dict(emu, Path(tmp) / "buf", fps=a.fps, width=320, height=240)
        data["source"]["audio"] = {"sample_rate": 48000, "channels": 1}
        cfg = write_config(Path(tmp) / "c.yaml", data)
        proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(a.seconds + 5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        time.sleep(2)
        files = emu.archive_files("cam")
        blob = b"".join(Path(f).read_bytes() for f in files)
        emu.stop()
    if proc.returncode != 0:
        print(err, file=sys.stderr)
        return 1
    flashes, beeps = flashes_and_beeps(blob)
    pairs = []
    for t in flashes:
        b = min(beeps, key=lambda x: abs(x - t)) if beeps else None
        if b is not None and abs(b - t) < 500:
            pairs.append((t, b - t))
    t = np.array([p[0] for p in pairs]) / 1000.0
    off = np.array([p[1] for p in pairs])
    slope = np.polyfit(t - t[0], off, 1)[0] * 600 if len(t) > 2 else float("nan")
    first = off[t - t[0] < 60].mean()
    last = off[t - t[0] > t[-1] - t[0] - 60].mean()
    print(f"kvs-edge run, test pattern 320x240@{a.fps} + AAC 48 kHz mono, {a.seconds:.0f} s, emulator in-process; "
          f"{len(files)} archive session(s)")
    print(f"{'flashes':>8} {'paired':>7} {'min ms':>8} {'max ms':>8} {'mean ms':>8} {'max|o| ms':>10} "
          f"{'slope ms/10min':>15} {'1st min ms':>11} {'last min ms':>12}")
    print(f"{len(flashes):>8} {len(pairs):>7} {off.min():>8.1f} {off.max():>8.1f} {off.mean():>8.2f} "
          f"{np.abs(off).max():>10.1f} {slope:>15.3f} {first:>11.2f} {last:>12.2f}")
    return 0 if np.abs(off).max() <= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
