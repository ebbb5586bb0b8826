"""`KvsOutput`: a Picamera2 Output that streams to Kinesis Video Streams, used like FileOutput or PyavOutput:

    from picamera2 import Picamera2
    from picamera2.encoders import H264Encoder
    from kvs_edge.picamera2 import KvsOutput

    picam2 = Picamera2()
    picam2.configure(picam2.create_video_configuration())
    picam2.start_recording(H264Encoder(repeat=True, iperiod=60), KvsOutput("my-stream", region="eu-west-1"))

`repeat=True` puts SPS/PPS before every key frame (each fragment must start with them); keep `iperiod` (frames between
key frames) below the fragment length. Picamera2 is needed (Raspberry Pi OS: `apt install python3-picamera2`).
"""

from __future__ import annotations

import logging
import time

try:
    from picamera2.outputs import Output
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("kvs_edge.picamera2 needs Picamera2: on Raspberry Pi OS run 'sudo apt install python3-picamera2' "
                      "and create the venv with --system-site-packages") from e

from kvs_edge.media.access_unit import FrameError
from kvs_edge.producer import Producer

log = logging.getLogger(__name__)


class KvsOutput(Output):
    """Streams the encoder's H.264 to a KVS stream through a `Producer`.

    stream_name and **producer_args: as for `Producer`; or pass `producer=` to share one you made. The encoder's
    timestamps (microseconds of the camera's clock) are mapped to wall-clock time at the first frame, so the frame
    spacing is the camera's. `stop()` (from `picam2.stop_recording()`) flushes for up to `flush_timeout` seconds and
    closes the Producer it made.
    """

    def __init__(self, stream_name: str | None = None, *, producer: Producer | None = None, pts=None,
                 flush_timeout: float = 10.0, **producer_args) -> None:
        super().__init__(pts=pts)
        if producer is None:
            if not stream_name:
                raise ValueError("KvsOutput needs a stream name (or producer=)")
            producer = Producer(stream_name, **producer_args)
            self._owns = True
        else:
            self._owns = False
        self.producer = producer
        self.flush_timeout = flush_timeout
        self.frames_refused = 0
        self._offset_ns: int | None = None

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        """Called by the encoder's thread for each encoded frame; never blocks on the network."""
        if audio:
            return  # video only
        ts_ns = None
        if timestamp is not None:
            if self._offset_ns is None:
                self._offset_ns = time.time_ns() - int(timestamp) * 1000
            ts_ns = int(timestamp) * 1000 + self._offset_ns
        try:
            self.producer.put_frame(bytes(frame), timestamp_ns=ts_ns, key=None)
        except FrameError as e:  # never raise into the encoder's thread: say it once in a while, count it
            self.frames_refused += 1
            if self.frames_refused in (1, 10, 100) or self.frames_refused % 1000 == 0:
                log.error("KvsOutput: frame refused (%d so far): %s", self.frames_refused, e)

    def stop(self):
        super().stop()
        if self._owns:
            self.producer.close(timeout=self.flush_timeout)
        else:
            self.producer.flush(timeout=self.flush_timeout)
