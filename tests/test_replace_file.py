"""replace_file.replacing: the destination is the old file or the whole new one, never a part; no litter on failure."""

import os
import stat

import pytest

from kvs_edge.replace_file import replacing


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(dst) as tmp, open(tmp, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("the writer failed")
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_complete_write_replaces_with_the_mode_asked(tmp_path):
    dst = tmp_path / "status.json"
    dst.write_bytes(b"old")
    with replacing(dst, mode=0o640, suffix=".json") as tmp:
        assert tmp.endswith(".json") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"new")
        assert dst.read_bytes() == b"old"  # not before the block ends
    assert dst.read_bytes() == b"new"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
