"""The world the fake `picamera2` runs in: which cameras are attached, which board, what goes wrong.

Tests set it up before the fake picamera2 is imported (the real one picks its H264Encoder at import time, probing
/dev/video11), then inspect what kvs-edge asked of it:

    import picamera2_sim
    picamera2_sim.reset(platform="pisp", stall_after_frames=40)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

IMX708 = {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a", "Num": 0}


@dataclass
class World:
    cameras: list[dict] = field(default_factory=lambda: [dict(IMX708)])
    platform: str = "vc4"  # "vc4": hardware H264Encoder (Pi Zero 2/3/4/CM4); "pisp": Pi 5, H264Encoder is libav
    # The sizes the camera can produce; None: any even size (the Pi's ISP scales). A size not listed is adjusted by
    # configure() to the largest one, silently, as libcamera's validate() + picamera2's configure() do.
    sizes: list[tuple[int, int]] | None = None
    stall_after_frames: int | None = None  # the camera delivers this many frames, then none (loose ribbon)
    init_error: BaseException | None = None  # raised by Picamera2() after the camera was found (e.g. busy)
    tuning_dirs: list[str] = field(default_factory=list)  # where load_tuning_file looks when dir is None
    cameras_opened: list = field(default_factory=list)  # every Picamera2 instance created
    encoders: list = field(default_factory=list)  # every encoder created, with the kwargs it was given
    sensor_timestamps: list[int] = field(default_factory=list)  # SensorTimestamp (ns) of every frame captured
    lores: bool = True  # the camera gives a second, low-resolution stream (configure() refuses it when False)
    # the luma of frame `index` at (width, height), for every stream (main and lores); None: the moving test pattern
    scene: Callable | None = None
    unblock: threading.Event = field(default_factory=threading.Event)  # releases a stalled camera's stop() (teardown)


world = World()


def reset(**settings) -> World:
    """A fresh world (tests call this in a fixture); the previous world's blocked threads are released."""
    global world
    world.unblock.set()
    world = World(**settings)
    return world
