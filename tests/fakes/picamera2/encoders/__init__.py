"""Fake picamera2.encoders: the real class names and signatures (picamera2 0.3.x), real H.264 from libx264.

- `H264Encoder(bitrate=None, repeat=True, iperiod=None, framerate=None, enable_sps_framerate=False, qp=None,
  profile=None)`: on VC4 boards the hardware V4L2 encoder. Frames are queued to it and a separate poll thread (as the
  real /dev/video11 poll thread) hands each encoded frame to the output; the key flag is computed as the real one does
  (first NAL is an SPS or PPS).
- `LibavH264Encoder(bitrate=None, repeat=True, iperiod=30, framerate=30, qp=None, profile=None)`: libx264 through PyAV,
  run inline on the camera thread; no `enable_sps_framerate` (passing it raises TypeError, as in the real one).
- On the Pi 5 (`picamera2_sim.world.platform == "pisp"` when this module is imported) `H264Encoder` IS
  `LibavH264Encoder`, as the real package decides at import time.
"""

from __future__ import annotations

import os
import queue
import threading
from enum import Enum
from fractions import Fraction

import av
import libcamera
import picamera2_sim as _sim

from ..outputs import Output


class Quality(Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


_FORMATS = {"YUV420": "yuv420p", "BGR888": "rgb24", "RGB888": "bgr24", "XBGR8888": "rgba", "XRGB8888": "bgra"}


class Encoder:
    """Base class: output(s), start/stop, first timestamp bookkeeping."""

    def __init__(self):
        self._width = 0
        self._height = 0
        self._stride = 0
        self._format = None
        self._output = []
        self._running = False
        self._lock = threading.Lock()
        self._output_lock = threading.Lock()
        self.firsttimestamp = None
        self.frame_skip_count = 1
        self.audio = False

    @property
    def running(self):
        return self._running

    @property
    def width(self):
        return self._width

    @width.setter
    def width(self, value):
        if not isinstance(value, int):
            raise RuntimeError("Width must be integer")
        self._width = value

    @property
    def height(self):
        return self._height

    @height.setter
    def height(self, value):
        if not isinstance(value, int):
            raise RuntimeError("Height must be integer")
        self._height = value

    @property
    def size(self):
        return (self._width, self._height)

    @size.setter
    def size(self, value):
        if not isinstance(value, tuple) or len(value) != 2:
            raise RuntimeError("Size must be a tuple of two integers")
        self.width, self.height = value

    @property
    def stride(self):
        return self._stride

    @stride.setter
    def stride(self, value):
        self._stride = value

    @property
    def format(self):
        return self._format

    @format.setter
    def format(self, value):
        if value not in _FORMATS:
            raise ValueError(f"Invalid format {value}")
        self._format = value

    @property
    def output(self):
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value):
        if isinstance(value, list):
            for out in value:
                if not isinstance(out, Output):
                    raise RuntimeError("Must pass Output")
        elif isinstance(value, Output):
            value = [value]
        else:
            raise RuntimeError("Must pass Output")
        self._output = value

    def encode(self, stream, request):
        with self._lock:
            self._encode(stream, request)

    def _encode(self, stream, request):
        raise NotImplementedError

    def start(self, quality=None):
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            self._setup(quality)
            self._running = True
            self.firsttimestamp = None
            for out in self._output:
                out.start()
            self._start()

    def _start(self):
        pass

    def stop(self):
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
            self._stop()
            for out in self._output:
                out.stop()

    def _stop(self):
        pass

    def _setup(self, quality):
        pass

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        with self._output_lock:
            for out in self._output:
                out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _timestamp(self, request):
        ts = int(request.request.metadata[libcamera.controls.SensorTimestamp] / 1000)  # ns to us
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
            return 0
        return ts - self.firsttimestamp


def _x264(width, height, *, rate, time_base, gop, bitrate, qp, profile, repeat, preset, scenecut):
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height = width, height
    enc.pix_fmt = "yuv420p"
    enc.time_base = time_base
    enc.framerate = Fraction(rate).limit_denominator(1001)
    enc.gop_size = gop
    if bitrate is not None:
        enc.bit_rate = bitrate
    if qp is not None:
        enc.qmin = enc.qmax = qp
    if not repeat:
        enc.flags |= av.codec.context.Flags.global_header
    opts = {"preset": preset, "tune": "zerolatency", "deblock": "1"}
    if profile is not None:
        opts["profile"] = profile.lower().replace(" ", "")
    if not scenecut:
        opts["x264-params"] = "scenecut=0"
    enc.options = opts
    enc.open()
    return enc


def _video_frame(array, fmt, width):
    return av.VideoFrame.from_ndarray(array, format=_FORMATS[fmt]).reformat(format="yuv420p")


