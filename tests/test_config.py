"""kvs_edge/config.py and `kvs-edge check-config`: typed settings from YAML, and the exact messages a user sees."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_edge.config import (
    ALL_KEYS,
    CameraConfig,
    GiB,
    MiB,
    PLACEHOLDER,
    Config,
    ConfigError,
    IotConfig,
    config_warnings,
    has_placeholders,
    load_config,
    parse_bitrate,
    parse_config,
    parse_size,
    redacted,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "kvs-edge.yaml"
KVS_EDGE = Path(sys.executable).with_name("kvs-edge")

# Fake credentials, recognisable if they ever leak into a message or a repr.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETzz"
TOKEN = "FwoGZXIvYXdzzzSESSIONTOKENzzz"

OK_HEAD = "stream:\n  name: cam\n"


def write(tmp_path: Path, text: str | bytes, name: str = "kvs-edge.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def messages_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return e.value.messages


# --------------------------------------------------------------------------------------------------------------------
# Broken configurations and the exact messages. "{f}" stands for the file's path.

BROKEN = [
    # misspelt and misplaced keys: did-you-mean within the section and across sections
    ("stream:\n  nmae: cam\n", ["{f}: stream.nmae: unknown key, did you mean stream.name?"]),
    (OK_HEAD + "  fps: 30\n", ["{f}: stream.fps: unknown key, did you mean source.fps?"]),
    (OK_HEAD + "source:\n  bitrat: 4M\n", ["{f}: source.bitrat: unknown key, did you mean source.bitrate?"]),
    (OK_HEAD + "aws:\n  secret_acces_key: x\n",
     ["{f}: aws.secret_acces_key: unknown key, did you mean aws.secret_access_key?"]),
    (OK_HEAD + "source:\n  colour: red\n",
     ["{f}: source.colour: unknown key (valid keys here: type, uri, width, height, fps, bitrate, profile, hflip, "
      "vflip, rotation, tuning_file, camera_index, camera_model, camera_port, loop, audio)"]),
    ("straem:\n  name: cam\n", ["{f}: straem: unknown section, did you mean stream?"]),
    (OK_HEAD + "fps: 30\n", ["{f}: fps: unknown section, did you mean source.fps? (settings go under their section)"]),
    # a missing stream name
    ("source:\n  fps: 30\n", ["{f}: stream.name: missing; set it to the name of your Kinesis video stream"]),
    ("stream:\n  name:\n", ["{f}: stream.name: missing; set it to the name of your Kinesis video stream"]),
    ("stream:\n  name: my camera\n",
     ["{f}: stream.name: 'my camera' is not a valid stream name (1 to 256 letters, digits, '.', '_' and '-')"]),
    ("stream:\n  name: 12345\n", ["{f}: stream.name: expected text, got the number 12345; put it in quotes"]),
    ("stream:\n  name: no\n", ["{f}: stream.name: expected text, got false; put it in quotes"]),
    (OK_HEAD + "  region: us-east\n",
     ["{f}: stream.region: 'us-east' is not an AWS region name (like us-east-1 or eu-west-1)"]),
    # wrong types
    (OK_HEAD + "source:\n  fps: thirty\n", ["{f}: source.fps: expected a number, got 'thirty'"]),
    (OK_HEAD + "source:\n  width: 1280.5\n", ["{f}: source.width: expected a whole number, got 1280.5"]),
    (OK_HEAD + "source:\n  hflip: maybe\n", ["{f}: source.hflip: expected true or false, got 'maybe'"]),
    (OK_HEAD + "source:\n  fps: true\n", ["{f}: source.fps: expected a number, got true"]),
    (OK_HEAD + "source:\n  fps:\n",
     ["{f}: source.fps: has no value; give one or remove the line to use the default (30)"]),
    ("stream: cam\n", ["{f}: stream: expected settings under it (indented key: value lines), got 'cam'"]),
    # ranges
    (OK_HEAD + "source:\n  fps: 240\n", ["{f}: source.fps: 240 is out of range (1 to 120)"]),
    (OK_HEAD + "source:\n  fps: 0\n", ["{f}: source.fps: 0 is out of range (1 to 120)"]),
    (OK_HEAD + "source:\n  width: 641\n  height: 8\n",
     ["{f}: source.width: 641 must be even (H.264 video is stored in 2x2 pixel blocks)",
      "{f}: source.height: 8 is out of range (16 to 4096 pixels)"]),
    (OK_HEAD + "source:\n  width: 8192\n", ["{f}: source.width: 8192 is out of range (16 to 4096 pixels)"]),
    (OK_HEAD + "source:\n  bitrate: 100M\n",
     ["{f}: source.bitrate: 100M is out of range (64k to 50M bits per second)"]),
    (OK_HEAD + "source:\n  bitrate: 32000\n",
     ["{f}: source.bitrate: 32000 is out of range (64k to 50M bits per second)"]),
    (OK_HEAD + "source:\n  bitrate: 4MB\n",
     ["{f}: source.bitrate: '4MB' is in bytes; give bits per second, like 4M or 4Mbit"]),
    (OK_HEAD + "source:\n  bitrate: fast\n",
     ["{f}: source.bitrate: expected bits per second like 4000000, 4M or 800k, got 'fast'"]),
    (OK_HEAD + "  fragment_seconds: 30\n", ["{f}: stream.fragment_seconds: 30 is out of range (1 to 20 seconds)"]),
    (OK_HEAD + "  fragment_seconds: 0.5\n", ["{f}: stream.fragment_seconds: 0.5 is out of range (1 to 20 seconds)"]),
    (OK_HEAD + "buffer:\n  max_bytes: 1MiB\n", ["{f}: buffer.max_bytes: 1MiB is too small (at least 16MiB)"]),
    (OK_HEAD + "buffer:\n  max_bytes: 1000000\n", ["{f}: buffer.max_bytes: 1000000 is too small (at least 16MiB)"]),
    (OK_HEAD + "buffer:\n  max_bytes: lots\n",
     ["{f}: buffer.max_bytes: expected a size like 2GiB, 500MB or 1073741824, got 'lots'"]),
    (OK_HEAD + "upload:\n  max_connection_minutes: 45\n",
     ["{f}: upload.max_connection_minutes: 45 is out of range (1 to 44 minutes)"]),
    # choices
    (OK_HEAD + "source:\n  type: picam\n",
     ["{f}: source.type: 'picam' is not one of picamera, testpattern, file, rtsp, v4l2; did you mean picamera?"]),
    (OK_HEAD + "log:\n  level: verbose\n", ["{f}: log.level: 'verbose' is not one of debug, info, warning, error"]),
    (OK_HEAD + "source:\n  rotation: 90\n",
     ["{f}: source.rotation: 90 is impossible: the Pi camera can only flip the picture (hflip and vflip), so rotation "
      "is 0 or 180; for a camera mounted sideways, rotate the video when playing it"]),
    (OK_HEAD + "health:\n  metrics_listen: localhost\n",
     ["{f}: health.metrics_listen: 'localhost' is not HOST:PORT (like 127.0.0.1:9108, or 0.0.0.0:9108 for every "
      "interface)"]),
    # cross-field checks: credentials
    (OK_HEAD + "aws:\n  credentials: static\n",
     ["{f}: aws.access_key_id: required when aws.credentials is static",
      "{f}: aws.secret_access_key: required when aws.credentials is static"]),
    (OK_HEAD + "aws:\n  access_key_id: AKIAIOSFODNN7EXAMPLE\n",
     ["{f}: aws.access_key_id: only used with aws.credentials: static (it is default); set aws.credentials: static "
      "or remove the key"]),
    (OK_HEAD + "aws:\n  credentials: iot\n",
     ["{f}: aws.iot: required when aws.credentials is iot: endpoint, role_alias, thing_name, cert_file, key_file"]),
    (OK_HEAD + "aws:\n  credentials: iot\n  iot:\n    endpoint: x.credentials.iot.us-east-1.amazonaws.com\n"
               "    role_alias: kvs\n    thing_name: cam1\n    cert_file: /nonexistent/device.pem.crt\n",
     ["{f}: aws.iot.key_file: required when aws.credentials is iot",
      "{f}: aws.iot.cert_file: /nonexistent/device.pem.crt: no such file"]),
    (OK_HEAD + "aws:\n  credentials: iot\n  iot:\n    endpoint:\n    role_alias: [a]\n",
     ["{f}: aws.iot.role_alias: expected text, got a list",
      "{f}: aws.iot.endpoint: required when aws.credentials is iot",
      "{f}: aws.iot.thing_name: required when aws.credentials is iot",
      "{f}: aws.iot.cert_file: required when aws.credentials is iot",
      "{f}: aws.iot.key_file: required when aws.credentials is iot"]),
    (OK_HEAD + "aws:\n  credentials: static\n  access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret_access_key: 12345\n",
     ["{f}: aws.secret_access_key: expected text, got a number"]),
    (OK_HEAD + "aws:\n  credentials: sso\n",
     ["{f}: aws.credentials: 'sso' is not one of default, static, iot"]),
    (OK_HEAD + "aws:\n  endpoint_url: localhost:4566\n",
     ["{f}: aws.endpoint_url: 'localhost:4566' is not a URL; it must start with https:// (or http:// for a local "
      "emulator)"]),
    # cross-field checks: sources
    (OK_HEAD + "source:\n  type: file\n",
     ["{f}: source.uri: required when source.type is file (like /home/pi/video.mp4)"]),
    (OK_HEAD + "source:\n  type: rtsp\n",
     ["{f}: source.uri: required when source.type is rtsp (like rtsp://192.168.1.20:554/stream1)"]),
    (OK_HEAD + "source:\n  type: v4l2\n", ["{f}: source.uri: required when source.type is v4l2 (like /dev/video0)"]),
    (OK_HEAD + "source:\n  type: rtsp\n  uri: http://admin:hunter2@192.168.1.20/stream\n",
     ["{f}: source.uri: 'http://admin:***@192.168.1.20/stream' is not an RTSP address; it must start with rtsp:// or "
      "rtsps://"]),
    (OK_HEAD + "source:\n  type: file\n  uri: /nonexistent/video.mp4\n",
     ["{f}: source.uri: /nonexistent/video.mp4: no such file"]),
    (OK_HEAD + "source:\n  uri: /dev/video0\n",
     ["{f}: source.uri: not used by source.type picamera (the default); set source.type (file, rtsp or v4l2)"]),
    (OK_HEAD + "source:\n  loop: true\n", ["{f}: source.loop: only applies to source.type file (it is picamera)"]),
    # YAML itself
    ("stream:\n\tname: cam\n",
     ["{f}: line 2, column 1: found character '\\t' that cannot start any token, while scanning for the next token "
      "(indent with spaces, not tabs)"]),
    ("stream:\n  name: cam\n  region us-east-1\nsource:\n  fps: 25\n",
     ["{f}: line 3, column 3: not a 'key: value' line (a ':' missing?)"]),
    ("stream:\n  name: \"cam\n",
     ["{f}: line 3, column 1: found unexpected end of stream, while scanning a quoted scalar that starts at line 2, "
      "column 9"]),
    ("stream:\n  name: cam\n source: x\n",
     ["{f}: line 3, column 2: the indentation does not line up with the lines above"]),
    ("stream: name: cam\n",
     ["{f}: line 1, column 13: a ':' where no key can start: put a value that contains ': ' in quotes, or check "
      "the indentation"]),
    ("stream:\n  name: a\n  name: b\n", ["{f}: stream.name: given twice (lines 2 and 3); keep one"]),
    ("aws:\n  secret_access_key: !!python/object/apply:os.system [echo]\n",
     ["{f}: line 2, column 22: tags like !!python/... are not allowed in a configuration file"]),
    ("- stream\n- source\n",
     ["{f}: expected settings grouped in sections (stream:, aws:, source: ...) at the top level, got a list"]),
    ("", ["{f}: the file is empty; it needs at least stream.name (see config/kvs-edge.yaml)"]),
    ("# stream:\n#   name: cam\n",
     ["{f}: the file is empty; it needs at least stream.name (see config/kvs-edge.yaml)"]),
    # every problem at once, in one run
    ("stream:\n  nmae: cam\nsource:\n  fps: thirty\n  rotation: 270\n  type: rtsp\n  uri: /dev/video0\n"
     "buffer:\n  max_bytes: 2MB\naws:\n  credentials: static\n",
     ["{f}: stream.nmae: unknown key, did you mean stream.name?",
      "{f}: source.fps: expected a number, got 'thirty'",
      "{f}: source.rotation: 270 is impossible: the Pi camera can only flip the picture (hflip and vflip), so "
      "rotation is 0 or 180; for a camera mounted sideways, rotate the video when playing it",
      "{f}: buffer.max_bytes: 2MB is too small (at least 16MiB)",
      "{f}: aws.access_key_id: required when aws.credentials is static",
      "{f}: aws.secret_access_key: required when aws.credentials is static",
      "{f}: source.uri: '/dev/video0' is not an RTSP address; it must start with rtsp:// or rtsps://"]),
]


def test_at_least_25_broken_configurations():
    assert len(BROKEN) >= 25


@pytest.mark.parametrize("text, expected", BROKEN, ids=[f"broken{i:02d}" for i in range(len(BROKEN))])
def test_broken_configuration_message(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert messages_of(path) == [m.format(f=path) for m in expected]


# --------------------------------------------------------------------------------------------------------------------
# Files that are not configurations at all


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    assert messages_of(p) == [f"{p}: no such file; copy the example (config/kvs-edge.yaml) there and edit it"]


def test_directory(tmp_path):
    assert messages_of(tmp_path) == [f"{tmp_path}: is a folder, not a configuration file"]


def test_not_utf8(tmp_path):
    p = write(tmp_path, b"stream:\n  name: caf\xe9\n")
    assert messages_of(p) == [f"{p}: line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8"]


def test_utf16_from_notepad(tmp_path):
    p = write(tmp_path, "stream:\r\n  name: cam\r\n".encode("utf-16"))
    assert messages_of(p) == [f"{p}: the file is saved as UTF-16; save it as UTF-8 text"]


def _without_root_file_access() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that even
    root then obeys file modes (prctl(PR_CAPBSET_DROP, cap))."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")  # the parent sees a SubprocessError


def test_unreadable_file_via_cli(tmp_path):
    p = write(tmp_path, OK_HEAD)
    p.chmod(0)
    drop = _without_root_file_access if os.geteuid() == 0 else None
    try:
        r = subprocess.run([str(KVS_EDGE), "check-config", str(p)], capture_output=True, text=True,
                           preexec_fn=drop, timeout=60)
    except subprocess.SubprocessError:
        pytest.skip("running as root without CAP_SETPCAP: cannot make a file unreadable to root")
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"{p}: permission denied; run this as a user that can read it (for example with sudo)\n")


def test_windows_line_endings_and_bom(tmp_path):
    text = "\ufeff# written on a laptop\r\nstream:\r\n  name: cam\r\nsource:\r\n  fps: 25\r\n  bitrate: 2M\r\n"
    cfg = load_config(write(tmp_path, text.encode("utf-8")))
    assert (cfg.stream.name, cfg.source.fps, cfg.source.bitrate) == ("cam", 25, 2_000_000)


def test_too_big_to_be_a_configuration(tmp_path):
    p = write(tmp_path, b"# " + b"x" * (2 * 1024 * 1024))
    assert messages_of(p) == [f"{p}: over 1 MiB: not a configuration file"]


def test_quoted_booleans_and_numbers():
    cfg = parse_config({"stream": {"name": "c"}, "time": {"require_sync": "false"},
                        "source": {"hflip": "Yes", "fps": "25", "width": "640", "rotation": "180"}}, "t")
    assert (cfg.time.require_sync, cfg.source.hflip, cfg.source.fps, cfg.source.width, cfg.source.rotation) == (
        False, True, 25, 640, 180)


def test_parse_config_in_memory_names_the_source():
    with pytest.raises(ConfigError) as e:
        parse_config({"stream": {"name": "cam"}, "source": {"fps": "thirty"}}, "demo")
    assert e.value.messages == ["demo: source.fps: expected a number, got 'thirty'"]
    assert str(e.value) == "demo: source.fps: expected a number, got 'thirty'"


# --------------------------------------------------------------------------------------------------------------------
# Valid configurations become the right typed values


def test_defaults():
    cfg = parse_config({"stream": {"name": "cam"}}, "t")
    # the single-camera form is one camera entry made of the top-level sections
    assert cfg == Config(stream=cfg.stream, cameras=(CameraConfig(name=None, stream=cfg.stream, source=cfg.source),))
    assert (cfg.stream.region, cfg.stream.fragment_seconds, cfg.aws.credentials, cfg.source.type) == (
        "us-east-1", 2.0, "default", "picamera")
    assert (cfg.source.width, cfg.source.height, cfg.source.fps, cfg.source.bitrate) == (1280, 720, 30, 4_000_000)
    assert (cfg.buffer.max_bytes, cfg.time.require_sync, cfg.upload.max_connection_minutes) == (GiB, True, 40)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stream.name = "other"  # type: ignore[misc]


def test_every_key_set_round_trips(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("device.pem.crt", "private.pem.key", "root.pem"):
        (certs / name).write_text("-----BEGIN CERTIFICATE-----\n")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    text = f"""
