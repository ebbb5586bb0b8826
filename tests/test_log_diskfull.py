"""A full or read-only buffer disk: the log switches to memory without losing what the reader needs, and back.

A REAL small file system (tmpfs mounted for the test, we run as root in CI) is used when mounting is possible; on a
machine where it is not, the same test runs with the fault injected at the OS boundary (segment_writer._write raising
the errno), which is the only place where the log meets the disk's answer.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import tempfile

import pytest

from kvs_edge.log import FragmentLog
from kvs_edge.log import segment_writer as fl_mod

from test_log import HEADER_A, FakeClock, backlog, frames_of, read_all, seg_files


class SmallDisk:
    """A small file system at .path: a real tmpfs if we can mount one, else a switchable injected fault."""

    def __init__(self, monkeypatch, size: str = "192k") -> None:
        self.root = tempfile.mkdtemp(prefix="kvs-log-fs-")
        # KVS_TEST_NO_MOUNT=1 runs the fallback (injected fault) even where mounting works
        self.real = not os.environ.get("KVS_TEST_NO_MOUNT") and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", self.root],
                                   capture_output=True).returncode == 0
        self.path = os.path.join(self.root, "buffer")
        self.fault: int | None = None
        if True:  # the injection point exists in both cases; it only fires when .fault is set
            real_write = fl_mod._write

            def write(fd, data):
                if self.fault is not None:
                    raise OSError(self.fault, os.strerror(self.fault))
                return real_write(fd, data)

            monkeypatch.setattr(fl_mod, "_write", write)

    def fill(self, log: FragmentLog) -> None:
        """Make the next writes fail with ENOSPC (a tmpfs fills up by itself as the log grows)."""
        if not self.real:
            self.fault = errno.ENOSPC

    def free(self) -> None:
        if not self.real:
            self.fault = None

    def read_only(self, on: bool) -> None:
        """EROFS on write. Always injected: Linux refuses to remount a file system read-only while a file on it is
        open for writing (EBUSY), which is exactly the state of the log; the kernel's own errors=remount-ro can,
        a test cannot."""
        self.fault = errno.EROFS if on else None

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", self.root], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def disk(monkeypatch):
    d = SmallDisk(monkeypatch)
    try:
        yield d
    finally:
        d.close()


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_disk_full_switches_to_memory_loses_nothing_and_comes_back(disk, caplog):
    caplog.set_level(logging.INFO, logger="kvs_edge.log")
    clock = FakeClock()
    # max_bytes far above what the 192 KiB file system holds: the disk fills before the cap
    log = FragmentLog(disk.path, 64 << 20, segment_bytes=16 * 1024, disk_retry_s=30, clock=clock)
    hid = log.add_header(HEADER_A)
    contents: dict[int, bytes] = {}
    switched_at = None
    for i in range(400):
        if i == 5:
            disk.fill(log)
        frames = frames_of(i, n=8, size=2000)
        seq = log.start_fragment(hid, 2000 * i, b"C%d" % i)
        for k, fr in enumerate(frames):
            log.append(fr, 2000 * i + 33 * k)
            if switched_at is None and log.stats().mode == "memory":
                switched_at = (seq, k)  # the disk filled up in the middle of this fragment
        log.end_fragment()
        contents[seq] = b"C%d" % i + b"".join(frames)
        clock.t += 2
        if switched_at is not None and seq >= switched_at[0] + 4:
            break
    st = log.stats()
    assert switched_at is not None and st.mode == "memory"
    assert st.last_error.startswith(f"buffer disk full at {disk.path}: streaming live from memory")
    assert len(messages(caplog, "buffer disk full")) == 1  # one line, not one per frame
    assert st.evicted_fragments == 0
    # the reader gets every fragment, in order and intact: those on disk, the one cut by the full disk, those in memory
    assert backlog(log) == sorted(contents)
    for seq, data in contents.items():
        assert read_all(log, seq) == data
    if disk.real:  # the kernel said ENOSPC when the 192 KiB tmpfs was full, not before
        assert sum(len(d) for s, d in contents.items() if s < switched_at[0]) > 100 * 1024

    # the network comes back: everything is acknowledged, segments are deleted, space returns
    for seq in sorted(contents):
        log.release(seq)
    disk.free()
    assert seg_files(disk.path) == []
    seq = log.start_fragment(hid, 900_000, b"C")  # not yet time to retry: stays in memory
    log.append(b"frame", 900_001)
    log.end_fragment()
    assert log.stats().mode == "memory"
    log.release(seq)
    clock.t += 30
    resumed = [log.start_fragment(hid, 1_000_000 + i, b"R%d" % i) for i in range(1)]
    log.append(b"after", 1_000_001)
    log.end_fragment()
    assert log.stats().mode == "disk"
    assert len(messages(caplog, "writable again")) == 1
    assert len(seg_files(disk.path)) == 1
    log.close()
    # what was written after the switch back is on disk: a restart finds it
    log = FragmentLog(disk.path, 64 << 20)
    assert backlog(log) == resumed
    assert read_all(log, resumed[0]) == b"R0after"
    log.close()


def test_read_only_file_system_mid_stream(disk, caplog):
    caplog.set_level(logging.INFO, logger="kvs_edge.log")
    clock = FakeClock()
    log = FragmentLog(disk.path, 64 << 20, segment_bytes=16 * 1024, disk_retry_s=5, clock=clock)
    hid = log.add_header(HEADER_A)
    contents = {}

    def one(i):
        frames = frames_of(i, n=3, size=500)
        seq = log.start_fragment(hid, 2000 * i, b"C")
        for fr in frames:
            log.append(fr, 2000 * i)
        log.end_fragment()
        contents[seq] = b"C" + b"".join(frames)
        clock.t += 2

    for i in range(3):
        one(i)
    disk.read_only(True)
    try:
        for i in range(3, 6):
            one(i)
        st = log.stats()
        assert st.mode == "memory" and "is not writable" in st.last_error
        assert len(messages(caplog, "is not writable")) == 1
        assert backlog(log) == sorted(contents)
        for seq, data in contents.items():
            assert read_all(log, seq) == data  # disk fragments are still readable, memory ones too
        clock.t += 5
        one(6)  # the retry fails: still memory, no new line
        assert log.stats().mode == "memory" and len(messages(caplog, "is not writable")) == 1
    finally:
        disk.read_only(False)
    clock.t += 5
    one(7)
    assert log.stats().mode == "disk"
    for seq, data in contents.items():
        assert read_all(log, seq) == data
    log.close()


def test_memory_mode_is_bounded_and_drops_oldest_whole_fragments(tmp_path, caplog):
    """A buffer path that cannot be created at all (a file is in the way): memory from the start, bounded."""
    caplog.set_level(logging.WARNING, logger="kvs_edge.log")
    (tmp_path / "file").write_bytes(b"not a directory")
    log = FragmentLog(tmp_path / "file" / "buffer", 64 << 20, memory_max_bytes=40_000)
    assert log.stats().mode == "memory"
    assert messages(caplog, "streaming live from memory")[0].startswith(
        f"buffer at {tmp_path / 'file' / 'buffer'} failed (Not a directory)")
    hid = log.add_header(HEADER_A)
    contents = {}
    for i in range(40):
        frames = frames_of(i, n=5, size=1500)
        seq = log.start_fragment(hid, 2000 * i, b"C")
        for fr in frames:
            log.append(fr, 2000 * i)
        log.end_fragment()
        contents[seq] = b"C" + b"".join(frames)
    st = log.stats()
    kept = backlog(log)
    assert st.bytes <= 40_000 and st.evicted_fragments == 40 - len(kept) > 0
    assert kept == sorted(contents)[-len(kept):]  # the newest are kept
    for seq in kept:
        assert read_all(log, seq) == contents[seq]
    log.close()
