"""A fake `picamera2` for machines without a Raspberry Pi camera, mirroring picamera2 0.3.x's public surface.

Picamera2(camera_num=0, verbose_console=None, tuning=None, allocator=None), Picamera2.global_camera_info(),
Picamera2.load_tuning_file(tuning_file, dir=None), create_video_configuration(main={}, lores=None, raw={},
transform=libcamera.Transform(), colour_space=None, buffer_count=6, controls={}, display="main", encode="main",
queue=True) (lores: YUV420 at the main size unless given, as the real one), configure(camera_config) (lores no bigger
than main: "lores stream dimensions may not exceed main stream"), post_callback (called with each request on the
camera thread before the encoder; request.make_array("lores") is H*3/2 rows of a 64-aligned stride, as on a Pi),
start_recording(encoder, output, pts=None, config=None, quality=None, name=None),
stop_recording(), start(), stop(), close().

The camera is a thread that makes a moving picture at the configured FrameRate, stamps each frame with the
SensorTimestamp (CLOCK_MONOTONIC ns, as on a Pi) and hands it to the encoder, which emits real H.264 (libx264).
What goes wrong is set in `picamera2_sim.world` (no camera, a stall after N frames, a Pi 5).
"""

from __future__ import annotations

import json
import os
import threading
import time

import libcamera
import numpy as np
import picamera2_sim as _sim

from .encoders import Encoder, H264Encoder  # noqa: F401  (the real package imports these here too)
from .outputs import Output  # noqa: F401


class _Libcamera_Request:
    def __init__(self, metadata):
        self.metadata = metadata


class _CompletedRequest:
    """What an encoder's encode(stream, request) receives: the picture and its metadata."""

    def __init__(self, arrays: dict, sensor_ts_ns: int):  # arrays: stream name -> picture
        self.request = _Libcamera_Request({libcamera.controls.SensorTimestamp: sensor_ts_ns})
        self._arrays = arrays

    def make_array(self, name):
        return self._arrays[name]

    def acquire(self):
        pass

    def release(self):
        pass

    def get_metadata(self):
        return {"SensorTimestamp": self.request.metadata[libcamera.controls.SensorTimestamp]}