stream:
  name: porch.cam_1
  region: eu-west-1
  create: true
  retention_hours: 0
  fragment_seconds: 4
  kms_key_id: alias/kvs
aws:
  credentials: iot
  endpoint_url: http://127.0.0.1:4566
  ca_bundle: certs/root.pem
  iot:
    endpoint: https://abc.credentials.iot.eu-west-1.amazonaws.com/
    role_alias: kvs-alias
    thing_name: porch
    cert_file: certs/device.pem.crt
    key_file: {certs}/private.pem.key
source:
  type: FILE
  uri: clip.mp4
  width: 1920
  height: 1080
  fps: 29.97
  bitrate: 8Mbit
  profile: Main
  hflip: yes
  vflip: true
  rotation: 180
  tuning_file: imx477_noir.json
  camera_index: 1
  loop: true
buffer:
  path: buf
  max_bytes: 1.5G
  sync_seconds: 0.5
time:
  require_sync: false
upload:
  stale_seconds: 3
  max_connection_minutes: 44
  connect_timeout_seconds: 2.5
health:
  status_file: /run/kvs-edge/status.json
  metrics_listen: "[::1]:9108"
  stall_seconds: 2
log:
  level: DEBUG
"""
    cfg = load_config(write(tmp_path, text))
    s, a, src = cfg.stream, cfg.aws, cfg.source
    assert (s.name, s.region, s.create, s.retention_hours, s.fragment_seconds, s.kms_key_id) == (
        "porch.cam_1", "eu-west-1", True, 0, 4, "alias/kvs")
    assert (a.credentials, a.endpoint_url, a.ca_bundle) == ("iot", "http://127.0.0.1:4566", str(certs / "root.pem"))
    assert a.iot == IotConfig(endpoint="abc.credentials.iot.eu-west-1.amazonaws.com", role_alias="kvs-alias",
                              thing_name="porch", cert_file=str(certs / "device.pem.crt"),
                              key_file=str(certs / "private.pem.key"), ca_file=None)
    assert (src.type, src.uri, src.width, src.height, src.fps, src.bitrate, src.profile) == (
        "file", str(video), 1920, 1080, 29.97, 8_000_000, "main")
    assert (src.hflip, src.vflip, src.rotation, src.tuning_file, src.camera_index, src.loop) == (
        True, True, 180, "imx477_noir.json", 1, True)
    assert (cfg.buffer.path, cfg.buffer.max_bytes, cfg.buffer.sync_seconds) == (
        str(tmp_path / "buf"), 3 * GiB // 2, 0.5)
    assert cfg.time.require_sync is False
    assert (cfg.upload.stale_seconds, cfg.upload.max_connection_minutes, cfg.upload.connect_timeout_seconds) == (
        3, 44, 2.5)
    assert (cfg.health.status_file, cfg.health.metrics_listen, cfg.health.stall_seconds) == (
        "/run/kvs-edge/status.json", "[::1]:9108", 2)
    assert cfg.log.level == "debug"
    assert type(src.width) is int and type(src.bitrate) is int and type(cfg.buffer.max_bytes) is int


@pytest.mark.parametrize("text, expected", [
    ("4000000", 4_000_000), ("4M", 4_000_000), ("4Mbit", 4_000_000), ("4 Mbit/s", 4_000_000), ("800k", 800_000),
    ("800kbps", 800_000), ("1.5M", 1_500_000), ("64k", 64_000), ("50M", 50_000_000), ("2m", 2_000_000),
])
def test_bitrate_forms(text, expected):
    assert parse_config({"stream": {"name": "c"}, "source": {"bitrate": text}}, "t").source.bitrate == expected


@pytest.mark.parametrize("text, expected", [
    ("2GiB", 2 * GiB), ("500MB", 500_000_000), ("512M", 512 * MiB), ("1.5G", 3 * GiB // 2), ("16MiB", 16 * MiB),
    ("1073741824", GiB), ("1 TiB", 1024 * GiB), ("20000kb", 20_000_000), ("2gib", 2 * GiB),
])
def test_size_forms(text, expected):
    assert parse_config({"stream": {"name": "c"}, "buffer": {"max_bytes": text}}, "t").buffer.max_bytes == expected


BINARY = {"K": 1024, "KiB": 1024, "M": MiB, "MiB": MiB, "G": GiB, "GiB": GiB, "T": 1024 * GiB, "TiB": 1024 * GiB}
DECIMAL = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1, "": 1}


def exact_decimal(x: Fraction) -> str:
    """A terminating fraction (denominator 2^a 5^b) written out exactly in decimal."""
    digits = 0
    while (x * 10**digits).denominator != 1:
        digits += 1
    n = int(x * 10**digits)
    if digits == 0:
        return str(n)
    whole, frac = divmod(n, 10**digits)
    return f"{whole}.{frac:0{digits}d}"


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=0, max_value=2**50), unit=st.sampled_from(sorted({**BINARY, **DECIMAL})),
       space=st.sampled_from(["", " "]))
def test_size_in_any_unit_parses_back(n, unit, space):
    mult = {**BINARY, **DECIMAL}[unit]
    text = exact_decimal(Fraction(n, mult)) + space + unit
    assert parse_size(text) == n
    assert parse_size(text.lower()) == n  # units are not case sensitive for sizes


@settings(max_examples=200, deadline=None)
@given(k=st.integers(min_value=0, max_value=10**6), unit=st.sampled_from(sorted({**BINARY, **DECIMAL})))
def test_whole_units(k, unit):
    assert parse_size(f"{k}{unit}") == k * {**BINARY, **DECIMAL}[unit]


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(min_value=0, max_value=10**10),
       prefix=st.sampled_from([("", 1), ("k", 10**3), ("M", 10**6), ("G", 10**9)]),
       suffix=st.sampled_from(["", "bit", "bps", "bit/s", " bits"]))
def test_bitrate_in_any_unit_parses_back(bits, prefix, suffix):
    p, mult = prefix
    assert parse_bitrate(exact_decimal(Fraction(bits, mult)) + p + suffix) == bits


@settings(max_examples=100, deadline=None)
@given(gib=st.integers(min_value=1, max_value=64))
def test_buffer_size_through_the_config(gib):
    cfg = parse_config({"stream": {"name": "c"}, "buffer": {"max_bytes": f"{gib}GiB"}}, "t")
    assert cfg.buffer.max_bytes == gib * GiB


@pytest.mark.parametrize("bad", ["", "G", "1.2.3G", "-5M", "5 parsecs", "1e9"])
def test_size_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


# --------------------------------------------------------------------------------------------------------------------
# Secrets


def static_config(**aws) -> dict:
    return {"stream": {"name": "cam"},
            "aws": {"credentials": "static", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": SECRET,
                    **aws}}


def test_secrets_not_in_repr_and_redacted():
    cfg = parse_config(static_config(session_token=TOKEN), "t")
    assert cfg.aws.secret_access_key == SECRET and cfg.aws.session_token == TOKEN
    for text in (repr(cfg), str(cfg), repr(cfg.aws), str(redacted(cfg))):
        assert SECRET not in text and TOKEN not in text
    r = redacted(cfg)
    assert (r["aws"]["secret_access_key"], r["aws"]["session_token"]) == ("***", "***")
    assert r["aws"]["access_key_id"] == "AKIAIOSFODNN7EXAMPLE"
    assert r["source"]["fps"] == 30 and r["stream"]["name"] == "cam"
    assert redacted(parse_config({"stream": {"name": "c"}}, "t"))["aws"]["secret_access_key"] is None


def test_camera_password_masked():
    cfg = parse_config({"stream": {"name": "c"}, "source": {"type": "rtsp", "uri": "rtsp://admin:hunter2@cam/1"}},
                       "t")
    assert cfg.source.uri == "rtsp://admin:hunter2@cam/1"  # the source needs it
    assert "hunter2" not in repr(cfg)
    assert redacted(cfg)["source"]["uri"] == "rtsp://admin:***@cam/1"


@pytest.mark.parametrize("aws", [
    {"secret_access_key": [SECRET]},                      # wrong type
    {"secret_access_key": {SECRET: 1}},                  # a mapping
    {"session_token": TOKEN, "credentials": "default"},  # not used with default credentials
    {"secret_access_key": SECRET + " x"},                # pasted with a space
    {"session_token": 12345678901234567890},             # a number
])
def test_secrets_not_in_messages(aws):
    data = static_config()
    data["aws"].update(aws)
    with pytest.raises(ConfigError) as e:
        parse_config(data, "t")
    text = str(e.value)
    assert text.startswith("t: aws.")
    assert SECRET not in text and TOKEN not in text and "12345678901234567890" not in text


def test_secret_pasted_on_the_wrong_line_not_echoed():
    with pytest.raises(ConfigError) as e:
        parse_config({"stream": {"name": "c", "region": SECRET}, "aws": {"credentials": TOKEN + "Abc123"}}, "t")
    assert e.value.messages == [
        "t: stream.region: text that looks like a secret key (not shown) is not an AWS region name (like us-east-1 "
        "or eu-west-1)",
        "t: aws.credentials: text that looks like a secret key (not shown) is not one of default, static, iot",
    ]


def test_secret_in_a_broken_yaml_line_not_echoed(tmp_path):
    p = write(tmp_path, f"aws:\n  secret_access_key: {SECRET}\n   broken: [\n")
    msgs = messages_of(p)
    assert len(msgs) == 1 and msgs[0].startswith(f"{p}: line ")
    assert SECRET not in msgs[0]


def test_aws_section_scalar_not_echoed(tmp_path):
    assert messages_of(write(tmp_path, f"stream:\n  name: c\naws: {SECRET}\n")) == [
        f"{tmp_path}/kvs-edge.yaml: aws: expected settings under it (indented key: value lines), got text"]


# --------------------------------------------------------------------------------------------------------------------
# The shipped example


def test_example_is_valid_and_has_only_the_documented_placeholders():
    cfg = load_config(EXAMPLE)
    assert cfg.stream.name == PLACEHOLDER and cfg.aws.credentials == "static"
    assert has_placeholders(cfg)
    assert [w.split(": ")[1] for w in config_warnings(cfg, EXAMPLE)] == [
        "stream.name", "aws.access_key_id", "aws.secret_access_key"]


def uncomment_settings(text: str) -> str:
    """Turn every commented-out setting ("  # key: value  # note") into a live one, except the iot block (its keys are
    commented as "  #   key: value" and stay so, since they belong with credentials: iot)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\s+)# (\w+):(.*)$", line)
        out.append(m.group(1) + m.group(2) + ":" + m.group(3) if m and m.group(2) not in ("iot", "audio") else line)
    return "\n".join(out) + "\n"


