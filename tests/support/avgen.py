"""Real files with H.264 video and an audio track, made with PyAV in the test (no files shipped)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from support.h264gen import _picture

W, H = 160, 120


def tone(n: int, start: int, rate: int, channels: int, hz: float = 440.0) -> np.ndarray:
    t = (np.arange(start, start + n) / rate).astype(np.float32)
    mono = 0.3 * np.sin(2 * np.pi * hz * t).astype(np.float32)
    return np.repeat(mono[None, :], channels, axis=0)


def make_av_file(path: Path, *, seconds: float = 3.0, fps: int = 15, gop: int = 15, audio: str = "aac",
                 rate: int = 48000, channels: int = 1, audio_start_ms: int = 0, garble_audio: bool = False,
                 container_options: dict | None = None) -> dict:
    """Write `path` (container by extension) with libx264 video and `audio` encoded from a 440 Hz tone.

    audio_start_ms: the audio track starts this much after the video (the A/V offset the output must keep).
    garble_audio: replace every audio packet's bytes with noise (audio that cannot be decoded).
    Returns what was written: audio packets and samples, the first video and audio times in ms.
    """
    rng = np.random.default_rng(1)
    written = {"audio_packets": 0, "audio_samples": 0, "video_frames": 0}
    with av.open(str(path), "w", options=container_options or {}) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast",
                                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        layout = "mono" if channels == 1 else "stereo"
        aus = out.add_stream(audio, rate=rate, layout=layout)
        fmt = aus.codec_context.codec.audio_formats[0].name
        a_tb = Fraction(1, rate)
        chunk = 1024 if audio in ("aac",) else 1152
        a_next = int(audio_start_ms * rate / 1000)
        total_frames = int(seconds * fps)
        a_end = int(seconds * rate)
        mux_a = []

        def audio_until(sample: int):
            nonlocal a_next
            while a_next < min(sample, a_end):
                n = min(chunk, a_end - a_next)
                data = tone(n, a_next, rate, channels)
                if not fmt.endswith("p"):
                    data = data.T.reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(
                    (data * 32767).astype(np.int16) if fmt.startswith("s16") else data, format=fmt, layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, a_next, a_tb
                a_next += n
                written["audio_samples"] += n
                mux_a.extend(aus.encode(frame))
                flush_audio()

        def flush_audio():
            for p in mux_a:
                if garble_audio:
                    noise = rng.integers(0, 256, p.size, dtype=np.uint8).tobytes()
                    q = av.Packet(noise)
                    q.pts, q.dts, q.time_base, q.stream = p.pts, p.dts, p.time_base, aus
                    p = q
                written["audio_packets"] += 1
                out.mux(p)
            mux_a.clear()

        for i in range(total_frames):
            audio_until(int((i + 1) * rate / fps))
            vf = av.VideoFrame.from_ndarray(_picture(i, W, H), format="rgb24").reformat(format="yuv420p")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for p in vs.encode(vf):
                out.mux(p)
                written["video_frames"] += 1
        audio_until(a_end)
        for p in vs.encode(None):
            out.mux(p)
            written["video_frames"] += 1
        mux_a.extend(aus.encode(None))
        flush_audio()
    written["size"] = os.path.getsize(path)
    return written


def read_tracks(path_or_bytes) -> dict:
    """Read an MKV/MP4 back with PyAV: codec names, CodecPrivate, packet times (ms) and decoded sample counts."""
    import io

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    with av.open(src) as c:
        v, a = c.streams.video[0], (c.streams.audio[0] if c.streams.audio else None)
        info = {"video_codec": v.codec_context.name, "audio_codec": a.codec_context.name if a else None,
                "audio_extradata": bytes(a.codec_context.extradata or b"") if a else b"",
                "audio_rate": a.codec_context.sample_rate if a else None,
                "audio_channels": a.codec_context.channels if a else None,
                "video_ms": [], "audio_ms": [], "audio_samples": 0}
        for pkt in c.demux(*([v, a] if a else [v])):
            if pkt.size == 0 or pkt.pts is None:
                continue
            ms = float(pkt.pts * pkt.time_base * 1000)
            if pkt.stream is v:
                info["video_ms"].append(ms)
            else:
                info["audio_ms"].append(ms)
                try:
                    info["audio_samples"] += sum(f.samples for f in pkt.decode())
                except av.error.InvalidDataError:
                    info["audio_undecodable"] = info.get("audio_undecodable", 0) + 1
    return info


def sound_file(path: Path, codec: str, seconds: float = 3.0, rate: int = 48000) -> Path:
    """A mono sound file of the 440 Hz tone (the container from the suffix: .adts, .wav, .m4a ...)."""
    fmt = {"adts": "adts", "wav": "wav"}.get(path.suffix.lstrip("."), None)
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate, layout="mono")
        sf = st.codec_context.codec.audio_formats[0].name
        for k in range(0, int(seconds * rate), 1024):
            data = tone(1024, k, rate, 1)
            f = av.AudioFrame.from_ndarray((data * 32767).astype(np.int16) if sf.startswith("s16") else data,
                                           format=sf, layout="mono")
            f.sample_rate, f.pts, f.time_base = rate, k, Fraction(1, rate)
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return path
