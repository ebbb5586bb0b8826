"""Mux benchmark: kvs-edge's fragmenter + MKV writer vs PyAV's own Matroska muxer (libavformat, C), same packets.

    python bench/mux.py [--seconds 60] [--width 1920 --height 1080 --fps 30 --bitrate 8000000] [--repeat 3]
    python bench/mux.py --sink null      # write to /dev/null: the muxing alone, without the file system's cost
    python bench/mux.py --profile 20     # cProfile of our worker: the 20 functions with the most own time

The H.264 input is encoded once with PyAV's libx264 (not timed) and cached in the temp folder. Each measurement runs
in a fresh worker process that first loads the access units into memory, then muxes them into a file:
  CPU s        process CPU time (user + system) spent muxing, time.process_time()
  peak +MiB    peak RSS while muxing (VmHWM, reset through /proc/self/clear_refs) minus the RSS just before
Both write the output file in 256 KiB writes at multiples of 256 KiB: libavformat through its own I/O buffer (strace:
231 writes of 262144 bytes for the default 60 s), ours through ChunkedOutput below, so that the comparison is the
muxing and not the file system calls (with one write per frame ours spends ~20 ms more in the kernel for the same
bytes; with a BufferedWriter, which writes what it holds whenever the next piece does not fit, ~3 ms more).
Ours runs twice: as in a process without numpy (the start-code scan is a regex), and with numpy already imported, as
in the appliance with the Pi camera (picamera2 imports numpy), where media/h264.py scans with numpy (numpy is imported
before the timing starts and is never imported by the muxer itself). Prints a table with the ratio ours / libavformat
of the medians, and the ratio of each run (the runs are interleaved, so run i of every muxer saw about the same machine
load). Target: ours <= 1.0 in CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS = ("ours", "ours-numpy", "libav")
LABELS = {"ours": "kvs-edge (Python, regex scan)", "ours-numpy": "kvs-edge (Python, numpy loaded: numpy scan)",
          "libav": "libavformat matroska (PyAV)"}
OUT_BUFFER = 256 * 1024  # libavformat's write size in this benchmark (see above)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so that the peak of the muxing alone is measured."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fresh(dst: str) -> None:
    """Remove the previous run's output: overwriting it through O_TRUNC makes ext4 (auto_da_alloc) start writing the
    new data back on close(), on the writer's CPU time, which would add ~15 ms of noise to whichever run hits it."""
    if dst == os.devnull:
        return
    try:
        os.unlink(dst)
    except FileNotFoundError:
        pass


def result(cpu: float, r0, r1, rss0: int, frames: int, size: int | None) -> dict:
    """One worker's figures (r0, r1: getrusage before and after; rss0: RSS in KiB before)."""
    return {"cpu": cpu, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
            "peak_kib": peak_kib() - rss0, "peak_abs_kib": peak_kib(), "minflt": r1.ru_minflt - r0.ru_minflt,
            "frames": frames, "bytes": size}


def out_size(dst: str, written: int | None = None) -> int | None:
    """Bytes of the output (what we counted when writing to /dev/null; None when nobody counted)."""
    return written if dst == os.devnull else os.path.getsize(dst)