def test_example_documents_every_key_with_its_default(tmp_path):
    text = EXAMPLE.read_text()
    live = uncomment_settings(text)
    data = yaml.safe_load(live)
    documented = {f"{s}.{k}" for s, keys in data.items() for k in (keys or {})}
    iot_keys = {k for k in ALL_KEYS if k.startswith(("aws.iot.", "source.audio."))}
    assert documented == set(ALL_KEYS) - iot_keys - {"aws.iot", "source.audio"}
    assert re.search(r"^  # iot:", text, re.M) and re.search(r"^  # audio:", text, re.M)
    for key in iot_keys:  # the iot and audio blocks are shown commented out, each as one unit
        assert re.search(rf"^\s*#\s+{key.rsplit('.', 1)[1]}: \S", text, re.M), key
    cfg = load_config(write(tmp_path, live))
    defaults = Config(stream=cfg.stream)
    changed = {"stream.name", "aws.credentials", "aws.access_key_id", "aws.secret_access_key"}
    for key in documented - changed:
        section, leaf = key.split(".")
        assert getattr(getattr(cfg, section), leaf) == getattr(getattr(defaults, section), leaf), key


def test_example_iot_block_uncommented_is_valid(tmp_path):
    """What an owner does to switch to AWS IoT certificates: uncomment the iot block, drop the keys."""
    for name in ("device.pem.crt", "private.pem.key", "AmazonRootCA1.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    lines, in_iot = [], False
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith(("  access_key_id:", "  secret_access_key:")):
            continue
        if line.startswith("  # iot:"):
            in_iot, line = True, "  iot:" + line[len("  # iot:"):]
        elif in_iot and re.match(r"^  #   \w", line):
            line = "    " + line[len("  #   "):]
        elif not line.strip():
            in_iot = False
        lines.append(line.replace("credentials: static", "credentials: iot").replace("/etc/kvs-edge/", f"{tmp_path}/"))
    cfg = load_config(write(tmp_path, "\n".join(lines) + "\n"))
    assert cfg.aws.credentials == "iot"
    assert cfg.aws.iot == IotConfig(endpoint="abc123.credentials.iot.us-east-1.amazonaws.com",
                                    role_alias="kvs-edge-role-alias", thing_name="my-pi-camera",
                                    cert_file=f"{tmp_path}/device.pem.crt", key_file=f"{tmp_path}/private.pem.key",
                                    ca_file=f"{tmp_path}/AmazonRootCA1.pem")


def test_example_with_the_placeholders_replaced_has_no_warnings(tmp_path):
    text = EXAMPLE.read_text().replace("name: CHANGE-ME", "name: porch").replace(
        "access_key_id: CHANGE-ME", "access_key_id: AKIAIOSFODNN7EXAMPLE").replace(
        "secret_access_key: CHANGE-ME", f"secret_access_key: {SECRET}")
    p = write(tmp_path, text)
    p.chmod(0o600)
    cfg = load_config(p)
    assert not has_placeholders(cfg)
    assert config_warnings(cfg, p) == []
    p.chmod(0o644)
    assert config_warnings(cfg, p) == [
        f"{p}: aws.secret_access_key: the file is readable by every user on this machine; run: chmod o-r {p}"]


# --------------------------------------------------------------------------------------------------------------------
# The command


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KVS_EDGE), "check-config", *args], capture_output=True, text=True, timeout=60)


