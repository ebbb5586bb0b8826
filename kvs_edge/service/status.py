"""The status file: what `kvs-edge run` writes about itself and `kvs-edge status` reads.

Schema (docs/internals.md, "Status file"), version 1:
  {"version": 1, "pid", "updated_at", "started_at", "stream", "state", "camera": {"state", "frames", "last_frame_age_s"},
   "audio": {"state": off|ok|missing, "frames", "written", "dropped"},
   "connection": {"state", "since"}, "backlog": {"fragments", "bytes", "seconds"}, "last_persisted_age_s",
   "fragments_persisted", "frames_dropped", "fragments_evicted", "clock_synced", "last_error",
   "latency_s": {"count", "p50", "p99", "max"}}
Times are epoch seconds; ages are seconds as of `updated_at`. `last_error` is the error behind the current trouble and is
set back to null once things work again.

`write_status` and `read_status` do the I/O; `assess` and `format_human` are pure (the caller passes `now`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kvs_edge.replace_file import replacing

SCHEMA_VERSION = 1
STALE_AFTER_S = 30.0  # the service rewrites the file every few seconds; older means it is gone or hung
NO_PERSISTED_AFTER_S = 60.0  # frames flow but nothing was acknowledged for this long


class StatusError(ValueError):
    """The status file exists but cannot be used."""


def write_status(path: str | os.PathLike[str], status: dict[str, Any]) -> None:
    """Replace the file atomically (a reader sees the old or the new content, never half), mode 0644.

    No fsync: the file is rewritten every few seconds and describes the running process; after a power cut it is
    stale anyway, and syncing would only wear the SD card.
    """
    path = Path(path)
    data = json.dumps(status, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"
    with replacing(path, mode=0o644) as tmp, open(tmp, "wb") as f:
        f.write(data)


def read_status(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The status dict. FileNotFoundError when there is no file (the service is not running);
    StatusError when it is not a status file."""
    raw = Path(path).read_bytes()
    try:
        status = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatusError(f"{path}: not a kvs-edge status file ({exc})") from None
    if not isinstance(status, dict):
        raise StatusError(f"{path}: not a kvs-edge status file (a JSON object was expected)")
    return status


def remove_status(path: str | os.PathLike[str]) -> None:
    """Delete the status file (missing is fine). The service does not call it: on a clean exit `run` writes a last
    status with state "stopping", and `kvs-edge status` then finds its pid gone and reports it not running."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def pid_alive(pid: object) -> bool | None:
    """Whether process `pid` exists (None when unknown). Not proof that it is kvs-edge, only that it is not gone."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the service user)
    except OSError:
        return None
    return True


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _section(status: dict[str, Any], key: str) -> dict[str, Any]:
    value = status.get(key)
    return value if isinstance(value, dict) else {}


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def assess(status: dict[str, Any], now: float, *, process_alive: bool | None = None) -> tuple[bool, list[str]]:
    """(healthy, reasons): each reason is one line saying what is wrong.

    now: epoch seconds. process_alive: whether the pid in the file still exists (None: not checked).
    """
    reasons: list[str] = []
    if status.get("version") != SCHEMA_VERSION:
        reasons.append(f"unknown status file version {status.get('version')!r}: is kvs-edge status older than the service?")
        return False, reasons

    updated = _num(status.get("updated_at"))
    age = now - updated if updated is not None else None
    if process_alive is False:
        reasons.append(f"the service process {status.get('pid')} is gone: see `journalctl -u kvs-edge`")
        return False, reasons
    if age is None or age > STALE_AFTER_S:
        when = "never" if age is None else f"{_span(age)} ago"
        reasons.append(f"status last updated {when}: the service is not running or hangs; see `journalctl -u kvs-edge`")
        return False, reasons
    late = max(0.0, age)  # ages in the file were measured at updated_at

    state = status.get("state")
    camera = _section(status, "camera")
    connection = _section(status, "connection")

    if state == "stopping":
        reasons.append("the service is stopping")
    if camera.get("state") == "stalled":
        frame_age = _num(camera.get("last_frame_age_s"))
        since = f" for {_span(frame_age + late)}" if frame_age is not None else ""
        reasons.append(f"camera stalled: no frame{since}; check the ribbon cable and power")
    if state == "waiting_for_clock":
        reasons.append("waiting for the clock to synchronize (time.require_sync): check NTP, `timedatectl`")
    if connection.get("state") == "offline":
        since = _num(connection.get("since"))
        how_long = f" for {_span(now - since)}" if since is not None else ""
        reasons.append(f"offline{how_long}: video is kept in the local buffer until KVS is reachable")

    frames_flow = camera.get("state") == "ok"
    persisted_age = _num(status.get("last_persisted_age_s"))
    started = _num(status.get("started_at"))
    if frames_flow and state not in ("waiting_for_clock", "recording"):  # recording: nothing is meant to upload
        if persisted_age is not None and persisted_age + late > NO_PERSISTED_AFTER_S:
            reasons.append(f"no fragment PERSISTED by KVS for {_span(persisted_age + late)} while frames flow")
        elif persisted_age is None and started is not None and now - started > NO_PERSISTED_AFTER_S:
            reasons.append(f"no fragment PERSISTED by KVS since the start {_span(now - started)} ago")

    for cam in status.get("cameras") or []:  # several cameras: each one not delivering frames is named
        if isinstance(cam, dict) and cam.get("state") not in ("ok", "starting"):
            reasons.append(f"camera {cam.get('name')} (stream {cam.get('stream')}) {cam.get('state')}"
                           + (f": {cam['last_error']}" if cam.get("last_error") else ""))

    last_error = status.get("last_error")
    if last_error:
        reasons.append(f"last error: {' '.join(str(last_error).split())}")
    return not reasons, reasons


