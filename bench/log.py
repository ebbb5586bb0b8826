"""Bytes the fragment log makes the storage device write, per hour of video: online vs offline.

    python bench/log.py [--minutes 10] [--bitrate 4000000] [--dir /var/tmp/kvs-edge-bench-log] [--realtime]

Feeds 2-s fragments of 30 frames/s at the given bitrate into a FragmentLog for N simulated minutes, twice:
  online   every fragment is released (acknowledged) --ack-delay seconds after it completes
  offline  nothing is ever released (the network is down): the log must keep everything, and fsyncs
and reads this process's /proc/self/io before and after: write_bytes (bytes whose page got dirtied, i.e. bound for the
device) minus cancelled_write_bytes (dirty pages dropped because their file was deleted or truncated before writeback).
The result is scaled to one hour and printed beside the video bytes.

The log runs on a simulated clock (fsync interval, ack delay, segment age), so the run is faster than real time. The
kernel's writeback is on the real clock: a dirty page is written back once it is older than vm.dirty_expire_centisecs
(30 s by default). Online, a segment lives (segment_seconds + ack delay) of *simulated* time, i.e. less in real time,
so the fast run can only under-count writeback that real time would have caused if a segment outlived
dirty_expire_centisecs; --realtime paces the feed at 1x to check that (use a few minutes).

Needs a real block device under --dir (not tmpfs, where write_bytes never moves). Ext4 metadata (journal) writes are
done by the jbd2 kernel thread and are NOT counted in /proc/self/io; they are a few KB per created/deleted file.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvs_edge.log import FragmentLog  # noqa: E402
from kvs_edge.log import fragment_log as fl_mod  # noqa: E402


def proc_io() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["cancelled_write_bytes"])


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(mode: str, args: argparse.Namespace, pool: bytes) -> dict:
    path = Path(args.dir) / mode
    shutil.rmtree(path, ignore_errors=True)
    realtime = args.realtime
    clock = time.monotonic if realtime else SimClock()
    syncs = [0]
    real_fdatasync = fl_mod._fdatasync

    def counting_fdatasync(fd: int) -> None:
        syncs[0] += 1
        real_fdatasync(fd)

    fl_mod._fdatasync = counting_fdatasync
    log = FragmentLog(path, args.max_bytes, sync_interval_s=args.sync_interval, clock=clock)
    syncs[0] = 0  # not counting the one-off fragment-counter file written at open
    hid = log.add_header(b"\x1a\x45\xdf\xa3" + b"h" * 200)
    fps, frag_frames = args.fps, int(args.fps * args.fragment_seconds)
    frame_bytes = args.bitrate / 8 / fps
    key_bytes, p_bytes = int(frame_bytes * 4), int((frame_bytes * frag_frames - frame_bytes * 4) / (frag_frames - 1))
    total_frames = int(args.minutes * 60 * fps)
    rnd = random.Random(1)
    pending: list[tuple[float, int]] = []
    video = 0
    start_real = time.monotonic()
    w0, c0 = proc_io()
    seq = None
    for i in range(total_frames):
        t = i / fps
        if realtime:
            delay = start_real + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        else:
            clock.t = t
        now = clock()
        while mode == "online" and pending and pending[0][0] <= now:
            log.release(pending.pop(0)[1])
        if i % frag_frames == 0:
            if seq is not None:
                log.end_fragment()
                pending.append((now + args.ack_delay, seq))
            seq = log.start_fragment(hid, int(t * 1000), b"\x1f\x43\xb6\x75" + b"c" * 20)
        n = key_bytes if i % frag_frames == 0 else p_bytes
        off = rnd.randrange(0, len(pool) - n)
        log.append(pool[off:off + n], int(t * 1000))
        video += n
    log.end_fragment()
    if mode == "online":  # the last ACKs arrive
        for _, s in pending + [(0, seq)]:
            log.release(s)
    st = log.stats()
    log.close()
    w1, c1 = proc_io()
    elapsed = time.monotonic() - start_real
    fl_mod._fdatasync = real_fdatasync
    shutil.rmtree(path, ignore_errors=True)
    hours = args.minutes / 60
    device = (w1 - w0) - (c1 - c0)
    return dict(mode=mode, video_h=video / hours, written_h=(w1 - w0) / hours, cancelled_h=(c1 - c0) / hours,
                device_h=device / hours, syncs_h=syncs[0] / hours, elapsed=elapsed, left=st.fragments)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1000
    return str(n)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes per mode (default 10)")
    p.add_argument("--bitrate", type=int, default=4_000_000)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--fragment-seconds", type=float, default=2.0)
    p.add_argument("--ack-delay", type=float, default=1.0, help="online: release this long after a fragment ends")
    p.add_argument("--sync-interval", type=float, default=2.0)
    p.add_argument("--max-bytes", type=int, default=4 << 30)
    p.add_argument("--dir", default="/var/tmp/kvs-edge-bench-log")
    p.add_argument("--realtime", action="store_true", help="pace the feed at 1x (slow: use a few minutes)")
    p.add_argument("--modes", default="online,offline")
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    fs = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", args.dir], capture_output=True, text=True)
    expire = Path("/proc/sys/vm/dirty_expire_centisecs").read_text().strip()
    print(f"log dir {args.dir} on {fs.stdout.strip() or '?'}; vm.dirty_expire_centisecs={expire}; "
          f"{args.minutes:g} simulated min per mode at {args.bitrate / 1e6:g} Mbit/s, {args.fps} fps, "
          f"{args.fragment_seconds:g}-s fragments, {'real time' if args.realtime else 'as fast as possible'}")
    pool = random.Random(0).randbytes(4 << 20)
    rows = [run(m, args, pool) for m in args.modes.split(",")]
    print()
    print(f"{'mode':8} {'video/h':>12} {'dirtied/h':>12} {'cancelled/h':>12} {'device/h':>12} {'device/video':>12} "
          f"{'fdatasync/h':>11} {'run s':>6}")
    for r in rows:
        share = 100 * r["device_h"] / r["video_h"]
        print(f"{r['mode']:8} {human(r['video_h']):>12} {human(r['written_h']):>12} {human(r['cancelled_h']):>12} "
              f"{human(r['device_h']):>12} {share:>11.2f}% {r['syncs_h']:>11.0f} {r['elapsed']:>6.1f}")
    if all(r["written_h"] == 0 for r in rows):
        print("\nwrite_bytes did not move at all: no block device under this directory (tmpfs?) or no task I/O "
              "accounting in this kernel; the figures above mean nothing here.")
    online = next((r for r in rows if r["mode"] == "online"), None)
    if online:
        share = 100 * online["device_h"] / online["video_h"]
        print(f"\nonline target: < 1 % of the video bytes reach the device: {share:.2f} % "
              f"({'met' if share < 1 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
