"""StreamLink on its own: the connection state it derives from uploader events, and its thread against the emulator.

A real Appliance (built without touching the network) supplies the configuration, the control plane and the log;
the events are the uploader's own classes; the thread runs the real control plane and Uploader.
"""

from __future__ import annotations

import threading
import time

import pytest

from kvs_edge.appliance import Appliance
from kvs_edge.config import parse_config
from kvs_edge.event_queue import EventQueue
from kvs_edge.kvs.putmedia import SessionEndKind
from kvs_edge.kvs.uploader import Connected, Disconnected, Error, FragmentPersisted, FragmentSkipped, RetryScheduled
from kvs_edge.media.fragmenter import Fragmenter
from kvs_edge.recorder import Recorder
from support.appliance import config_dict, wait_until
from support.h264gen import make_h264


@pytest.fixture
def app(emulator, tmp_path):
    a = Appliance(parse_config(config_dict(emulator, tmp_path / "buf"), "<test>"))
    yield a
    a.fragment_log.close()


def test_connection_state_follows_the_uploader_events(app):
    link = app.link
    assert (link.state, link.last_error) == ("connecting", None)
    since0 = link.since

    link.apply_event(Disconnected("connect failed: refused", SessionEndKind.CONNECTION))
    assert (link.state, link.last_error) == ("offline", "connect failed: refused") and link.since >= since0
    link.apply_event(Connected("https://kvs.example", 1))
    assert (link.state, link.last_error) == ("connected", None)
    since = link.since
    link.apply_event(Disconnected("rotating", SessionEndKind.ROTATED))  # a rotation is no outage
    assert (link.state, link.since) == ("connected", since)
    link.apply_event(Disconnected("no PERSISTED for fragment 3", SessionEndKind.STALE))
    assert (link.state, link.last_error) == ("connecting", "no PERSISTED for fragment 3")
    link.apply_event(Disconnected("HTTP 500", SessionEndKind.HTTP))
    assert link.state == "offline"
    link.apply_event(Disconnected("stopping", SessionEndKind.STOPPED))
    assert link.state == "connecting"
    link.apply_event(FragmentSkipped(7, 1, 4006, "INVALID_MKV_DATA"))
    assert link.last_error == "KVS rejected fragment 7 (INVALID_MKV_DATA)"
    link.apply_event(Error("credentials expired"))
    assert link.last_error == "credentials expired"
    state = (link.state, link.since, link.last_error)
    link.apply_event(RetryScheduled(1.5, "x"))
    link.apply_event(FragmentPersisted(8, 1, 0.2))  # the pipeline's business, not the link's
    assert (link.state, link.since, link.last_error) == state


def test_events_posted_by_the_uploader_thread_change_nothing_until_applied(app):
    link = app.link
    before = link.heartbeat
    time.sleep(0.01)
    link._on_event(Connected("https://kvs.example", 1))  # what the Uploader calls on its thread
    assert link.state == "connecting" and link.heartbeat > before  # only the sign of life is immediate
    assert app.process_events() == 1
    assert link.state == "connected"


@pytest.mark.timeout(120)
def test_the_link_thread_retries_the_stream_lookup_then_streams(emulator, app):
    emulator.create_stream("cam")
    emulator.faults.set_offline(True)
    # three fragments of captured video waiting in the log (capture times on this boot's monotonic clock)
    app.timebase.refresh()
    enc = make_h264(30, 160, 120, fps=10, gop=10)
    rec, frag = Recorder(app.fragment_log), Fragmenter(target_ms=1000)
    t0 = time.monotonic_ns() // 1_000_000 - 10_000
    for i, u in enumerate(enc.units):
        rec.apply(frag.push(u.data, t0 + i * 100, u.key))
    rec.apply(frag.close())
    seqs, after = [], None
    while (info := app.fragment_log.next_fragment(after, timeout=0)) is not None:
        seqs.append(after := info.seq)
    assert len(seqs) == 3
    events = EventQueue()
    link = type(app.link)(app, events)
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    seen = []

    def drained():
        for ev in events.drain():
            seen.append(ev)
            link.apply_event(ev)
        return link

    try:
        wait_until(lambda: drained().state == "offline", 30, "the failed stream lookup to be reported")
        assert link.last_error and link.uploader is None
        beat = link.heartbeat_now()
        emulator.faults.set_offline(False)
        wait_until(lambda: drained().state == "connected", 60, "the link to find the stream and connect")
        assert link.uploader is not None and link.last_error is None
        assert link.heartbeat_now() >= beat
        wait_until(lambda: app.fragment_log.stats().fragments == 0, 60, "the three fragments to be persisted")
        drained()
        assert [e.seq for e in seen if isinstance(e, FragmentPersisted)] == seqs
        assert len(emulator.archive("cam")) == 3
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
