"""The uploader -> supervisor boundary: events through the pipeline's queue, applied on one thread.

The long-outage drain: more than 4096 fragments unacknowledged (the capture times kept for the latency figure), then
the uploader persisting them while the muxer keeps writing live video. Before the queue, the muxer (evicting the
oldest capture time) and the uploader (popping persisted ones) changed one dict from two threads, and the muxer
thread could die on `next(iter(...))` exactly then.

The threads are real (the pipeline's muxer, a reader that releases fragments from the real FragmentLog and posts the
uploader's own FragmentPersisted event, and a supervisor-like thread that drains); the clock is injected.
"""

from __future__ import annotations

import threading

import pytest

from kvs_edge.event_queue import EventQueue, FragmentStarted
from kvs_edge.kvs.uploader import FragmentPersisted, FragmentSkipped
from kvs_edge.log import FragmentLog
from kvs_edge.media.frame import Frame
from kvs_edge.pipeline import CAPTURE_TIMES_KEPT, Pipeline
from fakes.no_source import NoSource
from support.appliance import wait_until
from support.h264gen import make_h264

OUTAGE_FRAGMENTS = 5_200  # > 2.3 h of 2-s fragments: more than CAPTURE_TIMES_KEPT
LIVE_FRAGMENTS = 150  # written while the backlog drains
STEP_NS = 2_000_000_000  # one key frame (= one fragment) every 2 s of capture time


class FakeClock:
    """Monotonic seconds, moved by the test."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Supervisor:
    """The supervisor's part: drain the queue on its own thread and apply every event; keeps what came back."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.latency: dict[int, float | None] = {}  # seq -> what apply_event returned for its FragmentPersisted
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-supervisor", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                stopping = self.stop.is_set()
                for ev in self.pipe.events.drain():
                    r = self.pipe.apply_event(ev)
                    if isinstance(ev, FragmentPersisted):
                        self.latency[ev.seq] = r
                if stopping:
                    return
                self.stop.wait(0.002)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _frames(n: int, start: int):
    enc = make_h264(30, 32, 32, fps=30, gop=1)  # every picture a key frame (each one starts a fragment)
    for i in range(start, start + n):
        u = enc.units[i % len(enc.units)]
        yield Frame(u.data, STEP_NS * (i + 1), True)


@pytest.mark.timeout(300)
def test_a_long_outage_then_a_drain_kills_no_thread_and_keeps_latency_right(tmp_path):
    clock = FakeClock()
    frag_log = FragmentLog(tmp_path / "log", 512 << 20, sync_interval_s=3600)
    pipe = Pipeline(source=NoSource(), frag_log=frag_log, fragment_seconds=0, queue_frames=64, clock=clock)
    sup = Supervisor(pipe)
    sup.thread.start()
    pipe.start()

    def emit_all(frames):
        for f in frames:
            clock.now = f.timestamp_ns / 1e9
            wait_until(lambda: not pipe._queue.full(), 60, "room in the muxer's queue")
            pipe.emit(f)

    # the outage: nothing is acknowledged while 5,200 fragments are written (the last one stays open)
    emit_all(_frames(OUTAGE_FRAGMENTS, 0))
    wait_until(lambda: pipe.counters.fragments_written >= OUTAGE_FRAGMENTS - 1, 120, "the outage's fragments")
    assert frag_log.stats().fragments == OUTAGE_FRAGMENTS

    # the drain: the uploader thread releases and reports every complete fragment, oldest first, while the camera
    # keeps delivering live video into the muxer
    drain_at = STEP_NS * (OUTAGE_FRAGMENTS + LIVE_FRAGMENTS + 10) / 1e9
    capture_ms: dict[int, int] = {}  # seq -> first frame's capture ms, as the log holds it
    total = OUTAGE_FRAGMENTS + LIVE_FRAGMENTS - 1  # the newest fragment stays open: never persisted
    up_error: list[BaseException] = []

    def uploader():
        try:
            done = 0
            while done < total:
                info = frag_log.next_fragment(None, timeout=0.05)
                if info is None or not info.complete:
                    continue
                capture_ms[info.seq] = info.first_ms
                frag_log.release(info.seq)
                pipe.events.post(FragmentPersisted(info.seq, 0, 0.0))
                done += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            up_error.append(e)

    up = threading.Thread(target=uploader, name="test-uploader", daemon=True)
    live = list(_frames(LIVE_FRAGMENTS, OUTAGE_FRAGMENTS))
    clock.now = drain_at  # the clock stands still while the drain runs: every latency is drain_at - capture
    up.start()
    for f in live:  # live frames keep their capture stamps; emit() reads the (fixed) clock
        wait_until(lambda: not pipe._queue.full(), 60, "room in the muxer's queue")
        pipe.emit(f)
    up.join(180)
    assert not up.is_alive() and not up_error, up_error
    wait_until(lambda: len(sup.latency) == total, 60, "every persisted event to be applied")

    # nothing died
    assert pipe._muxer_error is None and sup.error is None
    pipe.check()
    assert [t for t in pipe._threads if t.name.endswith("muxer")][0].is_alive()

    # the figures: every fragment counted; each latency is the injected clock minus that fragment's capture time
    c = pipe.counters
    assert c.fragments_persisted == total and c.last_persisted_mono == drain_at
    assert sorted(sup.latency) == sorted(capture_ms) and len(capture_ms) == total
    measured = {seq: lat for seq, lat in sup.latency.items() if lat is not None}
    for seq, lat in measured.items():
        assert lat == pytest.approx(drain_at - capture_ms[seq] / 1000.0, abs=1e-6), seq
    forgotten = sorted(set(sup.latency) - set(measured))
    # only the oldest outage fragments may have lost their capture time, never a live one
    assert len(forgotten) >= OUTAGE_FRAGMENTS - CAPTURE_TIMES_KEPT
    assert forgotten == sorted(capture_ms)[:len(forgotten)]
    live_seqs = sorted(capture_ms)[OUTAGE_FRAGMENTS:]
    assert live_seqs and all(s in measured for s in live_seqs)
    assert list(c.latencies) == [measured[s] for s in sorted(measured)][-c.latencies.maxlen:]

    sup.stop.set()
    sup.thread.join(10)
    pipe.stop()