def _picture(index: int, width: int, height: int, fmt: str, scene=None, stride: int | None = None) -> np.ndarray:
    if scene is not None:
        luma = np.asarray(scene(index, width, height), dtype=np.uint8)
    else:
        x = np.arange(width, dtype=np.int32)[None, :]
        y = np.arange(height, dtype=np.int32)[:, None]
        luma = ((x + 3 * index) % 200 + (y // 8) % 2 * 30 + 16).astype(np.uint8)
    if fmt == "YUV420":
        stride = stride or width
        luma = np.pad(luma, ((0, 0), (0, stride - width)))
        chroma = np.full((height // 2, stride), 128, dtype=np.uint8)
        return np.concatenate([luma, chroma])
    channels = 4 if fmt.startswith("X") else 3
    return np.repeat(luma[:, :, None], channels, axis=2)


class Picamera2:
    """The camera. One instance per camera_num; recording runs a camera thread feeding the encoder."""

    @staticmethod
    def global_camera_info() -> list:
        return [dict(c) for c in _sim.world.cameras]

    @staticmethod
    def load_tuning_file(tuning_file, dir=None):
        dirs = [dir] if dir is not None else list(_sim.world.tuning_dirs)
        for directory in dirs:
            file = os.path.join(directory, tuning_file)
            if os.path.isfile(file):
                with open(file) as fp:
                    return json.load(fp)
        raise RuntimeError("Tuning file not found")

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        world = _sim.world
        # As the real one: "Get the real libcamera internal number" -> IndexError when there is no such camera.
        camera_num = self.global_camera_info()[camera_num]["Num"]
        if world.init_error is not None:
            raise world.init_error
        self.camera_idx = camera_num
        self.tuning = tuning
        self.camera_config = None
        self.started = False
        self.is_open = True
        self._encoder = None
        self._camera_thread = None
        self._stop_camera = threading.Event()
        self._world = world
        self.pre_callback = None
        self.post_callback = None
        world.cameras_opened.append(self)

    # -- configuration --------------------------------------------------------------------------------------------
    def create_video_configuration(self, main={}, lores=None, raw={}, transform=libcamera.Transform(),
                                   colour_space=None, buffer_count=6, controls={}, display="main", encode="main",
                                   queue=True) -> dict:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        stream = {"format": "XBGR8888", "size": (1280, 720)}
        for key, value in main.items():
            if key not in ("format", "size"):
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are ('format', 'size')")
            stream[key] = value
        if colour_space is None:
            w, h = stream["size"]
            colour_space = libcamera.ColorSpace.Smpte170m() if w < 1280 or h < 720 else libcamera.ColorSpace.Rec709()
        if lores is not None:
            lores = {"format": "YUV420", "size": stream["size"]} | dict(lores)
        return {"use_case": "video", "transform": transform, "colour_space": colour_space,
                "buffer_count": buffer_count, "queue": queue, "main": stream, "lores": lores, "raw": raw,
                "controls": {"FrameDurationLimits": (33333, 33333)} | dict(controls),
                "display": display, "encode": encode}

    def configure(self, camera_config=None):
        if camera_config is None:
            raise RuntimeError("No camera configuration")
        if not isinstance(camera_config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        size = camera_config["main"]["size"]
        if not isinstance(size, tuple) or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")
        lores = camera_config.get("lores")
        if lores is not None:
            if not self._world.lores:
                raise RuntimeError("Failed to configure camera (no second stream)")  # as libcamera's configure()
            if lores["size"][0] > size[0] or lores["size"][1] > size[1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if lores["format"] != "YUV420":
                raise RuntimeError("lores stream must be YUV")
        sizes = self._world.sizes
        if sizes is not None and tuple(size) not in sizes:
            # libcamera's validate() answers Adjusted and picamera2 writes the adjusted stream back into the
            # caller's "main" dict (a shallow copy shares it), logging only "Camera configuration has been adjusted!"
            camera_config["main"]["size"] = max(sizes, key=lambda s: s[0] * s[1])
        self.camera_config = camera_config

    # -- recording ------------------------------------------------------------------------------------------------
    def start_recording(self, encoder, output, pts=None, config=None, quality=None, name=None):
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera must be configured")
        encoder.output = output
        stream = self.camera_config["main"]
        encoder.size = tuple(stream["size"])
        encoder.format = stream["format"]
        encoder.stride = stream["size"][0]
        encoder.start(quality)
        self._encoder = encoder
        self.start()

    def start(self, config=None, show_preview=False):
        if self.started:
            return
        self.started = True
        self._stop_camera.clear()
        self._camera_thread = threading.Thread(target=self._camera_loop, name="fake-camera", daemon=True)
        self._camera_thread.start()

    def _frame_rate(self) -> float:
        ctl = self.camera_config["controls"]
        if "FrameRate" in ctl:
            return float(ctl["FrameRate"])
        return 1e6 / ctl["FrameDurationLimits"][0]

    def _camera_loop(self):
        world = self._world
        stream = self.camera_config["main"]
        width, height = stream["size"]
        transform = self.camera_config["transform"]
        period_ns = int(1e9 / self._frame_rate())
        t0 = time.monotonic_ns()
        index = 0
        while not self._stop_camera.is_set():
            if world.stall_after_frames is not None and index >= world.stall_after_frames:
                return  # the sensor stopped: no frames, no error, as with a loose ribbon cable
            due = t0 + index * period_ns
            delay = due - time.monotonic_ns()
            if delay > 0 and self._stop_camera.wait(delay / 1e9):
                return
            sensor_ts = time.monotonic_ns()
            world.sensor_timestamps.append(sensor_ts)
            pic = _picture(index, width, height, stream["format"], world.scene)
            if transform.hflip:
                pic = pic[:, ::-1] if stream["format"] != "YUV420" else np.concatenate(
                    [pic[:height, ::-1], pic[height:]])
            if transform.vflip:
                pic = pic[::-1] if stream["format"] != "YUV420" else np.concatenate([pic[:height][::-1], pic[height:]])
            arrays = {"main": np.ascontiguousarray(pic)}
            lores = self.camera_config.get("lores")
            if lores is not None:
                lw, lh = lores["size"]
                arrays["lores"] = _picture(index, lw, lh, "YUV420", world.scene, stride=(lw + 63) // 64 * 64)
            request = _CompletedRequest(arrays, sensor_ts)
            if self.post_callback is not None:
                self.post_callback(request)
            if self._encoder is not None and self._encoder.running:
                self._encoder.encode("main", request)
            index += 1

    def _block_if_stalled(self):
        # The real stop() waits for requests the stalled camera never completes: it blocks forever.
        if self._world.stall_after_frames is not None:
            self._world.unblock.wait()

    def stop(self):
        if not self.started:
            return
        self._block_if_stalled()
        self._stop_camera.set()
        if self._camera_thread is not None:
            self._camera_thread.join()
        self.started = False

    def stop_recording(self):
        self.stop()
        if self._encoder is not None and self._encoder.running:
            self._encoder.stop()
        self._encoder = None

    def close(self):
        if not self.is_open:
            return
        self.stop()
        self.is_open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
