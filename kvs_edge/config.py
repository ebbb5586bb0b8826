"""The YAML configuration: yaml.safe_load into frozen, typed dataclasses, validated with messages a user can act on.

Every message reads "FILE: key.path: problem". All problems of a file are collected and raised together as one
ConfigError. Secrets (aws.secret_access_key, aws.session_token) never appear in repr(), in messages or in redacted().

Public API:
    load_config(path) -> Config                       raises ConfigError
    parse_config(data, source_name, base_dir=None) -> Config
    redacted(cfg) -> dict                             effective settings for logs, secrets as "***"
    config_warnings(cfg, path=None) -> list[str]      placeholders still in place, a world-readable file with keys
    parse_size(text) -> int, parse_bitrate(text) -> int
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml

from kvs_edge.errors import EXIT_CONFIG, KvsEdgeError

MiB = 1024 * 1024
GiB = 1024 * MiB

# The value the shipped example (config/kvs-edge.yaml) puts where the user must fill in their own.
PLACEHOLDER = "CHANGE-ME"

SECRET_KEYS = frozenset({"secret_access_key", "session_token"})
REDACTED = "***"
MAX_FILE_BYTES = 1024 * 1024
EMPTY = "the file is empty; it needs at least stream.name (see config/kvs-edge.yaml)"


class ConfigError(KvsEdgeError, ValueError):
    """An unusable configuration. `.messages`: one line per problem, each "FILE: key.path: problem"."""

    exit_code = EXIT_CONFIG

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


# --------------------------------------------------------------------------------------------------------------------
# The settings. Attribute names are the YAML keys (docs/internals.md "config.py").


@dataclass(frozen=True)
class StreamConfig:
    name: str
    region: str = "us-east-1"
    create: bool = False
    retention_hours: int = 24
    fragment_seconds: float = 2.0
    kms_key_id: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # given to CreateStream (stream.create); values may use placeholders


@dataclass(frozen=True)
class IotConfig:
    endpoint: str
    role_alias: str
    thing_name: str
    cert_file: str
    key_file: str
    ca_file: str | None = None


@dataclass(frozen=True)
class AwsConfig:
    credentials: str = "default"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    endpoint_url: str | None = None
    ca_bundle: str | None = None
    iot: IotConfig | None = None


@dataclass(frozen=True)
class AudioConfig:
    """source.audio: a microphone track (AAC, track 2). device: an ALSA name (default, hw:1,0, plughw:CARD=X), or
    `auto` (file and rtsp sources: the input's own audio track; testpattern: a tone that beeps at each flash)."""

    device: str = "auto"
    sample_rate: int = 48000
    channels: int = 1
    bitrate: int = 64_000
    codec: str = "aac"  # Opus is not offered: KVS playback takes AAC only (docs/kvs-service-facts.md)


@dataclass(frozen=True)
class SourceConfig:
    type: str = "picamera"
    uri: str | None = None
    width: int = 1280
    height: int = 720
    fps: int | float = 30
    bitrate: int = 4_000_000
    profile: str = "high"
    hflip: bool = False
    vflip: bool = False
    rotation: int = 0
    tuning_file: str | None = None
    camera_index: int = 0
    camera_model: str | None = None  # Pi camera chosen by sensor model (e.g. imx708) instead of camera_index
    camera_port: str | None = None  # ... or by where it is plugged (text in libcamera's camera Id, e.g. i2c@88000)
    loop: bool = False
    audio: AudioConfig | None = None  # no audio unless a source.audio block is given

    def __repr__(self) -> str:  # an RTSP address may carry a camera password
        parts = ", ".join(
            f"{f.name}={(_safe_uri(v) if f.name == 'uri' else v)!r}"
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        )
        return f"SourceConfig({parts})"


@dataclass(frozen=True)
class BufferConfig:
    path: str = "/var/lib/kvs-edge/buffer"
    max_bytes: int = 1 * GiB
    sync_seconds: float = 2.0
    retain_seconds: float | None = None  # video not selected for upload (events mode) is kept this long; None: max_bytes


# The Producer's buffer (`Producer(buffer_max_bytes=...)`): smaller than the appliance's, as a library shares its host.
PRODUCER_BUFFER_MAX_BYTES = "512MiB"


@dataclass(frozen=True)
class TimeConfig:
    require_sync: bool = True


@dataclass(frozen=True)
class ScheduleWindow:
    cron: str
    minutes: int


@dataclass(frozen=True)
class UploadConfig:
    stale_seconds: float = 10.0
    max_connection_minutes: int = 40
    connect_timeout_seconds: float = 10.0
    mode: str = "continuous"  # continuous | events | schedule (upload_policy.py)
    schedule: tuple[ScheduleWindow, ...] = ()  # upload windows, for mode schedule
    timezone: str = "UTC"  # the zone the schedule's cron expressions are read in


@dataclass(frozen=True)
class EventsConfig:
    """upload.mode events: what an event uploads, its tags, the control socket, the motion detector."""

    pre_seconds: float = 5.0
    post_seconds: float = 5.0
    notify: bool = False  # AWS_KINESISVIDEO_NOTIFICATION on the fragment of each event's first trigger
    images: bool = False  # AWS_KINESISVIDEO_IMAGE_GENERATION on that fragment
    control_socket: str = "/run/kvs-edge/control.sock"
    motion: bool = False
    motion_threshold: int = 25  # per-pixel absolute luma difference (0-255) that counts as changed
    motion_area: float = 0.01  # share of the (region's) pixels that must change
    motion_cooldown_seconds: float = 10.0
    motion_fps: float = 2.0
    motion_roi: tuple[float, float, float, float] | None = None  # x, y, width, height as shares of the picture


@dataclass(frozen=True)
class HealthConfig:
    status_file: str = "/run/kvs-edge/status.json"
    metrics_listen: str | None = None
    stall_seconds: float = 5.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class CameraConfig:
    """One entry of `cameras:` (issue 16): its own stream and source; `share` is its weight in the split of
    buffer.max_bytes (equal by default); `upload` and `events` its own settings (laid over the top-level ones)."""

    name: str | None
    stream: StreamConfig
    source: SourceConfig
    share: float = 1.0
    upload: UploadConfig = field(default_factory=UploadConfig)
    index: int = 0
    events: EventsConfig = field(default_factory=EventsConfig)

    @property
    def label(self) -> str:
        """What {camera} and the status/metrics labels call it: its name, else its index."""
        return self.name if self.name is not None else str(self.index)


@dataclass(frozen=True)
class MetadataConfig:
    """The `metadata:` block: static tags written before every fragment (name: value lines, e.g. site, serial)."""

    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Config:
    stream: StreamConfig
    aws: AwsConfig = field(default_factory=AwsConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    # Always at least one entry once parsed: the single-camera form (stream:, source:) is the one camera. With a
    # `cameras:` list, `stream`/`source`/`upload` above are the first camera's (callers that know one camera only).
    cameras: tuple[CameraConfig, ...] = ()
    metadata: MetadataConfig = field(default_factory=MetadataConfig)


SECTIONS: dict[str, type] = {
    "stream": StreamConfig,
    "aws": AwsConfig,
    "source": SourceConfig,
    "buffer": BufferConfig,
    "time": TimeConfig,
    "upload": UploadConfig,
    "health": HealthConfig,
    "log": LogConfig,
    "events": EventsConfig,
}
SUBSECTIONS: dict[str, type] = {"aws.iot": IotConfig, "source.audio": AudioConfig}


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# Every valid key path except the sections themselves: "stream.name", ..., "aws.iot.endpoint", ...
ALL_KEYS: list[str] = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in _keys(cls)] + [
    f"{s}.{k}" for s, cls in SUBSECTIONS.items() for k in _keys(cls)
]


# --------------------------------------------------------------------------------------------------------------------
# Units


class _Problem(Exception):
    """A value is unusable: args[0] is the problem, without the file and key path."""


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmg]?)\s*(bit/s|bits/s|bits|bit|bps|b/s|)\s*$", re.IGNORECASE)
_RATE_PREFIX = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_size(text: str | int) -> int:
    """A byte count: 1073741824, "2GiB", "500MB", "512M", "1.5G". K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024,
    KB/MB/GB/TB powers of 1000 (as in systemd). Fractions of a byte are dropped. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError("expected a size")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(Fraction(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_bitrate(text: str | int) -> int:
    """Bits per second: 4000000, "4M", "4Mbit", "4 Mbit/s", "800k", "800kbps" (powers of 1000). Raises ValueError,
    also for byte units like "4MB" (a bitrate is in bits)."""
    if isinstance(text, bool):
        raise ValueError("expected a bitrate")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a bitrate cannot be negative")
        return text
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(f"not a bitrate: {text!r}")
    return int(Fraction(m.group(1)) * _RATE_PREFIX[m.group(2).lower()])


def _format_rate(bits: int) -> str:
    for unit, mult in (("M", 1000**2), ("k", 1000)):
        if bits % mult == 0:
            return f"{bits // mult}{unit}"
    return str(bits)


def _format_size(n: int) -> str:
    for unit, mult in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


# --------------------------------------------------------------------------------------------------------------------
# Value parsers: (value, key) -> typed value, or raise _Problem. `key` is the full key path (for secrets).


def _kind(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return "a " + type(v).__name__


def _show(v: Any, key: str = "") -> str:
    """How a value the user wrote is echoed in a message: never a secret, never a password in a URL."""
    if key.rsplit(".", 1)[-1] in SECRET_KEYS or isinstance(v, (list, dict)) or v is None:
        return _kind(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = _safe_uri(str(v))
    if _looks_secret(s):  # a secret key pasted on the wrong line
        return "text that looks like a secret key (not shown)"
    if len(s) > 60:
        s = s[:57] + "..."
    return repr(s)


def _looks_secret(s: str) -> bool:
    """Long base64-like text with upper and lower case letters and digits: an AWS secret key or session token."""
    return (len(s) >= 30 and re.fullmatch(r"[A-Za-z0-9/+=]+", s) is not None
            and any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s))


def _safe_uri(uri: str | None) -> str | None:
    """rtsp://user:pass@host/x -> rtsp://user:***@host/x."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    userinfo, sep, hostpart = rest.partition("@")
    if "/" in userinfo:  # the @ is in the path, not credentials
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{REDACTED}@{hostpart}" if ":" in userinfo else uri


