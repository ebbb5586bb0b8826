"""A fake of the libcamera Python bindings: only the names Picamera2 and kvs-edge touch.

The real module is a C++ extension shipped by Raspberry Pi OS (python3-libcamera), not on PyPI.
"""

from __future__ import annotations

from types import SimpleNamespace


class Transform:
    """libcamera.Transform(hflip=0, vflip=0, transpose=0, rotation=0): the 180 degree rotation is hflip + vflip."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0, rotation: int = 0) -> None:
        if rotation not in (0, 180):
            # The sensor can only flip: 90/270 need a transpose the ISP does not do.
            raise ValueError("Unsupported rotation")
        flip = 1 if rotation == 180 else 0
        self.hflip = int(bool(hflip)) ^ flip
        self.vflip = int(bool(vflip)) ^ flip
        self.transpose = int(bool(transpose))

    def __repr__(self) -> str:
        return f"<libcamera.Transform hflip={self.hflip} vflip={self.vflip} transpose={self.transpose}>"


class ColorSpace:
    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def Sycc() -> "ColorSpace":
        return ColorSpace("sYCC")

    @staticmethod
    def Smpte170m() -> "ColorSpace":
        return ColorSpace("SMPTE170M")

    @staticmethod
    def Rec709() -> "ColorSpace":
        return ColorSpace("Rec709")


class _ControlId:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"libcamera.controls.{self.name}"


controls = SimpleNamespace(SensorTimestamp=_ControlId("SensorTimestamp"), FrameDurationLimits=_ControlId("FrameDurationLimits"),
                           FrameRate=_ControlId("FrameRate"))
