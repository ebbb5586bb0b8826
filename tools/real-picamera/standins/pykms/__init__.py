"""STAND-IN for `pykms` (the kms++ Python bindings): not a real pykms, and it draws nothing.

picamera2 imports pykms at import time (its DRM preview maps pixel formats to pykms.PixelFormat in a class body).
On Raspberry Pi OS it comes from `python3-kms++`, which has no PyPI package and no use here (no display). Only the
real-picamera test harness puts this directory on sys.path. The pixel format names exist so that the import works;
anything that would touch a display (Card, ResourceManager, ...) fails loudly instead of pretending to work.
"""

STAND_IN = True


class PixelFormat:
    """The names picamera2's DrmPreview.FMT_MAP reads; the values are only labels."""

    RGB888 = "RGB888"
    BGR888 = "BGR888"
    XRGB8888 = "XRGB8888"
    XBGR8888 = "XBGR8888"
    YUV420 = "YUV420"
    YVU420 = "YVU420"
    YUYV = "YUYV"
    YVYU = "YVYU"


def __getattr__(name):
    raise RuntimeError(f"pykms stand-in: pykms.{name} is not available (no display in the real-picamera test)")
