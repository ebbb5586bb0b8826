"""Events and schedule modes end to end: a real fragment log -> UploadGate -> Uploader -> the KVS emulator (loopback).

The recording runs accelerated: frames are stamped on a scripted recording clock (epoch ms, so FixedOffset(0) is the
time base) and written about 10x faster than real time while the uploader runs; the gate reads the same scripted
clock, so "20 s into the recording" is exact whatever the machine's load.
"""

from __future__ import annotations

import threading
import time

import pytest
from botocore.credentials import Credentials

from kvs_edge.clock import FixedOffset
from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from kvs_edge.kvs.control import ControlPlane, DataEndpoint
from kvs_edge.kvs.uploader import Uploader
from kvs_edge.log.fragment_log import FragmentLog
from kvs_edge.media.fragment_tags import FragmentTags
from kvs_edge.media.event_tags import EVENT_TAG, IMAGE_GENERATION, NOTIFICATION
from kvs_edge.media.fragmenter import Fragmenter
from kvs_edge.recorder import Recorder
from kvs_edge.schedule import Window, parse_cron, zone
from kvs_edge.upload_gate import UploadGate, read_events
from kvs_edge.upload_policy import Mode
from fakes.fake_clock import ScriptedClock  # monotonic and wall: the same epoch milliseconds here
from support.h264gen import make_h264

FPS = 10
SECONDS = 60
STREAM = "cam"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def video():
    return make_h264(frames=SECONDS * FPS, width=160, height=120, fps=FPS, gop=FPS)


