"""The appliance under load: `kvs-edge run` streaming 1080p30 H.264 at 8 Mbit/s from a file source, in real time, to
the emulator running in another process.

    python bench/pipeline.py [--seconds 60] [--width 1920 --height 1080 --fps 30 --bitrate 8000000] [--cameras 1,2,4] [--audio]

--cameras: one run of `kvs-edge run` per count, with that many file cameras (a `cameras:` list, one stream each;
issue 16's target: <= 5 % of a core and <= 80 MB + 10 MB per extra camera).

Measured from outside the process (/proc/<pid>/stat and status), over the steady part of the run:
  CPU % of one core     (utime + stime) of the kvs-edge process / wall time (process CPU time: other load on the
                        machine shows less than in wall-clock figures, but still shows: repeat and give the spread)
  peak RSS              VmHWM of the kvs-edge process
  wake-ups/s            voluntary context switches of all its threads per second (waits, sleeps, blocking reads)
  latency p50 / p99     capture of a fragment's first frame -> its PERSISTED ACK, from the status file
Reference in the same run: the same file read and paced by PyAV alone (no muxing, no log, no upload): what reading the
input with FFmpeg costs. kvs-edge reads a raw .h264 file without PyAV (media/annexb_stream.py), so since then its
RSS is below this reference. Targets: < 5 % of a core, < 80 MB RSS, p99 < fragment + 0.5 s.

--audio (issue 14): the same video remuxed into an MKV with a 48 kHz mono PCM track, run twice (one camera): once video
only (the audio track ignored), once with source.audio (PCM decoded and encoded to AAC-LC 64 kbit/s, interleaved as
track 2: the work a microphone capture adds); the table shows both rows and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REFERENCE = r"""
import sys, time, av
path, fps, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < seconds:
    with av.open(path, format="h264") as c:
        for p in c.demux(video=0):
            if not p.size: continue
            due = t0 + n / fps
            d = due - time.monotonic()
            if d > 0: time.sleep(d)
            bytes(p); n += 1
            if time.monotonic() - t0 >= seconds: break
