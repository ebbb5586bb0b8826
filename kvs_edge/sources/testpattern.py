"""The test pattern: a moving picture with a readable frame counter and clock, encoded live with libx264.

Used by `kvs-edge demo` and wherever a camera is not at hand. The picture is drawn straight into the YUV planes with
numpy (a gradient that slides, a bouncing block, and digits from a 3x5 pixel font, no font files), encoded with PyAV's
libx264 the way a camera encoder would (ultrafast, zerolatency, no B-frames, SPS/PPS before every IDR, one IDR every
fps x fragment_seconds frames) and paced on the monotonic clock, so frames arrive at the configured rate.

With source.audio, the picture flashes white once a second and the sound (sources/tone.py: a tone, with a beep starting
at each flash) is encoded to AAC and delivered to `on_audio`, sample k stamped `t0 + k / rate` on the clock frame i is
stamped `t0 + i / fps` on: a flash and its beep carry the same timestamp, so sync can be measured downstream.
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction

import numpy as np

from kvs_edge.clock import Clock, KernelClock
from kvs_edge.media.frame import AudioFrame, Frame

from .base import Emit, Pacer, Source, SourceError

log = logging.getLogger(__name__)

# 3x5 glyphs, rows top to bottom, "1" = lit. Digits plus the separators the clock needs.
GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    ":": ("000", "010", "000", "010", "000"),
    ".": ("000", "000", "000", "000", "010"),
    " ": ("000", "000", "000", "000", "000"),
}
GLYPH_MASKS = {ch: np.array([[c == "1" for c in row] for row in rows], dtype=bool) for ch, rows in GLYPHS.items()}
COUNTER_DIGITS = 8


def text_layout(width: int, height: int) -> tuple[int, int, int]:
    """(scale, x0, y0): pixel size of one font dot and where the first text line starts."""
    scale = max(2, min(width // 64, height // 36))
    return scale, 2 * scale, 2 * scale


def draw_text(y_plane: np.ndarray, text: str, x: int, y: int, scale: int) -> None:
    """Draw `text` white on a black box into a luma plane, each font dot `scale` x `scale` pixels."""
    cell = 4 * scale  # 3 dots + 1 dot spacing
    h, w = y_plane.shape
    x1, y1 = min(w, x + cell * len(text) + scale), min(h, y + 6 * scale + scale)
    y_plane[max(0, y - scale):y1, max(0, x - scale):x1] = 16
    for k, ch in enumerate(text):
        glyph = np.kron(GLYPH_MASKS[ch], np.ones((scale, scale), dtype=bool))
        gx, gy = x + k * cell, y
        region = y_plane[gy:gy + glyph.shape[0], gx:gx + glyph.shape[1]]
        region[glyph[:region.shape[0], :region.shape[1]]] = 235


def read_counter(y_plane: np.ndarray) -> int | None:
    """Read the frame counter back from a (decoded) luma plane: the inverse of what render() draws, for tests."""
    h, w = y_plane.shape
    scale, x0, y0 = text_layout(w, h)
    digits = []
    for k in range(COUNTER_DIGITS):
        gx = x0 + k * 4 * scale
        cell = y_plane[y0:y0 + 5 * scale, gx:gx + 3 * scale].astype(np.int32)
        # mean of each font dot, thresholded half-way between the box (16) and the ink (235)
        dots = cell.reshape(5, scale, 3, scale).mean(axis=(1, 3)) > 125
        match = [d for d in "0123456789" if np.array_equal(GLYPH_MASKS[d], dots)]
        if len(match) != 1:
            return None
        digits.append(match[0])
    return int("".join(digits))


class Pattern:
    """Draws picture i of the test pattern as a yuv420p array (pure: no clock, no encoder)."""

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2 or width < 64 or height < 48:
            raise SourceError(f"test pattern size {width}x{height}: width and height must be even and at least 64x48")
        self.width, self.height = width, height
        x = np.arange(width, dtype=np.int32)[None, :]
        y = np.arange(height, dtype=np.int32)[:, None]
        self._base = (16 + (x * 3 + y) % 220).astype(np.uint8)
        self._u = np.full((height // 2, width // 2), 128, dtype=np.uint8)
        self._v = np.full((height // 2, width // 2), 128, dtype=np.uint8)
        self.scale, self.x0, self.y0 = text_layout(width, height)

    def render(self, index: int, clock_text: str, flash: bool = False) -> np.ndarray:
        w, h = self.width, self.height
        y_plane = np.roll(self._base, 4 * index, axis=1)
        if flash:  # the whole picture white (the text stays readable): what the beep is measured against
            y_plane[:] = 235
        # a block bouncing left-right in the lower half: motion a viewer notices
        side = max(8, h // 8)
        span = max(1, w - side)
        pos = (index * 6) % (2 * span)
        bx = pos if pos < span else 2 * span - pos
        by = h - side - h // 10
        y_plane[by:by + side, bx:bx + side] = 235
        draw_text(y_plane, f"{index % 10 ** COUNTER_DIGITS:0{COUNTER_DIGITS}d}", self.x0, self.y0, self.scale)
        draw_text(y_plane, clock_text, self.x0, self.y0 + 8 * self.scale, self.scale)
        u = self._u.copy()
        v = self._v.copy()
        hue = index % 256
        u[(h // 2) // 2:, : (w // 2) // 4] = hue
        v[(h // 2) // 2:, (w // 2) * 3 // 4:] = 255 - hue
        return np.concatenate([y_plane, u.reshape(h // 4, w), v.reshape(h // 4, w)])


def wall_clock_text(epoch_s: float) -> str:
    t = time.localtime(epoch_s)
    return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{int(epoch_s * 1000) % 1000:03d}"


class TestPatternSource(Source):
    """A live test pattern at the configured size, fps and bitrate; `frames` counts what was delivered."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, cfg, *, fragment_seconds: float, clock: Clock | None = None,
                 max_frames: int | None = None) -> None:
        super().__init__()
        audio_cfg = getattr(cfg, "audio", None)
        self.on_audio = None  # AudioFrame callback (the pipeline sets it when source.audio is configured)
        self.audio = None  # the AacEncoder (its asc, sample_rate, channels declare the track)
        if audio_cfg is not None:
            from kvs_edge.media.aac_encoder import AacEncoder

            self.audio = AacEncoder(audio_cfg.sample_rate, audio_cfg.channels, audio_cfg.bitrate)
        self.width, self.height = int(cfg.width), int(cfg.height)
        self.fps = Fraction(cfg.fps).limit_denominator(1001)
        if self.fps <= 0:
            raise SourceError(f"test pattern fps {cfg.fps}: must be positive")
        self.bitrate = int(cfg.bitrate) if getattr(cfg, "bitrate", None) else None
        self.profile = getattr(cfg, "profile", None) or "high"
        self.keyint = max(1, round(float(self.fps) * fragment_seconds))
        self.clock = clock or KernelClock()
        self.max_frames = max_frames
        self.pattern = Pattern(self.width, self.height)
        self.name = f"testpattern {self.width}x{self.height}@{float(self.fps):g}"
        self.flash_every = max(1, round(float(self.fps)))  # frames: one flash (and beep) a second
        self.tone = None
        if self.audio is not None:
            from .tone import ToneTrack

            self.tone = ToneTrack(self.audio.sample_rate, self.audio.channels, self.fps, self.flash_every)
            self.name += " with a tone"

    def _encoder(self):
        import av

        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height = self.width, self.height
        enc.pix_fmt = "yuv420p"
        enc.time_base = 1 / self.fps
        enc.framerate = self.fps
        params = [f"keyint={self.keyint}", f"min-keyint={self.keyint}", "scenecut=0", "bframes=0",
                  "repeat-headers=1", "aud=0"]
        if self.bitrate:
            enc.bit_rate = self.bitrate
            kbps = max(1, self.bitrate // 1000)
            params += [f"vbv-maxrate={kbps}", f"vbv-bufsize={kbps}"]
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": self.profile,
                       "x264-params": ":".join(params)}
        enc.open()
        return enc

    def _run(self, emit: Emit) -> None:
        import av

        enc = self._encoder()
        pacer = Pacer(self.clock, self._stopping)
        frame_ns = 1e9 / self.fps
        captured: dict[int, int] = {}
        index = 0
        wall_minus_mono = time.time_ns() - time.monotonic_ns()
        while not self._stopping.is_set():
            if self.max_frames is not None and index >= self.max_frames:
                self.finished = True
                break
            if pacer.t0 is not None:  # fell more than a frame behind real time: skip pictures, stay live
                late = self.clock.monotonic_ns() - (pacer.t0 + int(index * frame_ns))
                if late > frame_ns:
                    index += int(late // frame_ns)
            ts = pacer.wait(int(index * 1_000_000_000 / self.fps))
            if self._stopping.is_set():
                break
            flash = self.tone is not None and index % self.flash_every == 0
            picture = self.pattern.render(index, wall_clock_text((ts + wall_minus_mono) / 1e9), flash)
            vf = av.VideoFrame.from_ndarray(picture, format="yuv420p")
            vf.pts = index
            captured[index] = ts
            for pkt in enc.encode(vf):
                pts = int(pkt.pts)
                emit(Frame(bytes(pkt), captured.pop(pts, ts), bool(pkt.is_keyframe)))
            index += 1
            if self.tone is not None:
                self._sound_until(index, pacer.t0)

    def _sound_until(self, index: int, t0: int) -> None:
        """Encode the sound up to the instant of frame `index` and deliver its AAC frames."""
        rate = self.audio.sample_rate
        end = index * rate * self.fps.denominator // self.fps.numerator
        start = self.audio.samples_in
        if end <= start:
            return
        for data, k in self.audio.encode_array(self.tone.samples(start, end - start)):
            if self.on_audio is not None:
                self.on_audio(AudioFrame(data, t0 + k * 1_000_000_000 // rate))
