"""Upload an MP4's H.264 video to Kinesis Video Streams (no B-frames: e.g. ffmpeg -bf 0). Usage: upload_mp4.py FILE STREAM"""
import sys, time, av
from kvs_edge import Producer
with av.open(sys.argv[1]) as f, Producer(sys.argv[2], create_stream=True) as p:
    f.streams.video[0].codec_context  # noqa: B018  (the stream must exist)
    t0, bsf = time.time_ns() - 3_600_000_000_000, av.BitStreamFilterContext("h264_mp4toannexb", f.streams.video[0])
    for pkt in (q for packet in f.demux(video=0) if packet.size for q in bsf.filter(packet)):
        p.put_frame(bytes(pkt), timestamp_ns=t0 + int(pkt.pts * pkt.time_base * 1e9), key=pkt.is_keyframe)
    sys.exit(0 if p.flush(timeout=120) else 1)