class ChunkedOutput:
    """A file written in OUT_BUFFER-byte write() calls at offsets that are multiples of OUT_BUFFER, as libavformat's
    I/O buffer writes it; write() copies the bytes once (into a bytearray), as a BufferedWriter would."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.buf = bytearray()

    def write(self, b: bytes) -> int:
        buf = self.buf
        buf += b
        if len(buf) >= OUT_BUFFER:
            self._flush(len(buf) - len(buf) % OUT_BUFFER)
        return len(b)

    def _flush(self, n: int) -> None:
        with memoryview(self.buf) as mv:
            i = 0
            while i < n:
                i += os.write(self.fd, mv[i:min(n, i + OUT_BUFFER)])
        del self.buf[:n]  # bytearray drops bytes at its front without moving the rest

    def close(self) -> None:
        self._flush(len(self.buf))
        os.close(self.fd)


def load_units(path: str) -> list[tuple[bytes, bool]]:
    import av

    with av.open(path, format="h264") as c:
        return [(bytes(p), bool(p.is_keyframe)) for p in c.demux(video=0) if p.size]


def work_ours(src: str, dst: str, fps: int, profile: int = 0) -> dict:
    from kvs_edge.media import mkv
    from kvs_edge.media.fragmenter import FragmentStart, FrameWritten, SessionStart, Fragmenter

    units = load_units(src)
    fresh(dst)
    start = 1_700_000_000_000
    rss0 = rss_kib()
    reset_peak()
    t0, r0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    frag = Fragmenter(target_ms=2000)
    out = ChunkedOutput(dst)
    write = out.write
    written = 0  # counted: /dev/null cannot tell
    for i, (data, key) in enumerate(units):
        for e in frag.push(data, start + i * 1000 // fps, key):
            if type(e) in (FrameWritten, FragmentStart, SessionStart):
                written += write(e.header if type(e) is SessionStart else e.data)
    frag.close()
    written += write(mkv.end_of_fragment_tag())
    out.close()
    cpu = time.process_time() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if profile:
        import pstats
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(profile)
    return result(cpu, r0, r1, rss0, frag.stats.frames_written, out_size(dst, written))


def work_libav(src: str, dst: str, fps: int) -> dict:
    from fractions import Fraction

    import av

    units = load_units(src)
    fresh(dst)
    with av.open(src, format="h264") as c:
        template = c.streams.video[0]
        packets = []
        for i, (data, key) in enumerate(units):  # packets built before timing: only the muxer is measured
            p = av.Packet(data)
            p.pts = p.dts = i * 1000 // fps
            p.time_base = Fraction(1, 1000)
            if key:
                p.is_keyframe = True
            packets.append(p)
        rss0 = rss_kib()
        reset_peak()
        t0, r0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        with av.open(dst, "w", format="matroska") as out:
            st = out.add_stream_from_template(template)
            st.time_base = Fraction(1, 1000)
            for p in packets:
                p.stream = st
                out.mux(p)
        cpu = time.process_time() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return result(cpu, r0, r1, rss0, len(packets), out_size(dst))


def encode(path: Path, seconds: float, width: int, height: int, fps: int, bitrate: int) -> None:
    from support.h264gen import make_h264

    t = time.time()
    enc = make_h264(int(seconds * fps), width, height, fps, profile="high", bitrate=bitrate)
    path.write_bytes(enc.annexb)
    print(f"encoded {len(enc.units)} frames {width}x{height} ({len(enc.annexb) * 8 / seconds / 1e6:.1f} Mbit/s) "
          f"in {time.time() - t:.0f} s -> {path}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=8_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per muxer; the median is shown")
    ap.add_argument("--sink", choices=["file", "null"], default="file",
                    help="write each output to a new file in a temporary folder (default), or to /dev/null")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="run our muxer once under cProfile and print its N functions with the most own time")
    ap.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        if a.worker == "libav":
            r = work_libav(a.src, a.dst, a.fps)
        else:
            if a.worker == "ours-numpy":
                import numpy  # noqa: F401  (loaded as picamera2 loads it: h264.start_codes then scans with it)
            r = work_ours(a.src, a.dst, a.fps, a.profile)
        print(json.dumps(r))
        return 0

    name = f"kvs-edge-bench-{a.width}x{a.height}-{a.fps}-{a.bitrate}-{a.seconds:g}s.h264"
    src = Path(tempfile.gettempdir()) / name
    if not src.exists():
        encode(src, a.seconds, a.width, a.height, a.fps, a.bitrate)
    def dst(tmp: str, worker: str) -> str:
        return os.devnull if a.sink == "null" else os.path.join(tmp, f"{worker}.mkv")

    if a.profile:
        with tempfile.TemporaryDirectory() as tmp:
            for w in ("ours", "ours-numpy"):
                print(f"\n{LABELS[w]}", file=sys.stderr)
                subprocess.run([sys.executable, __file__, "--worker", w, "--src", str(src), "--profile",
                                str(a.profile), "--dst", dst(tmp, "ours"), "--fps", str(a.fps)], check=True)
        return 0
    results: dict[str, list[dict]] = {w: [] for w in WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeat):
            for w in WORKERS:  # interleaved, so all see about the same machine load
                out = subprocess.run([sys.executable, __file__, "--worker", w, "--src", str(src),
                                      "--dst", dst(tmp, w), "--fps", str(a.fps)],
                                     capture_output=True, text=True, check=True)
                results[w].append(json.loads(out.stdout))
    med = {w: {k: statistics.median(x[k] for x in rs) if rs[0][k] is not None else None for k in rs[0]}
           for w, rs in results.items()}
    size = src.stat().st_size
    print(f"\nmux {int(med['ours']['frames'])} frames of {a.width}x{a.height}@{a.fps} H.264, "
          f"{size * 8 / a.seconds / 1e6:.1f} Mbit/s ({size / 2**20:.1f} MiB), median of {a.repeat} runs, "
          f"output to {'/dev/null' if a.sink == 'null' else 'new files'}\n")
    print("| muxer | CPU s | user s | sys s | frames per CPU s | peak RSS +MiB | peak RSS MiB (incl. input) "
          "| output MiB | CPU ratio to libavformat |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lib = med["libav"]
    for w in WORKERS:
        m = med[w]
        ratio = f"{m['cpu'] / max(lib['cpu'], 1e-9):.2f}" if w != "libav" else ""
        size_mib = "-" if m["bytes"] is None else f"{m['bytes'] / 2**20:.2f}"
        print(f"| {LABELS[w]} | {m['cpu']:.3f} | {m['user']:.3f} | {m['sys']:.3f} | "
              f"{m['frames'] / max(m['cpu'], 1e-9):.0f} | {m['peak_kib'] / 1024:.1f} | "
              f"{m['peak_abs_kib'] / 1024:.1f} | {size_mib} | {ratio} |")
    print()
    for w in WORKERS:
        print(f"{w:10s} CPU s of each run: {[round(x['cpu'], 3) for x in results[w]]}")
    for w in ("ours", "ours-numpy"):
        runs = [o["cpu"] / max(lb["cpu"], 1e-9) for o, lb in zip(results[w], results["libav"])]
        best = min(x["cpu"] for x in results[w]) / max(min(x["cpu"] for x in results["libav"]), 1e-9)
        print(f"{w:10s} / libav, each run: {[round(x, 2) for x in runs]} (spread {min(runs):.2f} to {max(runs):.2f}); "
              f"ratio of the fastest runs {best:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
