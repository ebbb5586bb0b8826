"""A Picamera2 script: record with the camera's H.264 encoder straight to Kinesis Video Streams.

    python examples/picamera2_kvs.py STREAM [SECONDS]
"""

import sys
import time

from picamera2 import Picamera2
from picamera2.encoders import H264Encoder

from kvs_edge.picamera2 import KvsOutput

stream, seconds = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
picam2 = Picamera2()
picam2.configure(picam2.create_video_configuration(main={"size": (640, 480)}))
output = KvsOutput(stream, create_stream=True)
picam2.start_recording(H264Encoder(repeat=True, iperiod=30), output)
time.sleep(seconds)
picam2.stop_recording()  # stops the output: flushes and closes the Producer
print(f"{output.producer.stats.fragments_persisted} fragments persisted")