class _V4L2H264Encoder(Encoder):
    """The VC4 hardware encoder's behaviour: a poll thread outputs frames, keyframe = first NAL is SPS/PPS."""

    def __init__(self, bitrate=None, repeat=True, iperiod=None, framerate=None, enable_sps_framerate=False,
                 qp=None, profile=None):
        super().__init__()
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.repeat = repeat
        self.qp = qp
        self.profile = profile
        self.framerate = framerate
        self._enable_framerate = enable_sps_framerate
        _sim.world.encoders.append(("H264Encoder", dict(bitrate=bitrate, repeat=repeat, iperiod=iperiod,
                                                         framerate=framerate, enable_sps_framerate=enable_sps_framerate,
                                                         qp=qp, profile=profile), self))

    def _setup(self, quality):
        if quality is not None or (self.bitrate is None and self.qp is None):
            quality = Quality.MEDIUM if quality is None else quality
            table = {Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9, Quality.VERY_HIGH: 15}
            self.bitrate = int(table[quality] * 1000000 * self.width * self.height * (self.framerate or 30)
                               / (1920 * 1080 * 30))

    def _start(self):
        if self.profile is not None and self.profile.lower() not in ("baseline", "constrained baseline", "main", "high"):
            raise RuntimeError("Profile " + self.profile + " not recognised")
        # The V4L2 encoder's default I-period on a Pi is 60 frames.
        self._enc = _x264(self.width, self.height, rate=self.framerate or 30, time_base=Fraction(1, 1000000),
                          gop=self.iperiod or 60, bitrate=self.bitrate, qp=self.qp, profile=self.profile,
                          repeat=self.repeat, preset="ultrafast", scenecut=False)
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._poll, name="fake-v4l2-encoder", daemon=True)
        self._thread.start()

    def _encode(self, stream, request):
        timestamp_us = self._timestamp(request)
        self._queue.put((request.make_array(stream), timestamp_us))

    def _poll(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            array, timestamp_us = item
            vf = _video_frame(array, self.format, self.width)
            vf.pts = timestamp_us
            for pkt in self._enc.encode(vf):
                b = bytes(pkt)
                naltype = b[4] & 0x1F
                keyframe = naltype == 0x7 or naltype == 0x8
                self.outputframe(b, keyframe, timestamp=int(pkt.pts))

    def _stop(self):
        self._queue.put(None)
        self._thread.join()


class LibavH264Encoder(Encoder):
    """libx264 via PyAV, as on the Pi 5 (no enable_sps_framerate parameter)."""

    def __init__(self, bitrate=None, repeat=True, iperiod=30, framerate=30, qp=None, profile=None):
        super().__init__()
        self.repeat = repeat
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.framerate = framerate
        self.qp = qp
        self.profile = profile
        _sim.world.encoders.append(("LibavH264Encoder", dict(bitrate=bitrate, repeat=repeat, iperiod=iperiod,
                                                              framerate=framerate, qp=qp, profile=profile), self))

    def _setup(self, quality):
        if quality is not None or (self.bitrate is None and self.qp is None):
            quality = Quality.MEDIUM if quality is None else quality
            table = {Quality.VERY_LOW: 3, Quality.LOW: 4, Quality.MEDIUM: 7, Quality.HIGH: 10, Quality.VERY_HIGH: 14}
            self.bitrate = int(table[quality] * 1000000 * ((self.width * self.height * (self.framerate or 30))
                                                           / (1920 * 1080 * 30)) ** 0.5)

    def _start(self):
        # As the real one: its stream comes from PyAV's add_stream(codec, rate=self.framerate), which raises
        # AttributeError ('float' object has no attribute 'numerator') for a float frame rate.
        with av.open(os.devnull, "w", format="null") as container:
            container.add_stream("libx264", rate=self.framerate)
        preset = "ultrafast"
        if self.profile is not None:
            if self.profile.lower() not in ("baseline", "constrained baseline", "main", "high"):
                raise RuntimeError("Profile " + self.profile + " not recognised")
            if "baseline" not in self.profile.lower():
                preset = "superfast"
        self._enc = _x264(self.width, self.height, rate=self.framerate, time_base=Fraction(1, 1000000),
                          gop=self.iperiod or (1 << 31) - 1, bitrate=self.bitrate, qp=self.qp, profile=self.profile,
                          repeat=self.repeat, preset=preset, scenecut=True)

    def _encode(self, stream, request):
        timestamp_us = self._timestamp(request)
        vf = _video_frame(request.make_array(stream), self.format, self.width)
        vf.pts = timestamp_us
        for pkt in self._enc.encode(vf):
            self.outputframe(bytes(pkt), pkt.is_keyframe, timestamp=int(pkt.pts), packet=pkt)

    def _stop(self):
        for pkt in self._enc.encode(None):
            self.outputframe(bytes(pkt), pkt.is_keyframe, timestamp=int(pkt.pts), packet=pkt)


if _sim.world.platform == "vc4":
    H264Encoder = _V4L2H264Encoder
    H264Encoder.__name__ = H264Encoder.__qualname__ = "H264Encoder"
else:
    H264Encoder = LibavH264Encoder
