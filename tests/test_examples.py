"""The examples under examples/ run as a user runs them (a subprocess, credentials and the endpoint from the
environment, as botocore reads them) against the emulator; every fragment must be PERSISTED (they exit 1 otherwise),
and the emulator's archive must hold the fragments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FAKES = Path(__file__).resolve().parent / "fakes"


def user_env(emulator, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=DEFAULT_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=DEFAULT_SECRET_ACCESS_KEY,
               AWS_REGION="us-east-1", AWS_ENDPOINT_URL=emulator.url, AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent", **extra)
    return env


def run(args, env, timeout=180) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def write_mp4(path: Path, frames: int = 90, fps: int = 30) -> Path:
    """An MP4 (AVCC in the container, as cameras and phones write them) encoded without B-frames."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        v.options = {"preset": "ultrafast", "x264-params": f"bframes=0:keyint={fps}:min-keyint={fps}:scenecut=0"}
        for i in range(frames):
            img = np.zeros((120, 160, 3), np.uint8)
            img[:, (i * 3) % 144:(i * 3) % 144 + 16] = 255
            for pkt in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in v.encode(None):
            out.mux(pkt)
    return path


def test_upload_mp4_in_ten_lines(emulator, tmp_path):
    assert len((EXAMPLES / "upload_mp4.py").read_text().splitlines()) <= 10
    mp4 = write_mp4(tmp_path / "in.mp4")
    run([EXAMPLES / "upload_mp4.py", mp4, "mp4"], user_env(emulator))
    assert len(emulator.archive("mp4")) == 2  # 90 frames at 30 fps, 2-s fragments


def test_pyav_file(emulator, tmp_path):
    mp4 = write_mp4(tmp_path / "in.mp4")
    r = run([EXAMPLES / "pyav_file.py", mp4, "file"], user_env(emulator))
    assert "90 frames" in r.stdout and emulator.archive("file")


def test_numpy_frames(emulator):
    r = run([EXAMPLES / "numpy_frames.py", "np", "2.5"], user_env(emulator))
    assert "persisted" in r.stdout and len(emulator.archive("np")) >= 1


def test_picamera2_script_with_the_fake_camera(emulator):
    env = user_env(emulator, PYTHONPATH=os.pathsep.join([str(FAKES), str(ROOT)]))
    r = run([EXAMPLES / "picamera2_kvs.py", "pi", "3"], env)
    assert "fragments persisted" in r.stdout and emulator.archive("pi")
