"""Configurations and waiting helpers for tests that run the whole appliance against the emulator."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY


def config_dict(emu, buffer_dir, *, stream="cam", fps=15, width=160, height=120, fragment_seconds=1,
                source=None, **sections) -> dict:
    """A complete configuration (YAML-shaped dict) streaming to `emu` with the test pattern."""
    data = {
        "stream": {"name": stream, "region": "us-east-1", "fragment_seconds": fragment_seconds},
        "aws": {"credentials": "static", "access_key_id": DEFAULT_ACCESS_KEY_ID,
                "secret_access_key": DEFAULT_SECRET_ACCESS_KEY, "endpoint_url": emu.url},
        "source": source or {"type": "testpattern", "width": width, "height": height, "fps": fps,
                             "bitrate": "300k", "profile": "baseline"},
        "buffer": {"path": str(buffer_dir), "max_bytes": "64MiB", "sync_seconds": 1},
        "time": {"require_sync": False},
        "upload": {"stale_seconds": 3, "connect_timeout_seconds": 2},
        "health": {"status_file": str(Path(buffer_dir) / "status.json"), "stall_seconds": 3},
    }
    if getattr(emu, "ca_file", None):
        data["aws"]["ca_bundle"] = emu.ca_file
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll predicate() until it returns something truthy; fail the test with `what` after timeout (a hang guard,
    not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def applied(app):
    """The supervisor's part, for tests that run an Appliance without a Supervisor: apply what the muxer and uploader
    threads posted (connection state, counters), then hand the appliance back for the check."""
    app.process_events()
    return app


def archived_frames(emu, stream="cam") -> int:
    return sum(e.frames for e in emu.archive(stream))
