"""Stream any video file (or a webcam PyAV opens) to Kinesis Video Streams, re-encoded to H.264 without B-frames.

    python examples/pyav_file.py INPUT STREAM        # e.g. video.mp4, or /dev/video0 with format v4l2
Credentials: botocore's chain; AWS_ENDPOINT_URL=http://127.0.0.1:4567 sends it to `kvs-edge emulator`.
"""

import sys
import time

import av

from kvs_edge import Producer

src, stream = sys.argv[1], sys.argv[2]
with av.open(src) as inp, Producer(stream, create_stream=True) as p:
    vin = inp.streams.video[0]
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
    enc.time_base = vin.time_base
    enc.options = {"preset": "veryfast", "tune": "zerolatency", "x264-params": "bframes=0:keyint=30:repeat-headers=1"}
    t0 = time.time_ns()
    for frame in inp.decode(vin):
        frame.pts = frame.pts or 0
        for packet in enc.encode(frame.reformat(format="yuv420p")):
            p.put_frame(bytes(packet), timestamp_ns=t0 + int(packet.pts * packet.time_base * 1_000_000_000))
    for packet in enc.encode(None):
        p.put_frame(bytes(packet), timestamp_ns=t0 + int(packet.pts * packet.time_base * 1_000_000_000))
    ok = p.flush(timeout=60)
    print(f"{p.stats.frames} frames, {p.stats.fragments_persisted} fragments persisted" if ok else "not all persisted")
    sys.exit(0 if ok else 1)
