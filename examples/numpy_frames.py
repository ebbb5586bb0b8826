"""OpenCV-style frames (numpy BGR arrays, e.g. from cv2.VideoCapture.read()) encoded with PyAV and streamed.

    python examples/numpy_frames.py STREAM [SECONDS]
"""

import sys
import time

import av
import numpy as np

from kvs_edge import Producer

stream, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
width, height, fps = 320, 240, 30
enc = av.CodecContext.create("libx264", "w")
enc.width, enc.height, enc.pix_fmt, enc.framerate = width, height, "yuv420p", fps
enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": f"bframes=0:keyint={fps}"}

with Producer(stream, create_stream=True) as p:
    p.put_metadata("source", "numpy", persistent=True)
    for i in range(int(seconds * fps)):
        bgr = np.zeros((height, width, 3), np.uint8)  # what cv2 gives you; here a moving bar
        bgr[:, (i * 4) % width:(i * 4) % width + 16] = (0, 255, 255)
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")
        frame.pts = i
        for packet in enc.encode(frame):
            p.put_frame(bytes(packet))  # stamped now: a live source
        time.sleep(1 / fps)
    for packet in enc.encode(None):
        p.put_frame(bytes(packet))
    ok = p.flush(timeout=60)
print(f"{p.stats.fragments_persisted} fragments persisted" if ok else "not all persisted")
sys.exit(0 if ok else 1)
