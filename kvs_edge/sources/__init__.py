"""Video sources: where Frames come from (Pi camera, file, RTSP camera, V4L2 device, test pattern).

`open_source(cfg, fragment_seconds=...)` builds the source that `cfg.type` names. Every source has the interface of
`base.Source`: start(emit) returns at once and delivers Frames on the source's own thread, stop(timeout) is bounded,
`error` is set when the source died for good, `finished` when a non-looping file ended.
"""

from __future__ import annotations

from .base import Source, SourceError, SourceNotInstalled

__all__ = ["Source", "SourceError", "SourceNotInstalled", "open_source", "audio_beside", "SOURCE_TYPES"]

SOURCE_TYPES = ("picamera", "testpattern", "file", "rtsp", "v4l2")


def open_source(cfg, *, fragment_seconds: float, paced: bool = True, stall_seconds: float | None = None) -> Source:
    """The source for `cfg` (a SourceConfig, or any object with its attributes); nothing starts until start().

    fragment_seconds sets the key-frame interval of the sources that encode (picamera, testpattern).
    paced=False: a file is read as fast as possible with its own timestamps (for `kvs-edge upload`).
    stall_seconds: picamera's "no frame for N s" limit (default cfg.stall_seconds if present, else 5).
    Raises SourceError for settings no source can work with (unknown type, rotation 90, missing uri).
    """
    kind = str(getattr(cfg, "type", "picamera") or "picamera")
    if kind == "picamera":
        from .picamera import PicameraSource

        return PicameraSource(cfg, fragment_seconds=fragment_seconds, stall_seconds=stall_seconds)
    if kind == "testpattern":
        from .testpattern import TestPatternSource

        return TestPatternSource(cfg, fragment_seconds=fragment_seconds)
    if kind == "file":
        from .av import FileSource

        return FileSource(cfg, paced=paced, audio_bitrate=cfg.audio.bitrate if getattr(cfg, "audio", None) else 64000)
    if kind == "rtsp":
        from .av import rtsp_source

        return rtsp_source(cfg)
    if kind == "v4l2":
        from .av import v4l2_source

        return v4l2_source(cfg)
    raise SourceError(f"source.type {kind!r}: unknown; use one of {', '.join(SOURCE_TYPES)}")


def audio_beside(cfg):
    """The microphone capture that runs beside a camera (picamera, v4l2: they deliver no sound of their own) when
    source.audio is set; None otherwise (no audio, or the file and test pattern sources bring their own)."""
    audio = getattr(cfg, "audio", None)
    kind = str(getattr(cfg, "type", "picamera"))
    if audio is not None and kind == "rtsp":
        import logging

        logging.getLogger(__name__).warning("source.audio: the rtsp source does not carry audio yet; sending video "
                                            "only")
    if audio is None or kind not in ("picamera", "v4l2"):
        return None
    from .alsa import AlsaAudio

    return AlsaAudio(audio)