def test_cli_example_ok_with_placeholder_warnings():
    r = run_cli(str(EXAMPLE))
    assert r.returncode == 0
    assert r.stdout == f"{EXAMPLE}: ok\n"
    assert r.stderr.splitlines() == [
        f"warning: {EXAMPLE}: stream.name: still the example's placeholder CHANGE-ME; set it to the name of your "
        "Kinesis video stream",
        f"warning: {EXAMPLE}: aws.access_key_id: still the example's placeholder CHANGE-ME; put your IAM user's key "
        "here (or use aws.credentials: default or iot)",
        f"warning: {EXAMPLE}: aws.secret_access_key: still the example's placeholder CHANGE-ME; put your IAM user's "
        "key here (or use aws.credentials: default or iot)",
    ]


def test_cli_valid_file_is_quiet(tmp_path):
    r = run_cli(str(write(tmp_path, OK_HEAD)))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{tmp_path}/kvs-edge.yaml: ok\n", "")


def test_cli_invalid_file_exit_2_every_message_on_stderr(tmp_path):
    p = write(tmp_path, "stream:\n  nmae: cam\nsource:\n  fps: thirty\naws:\n  credentials: static\n"
                        f"  access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret_access_key: [{SECRET}]\n")
    r = run_cli(str(p))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"{p}: stream.nmae: unknown key, did you mean stream.name?",
        f"{p}: aws.secret_access_key: expected text, got a list",
        f"{p}: source.fps: expected a number, got 'thirty'",
    ]
    assert SECRET not in r.stderr