"""


def wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far: each is a thread going to sleep (a wait, a
    sleep, a blocking read) and later woken."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    n += int(line.split()[1])
        except OSError:  # a thread that just ended
            pass
    return n


def measure(proc: subprocess.Popen, warmup: float, seconds: float) -> tuple[float, float, float]:
    """(CPU % of one core, peak RSS MB, wake-ups per second) over `seconds` after `warmup`."""
    time.sleep(warmup)
    c0, w0, t0 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
    time.sleep(seconds)
    c1, w1, t1 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0), peak_rss_mb(proc.pid), (w1 - w0) / (t1 - t0)


def with_pcm_track(src: Path, fps: int, seconds: float = 60.0) -> Path:
    """The raw H.264 remuxed into an MKV beside a 48 kHz mono PCM tone (cached next to the input)."""
    import av
    import numpy as np
    from fractions import Fraction

    out_path = src.with_suffix(".pcm.mkv")
    if out_path.exists():
        return out_path
    tmp = out_path.with_suffix(".tmp.mkv")
    with av.open(str(src), format="h264") as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        vs = out.add_stream_from_template(vin)
        ast = out.add_stream("pcm_s16le", rate=48000, layout="mono")
        k = 0
        for i, p in enumerate(pk for pk in inp.demux(vin) if pk.size):
            p.stream = vs
            p.pts = p.dts = i
            p.time_base = Fraction(1, fps)
            out.mux(p)
            while k < (i + 1) * 48000 // fps:
                t = np.arange(k, k + 1024) / 48000
                f = av.AudioFrame.from_ndarray((3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)[None, :],
                                               format="s16", layout="mono")
                f.sample_rate, f.pts, f.time_base = 48000, k, Fraction(1, 48000)
                for q in ast.encode(f):
                    out.mux(q)
                k += 1024
    tmp.rename(out_path)
    return out_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=8_000_000)
    ap.add_argument("--fragment-seconds", type=float, default=2.0)
    ap.add_argument("--cameras", default="1", help="camera counts to measure, e.g. 1,2,4")
    ap.add_argument("--audio", action="store_true", help="also measure the cost of an audio track (issue 14)")
    a = ap.parse_args()
    counts = [int(x) for x in a.cameras.split(",")]

    from mux import encode  # bench/mux.py: the same cached input

    src = Path(tempfile.gettempdir()) / f"kvs-edge-bench-{a.width}x{a.height}-{a.fps}-{a.bitrate}-60s.h264"
    if not src.exists():
        encode(src, 60, a.width, a.height, a.fps, a.bitrate)
    mbit = src.stat().st_size * 8 / 60 / 1e6
    kvs = [sys.executable, "-m", "kvs_edge"]
    with tempfile.TemporaryDirectory(prefix="kvs-edge-bench-") as tmp:
        port = free_port()
        emu = subprocess.Popen(kvs + ["emulator", "--port", str(port), "--data-dir", f"{tmp}/emu"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            import botocore.session

            from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
            import yaml

            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            s = botocore.session.Session()
            s.set_credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
            client = s.create_client("kinesisvideo", region_name="us-east-1", endpoint_url=url)
            rows = []
            runs = [(n, None) for n in counts]
            if a.audio:  # (1 camera, the PCM MKV: without and with source.audio)
                pcm = with_pcm_track(src, a.fps)
                runs += [(1, (pcm, None)), (1, (pcm, {"sample_rate": 48000, "channels": 1, "bitrate": "64k"}))]
            for run_no, (n, audio) in enumerate(runs):
                names = [f"bench{n}-{i}" for i in range(n)] if n > 1 else [f"bench{n}-{run_no}"]
                for name in names:
                    client.create_stream(StreamName=name, DataRetentionInHours=24)
                status_file = Path(tmp) / f"status{run_no}.json"
                source = {"type": "file", "uri": str(src if audio is None else audio[0]), "fps": a.fps, "loop": True}
                if audio is not None and audio[1] is not None:
                    source["audio"] = audio[1]
                cfg = {
                    "stream": {"region": "us-east-1", "fragment_seconds": a.fragment_seconds},
                    "aws": {"credentials": "static", "access_key_id": DEFAULT_ACCESS_KEY_ID,
                            "secret_access_key": DEFAULT_SECRET_ACCESS_KEY, "endpoint_url": url},
                    "buffer": {"path": f"{tmp}/buf{run_no}", "max_bytes": "1GiB"},
                    "time": {"require_sync": False},
                    "health": {"status_file": str(status_file)},
                }
                if n == 1:  # the single-camera form
                    cfg["stream"]["name"], cfg["source"] = names[0], source
                else:
                    cfg["cameras"] = [{"name": f"c{i}", "stream": {"name": nm}, "source": source}
                                      for i, nm in enumerate(names)]
                (Path(tmp) / "c.yaml").write_text(yaml.safe_dump(cfg))
                os.chmod(Path(tmp) / "c.yaml", 0o600)
                run = subprocess.Popen(kvs + ["run", "--config", f"{tmp}/c.yaml"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, cwd=ROOT)
                cpu, rss, wake = measure(run, 5.0, a.seconds)
                status = json.loads(status_file.read_text())
                run.send_signal(signal.SIGTERM)
                _, err = run.communicate(timeout=30)
                rows.append((n, cpu, rss, status, run.returncode, err, audio, wake))
            emu_cpu = cpu_seconds(emu.pid)
            ref = subprocess.Popen([sys.executable, "-c", REFERENCE, str(src), str(a.fps), str(a.seconds + 5)])
            ref_cpu, ref_rss, ref_wake = measure(ref, 5.0, a.seconds)
            ref.wait(30)
        finally:
            emu.send_signal(signal.SIGTERM)
            emu.wait(30)
    print(f"\n`kvs-edge run`, file source(s) {a.width}x{a.height}@{a.fps} at {mbit:.1f} Mbit/s each in real time, "
          f"{a.fragment_seconds:g}-s fragments, emulator in another process, {a.seconds:.0f} s measured "
          f"after 5 s warm-up\n")
    print("| process | cameras | CPU % of one core | peak RSS MB | wake-ups/s | latency p50 s | latency p99 s | "
          "fragments persisted | frames | dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, cpu, rss, status, _, _, audio, wake in rows:
        if audio is not None:
            continue
        lat = status.get("latency_s", {})
        print(f"| kvs-edge run | {n} | {cpu:.1f} | {rss:.1f} | {wake:.0f} | {lat.get('p50')} | {lat.get('p99')} | "
              f"{status.get('fragments_persisted')} | {status['camera']['frames']} | {status['frames_dropped']} |")
    print(f"| reference: PyAV reading + pacing the same file | 1 | {ref_cpu:.1f} | {ref_rss:.1f} | {ref_wake:.0f} | "
          "- | - | - | - | - |")
    print(f"\nemulator CPU over the whole run {emu_cpu:.1f} s; targets: < 5 % CPU per camera, "
          f"< 80 MB + 10 MB per extra camera, p99 < {a.fragment_seconds + 0.5:g} s")
    audio_rows = [r for r in rows if r[6] is not None]
    if audio_rows:
        print("\nissue 14: the same video in an MKV with a 48 kHz mono PCM track, one camera\n")
        print("| kvs-edge run | CPU % of one core | peak RSS MB | latency p50 s | latency p99 s | audio frames |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (_, c_, r_, st_, _, _, _, _) in zip(("video only (track ignored)", "with source.audio (PCM -> AAC 64k)"),
                                                   audio_rows):
            l_ = st_.get("latency_s", {})
            print(f"| {name} | {c_:.1f} | {r_:.1f} | {l_.get('p50')} | {l_.get('p99')} | "
                  f"{(st_.get('audio') or {}).get('written', 0)} |")
        (_, c0, r0, *_), (_, c1, r1, *_) = audio_rows
        print(f"| added by audio | {c1 - c0:+.1f} | {r1 - r0:+.1f} | | | |")
    failed = [(n, code, err) for n, _, _, _, code, err, _, _ in rows if code != 0]
    for n, code, err in failed:
        print(f"kvs-edge run with {n} camera(s) exited {code}: {err[-2000:]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
