"""KvsOutput (kvs_edge.picamera2) in a Picamera2 script with the REAL picamera2 and libcamera's virtual camera,
streaming to the emulator: every fragment PERSISTED. The build is `make picamera-test`'s cache; without it this file
skips (tests/test_sources_picamera.py and tests/test_examples.py cover KvsOutput with the fake)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "tools" / "real-picamera" / "build.sh"
CHILD = REPO / "tests" / "support" / "real_picamera_kvsoutput.py"


def cache_dir() -> Path:
    out = subprocess.run(["bash", str(BUILD), "--dir"], capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip())


CACHE = cache_dir()
if not (CACHE / "ready").exists():
    if os.environ.get("KVS_EDGE_REQUIRE_REAL_PICAMERA"):
        raise RuntimeError(f"the real-Picamera2 build is missing at {CACHE} although make picamera-test built it")
    pytest.skip(f"the real-Picamera2 build is absent ({CACHE}): run `make picamera-test` to build it and run this",
                allow_module_level=True)


def test_kvsoutput_with_the_real_picamera2_streams_every_fragment(emulator, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    env.update(LD_LIBRARY_PATH=str(CACHE / "prefix" / "lib"), LIBCAMERA_LOG_LEVELS="*:WARN",
               AWS_ACCESS_KEY_ID=DEFAULT_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=DEFAULT_SECRET_ACCESS_KEY,
               AWS_ENDPOINT_URL=emulator.url, AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    proc = subprocess.run([str(CACHE / "venv" / "bin" / "python"), str(CHILD), str(tmp_path), "realpi", "4"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["output_is_picamera2_output"] and r["refused"] == 0
    assert r["frames"] > 60 and r["fragments"] >= 3
    assert r["persisted"] == r["fragments"] and r["backlog"] == 0 and r["skipped"] == 0
    assert len(emulator.archive("realpi")) == r["fragments"]
    print(f"\n[real picamera2] KvsOutput: {r['frames']} frames, {r['persisted']} fragments PERSISTED", file=sys.stderr)
