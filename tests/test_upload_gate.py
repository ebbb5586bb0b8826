"""UploadGate over a real FragmentLog with an injected clock (no uploader): what it offers, what it expires, what a
restart remembers, and fragments of another boot."""

from kvs_edge.log.fragment_log import FragmentLog
from kvs_edge.upload_gate import UploadGate
from kvs_edge.upload_policy import Mode
from fakes.fake_clock import ScriptedClock


def Clock():
    return ScriptedClock(0, wall_offset_ms=1_800_000_000_000)


def fill(log, seconds, start_s=0):
    hid = log.add_header(b"header")
    for s in range(start_s, start_s + seconds):
        log.start_fragment(hid, s * 1000, b"cluster-%d" % s)
        log.append(b"frame", s * 1000 + 900)
        log.end_fragment()


def offered(gate):
    out, after = [], None
    while (info := gate.next_fragment(after, timeout=0)) is not None:
        out.append(info.first_ms // 1000)
        after = info.seq
    return out


def test_events_offer_expire_and_remember_across_a_restart(tmp_path):
    clock = Clock()
    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="b1")
    fill(log, 60)
    gate = UploadGate(log, mode=Mode.EVENTS, pre_seconds=3, post_seconds=2, retain_seconds=20, clock=clock,
                      boot_id="b1", folder=tmp_path / "log")
    clock.ms = 40_000
    assert offered(gate) == []
    gate.trigger("door")  # at 40 s: 37..42 s
    assert offered(gate) == [37, 38, 39, 40, 41, 42]
    for info in log.fragments():
        if 37 <= info.first_ms // 1000 <= 39:
            gate.release(info.seq)  # acknowledged: kept in the log, never offered again
    assert offered(gate) == [40, 41, 42]
    assert gate.stats.fragments_uploaded == 3
    # fragments before 40 - 20 s expired on the way; the uploaded ones stay until they are older than 20 s too
    kept = sorted(f.first_ms // 1000 for f in log.fragments())
    assert kept[0] == 20 and {37, 38, 39} <= set(kept)  # 19 s ended at 19.9 s < 40 - 20
    log.close()

    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="b1")  # a restart, same boot
    again = UploadGate(log, mode=Mode.EVENTS, pre_seconds=3, post_seconds=2, retain_seconds=20, clock=clock,
                       boot_id="b1", folder=tmp_path / "log")
    assert offered(again) == [40, 41, 42]  # the event is remembered, the uploaded part is not resent
    clock.ms = 70_000
    assert offered(again) == [40, 41, 42]  # event video waits for its upload, whatever its age
    kept = sorted(f.first_ms // 1000 for f in log.fragments())
    assert 37 not in kept and 40 in kept  # uploaded and older than 20 s: gone
    log.close()


def test_another_boot_is_placed_by_the_time_base_or_kept(tmp_path):
    clock = Clock()
    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="old")
    fill(log, 10)
    log.close()
    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="new")
    known = {"offset": None}
    gate = UploadGate(log, mode=Mode.EVENTS, pre_seconds=5, post_seconds=0, retain_seconds=60, clock=clock,
                      boot_id="new", other_boot_ms=lambda info: None if known["offset"] is None
                      else info.first_ms + known["offset"])
    clock.ms = 100_000
    gate.trigger("x", at_ms=100_000)
    assert offered(gate) == []  # not placeable yet: kept, never expired
    assert len(log.fragments()) == 10
    known["offset"] = 92_000  # the old boot's 0..9 s were this boot's 92..101 s
    assert offered(gate) == [3, 4, 5, 6, 7, 8]  # first_ms of the old boot; 95..100 s on this one
    log.close()


def test_schedule_window_by_the_minute(tmp_path):
    from kvs_edge.schedule import Window, parse_cron, zone
    clock = Clock()
    log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="b")
    fill(log, 5)
    minute = (1_800_000_000_000 // 60_000 + 2) % 60  # opens 2 minutes after the clock's start (wall)
    gate = UploadGate(log, mode=Mode.SCHEDULE, pre_seconds=0, post_seconds=0, retain_seconds=None, clock=clock,
                      boot_id="b", windows=(Window(parse_cron(f"{minute} * * * *"), 1),), tz=zone("UTC"),
                      synchronized=lambda: synced)
    synced = True
    start_minute_ms = 1_800_000_000_000 // 60_000 * 60_000 - 1_800_000_000_000
    clock.ms = start_minute_ms + 60_000
    assert offered(gate) == [] and gate.paused()
    clock.ms = start_minute_ms + 120_000
    synced = False
    assert offered(gate) == []  # never before the clock is synchronized
    synced = True
    assert offered(gate) == [0, 1, 2, 3, 4]
    clock.ms = start_minute_ms + 180_000
    assert offered(gate) == []
    log.close()