class Rig:
    def __init__(self, tmp_path, emulator, **gate_kw):
        self.emu = emulator
        emulator.create_stream(STREAM, retention_hours=24)
        creds = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
        control = ControlPlane("us-east-1", creds, endpoint_url=emulator.url)
        self.start_ms = (int(time.time() * 1000) - 600_000) // 1000 * 1000  # 10 minutes ago
        self.clock = ScriptedClock(self.start_ms)
        self.folder = tmp_path / "log"
        self.log = FragmentLog(self.folder, 64 << 20, boot_id="b1", sync_interval_s=60)
        self.gate = UploadGate(self.log, clock=self.clock, boot_id="b1", folder=self.folder, **gate_kw)
        self.uploader = Uploader(self.gate, stream_name=STREAM, region="us-east-1",
                                 endpoint=DataEndpoint(control, STREAM), credentials=creds, timebase=FixedOffset(0),
                                 stale_after_s=5.0, backoff_base_s=0.05, backoff_cap_s=0.4)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.uploader.run, args=(self.stop,), daemon=True)

    def record(self, video, at=None, pace_s=0.008, tags=None):
        """Write the video frame by frame on the scripted clock; at: {second: callable} run when reached; tags: the
        recorder's static fragment tags (the `metadata:` block)."""
        at = dict(at or {})
        fragmenter, recorder = Fragmenter(target_ms=1000), Recorder(self.log, tags)
        for i, unit in enumerate(video.units):
            ms = self.start_ms + i * 1000 // FPS
            self.clock.ms = ms
            if i % FPS == 0 and i // FPS in at:
                at.pop(i // FPS)()
            recorder.apply(fragmenter.push(unit.data, ms, unit.key))
            time.sleep(pace_s)
        recorder.apply(fragmenter.close())

    def settle(self, timeout=60.0):
        """Wait until the archive stops growing and the gate selects nothing (a hang guard, not a timing check)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = len(self.emu.archive(STREAM))
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > 2.0 and self.gate.paused():
                return
            time.sleep(0.1)
        raise AssertionError("the upload did not settle")

    def close(self):
        self.stop.set()
        self.log.wake()
        self.thread.join(10)
        self.log.close()

    def received_seconds(self):
        return sorted((e.producer_ts_ms - self.start_ms) / 1000 for e in self.emu.archive(STREAM))


def test_events_mode_uploads_pre_to_post_of_one_trigger_and_nothing_else(tmp_path, emulator, video):
    rig = Rig(tmp_path, emulator, mode=Mode.EVENTS, pre_seconds=5, post_seconds=5, retain_seconds=None,
              notify=True, images=True)
    rig.thread.start()
    try:
        rig.record(video, at={20: lambda: rig.gate.trigger("door")})
        rig.settle()
    finally:
        rig.close()
    got = rig.received_seconds()
    # 1-s fragments: video from 15 s to 25 s is fragments 15..25, +- one fragment at each edge
    assert got, "nothing was uploaded"
    assert 14 <= got[0] <= 15 and 24 <= got[-1] <= 26, got
    assert got == [float(s) for s in range(int(got[0]), int(got[-1]) + 1)], "a gap or a duplicate"
    entries = rig.emu.archive(STREAM)
    assert all(f"{EVENT_TAG}=door" in e.tags for e in entries)
    notified = [e for e in entries if f"{NOTIFICATION}=" in e.tags]
    assert len(notified) == 1 and (notified[0].producer_ts_ms - rig.start_ms) // 1000 == 20
    assert f"{IMAGE_GENERATION}=" in notified[0].tags
    # everything stays recorded in the log, the uploaded fragments too: the DVR; a restart does not resend them
    reopened = FragmentLog(rig.folder, 64 << 20)
    kept = {(f.first_ms - rig.start_ms) // 1000 for f in reopened.fragments()}
    assert kept == set(range(SECONDS))
    again = UploadGate(reopened, mode=Mode.EVENTS, pre_seconds=5, post_seconds=5, retain_seconds=None,
                       clock=rig.clock, boot_id="b1", folder=rig.folder)
    assert again.next_fragment(None, timeout=0) is None  # the event's fragments are known to be uploaded
    reopened.close()
    assert [e.label for e in read_events(rig.folder)] == ["door"]
    assert rig.gate.stats.bytes_uploaded < rig.gate.stats.bytes_recorded / 3


def test_event_tags_take_only_the_room_the_static_tags_leave(tmp_path, emulator, video):
    """8 `metadata:` tags in the log + an event's notification and image tags (4) would be 12: error 4009 and the
    fragment lost. The gate cuts the event's tags to the 2 left: every fragment arrives, the first with its
    notification, none with more than 10 tags."""
    rig = Rig(tmp_path, emulator, mode=Mode.EVENTS, pre_seconds=2, post_seconds=2, retain_seconds=None,
              notify=True, images=True)
    static = {f"site{i}": f"v{i}" for i in range(8)}
    rig.thread.start()
    try:
        rig.record(video, at={20: lambda: rig.gate.trigger("door")}, tags=FragmentTags(static))
        rig.settle()
    finally:
        rig.close()
    got = rig.received_seconds()
    assert got and 17 <= got[0] <= 18 and 22 <= got[-1] <= 24, got
    assert got == [float(s) for s in range(int(got[0]), int(got[-1]) + 1)], "a fragment was lost (4009?)"
    entries = rig.emu.archive(STREAM)
    assert all(len(e.tags) <= 10 and "site7=v7" in e.tags and f"{EVENT_TAG}=door" in e.tags for e in entries)
    notified = [e for e in entries if f"{NOTIFICATION}=" in e.tags]
    assert len(notified) == 1 and len(notified[0].tags) == 10
    assert not any(f"{IMAGE_GENERATION}=" in e.tags for e in entries)


def test_events_mode_without_a_trigger_opens_no_connection_and_expires_by_retention(tmp_path, emulator, video):
    rig = Rig(tmp_path, emulator, mode=Mode.EVENTS, pre_seconds=5, post_seconds=5, retain_seconds=30)
    rig.thread.start()
    try:
        rig.record(video)
        time.sleep(1.0)
        rig.gate.paused()  # one more look by the gate after the last fragment
    finally:
        rig.close()
    assert rig.emu.archive(STREAM) == []
    assert rig.uploader.stats.connections == 0
    kept = sorted((f.first_ms - rig.start_ms) // 1000 for f in FragmentLog(rig.folder, 64 << 20).fragments())
    assert kept and kept[0] >= SECONDS - 1 - 30 - 1, kept  # older than 30 s before the last frame: gone


def test_schedule_window_drains_the_backlog_with_nothing_lost_or_duplicated(tmp_path, emulator, video):
    # a window of 1 minute every hour at minute M, where M is 40 s into the recording on the scripted wall clock
    rig = Rig(tmp_path, emulator, mode=Mode.SCHEDULE, pre_seconds=0, post_seconds=0, retain_seconds=None,
              windows=(), tz=zone("UTC"))
    rig.start_ms = rig.start_ms // 60_000 * 60_000 - 30_000  # a minute starts 30 s into the recording
    rig.clock.ms = rig.start_ms
    opens_at_s = 30
    minute = (rig.start_ms // 1000 + opens_at_s) // 60 % 60
    rig.gate.windows = (Window(parse_cron(f"{minute} * * * *"), 1),)
    rig.thread.start()
    seen_before_window = []
    try:
        rig.record(video, at={opens_at_s - 1: lambda: seen_before_window.append(len(rig.emu.archive(STREAM)))})
        rig.settle()
    finally:
        rig.close()
    assert seen_before_window == [0]
    got = rig.received_seconds()
    # everything recorded before the window and during it, each once, in order
    assert got == [float(s) for s in range(0, len(got))], got
    assert len(got) >= opens_at_s
