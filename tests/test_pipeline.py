"""The whole appliance in-process (test pattern -> pipeline -> fragment log -> uploader) against the emulator."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kvs_edge.appliance import Appliance
from kvs_edge.config import parse_config
from kvs_edge.log import FragmentLog
from kvs_edge.media.frame import Frame
from kvs_edge.pipeline import Pipeline
from fakes.no_source import NoSource
from support.appliance import applied, archived_frames, config_dict, wait_until
from support.h264gen import make_h264


def _run_until_drained(app: Appliance, timeout: float = 30.0) -> None:
    app.pipeline.stop_capture()
    wait_until(lambda: app.fragment_log.stats().fragments == 0, timeout, "every fragment to be acknowledged")
    app.stop()


def _in_order(entries) -> bool:
    return all(a.last_frame_ms < b.first_frame_ms for a, b in zip(entries, entries[1:]))


@pytest.mark.timeout(120)
def test_outage_is_buffered_and_delivered_in_order(emulator, tmp_path):
    emulator.create_stream("cam")
    app = Appliance(parse_config(config_dict(emulator, tmp_path / "buf"), "<test>"))
    app.start()
    wait_until(lambda: applied(app).pipeline.counters.fragments_persisted >= 2, 30, "fragments persisted before the outage")
    emulator.faults.set_offline(True)
    before = len(emulator.archive("cam"))
    wait_until(lambda: applied(app).link.state == "offline", 20, "the outage to be noticed")
    # the log grows while KVS is unreachable: at least 8 s of video held
    wait_until(lambda: app.fragment_log.stats().backlog_ms >= 8000, 30, "a backlog to build up")
    assert len(emulator.archive("cam")) == before
    emulator.faults.set_offline(False)
    wait_until(lambda: applied(app).link.state == "connected", 30, "the uploader to reconnect")
    wait_until(lambda: app.fragment_log.stats().fragments <= 2, 60, "the backlog to drain (live again)")
    frames_captured = app.source.frames
    _run_until_drained(app)
    entries = emulator.archive("cam")
    assert _in_order(entries), "fragments archived out of order"
    assert archived_frames(emulator) == frames_captured == app.pipeline.counters.frames_in
    assert app.pipeline.counters.frames_dropped == 0
    assert emulator.stats("cam").error_acks == []
    assert emulator.stats("cam").max_concurrent == 1


class SteppingClock:
    """The kernel's clocks as a Pi sees them: a wall clock that is wrong until NTP fixes it, and can step."""

    def __init__(self, wall_error_s: float, synced: bool):
        self.error_ns = int(wall_error_s * 1e9)
        self.synced = synced

    def monotonic_ns(self):
        return time.monotonic_ns()

    def wall_ns(self):
        return time.time_ns() + self.error_ns

    def synchronized(self):
        return self.synced


@pytest.mark.timeout(120)
def test_video_captured_before_clock_sync_is_stamped_with_capture_time(emulator, tmp_path):
    emulator.create_stream("cam")
    clock = SteppingClock(wall_error_s=-86400 * 90, synced=False)  # fake-hwclock restored a time 90 days old
    cfg = parse_config(config_dict(emulator, tmp_path / "buf", time={"require_sync": True}), "<test>")
    app = Appliance(cfg, clock=clock)
    t0_ms = time.time() * 1000
    app.start()
    wait_until(lambda: app.pipeline.counters.fragments_written >= 4, 30, "fragments captured while unsynced")
    assert emulator.archive("cam") == []  # held, not uploaded with a wrong time
    clock.error_ns = 0
    clock.synced = True  # NTP synchronized
    wait_until(lambda: len(emulator.archive("cam")) >= 5, 30, "the held fragments to be uploaded")
    _run_until_drained(app)
    entries = emulator.archive("cam")
    assert _in_order(entries)
    # the first fragment is stamped with the moment it was captured (within the start-up time of the pipeline)
    assert t0_ms - 1000 <= entries[0].producer_ts_ms <= t0_ms + 3000
    gaps = [b.producer_ts_ms - a.producer_ts_ms for a, b in zip(entries, entries[1:])]
    assert all(800 <= g <= 1300 for g in gaps), gaps  # 1-s fragments, captured back to back


