"""The official SDK's sample streams live in the repository (tests/data/kvs-sdk/): each file matches its README checksum."""

from __future__ import annotations

import hashlib
import re

from support.h264gen import SDK_DIR


def _listed() -> dict[str, str]:
    text = (SDK_DIR / "README.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def test_every_sdk_file_is_listed_with_its_sha256_and_matches_it():
    listed = _listed()
    present = {p.name for p in SDK_DIR.iterdir() if p.name != "README.md"}
    assert present and set(listed) == present
    for name, digest in listed.items():
        assert hashlib.sha256((SDK_DIR / name).read_bytes()).hexdigest() == digest, name
