"""Where the official SDK's test streams are: tests/data/kvs-sdk/ in the repository, or ../shared/testdata/kvs-sdk/
next to the checkout. A test needing them skips (saying where to put them) when neither exists."""

from __future__ import annotations

from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
CANDIDATES = (_TESTS / "data" / "kvs-sdk", _TESTS.parents[1] / "shared" / "testdata" / "kvs-sdk")


def sdk_dir() -> Path | None:
    return next((d for d in CANDIDATES if (d / "ref.mkv").is_file()), None)


def sdk_file(name: str) -> Path:
    d = sdk_dir()
    if d is None:
        pytest.skip("the official SDK's test streams are missing: put them in tests/data/kvs-sdk/ "
                    "(or ../shared/testdata/kvs-sdk/)")
    return d / name