@pytest.mark.timeout(120)
def test_wall_clock_step_backwards_never_gives_4004(emulator, tmp_path):
    emulator.create_stream("cam")
    clock = SteppingClock(wall_error_s=0, synced=True)
    app = Appliance(parse_config(config_dict(emulator, tmp_path / "buf"), "<test>"), clock=clock)
    app.start()
    wait_until(lambda: applied(app).pipeline.counters.fragments_persisted >= 3, 30, "fragments before the step")
    clock.error_ns = -30 * 10**9  # NTP steps the clock 30 s back
    done = app.pipeline.counters.fragments_persisted
    wait_until(lambda: applied(app).pipeline.counters.fragments_persisted >= done + 3, 30, "fragments after the step")
    _run_until_drained(app)
    stats = emulator.stats("cam")
    assert stats.error_acks == []
    entries = emulator.archive("cam")
    assert _in_order(entries)
    assert archived_frames(emulator) == app.source.frames


class StalledDisk(FragmentLog):
    """The fragment log on a storage device that stops answering (an SD card in trouble): appends block."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.unstall = threading.Event()

    def append(self, data, timecode_ms):
        self.unstall.wait()
        return super().append(data, timecode_ms)


@pytest.mark.timeout(60)
def test_camera_thread_never_blocks_on_a_stalled_muxer(tmp_path):
    enc = make_h264(90, 160, 120, fps=30, gop=30)
    frag_log = StalledDisk(tmp_path / "log", 64 << 20)
    pipe = Pipeline(source=NoSource(), frag_log=frag_log, queue_frames=20, fragment_seconds=1)
    pipe.start()
    # the camera delivers 3 s of video while the disk is stalled: every emit returns (a block would hang the test)
    for i, au in enumerate(enc.units):
        pipe.emit(Frame(au.data, 1_000_000_000 + i * 33_333_333, au.key))
    c = pipe.counters
    assert c.frames_in == 90
    assert c.frames_dropped >= 90 - 20 - 2  # the queue (and the frame the muxer holds) is all that was kept
    frag_log.unstall.set()
    wait_until(lambda: pipe._queue.empty(), 10, "the muxer to catch up")
    # after the stall, frames resume at a key frame: the next key frame and its followers are kept
    kept_before = c.frames_in - c.frames_dropped
    for i in range(30):
        au = enc.units[60 + i]
        pipe.emit(Frame(au.data, 5_000_000_000 + i * 33_333_333, au.key))
        wait_until(lambda: pipe._queue.empty(), 10, "the muxer to take the frame")
    assert c.frames_in - c.frames_dropped == kept_before + 30
    pipe.stop()
    reopened = FragmentLog(tmp_path / "log", 64 << 20)
    first = reopened.next_fragment(None, timeout=0)
    assert first is not None and first.complete
    reopened.close()


@pytest.mark.timeout(60)
def test_buffer_cap_is_lowered_to_what_the_file_system_holds(tmp_path):
    """A Pi whose SD card has less room than buffer.max_bytes: the log's cap shrinks (so eviction, not ENOSPC,
    bounds a long outage). Needs a real small file system: a tmpfs mounted for the test (CI runs as root)."""
    import subprocess

    from kvs_edge.appliance import FREE_SPACE_RESERVE, buffer_cap

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs: run it as root, as CI does (sudo make test)")
    mnt = tmp_path / "card"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"mounting a tmpfs failed as root: {r.stderr.strip()}"
    try:
        cap = buffer_cap(mnt, 1 << 30)
        assert 128 * 2**20 - FREE_SPACE_RESERVE - 2**20 <= cap <= 128 * 2**20 - FREE_SPACE_RESERVE
        assert buffer_cap(mnt, 32 << 20) == 32 << 20  # a cap that fits is kept
        (mnt / "log").mkdir()
        (mnt / "log" / "seg").write_bytes(b"x" * (40 << 20))  # the log's own bytes count as room
        assert abs(buffer_cap(mnt, 1 << 30) - cap) <= 2**20
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(120)
def test_boot_without_network_captures_and_delivers_later(emulator, tmp_path):
    """KVS (control plane included) unreachable from the start: video is captured into the log, and sent once the
    network comes up."""
    emulator.create_stream("cam")
    emulator.faults.set_offline(True)
    app = Appliance(parse_config(config_dict(emulator, tmp_path / "buf"), "<test>"))
    app.start()
    wait_until(lambda: app.pipeline.counters.fragments_written >= 5, 30, "fragments captured while offline")
    assert applied(app).link.state == "offline" and app.link.last_error
    assert emulator.archive("cam") == []
    emulator.faults.set_offline(False)
    wait_until(lambda: applied(app).link.state == "connected", 60, "the link to come up")
    _run_until_drained(app)
    entries = emulator.archive("cam")
    assert _in_order(entries)
    assert archived_frames(emulator) == app.source.frames
