"""One PutMedia session as a pure state machine: no sockets, no threads, no clock (time is an argument).

The uploader feeds it what it reads from the fragment log (the session header, then per fragment its identity and its
bytes as they become available) and the ACKs the transport parsed; it answers with events: bytes to write, fragments
done (PERSISTED, or RECEIVED on a stream that keeps no data), fragments skipped (errors KVS will never accept), and
finally `SessionEnded` saying why and from which fragment to resend. The rules are those of docs/kvs-putmedia.md
sections 2, 3 and 5:

- ACKs map to fragments by FragmentTimecode, which echoes the cluster Timecode we sent (the producer timestamp).
- Every ERROR ACK ends the connection. Skip-class errors release the fragment; all others resend it.
- Staleness: a fragment must see its first ACK within `stale_after_s` of its first byte, RECEIVED within that time of
  KVS being able to know it is complete, and PERSISTED within that time of RECEIVED; otherwise the session ends.
- Rotation: after `lifetime_s` the session ends on a fragment boundary with an end-of-fragment tag, closes the body and
  waits (bounded) for the outstanding acknowledgements.

`Timeline` (also pure) gives each fragment its producer timecode once, stable across resends, and keeps fragments
strictly increasing (a later fragment that would start at or before the previous one's last frame is shifted forward:
KVS rejects it with 4004 otherwise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from kvs_edge.kvs import acks
from kvs_edge.media.fragment_tags import tags_prefix_length
from kvs_edge.media.mkv import CLUSTER_HEAD_SIZE, end_of_fragment_tag, retime_cluster_head

# docs/kvs-putmedia.md section 2, the SDK's reaction per ErrorId: "4001 fragment over 50 MB: skip fragment ... 4004
# fragment timecode lower than the previous one: skip ... 4500-4506 KMS key problems: skip | 4000, 4003, 5000, 5001:
# resend | other: unknown: resend"
SKIP_ERRORS = frozenset({4001, 4002, *range(4004, 4013), *range(4500, 4507)})
RESEND_ERRORS = frozenset({4000, 4003, 5000, 5001})

MAX_CONNECTION_S = 40 * 60.0  # KVS ends a connection at 45 min (ERROR 4003); the SDK rotates before 40
MAX_JITTER_S = 180.0


def is_skip_error(error_id: int | None) -> bool:
    """True when KVS will never accept the fragment (skip it); False: resend (4000, 4003, 5000, 5001, unknown)."""
    return error_id in SKIP_ERRORS


def connection_lifetime(max_connection_s: float, rng: random.Random | None = None) -> float:
    """Seconds after which to rotate: at most 40 minutes, minus random jitter (up to 3 minutes, 7.5% when shorter).

    docs/kvs-putmedia.md section 3: "Connection: 45 minutes maximum (then ERROR 4003). The SDK rotates to a new
    connection before 40 minutes (minus up to 3 minutes of random jitter)".
    """
    limit = min(float(max_connection_s), MAX_CONNECTION_S)
    if limit <= 0:
        raise ValueError("max connection duration must be positive")
    return limit - (rng or random).uniform(0.0, min(MAX_JITTER_S, 0.075 * limit))


# ------------------------------------------------------------------ events out


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes to append to the request body."""
    data: bytes


@dataclass(frozen=True, slots=True)
class EndBody:
    """Close the request body (the terminating chunk); keep reading ACKs."""


@dataclass(frozen=True, slots=True)
class FragmentDone:
    seq: int
    producer_ms: int
    ack: str  # PERSISTED, or RECEIVED on a stream that keeps no data
    sent_at: float  # when its first byte was written
    done_at: float


@dataclass(frozen=True, slots=True)
class FragmentSkipped:
    seq: int
    producer_ms: int
    error_id: int | None
    error_code: str | None


@dataclass(frozen=True, slots=True)
class Report:
    """Something to log; the session carries on."""
    message: str


class SessionEndKind(str, Enum):
    """Why a session (one PutMedia connection) ended. A str Enum: it compares equal to its value and logs as it."""
    ROTATED = "rotated"  # clean end: rotation or finish() with everything acknowledged
    ERROR_ACK = "error_ack"  # KVS sent an ERROR acknowledgement (every ERROR ends the connection)
    STALE = "stale"  # an acknowledgement did not come in time, or the server stopped reading
    CONNECTION = "connection"  # the connection was lost
    END_TIMEOUT = "end_timeout"  # the body was closed but the last acknowledgements did not come in time
    STOPPED = "stopped"  # abandon(): the uploader gave up on it (stopping, its grace time over)
    HTTP = "http"  # never from the session: the uploader's request failed with an HTTP status

    def __str__(self) -> str:
        return self.value