def test_cli_missing_file_exit_2(tmp_path):
    r = run_cli(str(tmp_path / "none.yaml"))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"{tmp_path}/none.yaml: no such file; copy the example (config/kvs-edge.yaml) there and "
                        "edit it\n")


def test_source_audio_block(tmp_path):
    from kvs_edge.config import AudioConfig

    base = "stream:\n  name: cam\nsource:\n  type: testpattern\n"
    cfg = load_config(write(tmp_path, base + "  audio:\n    sample_rate: 44100\n    channels: 2\n    bitrate: 96k\n"))
    assert cfg.source.audio == AudioConfig(device="auto", sample_rate=44100, channels=2, bitrate=96_000, codec="aac")
    assert load_config(write(tmp_path, base)).source.audio is None
    assert load_config(write(tmp_path, base + "  audio:\n")).source.audio is None  # an empty block: no audio
    f = write(tmp_path, base + "  audio:\n    device: hw:1,0\n    channels: 6\n    codec: opus\n    rate: 1\n")
    assert messages_of(f) == [
        f"{f}: source.audio.channels: 6 is not one of 1, 2",
        f"{f}: source.audio.codec: 'opus' is not one of aac",
        f"{f}: source.audio.rate: unknown key, did you mean source.audio.bitrate?",
        f"{f}: source.audio.device: 'hw:1,0': source.type testpattern brings its own sound; set it to auto",
    ]
    cam = "stream:\n  name: cam\nsource:\n  audio:\n    device: plughw:CARD=Device\n"
    assert load_config(write(tmp_path, cam)).source.audio.device == "plughw:CARD=Device"
