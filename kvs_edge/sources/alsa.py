"""A microphone beside the video: ALSA capture through PyAV, AAC-LC through FFmpeg's encoder, timestamps from the
sample count on the clock the video is stamped with (media/audio_clock.py).

`AlsaAudio(cfg)` runs its own thread: start(on_audio) delivers AudioFrames; `audio` (its AacEncoder: asc, sample_rate,
channels) declares the track; `state` is "starting", "ok" or "missing". A device that does not exist at the first open
is one line naming it and what `arecord -l` would list (from /proc/asound/pcm), and the video goes on alone; a device
that disappears later (USB unplugged) is retried with backoff and comes back with a re-anchored clock.

`open_input` is the seam for tests: a function (device, sample_rate, channels) -> iterable of PyAV AudioFrames. The
default opens the ALSA device with PyAV (format "alsa"); where there is no sound card (CI), tests hand it a WAV file
paced in real time instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Callable, Iterable

from kvs_edge.clock import Clock, KernelClock
from kvs_edge.media.aac_encoder import AacEncoder
from kvs_edge.media.audio_clock import AudioClock
from kvs_edge.media.frame import AudioFrame
from kvs_edge.retry import LIVE_SOURCE, Backoff

log = logging.getLogger(__name__)

PCM_LIST = "/proc/asound/pcm"


def capture_devices(path: str = PCM_LIST) -> list[str]:
    """ALSA capture devices as `arecord -l` shows them, e.g. ["hw:1,0 (USB Audio)"]; [] without any."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:  # "01-00: USB Audio : USB Audio : playback 1 : capture 1"
        parts = [p.strip() for p in line.split(":")]
        if len(parts) >= 3 and any(p.startswith("capture") for p in parts[3:]) and "-" in parts[0]:
            card, dev = parts[0].split("-", 1)
            out.append(f"hw:{int(card)},{int(dev)} ({parts[1]})")
    return out


def no_device_message(device: str, devices: list[str]) -> str:
    listed = ", ".join(devices) if devices else "none (no sound card found)"
    return (f"source.audio.device {device}: no such ALSA capture device; `arecord -l` lists: {listed}; "
            f"sending video only")


SYSTEM_ALSA_CONFIG = "/usr/share/alsa"  # Debian's libasound2-data (Raspberry Pi OS has it)


def alsa_config_dir(environ, exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """The ALSA configuration folder to point PyAV's own libasound at, or None to leave the environment alone.

    The PyAV wheel bundles its libasound, built to read its configuration from /tmp/vendor/share/alsa (the wheel
    builder's folder), which exists on no machine: without it every device name ("default", "hw:1,0", "plughw:...")
    is an "Unknown PCM" (found in the VM test bed with a real snd-aloop card). alsa-lib reads ALSA_CONFIG_DIR instead;
    a setting of the user's (ALSA_CONFIG_DIR or ALSA_CONFIG_PATH) is kept."""
    if environ.get("ALSA_CONFIG_DIR") or environ.get("ALSA_CONFIG_PATH"):
        return None
    return SYSTEM_ALSA_CONFIG if exists(f"{SYSTEM_ALSA_CONFIG}/alsa.conf") else None


def open_alsa(device: str, sample_rate: int, channels: int) -> Iterable:
    import av

    config_dir = alsa_config_dir(os.environ)
    if config_dir:
        os.environ["ALSA_CONFIG_DIR"] = config_dir  # read by libasound at its first open, in this process
    container = av.open(device, format="alsa", options={"sample_rate": str(sample_rate), "channels": str(channels)})
    try:
        for frame in container.decode(audio=0):
            yield frame
    finally:
        container.close()


class AlsaAudio:
    def __init__(self, cfg, *, clock: Clock | None = None,
                 open_input: Callable[[str, int, int], Iterable] = open_alsa,
                 list_devices: Callable[[], list[str]] = capture_devices, latency_ns: int = 0,
                 backoff: Backoff | None = None) -> None:
        self.device = str(cfg.device if cfg.device != "auto" else "default")
        self.audio = AacEncoder(cfg.sample_rate, cfg.channels, cfg.bitrate)
        self.clock = clock or KernelClock()
        self.timestamps = AudioClock(cfg.sample_rate, latency_ns=latency_ns)
        self.open_input = open_input
        self.list_devices = list_devices
        self.on_audio: Callable[[AudioFrame], None] | None = None
        self.state = "starting"
        self.error: str | None = None  # set when the device does not exist at the first open (video goes alone)
        self.frames = 0
        self.reopens = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry = backoff or Backoff(LIVE_SOURCE.base_s, LIVE_SOURCE.cap_s)
        self._anchors: deque = deque(maxlen=64)  # (first sample index, its timestamp ns) of recent chunks

    def start(self, on_audio: Callable[[AudioFrame], None] | None = None) -> None:
        if on_audio is not None:
            self.on_audio = on_audio
        self._thread = threading.Thread(target=self._run, name="kvs-edge-audio", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        opened_once = False
        discontinuity = False
        while not self._stopping.is_set():
            try:
                frames = iter(self.open_input(self.device, self.audio.sample_rate, self.audio.channels))
                first = next(frames, None)
            except (OSError, Exception) as e:  # PyAV raises OSError (EIO) for an unknown PCM, FFmpegError otherwise
                if not opened_once:
                    self.error = no_device_message(self.device, self.list_devices())
                    self.state = "missing"
                    log.error("%s", self.error)
                    return
                self._missing(f"cannot reopen it ({getattr(e, 'strerror', None) or e})")
                continue
            if first is None:
                self._missing("it delivered no sound")
                continue
            if opened_once:
                self.reopens += 1
                log.info("audio device %s is back", self.device)
            opened_once = True
            self._retry.reset()
            self.state = "ok"
            try:
                self._chunk(first, discontinuity)
                for frame in frames:
                    if self._stopping.is_set():
                        return
                    self._chunk(frame, False)
                reason = "the capture ended"
            except Exception as e:  # a USB device unplugged mid-read: EIO / ENODEV from ALSA through PyAV
                reason = f"{getattr(e, 'strerror', None) or e}"
            if self._stopping.is_set():
                return
            discontinuity = True
            self._missing(reason)

    def _missing(self, why: str) -> None:
        if self.state != "missing":
            log.warning("audio device %s gone (%s): video goes on alone until it is back", self.device, why)
        self.state = "missing"
        self._stopping.wait(self._retry.next())

    def _chunk(self, frame, discontinuity: bool) -> None:
        k0 = self.audio.samples_in
        stamp = self.timestamps.stamp(frame.samples, self.clock.monotonic_ns(), discontinuity=discontinuity)
        if stamp.resync and stamp.timestamp_ns is not None:
            log.info("audio clock re-anchored (%d so far): %s", self.timestamps.resyncs, self.timestamps.last_resync)
        self._anchors.append((k0, stamp.timestamp_ns))
        for data, k in self.audio.encode(frame):
            self.frames += 1
            if self.on_audio is not None:
                self.on_audio(AudioFrame(data, self._time_of(k)))

    def _time_of(self, k: int) -> int:
        """The timestamp of sample k: from the latest chunk that starts at or before it."""
        base_k, base_ns = self._anchors[0]
        for ak, ans in self._anchors:
            if ak <= k:
                base_k, base_ns = ak, ans
        return base_ns + (k - base_k) * 1_000_000_000 // self.audio.sample_rate
