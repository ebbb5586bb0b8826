"""HLS/DASH serving benchmark: the emulator in this process, a player's GETs on loopback.

    python bench/hls.py [--mb 60] [--frame-kib 50] [--repeat 3]

A stream is filled with --mb of 1-second fragments (30 frames of --frame-kib random AVCC payload each; bench/emulator.py
builds and sends the body). Then an ON_DEMAND session per container fetches its media playlist and every segment as a
player does (one keep-alive connection), each row the median of --repeat runs (the segment cache emptied before each):
  HLS fMP4 / HLS TS       init + every media segment, MB/s of archived fragment bytes
  ref: file read          the session files read from disk in this process (the floor of any read)
  ref: PyAV remux         PyAV remuxing the same session file to fragmented MP4 in memory in one pass: the library
                          work without the per-fragment documents, the session timeline and HTTP
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import av  # noqa: E402
import requests  # noqa: E402

import emulator as ingest_bench  # noqa: E402  (bench/emulator.py: the PutMedia body and its sender)
from read_side import timed  # noqa: E402
from kvs_edge.emulator import Emulator  # noqa: E402
from kvs_edge.emulator.hls import _MP4_OPTIONS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=60.0)
    ap.add_argument("--frame-kib", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d, Emulator(d) as emu:
        emu.create_stream("bench", retention_hours=24)
        res, _ = ingest_bench.run(emu, "bench", int(a.mb * 1e6), a.frame_kib * 1024)
        assert res["status"] == 200 and res["errors"] == 0, res
        archive = emu.archive("bench")
        files = emu.archive_files("bench")
        size = sum(e.size for e in archive)
        t0, t1 = archive[0].producer_ts_ms / 1000, archive[-1].producer_ts_ms / 1000
        http = requests.Session()

        for container in ("FRAGMENTED_MP4", "MPEG_TS"):
            body = {"StreamName": "bench", "PlaybackMode": "ON_DEMAND", "ContainerFormat": container,
                    "HLSFragmentSelector": {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                                            "TimestampRange": {"StartTimestamp": t0, "EndTimestamp": t1}}}
            url = emu.playback.create_hls(body, emu.url, time.time())["HLSStreamingSessionURL"]
            base = url.rsplit("/", 1)[0] + "/"

            def play():
                emu.playback._segments.clear()  # every run remuxes every segment
                playlist = http.get(url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"), timeout=60).text
                uris = [ln.split('"')[1] for ln in playlist.splitlines() if ln.startswith("#EXT-X-MAP:")]
                uris += [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]
                got = 0
                for u in uris:
                    r = http.get(base + u, timeout=60)
                    assert r.status_code == 200, r.text
                    got += len(r.content)
                return len(uris), got

            (n, out_bytes), s = timed(play, a.repeat)
            rows.append((f"HLS {'fMP4' if container == 'FRAGMENTED_MP4' else 'TS'}",
                         f"{n} requests -> {out_bytes / 1e6:.1f} MB", size / s / 1e6, "MB/s"))

        disk = sum(f.stat().st_size for f in files)
        _, s = timed(lambda: [f.read_bytes() for f in files], a.repeat)
        rows.append(("ref: file read", f"{len(files)} session file(s)", disk / s / 1e6, "MB/s"))

        def pyav_remux():
            buf = io.BytesIO()
            with av.open(str(files[0])) as src, av.open(buf, "w", format="mp4", options=_MP4_OPTIONS) as out:
                o = out.add_stream_from_template(src.streams.video[0])
                for pkt in src.demux(src.streams.video[0]):
                    if pkt.dts is None:
                        continue
                    pkt.stream = o
                    out.mux(pkt)
            return buf.getvalue()

        _, s = timed(pyav_remux, a.repeat)
        rows.append(("ref: PyAV remux", "the same session file -> fMP4", files[0].stat().st_size / s / 1e6, "MB/s"))

    print(f"\nemulator HLS on loopback, {a.mb:.0f} MB of {a.frame_kib}-KiB frames in 1-s fragments, median of "
          f"{a.repeat} (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'what':<18} {'size':<34} {'figure':>10}")
    for what, size, fig, unit in rows:
        print(f"{what:<18} {size:<34} {fig:>10.1f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