def _text(v: Any, key: str) -> str:
    if isinstance(v, str):
        if not v.strip():
            raise _Problem("is empty")
        return v
    secret = key.rsplit(".", 1)[-1] in SECRET_KEYS
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not secret:
        raise _Problem(f"expected text, got the number {v!r}; put it in quotes")
    if isinstance(v, bool) and not secret:  # YAML reads a bare yes/no/on/off as true/false
        raise _Problem(f"expected text, got {_show(v)}; put it in quotes")
    raise _Problem(f"expected text, got {_kind(v) if secret else _show(v)}")


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _bool(v: Any, key: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _BOOL_WORDS:  # a quoted "false" means false
        return _BOOL_WORDS[v.strip().lower()]
    raise _Problem(f"expected true or false, got {_show(v)}")


def _number(lo: float, hi: float, *, integer: bool = False, unit: str = "") -> Callable[[Any, str], Any]:
    def parse(v: Any, key: str) -> Any:
        raw = v
        if isinstance(v, str):
            try:
                v = int(v.strip()) if re.fullmatch(r"\s*[-+]?\d+\s*", v) else float(v)
            except ValueError:
                raise _Problem(f"expected {'a whole number' if integer else 'a number'}, got {_show(raw)}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Problem(f"expected {'a whole number' if integer else 'a number'}, got {_show(raw)}")
        if not math.isfinite(v):
            raise _Problem(f"expected a number, got {_show(raw)}")
        if integer:
            if isinstance(v, float) and not v.is_integer():
                raise _Problem(f"expected a whole number, got {_show(raw)}")
            v = int(v)
        if not lo <= v <= hi:
            raise _Problem(f"{_num(v)} is out of range ({_num(lo)} to {_num(hi)}{unit})")
        return v

    return parse


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _choice(*options: str) -> Callable[[Any, str], str]:
    def parse(v: Any, key: str) -> str:
        if not isinstance(v, str):
            raise _Problem(f"expected one of {', '.join(options)}, got {_show(v)}")
        low = v.strip().lower()
        if low in options:
            return low
        close = difflib.get_close_matches(low, options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise _Problem(f"{_show(v)} is not one of {', '.join(options)}{hint}")

    return parse


def _size(lo: int) -> Callable[[Any, str], int]:
    def parse(v: Any, key: str) -> int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise _Problem(f"expected a size like 2GiB, 500MB or 1073741824, got {_show(v)}")
        try:
            n = parse_size(v)
        except ValueError:
            raise _Problem(f"expected a size like 2GiB, 500MB or 1073741824, got {_show(v)}") from None
        if n < lo:
            raise _Problem(f"{v} is too small (at least {_format_size(lo)})")
        return n

    return parse


def _bitrate(lo: int, hi: int) -> Callable[[Any, str], int]:
    def parse(v: Any, key: str) -> int:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise _Problem(f"expected bits per second like 4000000, 4M or 800k, got {_show(v)}")
        if isinstance(v, str) and re.search(r"\d\s*[kKmMgG]?B(ps|/s)?\s*$", v):
            raise _Problem(f"{_show(v)} is in bytes; give bits per second, like 4M or 4Mbit")
        try:
            n = parse_bitrate(v)
        except ValueError:
            raise _Problem(f"expected bits per second like 4000000, 4M or 800k, got {_show(v)}") from None
        if not lo <= n <= hi:
            raise _Problem(f"{v} is out of range ({_format_rate(lo)} to {_format_rate(hi)} bits per second)")
        return n

    return parse


def _choice_int(*options: int) -> Callable[[Any, str], int]:
    def parse(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v not in options:
            raise _Problem(f"{_show(v)} is not one of {', '.join(map(str, options))}")
        return v

    return parse


def _even_size(v: Any, key: str) -> int:
    n = _number(16, 4096, integer=True, unit=" pixels")(v, key)
    if n % 2:
        raise _Problem(f"{n} must be even (H.264 video is stored in 2x2 pixel blocks)")
    return n


def _rotation(v: Any, key: str) -> int:
    n = v
    if isinstance(v, str):
        try:
            n = float(v)
        except ValueError:
            raise _Problem(f"expected 0 or 180, got {_show(v)}") from None
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise _Problem(f"expected 0 or 180, got {_show(v)}")
    if n in (0, 180):
        return int(n)
    raise _Problem(
        f"{_num(n) if math.isfinite(n) else _show(v)} is impossible: the Pi camera can only flip the picture "
        "(hflip and vflip), so rotation is 0 or 180; for a camera mounted sideways, rotate the video when playing it"
    )


_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,256}$")
# docs/internals.md "identity.py": {camera} and {thing_name} are not for the thing name itself
_DEVICE_PLACEHOLDERS = ("hostname", "serial", "machine_id")


def _template_body(s: str, key: str) -> str:
    """A name that may hold placeholders ({serial}, ...), with each replaced by a plain stand-in for the checks of
    the characters around them. _Problem for an unknown placeholder."""
    from kvs_edge import identity

    allowed = _DEVICE_PLACEHOLDERS if key.endswith("thing_name") else identity.PLACEHOLDERS
    try:
        identity.check_template(s, allowed=allowed)
    except identity.IdentityError as e:
        raise _Problem(str(e)) from None
    return re.sub(r"\{[a-z_]+\}", "x", s)


def _thing_name(v: Any, key: str) -> str:
    s = _text(v, key)
    _template_body(s, key)  # only the device's own placeholders
    return s


def _tags(v: Any, key: str) -> tuple[tuple[str, str], ...]:
    """Stream tags for CreateStream: a mapping of text to text. AWS CreateStream/TagStream: at most 50 tags, a key of
    1 to 128 characters (not starting with "aws:"), a value of 0 to 256; values may use placeholders."""
    if not isinstance(v, dict):
        raise _Problem(f"expected tags as key: value lines (like serial: \"{{serial}}\"), got {_show(v)}")
    if len(v) > 50:
        raise _Problem(f"{len(v)} tags; a stream takes at most 50")
    out = []
    for k, val in v.items():
        k = str(k)
        text = "" if val is None else str(val) if not isinstance(val, (dict, list)) else None
        if text is None:
            raise _Problem(f"{k}: expected text, got {_kind(val)}")
        if not 1 <= len(k) <= 128 or k.lower().startswith("aws:"):
            raise _Problem(f"{k!r}: a tag key is 1 to 128 characters and does not start with aws:")
        if len(_template_body(text, key)) > 256:
            raise _Problem(f"{k}: a tag value is at most 256 characters")
        out.append((k, text))
    return tuple(out)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


def _schedule(v: Any, key: str) -> tuple[ScheduleWindow, ...]:
    from kvs_edge.schedule import MAX_WINDOW_MINUTES, CronError, parse_cron
    example = 'like [{cron: "0 * * * *", minutes: 10}]'
    if not isinstance(v, list):
        raise _Problem(f"expected a list of windows, {example}")
    out = []
    for i, w in enumerate(v):
        if not isinstance(w, dict) or set(w) != {"cron", "minutes"}:
            raise _Problem(f"window {i + 1}: expected cron and minutes, {example}")
        try:
            parse_cron(w["cron"])
        except CronError as e:
            raise _Problem(f"window {i + 1}: {e}") from None
        m = w["minutes"]
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_WINDOW_MINUTES:
            raise _Problem(f"window {i + 1}: minutes must be a whole number from 1 to {MAX_WINDOW_MINUTES}")
        out.append(ScheduleWindow(w["cron"], m))
    return tuple(out)


def _timezone(v: Any, key: str) -> str:
    from kvs_edge.schedule import zone
    name = _text(v, key)
    try:
        zone(name)
    except ValueError as e:
        raise _Problem(str(e)) from None
    return name


def _roi(v: Any, key: str) -> tuple[float, float, float, float]:
    problem = "expected x, y, width, height as shares of the picture (0 to 1), like [0.25, 0.5, 0.5, 0.5]"
    if not isinstance(v, list) or len(v) != 4 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                      for x in v):
        raise _Problem(problem)
    x, y, w, h = (float(a) for a in v)
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x and 0 < h <= 1 - y):
        raise _Problem(problem + "; the region must lie inside the picture")
    return (x, y, w, h)


def _stream_name(v: Any, key: str) -> str:
    s = _text(v, key)
    if not _STREAM_NAME.match(_template_body(s, key)):
        raise _Problem(f"{_show(s)} is not a valid stream name (1 to 256 letters, digits, '.', '_' and '-')")
    return s


def _region(v: Any, key: str) -> str:
    s = _text(v, key).strip()
    if not _REGION.match(s):
        raise _Problem(f"{_show(s)} is not an AWS region name (like us-east-1 or eu-west-1)")
    return s


def _url(v: Any, key: str) -> str:
    s = _text(v, key).strip()
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Problem(f"{_show(s)} is not a URL; it must start with https:// (or http:// for a local emulator)")
    return s


def _host(v: Any, key: str) -> str:
    s = _text(v, key).strip()
    if s.startswith("https://"):
        s = s[len("https://"):]
    s = s.rstrip("/")
    if not s or "/" in s or " " in s:
        raise _Problem(f"{_show(v)} is not a host name (like abc123.credentials.iot.us-east-1.amazonaws.com)")
    return s


def _listen(v: Any, key: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        v = f"127.0.0.1:{v}"
    s = _text(v, key).strip()
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):(\d{1,5})", s)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise _Problem(f"{_show(v)} is not HOST:PORT (like 127.0.0.1:9108, or 0.0.0.0:9108 for every interface)")
    return s


def _key_text(v: Any, key: str) -> str:
    """An access key id, secret key or session token: copied from the IAM console, so no spaces can belong in it."""
    s = _text(v, key)
    if any(c.isspace() for c in s):
        raise _Problem("contains spaces; copy it again without them")
    return s


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "stream.name": _stream_name,
    "stream.region": _region,
    "stream.create": _bool,
    "stream.retention_hours": _number(0, 87600, integer=True, unit=" hours"),
    "stream.fragment_seconds": _number(1, 20, unit=" seconds"),
    "stream.kms_key_id": _text,
    "stream.tags": _tags,
    "aws.credentials": _choice("default", "static", "iot"),
    "aws.access_key_id": _key_text,
    "aws.secret_access_key": _key_text,
    "aws.session_token": _key_text,
    "aws.profile": _text,
    "aws.endpoint_url": _url,
    "aws.ca_bundle": _text,
    "aws.iot.endpoint": _host,
    "aws.iot.role_alias": _text,
    "aws.iot.thing_name": _thing_name,
    "aws.iot.cert_file": _text,
    "aws.iot.key_file": _text,
    "aws.iot.ca_file": _text,
    "source.type": _choice("picamera", "testpattern", "file", "rtsp", "v4l2"),
    "source.uri": _text,
    "source.width": _even_size,
    "source.height": _even_size,
    "source.fps": _number(1, 120),
    "source.bitrate": _bitrate(64_000, 50_000_000),
    "source.profile": _choice("baseline", "main", "high"),
    "source.hflip": _bool,
    "source.vflip": _bool,
    "source.rotation": _rotation,
    "source.tuning_file": _text,
    "source.camera_index": _number(0, 15, integer=True),
    "source.camera_model": _text,
    "source.camera_port": _text,
    "source.loop": _bool,
    "source.audio.device": _text,
    "source.audio.sample_rate": _choice_int(8000, 16000, 22050, 24000, 32000, 44100, 48000),
    "source.audio.channels": _choice_int(1, 2),
    "source.audio.bitrate": _bitrate(16_000, 320_000),
    "source.audio.codec": _choice("aac"),
    "buffer.path": _text,
    "buffer.max_bytes": _size(16 * MiB),
    "buffer.sync_seconds": _number(0.1, 60, unit=" seconds"),
    "time.require_sync": _bool,
    "upload.stale_seconds": _number(1, 300, unit=" seconds"),
    "upload.max_connection_minutes": _number(1, 44, integer=True, unit=" minutes"),
    "upload.connect_timeout_seconds": _number(1, 300, unit=" seconds"),
    "buffer.retain_seconds": _number(1, 366 * 86400, unit=" seconds"),
    "upload.mode": _choice("continuous", "events", "schedule"),
    "upload.schedule": _schedule,
    "upload.timezone": _timezone,
    "events.pre_seconds": _number(0, 600, unit=" seconds"),
    "events.post_seconds": _number(0, 3600, unit=" seconds"),
    "events.notify": _bool,
    "events.images": _bool,
    "events.control_socket": _text,
    "events.motion": _bool,
    "events.motion_threshold": _number(1, 255, integer=True),
    "events.motion_area": _number(0.0001, 1),
    "events.motion_cooldown_seconds": _number(0, 3600, unit=" seconds"),
    "events.motion_fps": _number(0.2, 30),
    "events.motion_roi": _roi,
    "health.status_file": _text,
    "health.metrics_listen": _listen,
    "health.stall_seconds": _number(1, 300, unit=" seconds"),
    "log.level": _choice("debug", "info", "warning", "error"),
}
assert set(_PARSERS) == set(ALL_KEYS) - {"aws.iot", "source.audio"}, set(ALL_KEYS) ^ set(_PARSERS)

