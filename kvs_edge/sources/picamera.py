"""The Raspberry Pi camera: Picamera2 + H264Encoder, frames handed straight to the pipeline.

`picamera2` (and the libcamera bindings under it) exist only on Raspberry Pi OS (`apt install python3-picamera2`),
so they are imported when the source starts, never when this module is imported.

- Encoder: `H264Encoder` is the hardware encoder on VC4 boards (Pi Zero 2, 3, 4, CM4) and an alias of
  `LibavH264Encoder` (libx264) on a Pi 5. It gets repeat=True (SPS/PPS before every IDR, so any fragment can start a
  session), iperiod = fps x fragment seconds (one IDR per fragment), the bitrate, profile and the frame rate as a
  Fraction (the libav encoder assumes 30 fps unless told, and PyAV rejects a float rate). `enable_sps_framerate` is
  never passed: the libav encoder has no such parameter.
- Size: libcamera adjusts a size the camera cannot produce, and picamera2's configure() accepts that silently;
  the size read back from `camera_config["main"]` after configure() is the one used (and named, with one warning).
- Capture time: `encoder.firsttimestamp + timestamp` in microseconds, on the SensorTimestamp clock (CLOCK_MONOTONIC
  on a Pi that never suspends), converted to ns.
- The `Output` subclass only builds a Frame and calls emit (which never blocks): a slow outputframe stalls the camera.
- Motion (issue 15, events.motion): `want_lores(sink, fps)` before start adds Picamera2's low-resolution stream
  (`lores`, YUV420, LORES_SIZE or the main size if smaller) to the configuration. Picamera2's `post_callback` runs on
  its camera thread for every request: at most `fps` times a second (by SensorTimestamp) it copies the lores Y plane
  (`make_array("lores")` is H*3/2 rows of the stride; the first H rows, W columns are the luma) and hands it to the
  sink, which must never block (event_service.MotionTap queues it in a one-slot queue). A camera that refuses the
  second stream records without it (one warning) and the detector falls back to decoded key frames.
- A camera that stops delivering (loose ribbon, weak power) only logs in libcamera; here a watchdog notices no frame
  for `stall_seconds` and sets `error`, and the pipeline exits non-zero for systemd to restart it. Picamera2's stop()
  can then block forever, so it runs on a daemon thread and is abandoned after the stop timeout.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
import time
from fractions import Fraction

from kvs_edge.config import HealthConfig
from kvs_edge.media.frame import Frame

from .base import Emit, Source, SourceError, SourceNotInstalled

log = logging.getLogger(__name__)

NO_CAMERA = "no camera found: check the ribbon cable and that the camera is enabled"
NOT_INSTALLED = ("picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` and create "
                 "the venv with --system-site-packages (or use source.type: testpattern off a Pi)")
DEFAULT_STALL_SECONDS = HealthConfig.stall_seconds  # health.stall_seconds' default
LORES_SIZE = (320, 240)  # the motion detector's picture: small, so a comparison costs little on a Pi


def stall_message(seconds: float) -> str:
    return f"camera stopped delivering frames for {seconds:g} s: check the ribbon cable and power supply"


def transform_flags(hflip: bool, vflip: bool, rotation: int) -> tuple[int, int]:
    """(hflip, vflip) for libcamera.Transform: a 180 degree rotation is both flips; 90/270 cannot be done."""
    if rotation not in (0, 180):
        raise SourceError(f"source.rotation {rotation}: the camera can only rotate by 0 or 180 degrees "
                          "(90 needs a transpose the Pi's ISP does not do); use 0 or 180")
    flip = rotation == 180
    return int(bool(hflip) ^ flip), int(bool(vflip) ^ flip)


class PicameraSource(Source):
    """Frames from a Raspberry Pi camera through Picamera2's H264Encoder."""

    def __init__(self, cfg, *, fragment_seconds: float, stall_seconds: float | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.width, self.height = int(cfg.width), int(cfg.height)
        self.fps = cfg.fps
        self.camera_index = int(getattr(cfg, "camera_index", 0) or 0)
        self.camera_model = getattr(cfg, "camera_model", None)
        self.camera_port = getattr(cfg, "camera_port", None)
        self.iperiod = max(1, round(float(cfg.fps) * fragment_seconds))
        self.hflip, self.vflip = transform_flags(getattr(cfg, "hflip", False), getattr(cfg, "vflip", False),
                                                 int(getattr(cfg, "rotation", 0) or 0))
        if stall_seconds is None:
            stall_seconds = getattr(cfg, "stall_seconds", None)
        self.stall_seconds = float(stall_seconds or DEFAULT_STALL_SECONDS)
        self.model = "?"
        self._set_name()
        self.last_frame_mono: float | None = None
        self._camera = None
        self._recording = False
        self._wakeup = threading.Event()
        self._lores_sink = None  # (Y plane, SensorTimestamp ns) -> None, never blocking; set by want_lores
        self._lores_interval_ns = 0
        self._lores_next_ns = 0
        self.lores_size: tuple[int, int] | None = None  # the lores stream's size once recording with it

    def want_lores(self, sink, fps: float) -> None:
        """Deliver the lores stream's luma to `sink(luma, sensor_ts_ns)` at most `fps` times a second (call before
        start). `sink` runs on Picamera2's camera thread and must return at once."""
        self._lores_sink = sink
        self._lores_interval_ns = int(1e9 / float(fps))

    def _set_name(self) -> None:
        model = f" ({self.model})" if self.model != "?" else ""
        self.name = f"picamera {self.camera_index}{model} {self.width}x{self.height}@{float(self.fps):g}"

    # -- the camera -------------------------------------------------------------------------------------------------
    def _import(self):
        try:
            picamera2 = importlib.import_module("picamera2")
            encoders = importlib.import_module("picamera2.encoders")
            outputs = importlib.import_module("picamera2.outputs")
            libcamera = importlib.import_module("libcamera")
        except ImportError as e:
            raise SourceNotInstalled(NOT_INSTALLED) from e
        return picamera2, encoders, outputs, libcamera

    def _load_tuning(self, Picamera2):
        tf = getattr(self.cfg, "tuning_file", None)
        if not tf:
            return None
        directory, name = os.path.split(os.path.expanduser(str(tf)))
        try:
            return Picamera2.load_tuning_file(name, dir=directory or None)
        except (RuntimeError, OSError, ValueError) as e:
            raise SourceError(f"tuning file {tf!r} could not be loaded ({e}): give a full path, or a name from "
                              "/usr/share/libcamera/ipa/rpi/vc4 (Pi 4 and older) or .../rpi/pisp (Pi 5)") from e

    def _open(self, picamera2, libcamera):
        Picamera2 = picamera2.Picamera2
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as e:  # libcamera not running at all
            raise SourceError(f"{NO_CAMERA} ({type(e).__name__}: {e})") from e
        if not cameras:
            raise SourceError(NO_CAMERA)
        self.camera_index = select_camera(cameras, self.camera_index, self.camera_model, self.camera_port)
        self.model = str(cameras[self.camera_index].get("Model", "?"))
        self._set_name()
        tuning = self._load_tuning(Picamera2)
        try:
            camera = Picamera2(camera_num=self.camera_index, tuning=tuning)
        except IndexError as e:  # picamera2 0.3.x: global_camera_info()[camera_num] on a camera that vanished
            raise SourceError(NO_CAMERA) from e
        except RuntimeError as e:
            raise SourceError(f"camera {self.camera_index} ({self.model}) could not be opened ({e}): check that no "
                              "other program (rpicam-vid, another kvs-edge) is using it, and the ribbon cable") from e
        self._camera = camera
        lores = None
        if self._lores_sink is not None:  # even sizes no bigger than main ("lores stream dimensions may not exceed
            # main stream", picamera2's check_camera_config)
            lores = {"size": (min(LORES_SIZE[0], self.width) // 2 * 2, min(LORES_SIZE[1], self.height) // 2 * 2),
                     "format": "YUV420"}
        try:
            self._configure(camera, libcamera, lores)
        except (RuntimeError, ValueError) as e:
            if lores is None:
                raise SourceError(f"camera {self.camera_index} ({self.model}) refused {self.width}x{self.height}@"
                                  f"{float(self.fps):g} ({e}): pick a size and frame rate the sensor supports") from e
            log.warning("camera %d (%s) refused the low-resolution stream for motion (%s): motion is detected on "
                        "decoded key frames instead", self.camera_index, self.model, e)
            return self._open_without_lores(camera, libcamera)
        self._read_back(camera)
        got = (getattr(camera, "camera_config", None) or {}).get("lores") if lores is not None else None
        self.lores_size = tuple(int(v) for v in got["size"]) if got else None
        if self.lores_size is not None and self.lores_size != lores["size"]:  # libcamera's validate() adjusted it
            log.warning("camera %d (%s) gives the low-resolution stream for motion at %dx%d, not %dx%d: motion "
                        "works, at a higher cost per picture", self.camera_index, self.model, *self.lores_size,
                        *lores["size"])
        return camera

    def _open_without_lores(self, camera, libcamera):
        try:
            self._configure(camera, libcamera, None)
        except (RuntimeError, ValueError) as e:
            raise SourceError(f"camera {self.camera_index} ({self.model}) refused {self.width}x{self.height}@"
                              f"{float(self.fps):g} ({e}): pick a size and frame rate the sensor supports") from e
        self._read_back(camera)
        self.lores_size = None
        return camera

    def _configure(self, camera, libcamera, lores) -> None:
        config = camera.create_video_configuration(
            main={"size": (self.width, self.height), "format": "YUV420"},
            lores=lores,
            transform=libcamera.Transform(hflip=self.hflip, vflip=self.vflip),
            controls={"FrameRate": self.fps},
        )
        camera.configure(config)

    def _lores_callback(self, request) -> None:
        """Picamera2's post_callback, on its camera thread: the lores luma to the sink at most lores fps, never
        raising (an exception here would stop the camera's event loop)."""
        try:
            ts = int(request.get_metadata().get("SensorTimestamp") or time.monotonic_ns())
            if ts < self._lores_next_ns:
                return
            self._lores_next_ns = ts + self._lores_interval_ns
            w, h = self.lores_size
            yuv = request.make_array("lores")
            self._lores_sink(yuv[:h, :w], ts)
        except Exception as e:  # pragma: no cover - defensive: the camera must go on
            log.warning("%s: lores frame for motion failed: %s", self.name, e)

    def _read_back(self, camera) -> None:
        """Use the size the camera really gives: libcamera's validate() adjusts a size the camera cannot produce
        (1000x700 may become 1280x720) and picamera2's configure() accepts the adjustment without raising."""
        main = (getattr(camera, "camera_config", None) or {}).get("main") or {}
        fmt = str(main.get("format", "YUV420"))
        if fmt != "YUV420":  # the H.264 encoders take YUV420 from the camera; anything else cannot be encoded
            raise SourceError(f"camera {self.camera_index} ({self.model}) gives {fmt} frames, not YUV420: "
                              "kvs-edge cannot encode them; use a Raspberry Pi camera (libcamera's rpi pipeline)")
        width, height = (int(v) for v in main.get("size", (self.width, self.height)))
        if (width, height) != (self.width, self.height):
            log.warning("camera %d (%s) cannot produce %dx%d: using the %dx%d it gives (set source.width: %d and "
                        "source.height: %d to silence this)", self.camera_index, self.model, self.width, self.height,
                        width, height, width, height)
            self.width, self.height = width, height
            self._set_name()

    def _encoder(self, encoders):
        H264Encoder = encoders.H264Encoder
        # A Fraction, never a float: the libav encoder hands it to PyAV's add_stream(rate=...), which raises
        # AttributeError on a float (found by the real picamera2, tests/test_real_picamera2.py).
        framerate = Fraction(self.fps).limit_denominator(1001)
        kwargs = dict(bitrate=int(self.cfg.bitrate), repeat=True, iperiod=self.iperiod, framerate=framerate,
                      profile=str(getattr(self.cfg, "profile", "high") or "high"))
        try:
            params = inspect.signature(H264Encoder).parameters
        except (TypeError, ValueError):
            params = {}
        backend = "libav (libx264)" if "enable_sps_framerate" not in params else "hardware (V4L2)"
        log.info("%s: H.264 encoder %s, %d bit/s, key frame every %d frames", self.name, backend, kwargs["bitrate"],
                 self.iperiod)
        return H264Encoder(**kwargs)

    def _output_class(self, outputs, encoder, emit: Emit):
        source = self

        class FrameOutput(outputs.Output):
            """Hands each encoded frame to the pipeline: build a Frame, call emit, return."""

            def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
                if audio or frame is None:
                    return
                base = encoder.firsttimestamp
                if base is None or timestamp is None:
                    ts_ns = time.monotonic_ns()
                else:
                    ts_ns = (int(base) + int(timestamp)) * 1000
                source.last_frame_mono = time.monotonic()
                emit(Frame(bytes(frame), ts_ns, bool(keyframe)))

        return FrameOutput()

    # -- the source's thread: open, record, watch --------------------------------------------------------------------
    def _run(self, emit: Emit) -> None:
        picamera2, encoders, outputs, libcamera = self._import()
        camera = self._open(picamera2, libcamera)
        if self._stopping.is_set():  # stop() came while the camera was opening: it may not have seen it
            self._camera = None
            camera.close()
            return
        encoder = self._encoder(encoders)
        output = self._output_class(outputs, encoder, emit)
        if self.lores_size is not None:
            camera.post_callback = self._lores_callback
        try:
            camera.start_recording(encoder, output)
        except (RuntimeError, OSError, ValueError) as e:
            raise SourceError(f"camera {self.camera_index} ({self.model}) could not start recording ({e}): "
                              "check the camera and that /dev/video* is accessible (group video)") from e
        self._recording = True
        log.info("%s: recording", self.name)
        self._watch()

    def _watch(self) -> None:
        """The watchdog: no frame for stall_seconds (counted from the start for the first one) -> error."""
        started = time.monotonic()
        while not self._stopping.is_set():
            self._wakeup.wait(min(0.25, self.stall_seconds / 4))
            last = self.last_frame_mono if self.last_frame_mono is not None else started
            if time.monotonic() - last > self.stall_seconds and not self._stopping.is_set():
                raise SourceError(stall_message(self.stall_seconds))

    def _wake(self) -> None:
        self._wakeup.set()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the watchdog, then stop and close the camera on a daemon thread; give up after `timeout`."""
        deadline = time.monotonic() + timeout
        super().stop(timeout)
        camera = self._camera
        if camera is None:
            return
        self._camera = None

        def shutdown():
            try:
                if self._recording:
                    camera.stop_recording()
                camera.close()
            except Exception as e:
                log.warning("%s: error while stopping the camera: %s", self.name, e)

        t = threading.Thread(target=shutdown, name="kvs-edge-camera-stop", daemon=True)
        t.start()
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            log.warning("%s: camera did not stop within %.1f s (a stalled camera can block forever); leaving it",
                        self.name, timeout)


def select_camera(cameras: list[dict], index: int, model: str | None = None, port: str | None = None) -> int:
    """Which of Picamera2.global_camera_info()'s cameras to open (issue 16: several cameras on one Pi): the one
    whose Model is `model` (e.g. imx708; case-insensitive) and/or whose Id (libcamera's path through the device tree,
    e.g. /base/axi/pcie@120000/rp1/i2c@88000/imx708@1a) contains `port`; else number `index`. Pure. SourceError
    naming the cameras found when none or several match."""
    found = ", ".join(f"{i}: {c.get('Model', '?')} at {c.get('Id', '?')}" for i, c in enumerate(cameras))
    if model is None and port is None:
        if index >= len(cameras):
            models = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(cameras))
            raise SourceError(f"source.camera_index {index}: no such camera (found {models}); "
                              f"set source.camera_index to 0..{len(cameras) - 1}")
        return index
    matches = [i for i, c in enumerate(cameras)
               if (model is None or str(c.get("Model", "")).lower() == model.lower())
               and (port is None or port in str(c.get("Id", "")))]
    what = " and ".join(f"source.{k} {v!r}" for k, v in (("camera_model", model), ("camera_port", port)) if v)
    if not matches:
        raise SourceError(f"{what}: no such camera (found {found})")
    if len(matches) > 1:
        raise SourceError(f"{what}: {len(matches)} cameras match (found {found}); add source.camera_port")
    return matches[0]