def test_events_come_out_in_the_order_posted_and_a_drain_is_bounded():
    q = EventQueue()
    for i in range(5):
        q.post(FragmentStarted(i, i * 10))
    first = q.drain()
    assert first == [FragmentStarted(i, i * 10) for i in range(5)]
    assert q.drain() == []

    # a producer that never stops posting cannot keep the consumer in drain()
    stop = threading.Event()

    def flood():
        n = 0
        while not stop.is_set():
            q.post(n)
            n += 1

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        wait_until(lambda: q._q.qsize() > 1000, 10, "the flood to start")
        got = q.drain()
        assert got == list(range(got[0], got[0] + len(got)))  # in order, none lost in between
    finally:
        stop.set()
        t.join(5)


def test_apply_event_counts_skips_and_keeps_a_bounded_number_of_capture_times(tmp_path):
    clock = FakeClock(100.0)
    pipe = Pipeline(source=NoSource(), frag_log=FragmentLog(tmp_path / "log", 16 << 20), fragment_seconds=2,
                    clock=clock)
    for seq in range(1, CAPTURE_TIMES_KEPT + 11):
        assert pipe.apply_event(FragmentStarted(seq, seq * 1000)) is None
    assert pipe.apply_event(FragmentPersisted(10, 0, 0.0)) is None  # forgotten: one of the 10 oldest
    assert pipe.apply_event(FragmentPersisted(11, 0, 0.0)) == pytest.approx(100.0 - 11.0)
    assert pipe.apply_event(FragmentPersisted(11, 0, 0.0)) is None  # counted once for its latency
    assert pipe.apply_event(FragmentSkipped(12, 0, 4005, "X")) is None
    c = pipe.counters
    assert (c.fragments_persisted, c.fragments_skipped, list(c.latencies)) == (3, 1, [pytest.approx(89.0)])
    pipe.fragment_log.close()


def test_latency_is_measured_when_the_ack_was_posted_not_when_the_supervisor_drains(tmp_path):
    """The supervisor drains every 0.5 s: a PERSISTED posted at t and applied at t + 0.4 still has the latency of t."""
    clock = FakeClock(100.0)
    pipe = Pipeline(source=NoSource(), frag_log=FragmentLog(tmp_path / "log", 16 << 20), fragment_seconds=2,
                    clock=clock)
    pipe.events.post(FragmentStarted(1, 97_000))
    clock.now += 1.0
    pipe.events.post(FragmentPersisted(1, 0, 0.0))  # acknowledged at 101.0
    clock.now += 0.4  # the supervisor's next tick
    applied = [pipe.apply_event(ev, at) for at, ev in pipe.events.drain_stamped()]
    assert applied == [None, pytest.approx(101.0 - 97.0)]
    assert pipe.apply_event(FragmentStarted(2, 100_000)) is None
    assert pipe.apply_event(FragmentPersisted(2, 0, 0.0)) == pytest.approx(101.4 - 100.0)  # no stamp: now
    pipe.fragment_log.close()
