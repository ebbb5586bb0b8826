"""The cameras: list (issue 16): one entry per camera, errors named per camera, the single form as one entry."""

from __future__ import annotations

import pytest

from kvs_edge.config import ConfigError, load_config, parse_config


def messages(data) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(data, "f")
    return e.value.messages


def test_single_form_is_one_camera():
    cfg = parse_config({"stream": {"name": "cam"}, "source": {"type": "testpattern"}}, "f")
    assert len(cfg.cameras) == 1
    (cam,) = cfg.cameras
    assert (cam.name, cam.label, cam.stream.name, cam.source.type, cam.share) == (None, "0", "cam", "testpattern", 1.0)


def test_two_cameras_with_shared_stream_and_upload_keys(tmp_path):
    video = tmp_path / "v.h264"
    video.write_bytes(b"\0\0\0\1")
    cfg = parse_config({
        "stream": {"region": "eu-west-1", "fragment_seconds": 4},
        "upload": {"stale_seconds": 20},
        "cameras": [
            {"name": "a", "stream": {"name": "s-a"}, "source": {"type": "testpattern"}, "buffer": {"share": 3}},
            {"name": "b", "stream": {"name": "s-b", "fragment_seconds": 2}, "upload": {"stale_seconds": 5},
             "source": {"type": "file", "uri": str(video)}},
        ]}, "f")
    a, b = cfg.cameras
    assert (a.stream.region, a.stream.fragment_seconds, a.upload.stale_seconds, a.share) == ("eu-west-1", 4, 20, 3.0)
    assert (b.stream.region, b.stream.fragment_seconds, b.upload.stale_seconds, b.share) == ("eu-west-1", 2, 5, 1.0)
    assert cfg.stream == a.stream and cfg.source == a.source and (a.index, b.index) == (0, 1)


def test_errors_are_named_per_camera(tmp_path):
    got = messages({"cameras": [
        {"name": "ok", "stream": {"name": "s0"}, "source": {"type": "testpattern"}},
        {"name": "ok", "stream": {"name": "s0"}, "source": {"type": "rtsp"}, "buffer": {"share": 0}},
        {"source": {"type": "file", "uri": str(tmp_path / "missing.mp4"), "fsp": 3}, "zoom": 2},
    ]})
    assert got == [
        "f: cameras[1].name: 'ok' is also the name of cameras[0]; names are unique",
        "f: cameras[1].stream.name: 's0' is also the stream of cameras[0]; KVS takes one PutMedia connection per "
        "stream: give each camera its own",
        "f: cameras[1].source.uri: required when cameras[1].source.type is rtsp (like rtsp://192.168.1.20:554/stream1)",
        "f: cameras[1].buffer.share: 0 is out of range (0.01 to 1000)",
        "f: cameras[2].zoom: unknown key (valid keys here: name, stream, source, buffer, upload, events)",
        "f: cameras[2].stream.name: missing; each camera streams to its own Kinesis video stream (placeholders like "
        "{hostname}-{camera} make one file fit every device)",
        "f: cameras[2].source.fsp: unknown key, did you mean cameras[2].source.fps?",
        f"f: cameras[2].source.uri: {tmp_path / 'missing.mp4'}: no such file",
    ]


def test_top_level_stream_name_or_source_with_cameras_is_refused():
    got = messages({"stream": {"name": "x"}, "source": {"type": "testpattern"},
                    "cameras": [{"stream": {"name": "s"}, "source": {"type": "testpattern"}}]})
    assert got == [
        "f: stream.name: with cameras:, each camera names its own stream (cameras[0].stream.name, ...); remove it here",
        "f: source: with cameras:, each camera has its own source (cameras[0].source, ...); move it there",
    ]


def test_cameras_must_be_a_list():
    assert messages({"cameras": {"name": "x"}}) == [
        "f: cameras: expected a list of cameras (lines starting with '- '), got a mapping"]


def test_relative_file_source_of_a_camera_is_taken_from_the_config_folder(tmp_path):
    (tmp_path / "clip.h264").write_bytes(b"\0\0\0\1")
    path = tmp_path / "k.yaml"
    path.write_text("cameras:\n  - stream: {name: s}\n    source: {type: file, uri: clip.h264}\n")
    assert load_config(path).cameras[0].source.uri == str(tmp_path / "clip.h264")


def test_check_config_names_the_camera_and_prints_the_names_filled_in(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - stream: {name: a}\n    source: {type: testpattern}\n"
                   "  - stream: {name: b}\n    source: {type: rtsp}\n")
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "check-config", str(bad)], capture_output=True, text=True,
                       cwd=repo, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"{bad}: cameras[1].source.uri: required when cameras[1].source.type is rtsp "
                                     "(like rtsp://192.168.1.20:554/stream1)"]
    good = tmp_path / "good.yaml"
    good.write_text("cameras:\n  - name: front\n    stream: {name: \"{camera}-cam\"}\n    source: {type: testpattern}\n"
                    "  - stream: {name: back}\n    source: {type: testpattern}\n")
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "check-config", str(good)], capture_output=True, text=True,
                       cwd=repo, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{good}: ok", "  camera front: stream front-cam", "  camera 1: stream back"]


def test_cameras_share_one_region():
    assert messages({"cameras": [{"stream": {"name": "a"}, "source": {"type": "testpattern"}},
                                 {"stream": {"name": "b", "region": "eu-west-1"}, "source": {"type": "testpattern"}}]}) \
        == ["f: cameras[1].stream.region: eu-west-1 differs from cameras[0]'s us-east-1: the cameras of one device "
            "stream to one region (set stream.region once)"]


def test_a_camera_has_its_own_events_laid_over_the_top_level_ones():
    c = parse_config({"events": {"pre_seconds": 8, "motion": True, "control_socket": "/run/x/c.sock"},
                      "cameras": [{"name": "a", "stream": {"name": "a"}, "source": {"type": "testpattern"},
                                   "events": {"pre_seconds": 2, "motion_roi": [0, 0, 0.5, 0.5]}},
                                  {"name": "b", "stream": {"name": "b"}, "source": {"type": "testpattern"}}]}, "f")
    a, b = c.cameras
    assert (a.events.pre_seconds, a.events.motion, a.events.motion_roi) == (2, True, (0, 0, 0.5, 0.5))
    assert (b.events.pre_seconds, b.events.motion, b.events.motion_roi) == (8, True, None)
    assert a.events.control_socket == b.events.control_socket == "/run/x/c.sock"


def test_a_cameras_events_mistakes_are_named_with_the_camera():
    with pytest.raises(ConfigError) as e:
        parse_config({"buffer": {"retain_seconds": 3},
                      "cameras": [{"name": "a", "stream": {"name": "a"}, "source": {"type": "testpattern"},
                                   "upload": {"mode": "events"},
                                   "events": {"pre_seconds": 9, "control_socket": "/tmp/a.sock", "sensitivity": 3,
                                              "motion_threshold": 0}}]}, "f")
    got = e.value.messages
    assert any(m.startswith("f: cameras[0].events.control_socket: set once, at the top level") for m in got), got
    assert any(m.startswith("f: cameras[0].events.sensitivity: unknown key") for m in got), got
    assert any(m.startswith("f: cameras[0].events.motion_threshold") for m in got), got
    assert any("shorter than cameras[0].events.pre_seconds (9)" in m for m in got), got
