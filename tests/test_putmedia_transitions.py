"""Every transition of the PutMedia session's TRANSITIONS table, driven through the session's public methods.

The fragments are real Matroska clusters from our writer with opaque payloads: the session never looks inside a
block, it retimes the cluster head and counts bytes.
"""

from __future__ import annotations

import pytest

from kvs_edge.kvs.acks import Ack
from kvs_edge.kvs.putmedia import (
    CLOSED, ENDING, OPEN, TRANSITIONS, EndBody, FragmentDone, PutMediaSession, SessionEndKind, SessionEnded,
    SessionState, Step)
from kvs_edge.media import mkv

HEADER = b"\x1a\x45\xdf\xa3 session header"
STALE_S = 10.0
END_WAIT_S = 5.0


def fragment(capture_ms: int) -> bytes:
    return mkv.cluster_head(capture_ms) + b"".join(mkv.simple_block(i * 100, i == 0, bytes([i]) * 50)
                                                   for i in range(5))


def session_with(n: int, now: float = 1.0, end_wait_s: float = END_WAIT_S) -> PutMediaSession:
    """A started session with fragments 1..n written (timecodes 1000*seq), none acknowledged."""
    s = PutMediaSession(HEADER, now=0.0, stale_after_s=STALE_S, end_wait_s=end_wait_s)
    s.start()
    for seq in range(1, n + 1):
        s.begin_fragment(seq, 1000 * seq, now)
        s.fragment_data(fragment(seq * 1000), now)
        s.end_fragment(now)
    return s


def ended(events) -> SessionEnded:
    ends = [e for e in events if isinstance(e, SessionEnded)]
    assert len(ends) == 1, events
    return ends[0]


def ending_session(n: int = 3, end_wait_s: float = END_WAIT_S) -> PutMediaSession:
    """OPEN --END_BODY--> ENDING: finish() between fragments closes the body and waits for the ACKs."""
    s = session_with(n, end_wait_s=end_wait_s)
    ev = s.finish("rotating", 2.0)
    assert EndBody() in ev and s.state is ENDING and s.ended is None
    return s


# ------------------------------------------------------------------ the table itself


def test_the_table_is_the_documented_one():
    # not a copy of the table: the rules it must encode, stated independently
    assert TRANSITIONS[(OPEN, Step.END_BODY)] is ENDING
    for kind in SessionEndKind:
        if kind is SessionEndKind.HTTP:  # the uploader's own kind: a session never ends with it
            assert (OPEN, kind) not in TRANSITIONS and (ENDING, kind) not in TRANSITIONS
            continue
        assert TRANSITIONS[(ENDING, kind)] is CLOSED
        clean_only = kind in (SessionEndKind.ROTATED, SessionEndKind.END_TIMEOUT)
        assert ((OPEN, kind) in TRANSITIONS) is not clean_only
    assert not [k for k in TRANSITIONS if k[0] is CLOSED], "CLOSED is final"
    assert (ENDING, Step.END_BODY) not in TRANSITIONS


@pytest.mark.parametrize("state", list(SessionState))
@pytest.mark.parametrize("step", [Step.END_BODY, *SessionEndKind])
def test_a_step_not_in_the_table_is_refused(state, step):
    s = session_with(1)
    s._state = state  # the one place a test puts the machine into a state directly, to probe the table
    if (state, step) in TRANSITIONS:
        s._transition(step)
        assert s.state is TRANSITIONS[(state, step)]
    else:
        with pytest.raises(RuntimeError, match="no transition"):
            s._transition(step)
        assert s.state is state


def test_the_end_is_read_only():
    s = session_with(1)
    with pytest.raises(AttributeError):
        s.ended = SessionEnded(SessionEndKind.STOPPED, "x", None)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.state = CLOSED  # type: ignore[misc]


# ------------------------------------------------------------------ each transition through the public methods


