"""Emulator ingest benchmark: PutMedia MB/s on loopback, the client in another process.

    python bench/emulator.py [--mb 100] [--frame-kib 5,50,200] [--repeat 2]

The emulator runs in this process (its connection thread holds the GIL: one core). A worker process builds a PutMedia
body in memory first (not timed): 1-second fragments of 30 frames, valid AVCC payloads of the given size, timestamps in
the past. It then sends it with `requests` (chunked, 64 KiB pieces, SigV4 by botocore) and reads the ACK stream to its
end, i.e. until the last fragment is PERSISTED (all fragments archived to disk) or RECEIVED (retention 0).
  MB/s        body bytes / (first byte sent -> response ended), measured by the client
  server CPU  CPU seconds of this (emulator) process during the run, per 100 MB
The issue's bar: >= 25 MB/s (twice KVS's 12.5 MB/s per-stream limit), so the emulator never limits our own benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator  # noqa: E402

SDK_REF = ROOT / "tests" / "data" / "kvs-sdk" / "ref.mkv"


def build_body(total_bytes: int, frame_bytes: int) -> bytes:
    from kvs_edge.media import ebml, mkv

    cp = next(e.data for e in ebml.iter_events(SDK_REF.read_bytes())
              if isinstance(e, ebml.Leaf) and e.id == ebml.CODEC_PRIVATE)
    nal = os.urandom(frame_bytes - 4)
    key = (len(nal)).to_bytes(4, "big") + b"\x65" + nal[1:]
    delta = (len(nal)).to_bytes(4, "big") + b"\x41" + nal[1:]
    parts = [mkv.session_header(width=640, height=480, codec_private=cp)]
    size = len(parts[0])
    start = int(time.time() * 1000) - 86_400_000 * 30
    frag = 0
    while size < total_bytes:
        tc = start + frag * 1000
        parts.append(mkv.cluster_head(tc))
        for i in range(30):
            parts.append(mkv.simple_block(i * 33, i == 0, key if i == 0 else delta))
        size += sum(len(p) for p in parts[-31:])
        frag += 1
    parts.append(mkv.end_of_fragment_tag())
    return b"".join(parts)


def client(url: str, stream: str, total: int, frame_bytes: int) -> dict:
    import requests
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = build_body(total, frame_bytes)
    req = AWSRequest(method="POST", url=url + "/putMedia", data=b"", headers={
        "x-amzn-stream-name": stream, "x-amzn-fragment-timecode-type": "ABSOLUTE"})
    SigV4Auth(Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY), "kinesisvideo", "us-east-1").add_auth(req)
    mv = memoryview(body)

    def gen():
        for i in range(0, len(body), 65536):
            yield mv[i:i + 65536].tobytes()

    t0 = time.perf_counter()
    r = requests.post(url + "/putMedia", data=gen(), headers=dict(req.headers.items()), timeout=600)
    acks = [json.loads(x) for x in r.content.split(b"\n") if x.strip()]
    dt = time.perf_counter() - t0
    kinds = [a["EventType"] for a in acks]
    return {"status": r.status_code, "bytes": len(body), "seconds": dt, "errors": kinds.count("ERROR"),
            "received": kinds.count("RECEIVED"), "persisted": kinds.count("PERSISTED")}


def run(emu: Emulator, stream: str, total: int, frame_bytes: int) -> tuple[dict, float]:
    cpu0 = time.process_time()
    out = subprocess.run([sys.executable, __file__, "--client", emu.url, stream, str(total), str(frame_bytes)],
                         capture_output=True, text=True, check=True)
    cpu = time.process_time() - cpu0
    return json.loads(out.stdout), cpu


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, stream, total, fb = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(client(url, stream, total, fb)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="body size per run, MB")
    ap.add_argument("--frame-kib", default="5,50,200", help="frame sizes (KiB), comma separated")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    total = int(a.mb * 1e6)
    rows = []
    with tempfile.TemporaryDirectory() as d, Emulator(d) as emu:
        n = 0
        for kib in [int(x) for x in a.frame_kib.split(",")]:
            for retention in (24, 0):
                speeds, cpus, res = [], [], None
                for _ in range(a.repeat):
                    n += 1
                    name = f"bench{n}"
                    emu.create_stream(name, retention_hours=retention)
                    res, cpu = run(emu, name, total, kib * 1024)
                    assert res["status"] == 200 and res["errors"] == 0, res
                    speeds.append(res["bytes"] / res["seconds"] / 1e6)
                    cpus.append(cpu / (res["bytes"] / 1e8))
                rows.append((kib, retention, res["received"], statistics.median(speeds), min(speeds),
                             statistics.median(cpus)))
    print(f"\nemulator PutMedia ingest on loopback, {a.mb:.0f} MB per run, median of {a.repeat} "
          f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'frame KiB':>9} {'retention h':>11} {'fragments':>9} {'MB/s':>8} {'min MB/s':>9} {'server CPU s/100MB':>19}"
          f"  {'>= 25 MB/s':>10}")
    for kib, ret, frags, med, lo, cpu in rows:
        print(f"{kib:>9} {ret:>11} {frags:>9} {med:>8.1f} {lo:>9.1f} {cpu:>19.2f}  {'yes' if lo >= 25 else 'NO':>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
