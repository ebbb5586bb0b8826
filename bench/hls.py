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

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402

from read_side import bench_args, filled_stream, print_table, reference_rows, timed  # noqa: E402
from kvs_edge.emulator.hls import _MP4_OPTIONS  # noqa: E402


def main() -> int:
    a = bench_args(__doc__)
    rows = []
    with filled_stream(a.mb, a.frame_kib) as (emu, archive, files):
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

        rows += reference_rows(files, a.repeat, _MP4_OPTIONS, "fMP4")

    print_table(f"emulator HLS on loopback, {a.mb:.0f} MB of {a.frame_kib}-KiB frames in 1-s fragments, median of "
                f"{a.repeat}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
