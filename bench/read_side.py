"""Emulator read-side benchmark: botocore's clients on loopback against the emulator in this process.

    python bench/read_side.py [--mb 60] [--frame-kib 50] [--repeat 3]

A stream is filled with --mb of 1-second fragments (30 frames of --frame-kib random AVCC payload each; bench/emulator.py
builds and sends the body), then read back, each row the median of --repeat runs:
  GetMedia EARLIEST       the whole stream as MKV documents (one per fragment, service tags), MB/s of payload
  GetClip                 an MP4 remuxed by PyAV from the first fragments (up to 100 MB / 200 fragments), MB/s
  ref: file read          the session files read from disk in this process (the floor of any read)
  ref: PyAV remux         PyAV remuxing the same session file to MP4 in memory, no emulator, no HTTP
  GetImages (JPEG, real)  30 images (6 s at 200 ms) of the SDK's ref.mkv (640x480 H.264), ms per image
  ref: PyAV decode+JPEG   PyAV decoding ref.mkv and encoding the same 30 frames as JPEG directly, ms per image
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import av  # noqa: E402
import botocore.session  # noqa: E402
from botocore.config import Config  # noqa: E402

import emulator as ingest_bench  # noqa: E402  (bench/emulator.py: the PutMedia body and its sender)
from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator  # noqa: E402
from kvs_edge.emulator import read_api  # noqa: E402
from kvs_edge.emulator.media_export import encode_image  # noqa: E402

SDK_REF = ingest_bench.SDK_REF


def media_client(emu, service):
    return botocore.session.get_session().create_client(
        service, region_name="us-east-1", endpoint_url=emu.url, aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY, config=Config(read_timeout=600, retries={"max_attempts": 1}))


def timed(fn, repeat):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def bench_args(doc: str) -> argparse.Namespace:
    """--mb, --frame-kib, --repeat: the options the read-side benchmarks share."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--mb", type=float, default=60.0)
    ap.add_argument("--frame-kib", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    return ap.parse_args()


@contextlib.contextmanager
def filled_stream(mb: float, frame_kib: int):
    """An emulator in this process whose stream "bench" holds `mb` MB of 1-s fragments: (emu, archive, files)."""
    with tempfile.TemporaryDirectory() as d, Emulator(d) as emu:
        emu.create_stream("bench", retention_hours=24)
        res, _ = ingest_bench.run(emu, "bench", int(mb * 1e6), frame_kib * 1024)
        assert res["status"] == 200 and res["errors"] == 0, res
        yield emu, emu.archive("bench"), emu.archive_files("bench")


def reference_rows(files: list[Path], repeat: int, mp4_options: dict | None = None, what: str = "MP4") -> list:
    """The references: the session files read from disk, and PyAV remuxing the first one to MP4 in memory."""
    size = sum(f.stat().st_size for f in files)
    _, s = timed(lambda: [f.read_bytes() for f in files], repeat)
    rows = [("ref: file read", f"{len(files)} session file(s)", size / s / 1e6, "MB/s")]

    def pyav_remux():
        buf = io.BytesIO()
        with av.open(str(files[0])) as src, av.open(buf, "w", format="mp4", options=mp4_options or {}) as out:
            o = out.add_stream_from_template(src.streams.video[0])
            for pkt in src.demux(src.streams.video[0]):
                if pkt.dts is None:
                    continue
                pkt.stream = o
                out.mux(pkt)
        return buf.getvalue()

    _, s = timed(pyav_remux, repeat)
    rows.append(("ref: PyAV remux", f"the same session file -> {what}", files[0].stat().st_size / s / 1e6, "MB/s"))
    return rows


def main() -> int:
    a = bench_args(__doc__)
    rows = []
    with filled_stream(a.mb, a.frame_kib) as (emu, archive, files):
        t0, t1 = archive[0].producer_ts_ms / 1000, archive[-1].producer_ts_ms / 1000

        gm = media_client(emu, "kinesis-video-media")
        # the documents' total size: read up to the end of the last one (the body itself stays open END_IDLE_S longer)
        expect = sum(map(len, read_api.GetMediaSession(emu.store, "bench", {"StartSelector": {
            "StartSelectorType": "EARLIEST"}}, now_ms=0).poll()))

        def get_media():
            body = gm.get_media(StreamName="bench", StartSelector={"StartSelectorType": "EARLIEST"})["Payload"]
            data = body.read(expect)
            body.close()
            return data

        payload, s = timed(get_media, a.repeat)
        assert len(payload) == expect, (len(payload), expect)
        rows.append(("GetMedia EARLIEST", f"{len(archive)} fragments", len(payload) / s / 1e6, "MB/s"))

        am = media_client(emu, "kinesis-video-archived-media")
        sel = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": t0,
                                                                              "EndTimestamp": t1}}
        mp4, s = timed(lambda: am.get_clip(StreamName="bench", ClipFragmentSelector=sel)["Payload"].read(), a.repeat)
        clip_in = sum(e.size for e in archive[:200])
        rows.append(("GetClip", f"{min(200, len(archive))} fragments -> {len(mp4) / 1e6:.1f} MB MP4",
                     clip_in / s / 1e6, "MB/s"))

        rows += reference_rows(files, a.repeat)

        emu.create_stream("sdk", retention_hours=24)
        import requests
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        req = AWSRequest(method="POST", url=emu.url + "/putMedia", data=b"", headers={
            "x-amzn-stream-name": "sdk", "x-amzn-fragment-timecode-type": "ABSOLUTE"})
        SigV4Auth(Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY), "kinesisvideo",
                  "us-east-1").add_auth(req)
        r = requests.post(emu.url + "/putMedia", data=iter([SDK_REF.read_bytes()]), headers=dict(req.headers.items()),
                          timeout=60)
        assert r.status_code == 200 and b'"ERROR"' not in r.content

        def images():
            got, kw = [], {}
            while True:
                out = am.get_images(StreamName="sdk", ImageSelectorType="PRODUCER_TIMESTAMP",
                                    StartTimestamp=1_700_000_000.0, EndTimestamp=1_700_000_005.8,
                                    SamplingInterval=200, Format="JPEG", MaxResults=100, **kw)
                got += out["Images"]
                if not out.get("NextToken"):
                    return got
                kw = {"NextToken": out["NextToken"]}

        imgs, s = timed(images, a.repeat)
        assert len(imgs) == 30 and all("ImageContent" in i for i in imgs), [i.get("Error") for i in imgs]
        rows.append(("GetImages (JPEG, real video)", "30 images, 640x480", s / 30 * 1000, "ms/image"))

        def pyav_images():
            with av.open(str(SDK_REF)) as src:
                frames = list(src.decode(video=0))
            return [encode_image(frames[i * 6], "JPEG") for i in range(30)]

        _, s = timed(pyav_images, a.repeat)
        rows.append(("ref: PyAV decode+JPEG", "the same 30 frames, directly", s / 30 * 1000, "ms/image"))

    print_table(f"emulator read side on loopback, {a.mb:.0f} MB of {a.frame_kib}-KiB frames, median of {a.repeat}",
                rows)
    return 0


def print_table(title: str, rows: list) -> None:
    """The benchmark's table: (what, size, figure, unit) rows under a title naming the machine."""
    w = max(len(r[0]) for r in rows)
    print(f"\n{title} (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"{'what':<{w}} {'size':<34} {'figure':>10}")
    for what, size, fig, unit in rows:
        print(f"{what:<{w}} {size:<34} {fig:>10.1f} {unit}")


if __name__ == "__main__":
    sys.exit(main())