def test_ending_to_closed_rotated_when_the_last_ack_comes():
    s = ending_session(2)
    assert s.on_ack(Ack("PERSISTED", 1000), 2.1) == [FragmentDone(1, 1000, "PERSISTED", 1.0, 2.1)]
    assert s.state is ENDING
    e = ended(s.on_ack(Ack("PERSISTED", 2000), 2.2))
    assert s.state is CLOSED and e.kind is SessionEndKind.ROTATED and e.clean and e.resend_from is None


def test_ending_to_closed_end_timeout():
    s = ending_session(2)
    s.on_ack(Ack("RECEIVED", 1000), 2.1)
    s.on_ack(Ack("PERSISTED", 1000), 2.2)
    s.on_ack(Ack("RECEIVED", 2000), 2.3)
    assert s.tick(2.0 + END_WAIT_S - 0.01) == [] and s.state is ENDING
    e = ended(s.tick(2.0 + END_WAIT_S))
    assert e.kind is SessionEndKind.END_TIMEOUT and not e.clean
    assert e.resend_from == 2 and e.received_unpersisted == (2,)


@pytest.mark.parametrize("ending", [False, True], ids=["from_open", "from_ending"])
def test_to_closed_on_an_error_ack(ending):
    s = ending_session() if ending else session_with(3)
    e = ended(s.on_ack(Ack("ERROR", 2000, None, 5000, "INTERNAL_ERROR"), 3.0))
    assert s.state is CLOSED and e.kind is SessionEndKind.ERROR_ACK and e.resend_from == 1


@pytest.mark.parametrize("ending", [False, True], ids=["from_open", "from_ending"])
def test_to_closed_stale(ending):
    s = ending_session(end_wait_s=60.0) if ending else session_with(3)
    assert s.tick(1.0 + STALE_S - 0.01) == [] and s.state is (ENDING if ending else OPEN)
    e = ended(s.tick(1.0 + STALE_S))  # the first fragment's first byte was at 1.0 and no ACK came
    assert s.state is CLOSED and e.kind is SessionEndKind.STALE and e.resend_from == 1


@pytest.mark.parametrize("ending", [False, True], ids=["from_open", "from_ending"])
def test_to_closed_on_a_lost_connection(ending):
    s = ending_session() if ending else session_with(3)
    s.on_ack(Ack("PERSISTED", 1000), 2.5)
    e = ended(s.on_connection_lost("reset by peer", 3.0))
    assert s.state is CLOSED and e.kind is SessionEndKind.CONNECTION and e.resend_from == 2


@pytest.mark.parametrize("ending", [False, True], ids=["from_open", "from_ending"])
def test_abandon_keeps_the_received_unpersisted_fragments_for_resend(ending):
    s = ending_session(3) if ending else session_with(3)
    s.on_ack(Ack("PERSISTED", 1000), 2.1)  # 1 done
    s.on_ack(Ack("RECEIVED", 2000), 2.2)  # 2 received, never persisted
    e = ended(s.abandon("stopped with fragments unacknowledged", 2.5))
    assert s.state is CLOSED and s.ended is e
    assert e.kind is SessionEndKind.STOPPED and not e.clean
    assert e.resend_from == 2 and e.received_unpersisted == (2,)
    assert s.outstanding == [2, 3]
    # closed is final: nothing more comes out of it, and the end stays what it was
    assert s.abandon("again", 3.0) == [] and s.on_connection_lost("x", 3.0) == [] and s.tick(99.0) == []
    assert s.ended is e


def test_abandon_mid_fragment_resends_that_fragment():
    s = session_with(1)
    s.on_ack(Ack("PERSISTED", 1000), 1.5)
    s.begin_fragment(2, 2000, 2.0)
    s.fragment_data(fragment(2000)[:100], 2.0)
    e = ended(s.abandon("stopping", 2.1))
    assert e.resend_from == 2 and e.received_unpersisted == ()


def test_end_kinds_compare_and_print_as_their_names():
    # the journal line and the status file show these, and older callers compare to the plain words
    assert SessionEndKind.ERROR_ACK == "error_ack" and str(SessionEndKind.END_TIMEOUT) == "end_timeout"
    assert f"{SessionEndKind.STOPPED}" == "stopped"
