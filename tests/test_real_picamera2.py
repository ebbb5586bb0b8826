"""PicameraSource through the REAL picamera2 (PyPI) on a real libcamera (Debian sid's 0.7.2, virtual pipeline).

What crosses a real boundary here: Picamera2's camera enumeration, create_video_configuration, libcamera's
validate()/configure(), buffer allocation and mapping (over a memfd stand-in for /dev/dma_heap), requests and their
SensorTimestamp, start_recording with kvs-edge's Output, picamera2's LibavH264Encoder (libx264) and its thread,
stop_recording and close. What is a stand-in (tools/real-picamera/standins): pykms, the DMA heap, and the Pi 5
encoder choice (this machine's platform probe says VC4). The camera is libcamera's virtual one, patched by us
(tools/real-picamera/libcamera-0.7.2-virtual.patch). The V4L2 hardware encoder, stalls and hot-plug stay with the
fake in tests/fakes (tests/test_sources_picamera.py).

The build lives in a cache made by `make picamera-test` (tools/real-picamera/build.sh); without it this file skips.
Each run drives the source in a child process (the cache's venv), which writes frames.h264 and result.json.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
import yaml

from kvs_edge.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_types

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "tools" / "real-picamera" / "build.sh"
CHILD = REPO / "tests" / "support" / "real_picamera_run.py"
CAMERA = yaml.safe_load((REPO / "tools" / "real-picamera" / "virtual.yaml").read_text())
(CAMERA_ID, CAMERA_DESC), = CAMERA.items()
OFFERED = [(f["width"], f["height"]) for f in CAMERA_DESC["supported_formats"]]


def cache_dir() -> Path:
    out = subprocess.run(["bash", str(BUILD), "--dir"], capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip())


CACHE = cache_dir()
if not (CACHE / "ready").exists():
    if os.environ.get("KVS_EDGE_REQUIRE_REAL_PICAMERA"):  # set by `make picamera-test`: absence is a failure there
        raise RuntimeError(f"the real-Picamera2 build is missing at {CACHE} although make picamera-test built it")
    pytest.skip(f"the real-Picamera2 build is absent ({CACHE}): run `make picamera-test` to build it and run this",
                allow_module_level=True)


def figure(line: str) -> None:
    """Figures for the test output (`make picamera-test` runs pytest with -s)."""
    print(f"\n[real picamera2] {line}", flush=True)


def run_child(tmp: Path, **kw) -> tuple[dict, bytes]:
    args = [str(CACHE / "venv" / "bin" / "python"), str(CHILD), str(tmp)]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ, LD_LIBRARY_PATH=str(CACHE / "prefix" / "lib"), LIBCAMERA_LOG_LEVELS="*:WARN")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((tmp / "result.json").read_text()), (tmp / "frames.h264").read_bytes()


def access_units(h264: bytes, frames: list[dict]) -> list[bytes]:
    out, pos = [], 0
    for f in frames:
        out.append(h264[pos:pos + f["bytes"]])
        pos += f["bytes"]
    assert pos == len(h264)
    return out


def decode(h264: bytes) -> list:
    with av.open(io.BytesIO(h264), format="h264") as c:
        return list(c.decode(video=0))


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    fps, fragment_seconds, seconds = 30, 1.0, 4.0
    result, h264 = run_child(tmp_path_factory.mktemp("real-picamera"), width=640, height=480, fps=fps,
                             seconds=seconds, fragment_seconds=fragment_seconds)
    return dict(result=result, h264=h264, fps=fps, fragment_seconds=fragment_seconds)


def test_setup_time_from_nothing_and_from_the_cache():
    t = time.monotonic()
    out = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=120)
    cached = time.monotonic() - t
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == CACHE
    from_nothing = float((CACHE / "setup-seconds").read_text())
    figure(f"setup from nothing {from_nothing:.0f} s (recorded by build.sh), from the cache {cached:.2f} s")
    assert from_nothing > cached


def test_camera_info_and_configuration_come_from_libcamera(recording):
    r = recording["result"]
    assert r["error"] is None
    assert r["platform_probe"] == "VC4"  # why the Pi 5 encoder path is bound by the harness
    assert [(c["Id"], c["Model"]) for c in r["camera_info"]] == [(CAMERA_ID, CAMERA_DESC["model"])]
    assert r["model"] == CAMERA_DESC["model"]
    main = r["camera_config_main"]
    assert (main["format"], tuple(main["size"]), main["stride"]) == ("YUV420", (640, 480), 640)
    assert r["size"] == [640, 480] and r["name"] == f"picamera 0 ({CAMERA_DESC['model']}) 640x480@30"
    # FrameDurationLimits as libcamera advertises them from the camera description (us)
    lo, hi = r["camera_controls"]["FrameDurationLimits"][:2]
    rates = CAMERA_DESC["supported_formats"][0]["frame_rates"]
    assert (lo, hi) == (1_000_000 // rates[1], 1_000_000 // rates[0])
    assert r["memfd_buffers"] > 0  # picamera2's allocator really ran (over the stand-in heap)
    # While recording, frames reach kvs-edge's Output on picamera2's own thread (not the source's watchdog, not the
    # caller's); the frames libx264 still holds come out during stop_recording(), on the thread that stops it.
    frames = r["frames"]
    recording = {f["thread"] for f in frames if f["emit_ns"] <= r["recording_ns"]}
    assert len(recording) == 1 and recording.isdisjoint({"kvs-edge-source", r["main_thread"]})
    assert {f["thread"] for f in frames if f["emit_ns"] > r["recording_ns"]} <= recording | {"kvs-edge-camera-stop"}
    assert r["stopped"]


def test_frames_arrive_at_the_configured_rate_with_key_frames_every_fragment(recording):
    r, fps = recording["result"], recording["fps"]
    frames = r["frames"]
    span = (r["recording_ns"] - r["first_ns"]) / 1e9
    intervals = [(b["ts_ns"] - a["ts_ns"]) / 1e9 for a, b in zip(frames, frames[1:])]
    measured_fps = 1 / statistics.median(intervals)
    keys = [i for i, f in enumerate(frames) if f["key"]]
    iperiod = round(fps * recording["fragment_seconds"])
    figure(f"{len(frames)} frames in {span:.1f} s, {len(keys)} key frames (every {iperiod}), "
           f"{measured_fps:.2f} fps from SensorTimestamp, {len(recording['h264'])} bytes of H.264")
    assert r["iperiod"] == iperiod
    assert abs(measured_fps - fps) < 0.05 * fps  # paced by FrameDurationLimits (set by picamera2 from FrameRate)
    assert len(frames) >= 0.8 * fps * span
    assert keys == list(range(0, len(frames), iperiod))


def test_every_key_frame_carries_sps_and_pps(recording):
    frames = recording["result"]["frames"]
    for f, au in zip(frames, access_units(recording["h264"], frames)):
        types = nal_types(au)
        assert (NAL_IDR in types) == f["key"]
        if f["key"]:
            assert NAL_SPS in types and NAL_PPS in types


def test_timestamps_are_sensor_timestamps_on_clock_monotonic(recording):
    r = recording["result"]
    frames = r["frames"]
    ts = [f["ts_ns"] for f in frames]
    assert ts == sorted(set(ts))
    # time.monotonic_ns() around the capture brackets every SensorTimestamp, and each frame is stamped before it
    # is emitted (encoding latency well under a second)
    assert r["before_ns"] <= ts[0] and ts[-1] <= r["after_ns"]
    latency = [f["emit_ns"] - f["ts_ns"] for f in frames]
    assert all(0 <= d < 1_000_000_000 for d in latency)
    figure(f"timestamps: first frame {(ts[0] - r['before_ns']) / 1e6:.0f} ms after start, emitted "
           f"{statistics.median(latency) / 1e6:.1f} ms (median) after its SensorTimestamp")


def test_the_stream_decodes_back_with_pyav(recording):
    pics = decode(recording["h264"])
    assert len(pics) == len(recording["result"]["frames"])
    assert {(p.width, p.height) for p in pics} == {(640, 480)}
    # colour bars from the virtual camera: the picture is not flat
    luma = pics[len(pics) // 2].to_ndarray(format="gray")
    assert luma.max() - luma.min() > 100


def test_a_size_the_camera_cannot_produce_is_read_back(tmp_path):
    asked = (1000, 700)
    assert asked not in OFFERED
    r, h264 = run_child(tmp_path, width=asked[0], height=asked[1], fps=30, seconds=1.0, fragment_seconds=1.0)
    given = tuple(r["camera_config_main"]["size"])
    figure(f"asked {asked[0]}x{asked[1]}: libcamera gave {given[0]}x{given[1]}, kvs-edge now calls itself "
           f"{r['name']!r}")
    assert r["error"] is None
    assert given != asked and given in OFFERED
    assert tuple(r["size"]) == given and f"{given[0]}x{given[1]}@30" in r["name"]
    warnings = [line for line in r["log"] if line.startswith("WARNING kvs_edge.sources.picamera")]
    assert len(warnings) == 1 and f"cannot produce {asked[0]}x{asked[1]}" in warnings[0]
    pics = decode(h264)
    assert pics and {(p.width, p.height) for p in pics} == {given}


def test_lores_luma_for_motion_through_the_real_picamera2(tmp_path):
    """want_lores on the real picamera2: the lores stream is configured by libcamera next to main, and the source's
    post_callback hands its Y plane (cut from make_array("lores")) to the sink on picamera2's camera thread, at most
    lores_fps times a second, stamped with the same SensorTimestamps as the encoded frames. Seen here: libcamera's
    virtual pipeline adjusts the 320x240 asked for to a size of its own (read back and used, with one warning)."""
    r, h264 = run_child(tmp_path, width=640, height=480, fps=30, seconds=3, lores_fps=5)
    assert r["error"] is None
    lores_cfg = r["camera_config_lores"]
    assert lores_cfg is not None and lores_cfg["format"] == "YUV420"
    w, h = r["lores_size"]
    assert [w, h] == list(lores_cfg["size"])
    figure(f"lores asked 320x240, libcamera's virtual camera gave {w}x{h} (stride {lores_cfg['stride']})")
    got = r["lores"]
    assert got and all(g["shape"] == [h, w] and g["dtype"] == "uint8" and g["std"] > 0 for g in got)
    frame_threads = {f["thread"] for f in r["frames"] if f["emit_ns"] <= r["recording_ns"]}
    assert {g["thread"] for g in got} <= frame_threads  # picamera2's own thread, the one that encodes
    stamps = {f["ts_ns"] for f in r["frames"]}
    assert all(g["ts_ns"] // 1000 * 1000 in stamps for g in got)
    gaps = [b["ts_ns"] - a["ts_ns"] for a, b in zip(got, got[1:])]
    assert min(gaps) >= 200_000_000  # 5 a second at most
    assert len(got) <= len(r["frames"]) // 6 + 1
    if (w, h) != (320, 240):
        assert any("low-resolution stream for motion" in line for line in r["log"])
