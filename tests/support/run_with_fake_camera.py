"""`kvs-edge` with the fake picamera2/libcamera modules at the camera boundary (for subprocess tests of `run`).

FAKE_CAMERA_STALL_AFTER_FRAMES=N: the camera delivers N frames, then none (a loose ribbon cable).
FAKE_CAMERA_PLATFORM=vc4|pisp: the board (pisp = Pi 5, H264Encoder is libav).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fakes"))

import picamera2_sim  # noqa: E402

stall = os.environ.get("FAKE_CAMERA_STALL_AFTER_FRAMES")
picamera2_sim.reset(stall_after_frames=int(stall) if stall else None,
                    platform=os.environ.get("FAKE_CAMERA_PLATFORM", "vc4"))

from kvs_edge.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