def format_human(status: dict[str, Any], now: float, *, process_alive: bool | None = None) -> str:
    """A few lines for a person at a terminal."""
    healthy, reasons = assess(status, now, process_alive=process_alive)
    camera = _section(status, "camera")
    connection = _section(status, "connection")
    backlog = _section(status, "backlog")

    def age_text(value: object) -> str:
        n = _num(value)
        return "never" if n is None else f"{_span(n)} ago"

    started = _num(status.get("started_at"))
    updated = _num(status.get("updated_at"))
    since = _num(connection.get("since"))
    lines = [
        f"kvs-edge: {'healthy' if healthy else 'UNHEALTHY'} ({status.get('state', 'unknown')})",
        f"  stream:        {status.get('stream', '?')}",
        f"  pid:           {status.get('pid', '?')}, up {_span(now - started) if started is not None else '?'}, "
        f"status written {_span(now - updated) + ' ago' if updated is not None else 'never'}",
        f"  camera:        {camera.get('state', '?')}, {camera.get('frames', 0)} frames, "
        f"last frame {age_text(camera.get('last_frame_age_s'))}, {status.get('frames_dropped', 0)} dropped",
        f"  connection:    {connection.get('state', '?')}"
        + (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since is not None else ""),
        f"  backlog:       {backlog.get('fragments', 0)} fragments, {_bytes(backlog.get('bytes'))}, "
        f"{_num(backlog.get('seconds')) or 0.0:.1f} s of video",
        f"  persisted:     {status.get('fragments_persisted', 0)} fragments, last {age_text(status.get('last_persisted_age_s'))}",
        f"  evicted:       {status.get('fragments_evicted', 0)} fragments (buffer full)",
        f"  clock synced:  {'yes' if status.get('clock_synced') else 'no'}",
    ]
    audio = _section(status, "audio")
    if audio.get("state") not in (None, "off"):
        lines.insert(5, f"  audio:         {audio.get('state')}, {audio.get('frames', 0)} frames, "
                        f"{audio.get('dropped', 0)} dropped")
    for cam in status.get("cameras") or []:
        if isinstance(cam, dict):
            lines.append(f"  camera {cam.get('name')}: {cam.get('state')}, stream {cam.get('stream')}, "
                         f"{cam.get('frames', 0)} frames, {cam.get('connection')}, "
                         f"{cam.get('fragments_persisted', 0)} persisted, "
                         f"backlog {(cam.get('backlog') or {}).get('fragments', 0)} fragments")
    upload = _section(status, "upload")
    if upload.get("mode") not in (None, "continuous"):
        retained = _num(upload.get("retained_s"))
        lines.append(f"  upload:        {upload['mode']}, {_span(retained) if retained is not None else 'nothing'} "
                     f"retained, {upload.get('events', 0)} events{' (one active)' if upload.get('event_active') else ''}"
                     f", {_bytes(upload.get('bytes_uploaded'))} uploaded of {_bytes(upload.get('bytes_recorded'))} "
                     "recorded")
    if status.get("last_error"):
        lines.append(f"  last error:    {' '.join(str(status['last_error']).split())}")
    lines.extend(f"  ! {reason}" for reason in reasons if not reason.startswith("last error:"))  # shown above
    return "\n".join(lines)


def _bytes(value: object) -> str:
    n = _num(value) or 0.0
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"