# Keys that hold a file or folder: a relative path is taken relative to the configuration file's folder.
_PATH_KEYS = {"aws.ca_bundle", "aws.iot.cert_file", "aws.iot.key_file", "aws.iot.ca_file", "buffer.path",
              "health.status_file", "events.control_socket"}


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike) -> Config:
    """Read, parse and validate a YAML file. Raises ConfigError with every problem found."""
    name = os.fspath(path)
    text = _read_text(name)
    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise ConfigError([f"{name}: {EMPTY}"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(name, e)]) from None
    duplicates = _duplicate_keys(text)
    base_dir = os.path.dirname(os.path.abspath(name))
    try:
        cfg = parse_config(data, name, base_dir=base_dir)
    except ConfigError as e:
        raise ConfigError([f"{name}: {d}" for d in duplicates] + e.messages) from None
    if duplicates:
        raise ConfigError([f"{name}: {d}" for d in duplicates])
    return cfg


def _read_text(name: str) -> str:
    try:
        with open(name, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{name}: no such file; copy the example (config/kvs-edge.yaml) there and edit it"]) \
            from None
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a folder, not a configuration file"]) from None
    except PermissionError:
        raise ConfigError([f"{name}: permission denied; run this as a user that can read it (for example with sudo)"]) \
            from None
    except OSError as e:
        raise ConfigError([f"{name}: cannot read it: {e.strerror or e}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"{name}: over 1 MiB: not a configuration file"])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([f"{name}: the file is saved as UTF-16; save it as UTF-8 text"])
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is dropped
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        byte = raw[e.start]
        problem = f"line {line}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8"
        raise ConfigError([f"{name}: {problem}"]) from None
    if "\x00" in text:
        raise ConfigError([f"{name}: not a text file"])
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _yaml_error(name: str, e: yaml.YAMLError) -> str:
    """One line: file, line, column and the problem; never the offending text (it could hold a key)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or "not valid YAML"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    msg = f"{name}: {where}{problem}"
    if problem.startswith("expected <block end>"):
        return f"{name}: {where}the indentation does not line up with the lines above"
    if problem == "mapping values are not allowed here":
        return f"{name}: {where}a ':' where no key can start: put a value that contains ': ' in quotes, " \
               "or check the indentation"
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if problem == "could not find expected ':'" and cmark is not None:
        return f"{name}: line {cmark.line + 1}, column {cmark.column + 1}: not a 'key: value' line (a ':' missing?)"
    if context:
        msg += f", {context}"
        if cmark is not None and (mark is None or (cmark.line, cmark.column) != (mark.line, mark.column)):
            msg += f" that starts at line {cmark.line + 1}, column {cmark.column + 1}"
    if "'\\t'" in problem:
        msg += " (indent with spaces, not tabs)"
    elif "could not determine a constructor" in problem:
        msg = f"{name}: {where}tags like !!python/... are not allowed in a configuration file"
    return msg


def _duplicate_keys(text: str) -> list[str]:
    """Keys given twice in one mapping (safe_load silently keeps the last). Uses the safe composer: no objects built."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    found: list[str] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[str, int] = {}
        for knode, vnode in node.value:
            key = str(knode.value)
            path = f"{prefix}{key}"
            line = knode.start_mark.line + 1
            if key in seen:
                found.append(f"{path}: given twice (lines {seen[key]} and {line}); keep one")
            else:
                seen[key] = line
            walk(vnode, path + ".")

    if root is not None:
        walk(root, "")
    return found


class _Errors:
    """The messages collected for one file, and which key paths they are about."""

    def __init__(self, source_name: str):
        self.source_name = source_name
        self.messages: list[str] = []
        self.paths: set[str] = set()

    def __call__(self, path: str, problem: str) -> None:
        self.paths.add(path)
        m = re.search(r"did you mean ([\w.]+)\?", problem)
        if m:  # a misspelt stream.name is not also reported missing
            self.paths.add(m.group(1))
        self.messages.append(f"{self.source_name}: {path}: {problem}" if path else f"{self.source_name}: {problem}")

    def about(self, path: str) -> bool:
        return path in self.paths


def parse_config(data: Any, source_name: str, base_dir: str | None = None) -> Config:
    """Validate already-loaded YAML data (a dict). Raises ConfigError with every problem, each "SOURCE: key: problem".

    base_dir: relative file paths (buffer.path, certificates, a file source) are taken relative to it; None leaves them.
    """
    err = _Errors(source_name)
    if data is None:
        raise ConfigError([f"{source_name}: {EMPTY}"])
    if not isinstance(data, dict):
        raise ConfigError([
            f"{source_name}: expected settings grouped in sections (stream:, aws:, source: ...) at the top level, "
            f"got {_kind(data)}"
        ])

    for key in data:
        if str(key) not in SECTIONS and str(key) not in (CAMERAS, "metadata"):
            err(str(key), _unknown_top(str(key)))

    values: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        values[section] = _parse_section(data.get(section), section, cls, err)
    aws_raw = data.get("aws") if isinstance(data.get("aws"), dict) else {}
    iot_given = "iot" in aws_raw and aws_raw["iot"] is not None
    if iot_given:
        values["aws"]["iot"] = _parse_section(aws_raw["iot"], "aws.iot", IotConfig, err)
    source_raw = data.get("source") if isinstance(data.get("source"), dict) else {}
    audio_given = "audio" in source_raw and source_raw["audio"] is not None
    if audio_given:
        values["source"]["audio"] = AudioConfig(**_parse_section(source_raw["audio"], "source.audio", AudioConfig,
                                                                  err))

    cameras = _parse_cameras(data.get(CAMERAS), values, err) if CAMERAS in data else None
    metadata = _parse_metadata(data.get("metadata"), err)
    _cross_checks(values, iot_given, err, cameras=CAMERAS in data)
    _events_checks(values, err)
    _tag_room_check(metadata, values, cameras, err)
    if base_dir is not None:
        _resolve_paths(values, base_dir)
        for cam in cameras or []:
            _resolve_paths({"source": cam["source"], "aws": {}}, base_dir, only_source=True)
    _check_files(values, err)
    for i, cam in enumerate(cameras or []):
        _check_files({"source": cam["source"], "aws": {}}, err, prefix=f"{CAMERAS}[{i}].")

    if err.messages:
        raise ConfigError(err.messages)

    aws = dict(values["aws"])
    if iot_given:
        aws["iot"] = IotConfig(**values["aws"]["iot"])
    upload = UploadConfig(**values["upload"])
    if cameras:
        entries = tuple(CameraConfig(name=c["name"], stream=StreamConfig(**c["stream"]),
                                     source=SourceConfig(**c["source"]), share=c["share"],
                                     upload=UploadConfig(**c["upload"]), index=i, events=EventsConfig(**c["events"]))
                        for i, c in enumerate(cameras))
    else:  # the single-camera form: one entry, made of the top-level stream, source and upload
        entries = (CameraConfig(name=None, stream=StreamConfig(**values["stream"]),
                                source=SourceConfig(**values["source"]), upload=upload,
                                events=EventsConfig(**values["events"])),)
    return Config(
        stream=entries[0].stream,
        aws=AwsConfig(**aws),
        source=entries[0].source,
        buffer=BufferConfig(**values["buffer"]),
        time=TimeConfig(**values["time"]),
        upload=entries[0].upload,
        health=HealthConfig(**values["health"]),
        log=LogConfig(**values["log"]),
        events=EventsConfig(**values["events"]),
        cameras=entries,
        metadata=metadata,
    )


def _parse_metadata(raw: Any, err: _Errors) -> MetadataConfig:
    """`metadata:`: name: value lines, each a fragment tag within KVS's limits (media/fragment_tags.py)."""
    from kvs_edge.media.fragment_tags import FragmentTags, TagError

    if raw is None:
        return MetadataConfig()
    if not isinstance(raw, dict):
        err("metadata", f"expected tag lines under it (indented name: value), got {_show(raw)}")
        return MetadataConfig()
    tags, book = [], FragmentTags()
    for key, value in raw.items():
        path = f"metadata.{key}"
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            err(path, f"expected a text value, got {_kind(value)}")
            continue
        try:
            book.put(str(key), str(value), persistent=True)
        except TagError as e:
            err(path, str(e))
            continue
        tags.append((str(key), str(value)))
    return MetadataConfig(tuple(tags))


# --------------------------------------------------------------------------------------------------------------------
# cameras: (issue 16). Each entry: name, stream, source, buffer (share), upload. The entry's stream and upload keys
# are laid over the top-level stream (all but name) and upload sections, so a fleet sets region, retention and tags
# once; its source is its own (a top-level source: is then an error: which camera would it be?).

CAMERAS = "cameras"
CAMERA_KEYS = ("name", "stream", "source", "buffer", "upload", "events")
_CAMERA_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")


def _parse_cameras(raw: Any, values: dict[str, dict[str, Any]], err: _Errors) -> list[dict[str, Any]] | None:
    """The entries of `cameras:` as dicts of parsed values; problems reported as "cameras[1].source.uri: ..."."""
    if not isinstance(raw, list) or not raw:
        err(CAMERAS, f"expected a list of cameras (lines starting with '- '), got {_show(raw)}")
        return None
    out: list[dict[str, Any]] = []
    names: dict[str, int] = {}
    streams: dict[str, int] = {}
    top_stream = {k: v for k, v in values["stream"].items() if k != "name"}
    for i, entry in enumerate(raw):
        at = f"{CAMERAS}[{i}]"
        if not isinstance(entry, dict):
            err(at, f"expected the camera's settings (name:, stream:, source: ...), got {_show(entry)}")
            continue
        for key in entry:
            if str(key) not in CAMERA_KEYS:
                err(f"{at}.{key}", f"unknown key (valid keys here: {', '.join(CAMERA_KEYS)})")
        cam: dict[str, Any] = {"name": None, "share": 1.0}
        name = entry.get("name")
        if name is not None:
            if not isinstance(name, (str, int)) or isinstance(name, bool) or not _CAMERA_NAME.match(str(name)):
                err(f"{at}.name", f"{_show(name)} is not a camera name (1 to 64 letters, digits, '.', '_' and '-')")
            elif str(name) in names:
                err(f"{at}.name", f"{str(name)!r} is also the name of cameras[{names[str(name)]}]; names are unique")
            else:
                names[str(name)] = i
                cam["name"] = str(name)
        own = _parse_section(entry.get("stream"), f"{at}.stream", StreamConfig, err, kind="stream")
        cam["stream"] = top_stream | own
        if "tags" in own and "tags" in top_stream:  # a camera's tags add to (or change) the fleet's
            cam["stream"]["tags"] = tuple((dict(top_stream["tags"]) | dict(own["tags"])).items())
        if "name" not in cam["stream"] and not err.about(f"{at}.stream.name"):
            err(f"{at}.stream.name", "missing; each camera streams to its own Kinesis video stream "
                                     "(placeholders like {hostname}-{camera} make one file fit every device)")
        elif "name" in cam["stream"]:
            sname = cam["stream"]["name"]
            if sname in streams:
                err(f"{at}.stream.name", f"{sname!r} is also the stream of cameras[{streams[sname]}]; "
                                         "KVS takes one PutMedia connection per stream: give each camera its own")
            streams[sname] = i
        cam["source"] = _parse_section(entry.get("source"), f"{at}.source", SourceConfig, err, kind="source")
        src_raw = entry.get("source")
        if isinstance(src_raw, dict) and src_raw.get("audio") is not None:  # a camera's own microphone
            cam["source"]["audio"] = AudioConfig(**_parse_section(src_raw["audio"], f"{at}.source.audio", AudioConfig,
                                                                  err, kind="source.audio"))
        _check_source(cam["source"], f"{at}.source", err)
        cam["upload"] = values["upload"] | _parse_section(entry.get("upload"), f"{at}.upload", UploadConfig, err,
                                                          kind="upload")
        own_events = _parse_section(entry.get("events"), f"{at}.events", EventsConfig, err, kind="events")
        if "control_socket" in own_events:  # the trigger command finds a camera's socket from the top-level path
            err(f"{at}.events.control_socket", "set once, at the top level (events.control_socket); each camera "
                                               "listens on control.<name>.sock next to it")
        cam["events"] = values["events"] | own_events
        if "events" in entry or "upload" in entry:  # the top-level sections alone are checked once, below
            _events_checks({"upload": cam["upload"], "buffer": values["buffer"], "events": cam["events"]}, err,
                           prefix=f"{at}.")
        buffer = entry.get("buffer")
        if buffer is not None:
            if not isinstance(buffer, dict) or set(map(str, buffer)) - {"share"}:
                err(f"{at}.buffer", "only share: N (its weight in the split of buffer.max_bytes) goes here; "
                                    "buffer.path and buffer.max_bytes are set once, at the top level")
            elif buffer.get("share") is not None:
                try:
                    cam["share"] = float(_number(0.01, 1000)(buffer["share"], f"{at}.buffer.share"))
                except _Problem as p:
                    err(f"{at}.buffer.share", str(p.args[0]))
        out.append(cam)
    regions = [c["stream"].get("region", StreamConfig.region) for c in out]
    for i, region in enumerate(regions[1:], 1):  # one control-plane client (and one credentials provider) for all
        if region != regions[0]:
            err(f"{CAMERAS}[{i}].stream.region", f"{region} differs from cameras[0]'s {regions[0]}: the cameras of "
                                                  "one device stream to one region (set stream.region once)")
    return out


def _parse_section(raw: Any, section: str, cls: type, err: _Errors, kind: str | None = None) -> dict[str, Any]:
    """The valid keys of one section, parsed; problems reported through err. Missing keys are left out (defaults).
    kind: which section's keys these are when `section` is a path like cameras[1].source."""
    kind = kind or section
    out: dict[str, Any] = {}
    if raw is None:  # a section whose lines are all commented out
        return out
    if not isinstance(raw, dict):
        shown = _kind(raw) if section.startswith("aws") else _show(raw)  # never echo what may be a key
        err(section, f"expected settings under it (indented key: value lines), got {shown}")
        return out
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        k = str(key)
        path = f"{section}.{k}"
        if k not in fields or (kind, k) in (("aws", "iot"), ("source", "audio")):
            if k not in fields:
                err(path, _unknown_key(k, kind).replace(f"did you mean {kind}.", f"did you mean {section}."))
            continue
        f = fields[k]
        if value is None:
            if f.default is dataclasses.MISSING:
                continue  # a required key left empty: reported as missing by the cross checks
            if f.default is None:
                out[k] = None
            else:
                err(path, f"has no value; give one or remove the line to use the default "
                          f"({_default_shown(f'{kind}.{k}', f)})")
            continue
        try:
            out[k] = _PARSERS[f"{kind}.{k}"](value, path)
        except _Problem as p:
            err(path, str(p.args[0]))
    return out


def _default_shown(path: str, f: dataclasses.Field) -> str:
    d = f.default
    if path == "buffer.max_bytes":
        return _format_size(d)
    if path == "source.bitrate":
        return _format_rate(d)
    if isinstance(d, bool):
        return "true" if d else "false"
    return str(d)


def _unknown_top(key: str) -> str:
    close = difflib.get_close_matches(key.lower(), list(SECTIONS), n=1, cutoff=0.6)
    if close:
        return f"unknown section, did you mean {close[0]}?"
    match = _closest_key(key, exclude_section=None)
    if match:
        return f"unknown section, did you mean {match}? (settings go under their section)"
    return f"unknown section (valid sections: {', '.join(SECTIONS)})"


def _unknown_key(key: str, section: str) -> str:
    valid = [k for k in (_keys(SECTIONS[section]) if section in SECTIONS else _keys(SUBSECTIONS[section]))]
    # A key that exists word for word in another section was put under the wrong one.
    elsewhere = [p for p in ALL_KEYS if p.rsplit(".", 1)[1] == key and p.rsplit(".", 1)[0] != section]
    if elsewhere:
        return f"unknown key, did you mean {elsewhere[0]}?"
    close = difflib.get_close_matches(key.lower(), valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key, did you mean {section}.{close[0]}?"
    match = _closest_key(key, exclude_section=section)
    if match:
        return f"unknown key, did you mean {match}?"
    return f"unknown key (valid keys here: {', '.join(valid)})"


def _closest_key(key: str, exclude_section: str | None) -> str | None:
    by_leaf: dict[str, str] = {}
    for p in ALL_KEYS:
        sec, leaf = p.rsplit(".", 1)
        if sec != exclude_section:
            by_leaf.setdefault(leaf, p)
    close = difflib.get_close_matches(key.lower(), list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[close[0]] if close else None


def _cross_checks(v: dict[str, dict[str, Any]], iot_given: bool, err: _Errors, *, cameras: bool = False) -> None:
    stream, aws, source = v["stream"], v["aws"], v["source"]
    if cameras:
        if "name" in stream:
            err("stream.name", "with cameras:, each camera names its own stream (cameras[0].stream.name, ...); "
                               "remove it here")
        if source:
            err("source", "with cameras:, each camera has its own source (cameras[0].source, ...); move it there")
    elif "name" not in stream and not err.about("stream.name") and not err.about("stream"):
        err("stream.name", "missing; set it to the name of your Kinesis video stream")

    creds = aws.get("credentials", "default")
    if err.about("aws.credentials"):
        pass  # an unknown kind of credentials: which keys belong to it cannot be said
    elif creds == "static":
        for k in ("access_key_id", "secret_access_key"):
            if aws.get(k) is None and not err.about(f"aws.{k}"):
                err(f"aws.{k}", "required when aws.credentials is static")
    else:
        for k in ("access_key_id", "secret_access_key", "session_token"):
            if aws.get(k) is not None:
                err(f"aws.{k}", f"only used with aws.credentials: static (it is {creds}); "
                                "set aws.credentials: static or remove the key")
    if aws.get("profile") is not None and creds != "default" and not err.about("aws.credentials"):
        err("aws.profile", f"only used with aws.credentials: default (it is {creds})")
    if err.about("aws.credentials") or err.about("aws.iot"):
        pass
    elif creds == "iot":
        if not iot_given and not err.about("aws.iot"):
            err("aws.iot",
                "required when aws.credentials is iot: endpoint, role_alias, thing_name, cert_file, key_file")
        elif iot_given:
            iot = aws.get("iot", {})
            for k in ("endpoint", "role_alias", "thing_name", "cert_file", "key_file"):
                if iot.get(k) is None and not err.about(f"aws.iot.{k}"):
                    err(f"aws.iot.{k}", "required when aws.credentials is iot")
    elif iot_given:
        err("aws.iot", f"only used with aws.credentials: iot (it is {creds})")
    if not cameras:
        _check_source(source, "source", err)


def _check_source(source: dict[str, Any], at: str, err: _Errors) -> None:
    """The checks between one source block's keys; `at` is where it is ("source" or "cameras[1].source")."""
    stype = source.get("type", "picamera")
    uri = source.get("uri")
    if err.about(f"{at}.type"):
        return
    if stype in ("file", "rtsp", "v4l2"):
        if uri is None and not err.about(f"{at}.uri"):
            example = {"file": "/home/pi/video.mp4", "rtsp": "rtsp://192.168.1.20:554/stream1", "v4l2": "/dev/video0"}
            err(f"{at}.uri", f"required when {at}.type is {stype} (like {example[stype]})")
        elif uri is not None and stype == "rtsp" and not uri.lower().startswith(("rtsp://", "rtsps://")):
            err(f"{at}.uri", f"{_show(uri)} is not an RTSP address; it must start with rtsp:// or rtsps://")
    elif uri is not None and "type" in source:
        err(f"{at}.uri", f"not used by {at}.type {stype}; remove it or change {at}.type")
    elif uri is not None:
        err(f"{at}.uri", f"not used by {at}.type picamera (the default); set {at}.type (file, rtsp or v4l2)")
    if source.get("loop") and stype != "file":
        err(f"{at}.loop", f"only applies to {at}.type file (it is {stype})")
    for key in ("camera_model", "camera_port"):
        if source.get(key) is not None and stype != "picamera":
            err(f"{at}.{key}", f"only applies to {at}.type picamera (it is {stype})")
    audio = source.get("audio")
    if audio is not None and stype in ("file", "rtsp", "testpattern") and audio.device != "auto" \
            and not err.about(f"{at}.audio.device"):
        err(f"{at}.audio.device", f"{_show(audio.device)}: {at}.type {stype} brings its own sound; set it to auto")


def _events_checks(v: dict[str, dict[str, Any]], err: _Errors, prefix: str = "") -> None:
    mode = v["upload"].get("mode", UploadConfig.mode)
    if mode == "schedule" and not v["upload"].get("schedule") and not err.about(f"{prefix}upload.schedule") \
            and not err.about("upload.schedule"):
        err(f"{prefix}upload.schedule",
            'required when upload.mode is schedule, like [{cron: "0 * * * *", minutes: 10}]')
    retain = v["buffer"].get("retain_seconds")
    pre = v["events"].get("pre_seconds", EventsConfig.pre_seconds)
    if mode == "events" and retain is not None and retain < pre:
        err("buffer.retain_seconds", f"{_num(retain)} is shorter than {prefix}events.pre_seconds ({_num(pre)}): an "
                                     "event could not reach back that far; make it at least as long")


def _tag_room_check(metadata: MetadataConfig, v: dict[str, dict[str, Any]], cameras: list[dict[str, Any]] | None,
                    err: _Errors) -> None:
    """docs/kvs-putmedia.md section 3: "at most 10 metadata tags" per fragment (more is error 4009: the fragment is
    lost). In events mode an uploaded fragment carries the `metadata:` tags and the event's (media/event_tags.py)."""
    from kvs_edge.media.event_tags import EVENT_TAG, IMAGE_GENERATION, NOTIFICATION, event_tag_count
    from kvs_edge.media.mkv import MAX_TAGS_PER_FRAGMENT

    units = [(c["upload"], c["events"]) for c in cameras if "events" in c] if cameras else [(v["upload"], v["events"])]
    counts = [(event_tag_count(notify=e.get("notify", EventsConfig.notify),
                               images=e.get("images", EventsConfig.images)), e)
              for u, e in units if u.get("mode", UploadConfig.mode) == "events"]
    if not counts or not metadata.tags:
        return
    added, events = max(counts, key=lambda c: c[0])
    notify = events.get("notify", EventsConfig.notify)
    images = events.get("images", EventsConfig.images)
    if len(metadata.tags) + added <= MAX_TAGS_PER_FRAGMENT:
        return
    names = [f"{n} with {EVENT_TAG}" for n in [NOTIFICATION] * notify + [IMAGE_GENERATION] * images] or [EVENT_TAG]
    err("metadata", f"{len(metadata.tags)} tags ({', '.join(n for n, _ in metadata.tags)}) plus the event's "
                    f"{added} ({', '.join(names)}) make {len(metadata.tags) + added} on an event's fragment; KVS takes "
                    f"at most {MAX_TAGS_PER_FRAGMENT} (error 4009 loses the fragment): remove "
                    f"{len(metadata.tags) + added - MAX_TAGS_PER_FRAGMENT} from metadata: or turn off events.images/"
                    f"events.notify")


def _resolve_paths(v: dict[str, dict[str, Any]], base_dir: str, *, only_source: bool = False) -> None:
    def fix(section: dict[str, Any], key: str) -> None:
        p = section.get(key)
        if isinstance(p, str) and not os.path.isabs(os.path.expanduser(p)):
            section[key] = os.path.normpath(os.path.join(base_dir, p))
        elif isinstance(p, str):
            section[key] = os.path.expanduser(p)

    for path in () if only_source else _PATH_KEYS:
        sec, key = path.rsplit(".", 1)
        section = v["aws"].get("iot") if sec == "aws.iot" else v[sec]
        if isinstance(section, dict):
            fix(section, key)
    if v["source"].get("type") == "file":
        fix(v["source"], "uri")


def _check_files(v: dict[str, dict[str, Any]], err: _Errors, prefix: str = "") -> None:
    """Files that must exist where the configuration names them (certificates, CA bundles, a file source).
    prefix: where the source block is ("cameras[1]." for a camera entry)."""
    checks = [("aws.ca_bundle", v["aws"].get("ca_bundle"))]
    iot = v["aws"].get("iot")
    if isinstance(iot, dict) and v["aws"].get("credentials") == "iot":
        checks += [(f"aws.iot.{k}", iot.get(k)) for k in ("cert_file", "key_file", "ca_file")]
    if v["source"].get("type") == "file":
        checks.append((f"{prefix}source.uri", v["source"].get("uri")))
    for path, name in checks:
        if name is None or err.about(path):
            continue
        if os.path.isdir(name):
            err(path, f"{name} is a folder; give the file")
        elif not os.path.exists(name):
            err(path, f"{name}: no such file")


# --------------------------------------------------------------------------------------------------------------------
# For logs and check-config


def redacted(cfg: Config) -> dict:
    """The effective settings as plain data for logs: secrets replaced by "***" (unset ones stay None), camera
    passwords in source.uri masked."""
    d = dataclasses.asdict(cfg)
    for k in SECRET_KEYS:
        if d["aws"].get(k) is not None:
            d["aws"][k] = REDACTED
    d["source"]["uri"] = _safe_uri(d["source"]["uri"])
    for cam in d["cameras"]:
        cam["source"]["uri"] = _safe_uri(cam["source"]["uri"])
    return d


def config_warnings(cfg: Config, path: str | os.PathLike | None = None) -> list[str]:
    """Things that are valid but need the owner's attention, each "FILE: key.path: problem":
    the example's placeholders still in place, and credentials in a file that other users can read."""
    name = os.fspath(path) if path is not None else "<config>"
    out = []
    if cfg.stream.name == PLACEHOLDER:
        out.append(f"{name}: stream.name: still the example's placeholder {PLACEHOLDER}; "
                   "set it to the name of your Kinesis video stream")
    placeholder_keys = []
    if cfg.aws.credentials == "static":
        for k in ("access_key_id", "secret_access_key"):
            if getattr(cfg.aws, k) == PLACEHOLDER:
                placeholder_keys.append(k)
                out.append(f"{name}: aws.{k}: still the example's placeholder {PLACEHOLDER}; "
                           "put your IAM user's key here (or use aws.credentials: default or iot)")
        if path is not None and not placeholder_keys:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = 0
            if mode & stat.S_IROTH:
                out.append(f"{name}: aws.secret_access_key: the file is readable by every user on this machine; "
                           f"run: chmod o-r {name}")
    return out


def has_placeholders(cfg: Config) -> bool:
    """True while the example's placeholders are still there: `run` should refuse to start (nothing can stream)."""
    return cfg.stream.name == PLACEHOLDER or (
        cfg.aws.credentials == "static" and PLACEHOLDER in (cfg.aws.access_key_id, cfg.aws.secret_access_key)
    )