class SessionState(str, Enum):
    OPEN = "open"  # the request body is open: fragments may be written
    ENDING = "ending"  # the body is closed (terminating chunk sent): waiting, bounded, for the outstanding ACKs
    CLOSED = "closed"  # over; `PutMediaSession.ended` says why and from where to resend


class Step(Enum):
    """The one input that moves a session without ending it."""
    END_BODY = "end_body"  # finish() or rotation reached a fragment boundary: the terminating chunk is sent


OPEN, ENDING, CLOSED = SessionState.OPEN, SessionState.ENDING, SessionState.CLOSED

# Every transition of a session, in one table: (state, input) -> next state. An input that is not listed for the
# current state is a bug in the session (RuntimeError), never a silent change of state. Inputs are Step.END_BODY and
# the end kinds: a session can only end "rotated" or "end_timeout" once its body is closed.
TRANSITIONS: dict[tuple[SessionState, Step | SessionEndKind], SessionState] = {
    (OPEN, Step.END_BODY): ENDING,
    (ENDING, SessionEndKind.ROTATED): CLOSED,
    (ENDING, SessionEndKind.END_TIMEOUT): CLOSED,
    **{(state, kind): CLOSED
       for state in (OPEN, ENDING)
       for kind in (SessionEndKind.ERROR_ACK, SessionEndKind.STALE, SessionEndKind.CONNECTION,
                    SessionEndKind.STOPPED)},
}


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The connection is over. Resend from `resend_from` (None: from whatever the log holds next)."""
    kind: SessionEndKind
    reason: str
    resend_from: int | None
    received_unpersisted: tuple[int, ...] = ()  # RECEIVED but no PERSISTED seen: resent, so possibly duplicated

    @property
    def clean(self) -> bool:
        return self.kind is SessionEndKind.ROTATED


Event = Write | EndBody | FragmentDone | FragmentSkipped | Report | SessionEnded


# ------------------------------------------------------------------ timeline


class Timeline:
    """Producer timecodes per fragment (log seq): assigned once, strictly increasing from fragment to fragment."""

    def __init__(self) -> None:
        self._tc: dict[int, int] = {}
        self._last_end: int | None = None  # producer ms of the last frame of the newest fragment assigned

    def assign(self, seq: int, base_ms: int) -> tuple[int, int]:
        """(producer timecode, shift) for fragment `seq` whose clock says `base_ms`; shift > 0 when moved forward."""
        tc = self._tc.get(seq)
        if tc is not None:
            return tc, 0
        shift = 0
        if self._last_end is not None and base_ms <= self._last_end:
            shift = self._last_end + 1 - base_ms
        tc = base_ms + shift
        self._tc[seq] = tc
        self._last_end = tc if self._last_end is None else max(self._last_end, tc)
        return tc, shift

    def complete(self, seq: int, span_ms: int) -> None:
        """Fragment `seq` is complete; its last frame is `span_ms` after its first."""
        tc = self._tc.get(seq)
        if tc is not None:
            end = tc + max(0, span_ms)
            self._last_end = end if self._last_end is None else max(self._last_end, end)

    def get(self, seq: int) -> int | None:
        return self._tc.get(seq)

    def forget(self, seq: int) -> None:
        """The fragment is released and will never be sent again."""
        self._tc.pop(seq, None)


# ------------------------------------------------------------------ session


@dataclass(slots=True, eq=False)
class _Fragment:
    seq: int
    producer_ms: int
    started_at: float
    head: bytearray = field(default_factory=bytearray)  # the cluster head, until it is whole and retimed
    head_done: bool = False
    completed_at: float | None = None  # when KVS could know it is complete
    first_ack_at: float | None = None
    received_at: float | None = None
    done: bool = False
    bytes_sent: int = 0
    tags: bytes = b""  # metadata Tags written just before its cluster


class PutMediaSession:
    """The state of one PutMedia connection. Call start() first; every method returns a list of events.

    `state` changes only through `_transition` (the TRANSITIONS table); callers end a session through its methods
    (finish, on_connection_lost, abandon, ...), never by assigning `ended`.
    """

    def __init__(self, header: bytes, *, now: float, keeps_data: bool = True, stale_after_s: float = 10.0,
                 lifetime_s: float = MAX_CONNECTION_S, end_wait_s: float | None = None) -> None:
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be positive")
        self.keeps_data = keeps_data
        self.stale_after_s = float(stale_after_s)
        self.lifetime_s = float(lifetime_s)
        self.end_wait_s = float(end_wait_s if end_wait_s is not None else max(stale_after_s, 5.0))
        self.started_at = now
        self._state = OPEN
        self.bytes_sent = 0
        self._header = header
        self._started = False
        self._frags: list[_Fragment] = []  # sent in this session, in order, not yet done
        self._by_tc: dict[int, _Fragment] = {}
        self._current: _Fragment | None = None
        self._last_tagged = True  # no fragment sent yet: nothing to close with a tag
        self._end_reason: str | None = None
        self._end_deadline: float | None = None
        self._ended: SessionEnded | None = None

    # -------------------------------------------------------------- properties

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def ended(self) -> SessionEnded | None:
        """Why and how the session ended (set with the CLOSED state), None while it runs."""
        return self._ended

    @property
    def in_fragment(self) -> bool:
        return self._current is not None

    @property
    def wants_data(self) -> bool:
        """True while the body is open and more fragment data may be written."""
        if self.state != OPEN:
            return False
        return self._current is not None or self._end_reason is None

    @property
    def outstanding(self) -> list[int]:
        """Seqs written in this session and not yet acknowledged, oldest first."""
        return [f.seq for f in self._frags if not f.done]

    @property
    def current_seq(self) -> int | None:
        return self._current.seq if self._current else None

    # -------------------------------------------------------------- inputs from the log

    def start(self) -> list[Event]:
        if self._started:
            raise RuntimeError("session already started")
        self._started = True
        return self._write(self._header)

    def begin_fragment(self, seq: int, producer_ms: int, now: float, tags: bytes = b"") -> list[Event]:
        """Fragment `seq` comes next, stamped `producer_ms` (its cluster Timecode on the wire); `tags`: Tags elements
        (fragment metadata) to write right before its cluster."""
        if self.state != OPEN or self._end_reason is not None:
            raise RuntimeError("the session takes no more fragments")
        if self._current is not None:
            raise RuntimeError("begin_fragment() before end_fragment()")
        if producer_ms in self._by_tc:
            raise ValueError(f"two fragments with timecode {producer_ms} in one session")
        self._current = _Fragment(seq, producer_ms, started_at=now, tags=tags)
        return []

    def fragment_data(self, data: bytes, now: float) -> list[Event]:
        """More bytes of the current fragment, as read from the log (its cluster head first)."""
        f = self._current
        if f is None:
            raise RuntimeError("fragment_data() outside a fragment")
        if self.state != OPEN or not data or f.done:
            return []
        if not f.head_done:
            f.head += data
            # docs/kvs-putmedia.md section 4: "user metadata tags [go] before the cluster they belong to": a fragment
            # in the log may start with its Tags elements; the cluster head (retimed here) follows them
            try:
                tags = tags_prefix_length(f.head)
            except ValueError as e:
                return self._skip_local(f, f"fragment {f.seq} starts with broken tags: {e}")
            if tags is None or len(f.head) < tags + CLUSTER_HEAD_SIZE:
                return []
            end = tags + CLUSTER_HEAD_SIZE
            try:
                head = bytes(f.head[:tags]) + retime_cluster_head(bytes(f.head[tags:end]), f.producer_ms)
            except ValueError as e:
                return self._skip_local(f, f"fragment {f.seq} does not start with a cluster: {e}")
            rest = bytes(f.head[end:])
            f.head = bytearray()
            f.head_done = True
            self._mark_previous_complete(now)
            f.started_at = now
            self._frags.append(f)
            self._by_tc[f.producer_ms] = f
            self._last_tagged = False
            # docs/kvs-putmedia.md section 4: "user metadata tags before the cluster they belong to"
            data = f.tags + head + rest
        f.bytes_sent += len(data)
        return self._write(data)

    def end_fragment(self, now: float) -> list[Event]:
        """The current fragment is complete in the log (all its bytes were given to fragment_data())."""
        f = self._current
        if f is None:
            raise RuntimeError("end_fragment() outside a fragment")
        self._current = None
        if self.state != OPEN:
            return []
        out: list[Event] = []
        if not f.head_done and not f.done:
            out += self._skip_local(f, f"fragment {f.seq} is shorter than a cluster head ({len(f.head)} bytes)")
        if self._end_reason is not None:
            out += self._end_body(now)
        return out

    def idle(self, now: float) -> list[Event]:
        """Between fragments with nothing to send right now: tell KVS the last fragment is complete (once)."""
        if self.state != OPEN or self._current is not None or self._last_tagged:
            return []
        # docs/kvs-putmedia.md section 2: "A fragment is known complete only when the next cluster starts, or an
        # AWS_KINESISVIDEO_END_OF_FRAGMENT tag follows it, or the session ends"
        self._last_tagged = True
        self._mark_previous_complete(now)
        return self._write(end_of_fragment_tag())

    def finish(self, reason: str, now: float) -> list[Event]:
        """End the session at the next fragment boundary (rotation, a new codec configuration, shutdown, drain)."""
        if self.state != OPEN:
            return []
        if self._end_reason is None:
            self._end_reason = reason
        if self._current is None:
            return self._end_body(now)
        return []

    # -------------------------------------------------------------- inputs from the network

    def on_ack(self, ack: acks.Ack | acks.AckParseError, now: float) -> list[Event]:
        if self.state == CLOSED:
            return []
        if isinstance(ack, acks.AckParseError):
            return [Report(f"ignored unreadable acknowledgement: {ack.message}")]
        f = self._by_tc.get(ack.fragment_timecode) if ack.fragment_timecode is not None else None
        et = ack.event_type
        if et == acks.ERROR:
            return self._on_error(ack, f, now)
        if f is None:
            if et == acks.IDLE:
                return []
            return [Report(f"{et} acknowledgement for unknown fragment timecode {ack.fragment_timecode}")]
        out: list[Event] = []
        if f.first_ack_at is None:
            f.first_ack_at = now
        if et == acks.RECEIVED or et == acks.PERSISTED:
            if f.received_at is None:
                f.received_at = now
            if f.completed_at is None:
                f.completed_at = now
            # docs/kvs-putmedia.md section 2: "PERSISTED: stored (only when the stream's retention > 0)": a stream
            # that keeps no data never sends it, so RECEIVED is the last word there
            if not f.done and (et == acks.PERSISTED or not self.keeps_data):
                out += self._done(f, et, now)
        return out + self._check_ending(now)

    def on_connection_lost(self, reason: str, now: float) -> list[Event]:
        if self.state == CLOSED:
            return []
        if self.state == ENDING and not self.outstanding:
            return self._close(SessionEndKind.ROTATED, self._end_reason or reason)
        return self._close(SessionEndKind.CONNECTION, f"connection lost: {reason}")

    def abandon(self, reason: str, now: float) -> list[Event]:
        """The uploader gives up on this connection (stopping, and its grace time for the last ACKs is over). The
        fragments not yet acknowledged stay in the log: `resend_from` and `received_unpersisted` say which, as for
        any other end."""
        if self.state == CLOSED:
            return []
        return self._close(SessionEndKind.STOPPED, reason)

    def tick(self, now: float) -> list[Event]:
        """Time passes: staleness, rotation and the bounded wait at the end of a session."""
        if self.state == CLOSED:
            return []
        out: list[Event] = []
        if self.state == OPEN and self._end_reason is None and now - self.started_at >= self.lifetime_s:
            out += self.finish(f"rotating the connection after {now - self.started_at:.0f} s", now)
            if self.state == CLOSED:
                return out
        stale = self._stale_fragment(now)
        if stale is not None:
            f, what = stale
            return out + self._close(SessionEndKind.STALE, f"no {what} for fragment {f.seq} within "
                                                           f"{self.stale_after_s:g} s: resetting the connection")
        if self.state == ENDING and self._end_deadline is not None and now >= self._end_deadline:
            return out + self._close(
                SessionEndKind.END_TIMEOUT, f"{self._end_reason}: fragments {self.outstanding} not acknowledged within "
                               f"{self.end_wait_s:g} s")
        return out

    def writes_blocked(self, since: float, now: float) -> list[Event]:
        """The transport has had bytes waiting and none accepted by the server since `since`: a stalled server
        that stopped reading mid-fragment (where no ACK deadline runs) is reset after `stale_after_s` too."""
        if self.state == CLOSED or now - since < self.stale_after_s:
            return []
        return self._close(SessionEndKind.STALE,
                           f"the server read nothing for {self.stale_after_s:g} s: resetting the connection")

    def next_deadline(self) -> float | None:
        """The earliest time at which tick() may have something to do."""
        if self.state == CLOSED:
            return None
        times = []
        if self.state == OPEN and self._end_reason is None:
            times.append(self.started_at + self.lifetime_s)
        if self.state == ENDING and self._end_deadline is not None:
            times.append(self._end_deadline)
        for f in self._frags:
            if not f.done:
                d = self._deadline(f)
                if d is not None:
                    times.append(d)
        return min(times) if times else None

    # -------------------------------------------------------------- internals

    def _write(self, data: bytes) -> list[Event]:
        self.bytes_sent += len(data)
        return [Write(data)]

    def _mark_previous_complete(self, now: float) -> None:
        # a new cluster or an end-of-fragment tag tells KVS that the fragments before are complete
        for f in reversed(self._frags):
            if f.completed_at is not None:
                break
            f.completed_at = now

    def _deadline(self, f: _Fragment) -> float | None:
        # docs/kvs-putmedia.md section 5: "Staleness: no BUFFERING ACK for 5 s (kvssink: 60 s) after data was sent ->
        # reset the connection"; the same bound applies to RECEIVED and PERSISTED (stale_after_s, 10 s by default)
        if f.first_ack_at is None:
            return f.started_at + self.stale_after_s
        if f.received_at is None:
            return None if f.completed_at is None else f.completed_at + self.stale_after_s
        if self.keeps_data:
            return f.received_at + self.stale_after_s
        return None

    def _stale_fragment(self, now: float) -> tuple[_Fragment, str] | None:
        for f in self._frags:
            if f.done:
                continue
            d = self._deadline(f)
            if d is not None and now >= d:
                what = ("acknowledgement" if f.first_ack_at is None else
                        "RECEIVED" if f.received_at is None else "PERSISTED")
                return f, what
        return None

    def _done(self, f: _Fragment, ack: str, now: float) -> list[Event]:
        f.done = True
        self._frags = [x for x in self._frags if not x.done]
        return [FragmentDone(f.seq, f.producer_ms, ack, f.started_at, now)]

    def _skip_local(self, f: _Fragment, message: str) -> list[Event]:
        # nothing of it was written: drop it without disturbing the connection
        f.done = True
        f.head = bytearray()
        return [Report(message), FragmentSkipped(f.seq, f.producer_ms, None, "INVALID_FRAGMENT_IN_LOG")]

    def _on_error(self, ack: acks.Ack, f: _Fragment | None, now: float) -> list[Event]:
        out: list[Event] = []
        desc = f"ERROR {ack.error_id} {ack.error_code or ''}".rstrip()
        skip = is_skip_error(ack.error_id)
        if f is None:
            # docs/kvs-putmedia.md section 2: "FragmentTimecode echoes the cluster Timecode; on MKV parse errors it can
            # be -1 with an empty FragmentNumber": KVS was reading the oldest fragment it had not received
            cands = [x for x in self._frags if not x.done and x.received_at is None] or \
                    [x for x in self._frags if not x.done]
            f = cands[0] if cands else None
            if f is not None:
                out.append(Report(f"{desc} with timecode {ack.fragment_timecode}: attributed to fragment {f.seq}"))
        where = f"fragment {f.seq} (timecode {f.producer_ms})" if f is not None else \
            f"timecode {ack.fragment_timecode}"
        # docs/kvs-putmedia.md section 2: "Every ERROR ACK ends the connection"; skip-class errors release the fragment
        if skip and f is not None and not f.done:
            f.done = True
            self._frags = [x for x in self._frags if not x.done]
            out.append(FragmentSkipped(f.seq, f.producer_ms, ack.error_id, ack.error_code))
            return out + self._close(SessionEndKind.ERROR_ACK, f"{desc} on {where}: fragment skipped")
        return out + self._close(SessionEndKind.ERROR_ACK, f"{desc} on {where}: resending")

    def _end_body(self, now: float) -> list[Event]:
        out: list[Event] = []
        if not self._last_tagged:
            out += self.idle(now)
        self._mark_previous_complete(now)
        out.append(EndBody())
        self._transition(Step.END_BODY)
        self._end_deadline = now + self.end_wait_s
        return out + self._check_ending(now)

    def _check_ending(self, now: float) -> list[Event]:
        if self.state == ENDING and not self.outstanding:
            return self._close(SessionEndKind.ROTATED, self._end_reason or "session finished")
        return []

    def _transition(self, step: Step | SessionEndKind) -> None:
        nxt = TRANSITIONS.get((self._state, step))
        if nxt is None:
            raise RuntimeError(f"PutMedia session: no transition from {self._state.value} on {step.value}")
        self._state = nxt

    def _close(self, kind: SessionEndKind, reason: str) -> list[Event]:
        self._transition(kind)
        pending = self.outstanding
        if pending:
            resend = pending[0]
        elif self._current is not None and not self._current.done:
            resend = self._current.seq
        else:
            resend = None
        # docs/kvs-putmedia.md section 5: "Fragments that were RECEIVED but not PERSISTED can be sent twice; the
        # service documents no de-duplication": kept so the uploader can count the possible duplicates
        unpersisted = tuple(f.seq for f in self._frags if not f.done and f.received_at is not None)
        self._ended = SessionEnded(kind, reason, resend, unpersisted)
        return [self._ended]
