"""The uploader: reads the fragment log, runs one PutMedia session at a time, releases fragments once acknowledged.

One thread does everything, so there is never more than one connection (KVS allows one per stream):

    fragment_log --(header, fragment bytes as they are written)--> PutMediaSession (pure) --Write--> PutMediaConnection
    fragment_log.release(seq) <--FragmentDone/FragmentSkipped-- PutMediaSession <--ACKs-- PutMediaConnection.poll()

Every new session starts at the oldest fragment the log still holds (everything older was acknowledged or skipped),
with that fragment's session header. Failures back off exponentially with full jitter; a clean rotation does not.
Events for status, metrics and logging go to `on_event` (never with credentials in them).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

import botocore.exceptions

from kvs_edge.config import UploadConfig
from kvs_edge.errors import KvsEdgeError
from kvs_edge.kvs import putmedia, transport
from kvs_edge.kvs.putmedia import SessionEndKind
from kvs_edge.retry import THROTTLE_FLOOR, UPLOAD, Backoff

log = logging.getLogger("kvs_edge.uploader")

READ_BYTES = 256 * 1024  # per log read
IDLE_WAIT_S = 0.05  # how long one loop turn may block on the log or the socket when there is nothing to do
NEXT_FRAGMENT_GRACE_S = 0.1  # after a fragment, wait this long for the next before closing it with a tag
STOP_GRACE_S = 2.0  # on stop: how long to wait for the acknowledgements of what was sent


# ------------------------------------------------------------------ events (for status, metrics, logs)


@dataclass(frozen=True, slots=True)
class Connected:
    endpoint: str
    start_seq: int


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str
    kind: SessionEndKind = SessionEndKind.CONNECTION


@dataclass(frozen=True, slots=True)
class FragmentPersisted:
    seq: int
    producer_ms: int
    latency_s: float  # from its first byte on the wire to its acknowledgement


# FragmentSkipped(seq, producer_ms, error_id, error_code): the session's own event, passed on as it is
FragmentSkipped = putmedia.FragmentSkipped


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """The uploader waits `seconds` (drawn from its Backoff) before the next attempt."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Error:
    message: str


UploaderEvent = Connected | Disconnected | FragmentPersisted | FragmentSkipped | RetryScheduled | Error


@dataclass
class UploaderStats:
    connections: int = 0
    fragments_done: int = 0
    fragments_skipped: int = 0
    fragments_sent: int = 0  # fragment transmissions, resends included
    resends: int = 0  # transmissions of a fragment that had been sent before
    received_unpersisted: int = 0  # fragments KVS had RECEIVED, without a PERSISTED seen, when a session broke
    bytes_sent: int = 0  # body bytes
    timecode_shifts: int = 0


def _fragment_gone():
    try:
        from kvs_edge.log.fragment_log import FragmentGone
        return FragmentGone
    except ImportError:  # pragma: no cover - the log package always has it
        return LookupError


class Uploader:
    """Streams the fragment log to one KVS stream. `run(stop)` in a thread, or `drain(timeout)` for one-shot uploads.

    endpoint: `.get() -> str` (the PutMedia data endpoint URL) and `.invalidate()`; credentials: botocore
    Credentials/RefreshableCredentials (frozen once per request); timebase: FragmentInfo -> producer ms of its first
    frame, or None while the clock cannot be trusted yet (the uploader waits).
    """

    def __init__(self, fragment_log, *, stream_name: str, region: str, endpoint, credentials,
                 timebase: Callable[[object], int | None], keeps_data: bool = True, ca_bundle: str | None = None,
                 stale_after_s: float = UploadConfig.stale_seconds,
                 max_connection_s: float = UploadConfig.max_connection_minutes * 60.0,
                 on_event: Callable[[UploaderEvent], None] | None = None,
                 connect_timeout_s: float = UploadConfig.connect_timeout_seconds,
                 backoff_base_s: float = UPLOAD.base_s, backoff_cap_s: float = UPLOAD.cap_s,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.fragment_log = fragment_log
        self.stream_name = stream_name
        self.region = region
        self.endpoint = endpoint
        self.credentials = credentials
        self.timebase = timebase
        self.keeps_data = keeps_data
        self.ca_bundle = ca_bundle
        self.stale_after_s = stale_after_s
        self.max_connection_s = max_connection_s
        self.on_event = on_event
        self.connect_timeout_s = connect_timeout_s
        self._rng = rng or random.Random()
        self._backoff = Backoff(backoff_base_s, backoff_cap_s, self._rng)
        self._throttle_floor = Backoff.of(THROTTLE_FLOOR, self._rng)  # never reset: a draw in [0, 1 s] each time
        self._clock = clock
        self._timeline = putmedia.Timeline()
        self._sent_before: set[int] = set()
        self._gone = _fragment_gone()
        self._running = threading.Lock()
        self._waiting_for_clock = False
        self.connected = False
        self.stats = UploaderStats()
        self.heartbeat = clock()  # monotonic time the upload loop last went round (for the watchdog)

    # -------------------------------------------------------------- public

    def run(self, stop: threading.Event) -> None:
        """Upload until `stop` is set. Never raises for network, service or credential trouble: it reports and
        retries."""
        with self._running:
            self._loop(stop, until_empty=False)

    def drain(self, timeout: float) -> bool:
        """Upload until every fragment in the log is released (call it after the writer finished). True when done,
        False after `timeout` seconds with fragments left."""
        stop = threading.Event()
        timer = threading.Timer(timeout, stop.set)
        timer.daemon = True
        timer.start()
        try:
            if not self._running.acquire(blocking=False):
                # run() is active in another thread: just watch the log empty
                while not stop.is_set():
                    if self._log_empty():
                        return True
                    stop.wait(0.05)
                return self._log_empty()
            try:
                return self._loop(stop, until_empty=True)
            finally:
                self._running.release()
        finally:
            timer.cancel()

    # -------------------------------------------------------------- the loop

    def _loop(self, stop: threading.Event, until_empty: bool) -> bool:
        while not stop.is_set():
            self.heartbeat = self._clock()
            if until_empty and self._log_empty():
                return True
            try:
                ended = self._session(stop, until_empty)
            except transport.TransportError as e:
                self._disconnected(str(e), SessionEndKind.HTTP if e.status else SessionEndKind.CONNECTION)
                if e.refresh_endpoint:
                    self._invalidate_endpoint()
                self._sleep(stop, str(e), throttled=e.throttled)
                continue
            except Exception as e:  # credentials, endpoint lookup, a bug: report, back off, carry on
                msg = " ".join(str(e).split()) or type(e).__name__
                if not isinstance(e, USER_ERRORS):
                    log.exception("uploader: unexpected error")
                    msg = f"internal error in the uploader ({type(e).__name__}: {msg})"
                self._disconnected(msg, SessionEndKind.CONNECTION)
                self._sleep(stop, msg)
                continue
            if ended is None:
                continue  # nothing to send (or waiting for the clock)
            self.stats.received_unpersisted += len(ended.received_unpersisted)
            self._disconnected(ended.reason, ended.kind)
            if ended.kind is SessionEndKind.ROTATED or stop.is_set():
                continue
            if ended.kind in (SessionEndKind.CONNECTION, SessionEndKind.STALE):
                self._invalidate_endpoint()
            self._sleep(stop, ended.reason)
        return until_empty and self._log_empty()

    def _session(self, stop: threading.Event, until_empty: bool) -> putmedia.SessionEnded | None:
        first = self.fragment_log.next_fragment(None, timeout=0.25)
        if first is None:
            return None
        producer = self._producer_ms(first)
        if producer is None:
            stop.wait(0.25)
            return None
        header = self.fragment_log.header(first.header_id)
        url = self.endpoint.get()
        creds = self.credentials.get_frozen_credentials()
        target, headers = transport.signed_request(url, stream_name=self.stream_name, region=self.region,
                                                   credentials=creds, producer_start_ms=producer)
        del creds
        conn = transport.PutMediaConnection.open(url, target, headers, stream_name=self.stream_name,
                                                 region=self.region, ca_bundle=self.ca_bundle,
                                                 connect_timeout_s=self.connect_timeout_s)
        self.stats.connections += 1
        self.connected = True
        self._emit(Connected(url, first.seq))
        log.info("connected to %s for stream %s, starting at fragment %d", url, self.stream_name, first.seq)
        session = putmedia.PutMediaSession(header, now=self._clock(), keeps_data=self.keeps_data,
                                    stale_after_s=self.stale_after_s,
                                    lifetime_s=putmedia.connection_lifetime(self.max_connection_s, self._rng))
        try:
            return _Run(self, conn, session, first, stop, until_empty).run()
        finally:
            conn.close()
            self.connected = False

    # -------------------------------------------------------------- helpers

    def _producer_ms(self, info) -> int | None:
        known = self._timeline.get(info.seq)
        if known is not None:
            return known
        base = self.timebase(info)
        if base is None:
            if not self._waiting_for_clock:
                self._waiting_for_clock = True
                log.warning("waiting for the clock to be synchronized before sending fragment %d", info.seq)
            return None
        self._waiting_for_clock = False
        tc, shift = self._timeline.assign(info.seq, int(base))
        if shift:
            self.stats.timecode_shifts += 1
            log.warning("fragment %d would start %d ms before the previous one ended: stamped %d ms later",
                        info.seq, shift, shift)
        return tc

    def _tags(self, info) -> bytes:
        """Metadata Tags for a fragment, when the log is an upload gate that has some (events mode)."""
        tags_for = getattr(self.fragment_log, "tags_for", None)
        return tags_for(info) if tags_for is not None else b""

    def _paused(self) -> bool:
        """The upload gate selects nothing now (events/schedule mode between uploads): end the session."""
        paused = getattr(self.fragment_log, "paused", None)
        return bool(paused and paused())

    def _log_empty(self) -> bool:
        return self.fragment_log.next_fragment(None, timeout=0) is None

    def _invalidate_endpoint(self) -> None:
        try:
            self.endpoint.invalidate()
        except Exception as e:  # pragma: no cover - defensive
            log.warning("could not invalidate the data endpoint: %s", e)

    def _sleep(self, stop: threading.Event, reason: str, throttled: bool = False) -> None:
        delay = self._backoff.next()
        if throttled:
            delay = max(delay, self._throttle_floor.next())
        self._emit(RetryScheduled(delay, reason))
        log.info("retrying in %.2f s (%s)", delay, reason)
        stop.wait(delay)

    def _disconnected(self, reason: str, kind: SessionEndKind) -> None:
        if kind in (SessionEndKind.ROTATED, SessionEndKind.STOPPED):
            log.info("session ended: %s", reason)
        else:
            log.warning("%s", reason)
            self._emit(Error(reason))
        self._emit(Disconnected(reason, kind))

    def _emit(self, ev: UploaderEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(ev)
        except Exception:  # a status/metrics bug must not stop the upload
            log.exception("uploader event handler failed")

    def _release(self, seq: int) -> None:
        self._timeline.forget(seq)
        self._sent_before.discard(seq)
        try:
            self.fragment_log.release(seq)
        except self._gone:
            pass


# Errors whose message is meant for a user (ours: credentials, control plane; botocore's; the OS's), not a bug.
USER_ERRORS = (KvsEdgeError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)


class _Run:
    """One session's loop: move bytes from the log to the connection and ACKs from the connection to the session."""

    def __init__(self, up: Uploader, conn: transport.PutMediaConnection, session: putmedia.PutMediaSession, first, stop,
                 until_empty: bool):
        self.up = up
        self.conn = conn
        self.s = session
        self.stop = stop
        self.until_empty = until_empty
        self.header_id = first.header_id
        self.pending = first  # the next fragment to begin, when already known
        self.cur = None  # FragmentInfo being sent
        self.offset = 0
        self.last_seq: int | None = None  # the last fragment begun in this session
        self.after_idle = False
        self.stop_deadline: float | None = None
        self.wire_seen = 0  # conn.wire_bytes_sent at the last check
        self.blocked_since: float | None = None  # output waiting, and the socket took nothing since then

    def run(self) -> putmedia.SessionEnded:
        up, s = self.up, self.s
        self.apply(s.start())
        wait = 0.0
        while s.ended is None:
            up.heartbeat = up._clock()
            try:
                acks = self.conn.poll(wait)
            except transport.ConnectionLost as e:
                self.apply(s.on_connection_lost(str(e), up._clock()))
                break
            except transport.TransportError:
                self.apply(s.on_connection_lost("HTTP error", up._clock()))
                raise
            for a in acks:
                self.apply(s.on_ack(a, up._clock()))
            now = up._clock()
            self.apply(s.tick(now))
            if s.ended is None:
                self.apply(s.writes_blocked(self.check_blocked(now), now))
            if s.ended is not None:
                break
            if self.stop.is_set():
                if self.stop_deadline is None:
                    self.stop_deadline = now + STOP_GRACE_S
                    self.apply(s.finish("stopping", now))
                elif now >= self.stop_deadline:
                    self.apply(s.abandon("stopped with fragments unacknowledged", now))
                    break
            wait = self.feed(now)
            deadline = s.next_deadline()
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - up._clock()))
        return s.ended

    def check_blocked(self, now: float) -> float:
        """Since when output has been waiting without the socket taking any of it (now when it is not)."""
        sent = self.conn.wire_bytes_sent
        if sent != self.wire_seen or not self.conn.pending_output:
            self.wire_seen = sent
            self.blocked_since = None
            return now
        if self.blocked_since is None:
            self.blocked_since = now
        return self.blocked_since

    def feed(self, now: float) -> float:
        """Move what the log has into the session. Returns how long the next poll may wait on the socket."""
        s, up = self.s, self.up
        if not s.wants_data:
            return IDLE_WAIT_S
        if not self.conn.writable:
            return IDLE_WAIT_S  # the socket will wake us when it drains
        if self.cur is None:
            info = self.pending
            self.pending = None
            if info is None:
                info = up.fragment_log.next_fragment(self.last_seq, timeout=0 if not self.after_idle else IDLE_WAIT_S)
                if info is None and not self.after_idle:
                    info = up.fragment_log.next_fragment(self.last_seq, timeout=NEXT_FRAGMENT_GRACE_S)
            if info is None:
                self.after_idle = True
                self.apply(s.idle(now))
                if self.until_empty and not s.outstanding and up._log_empty():
                    self.apply(s.finish("upload complete", now))
                elif not s.outstanding and up._paused():
                    self.apply(s.finish("nothing selected for upload: recording only", now))
                return 0.0
            self.after_idle = False
            if info.header_id != self.header_id:
                self.pending = info
                self.apply(s.finish("new codec configuration: starting a new session", now))
                return 0.0
            producer = up._producer_ms(info)
            if producer is None:
                self.pending = info
                self.apply(s.idle(now))
                return IDLE_WAIT_S
            self.apply(s.begin_fragment(info.seq, producer, now, up._tags(info)))
            up.stats.fragments_sent += 1
            if info.seq in up._sent_before:
                up.stats.resends += 1
            up._sent_before.add(info.seq)
            self.cur, self.offset, self.last_seq = info, 0, info.seq
        seq = self.cur.seq
        try:
            data, done = up.fragment_log.read(seq, self.offset, READ_BYTES, timeout=0)
            if not data and not done:
                data, done = up.fragment_log.read(seq, self.offset, READ_BYTES, timeout=IDLE_WAIT_S)
        except up._gone as e:
            log.warning("fragment %d left the log while being sent (%s)", seq, e)
            self.cur = None
            if self.offset == 0:
                self.apply(s.end_fragment(up._clock()))  # nothing sent: the session skips it
                return 0.0
            self.apply(s.on_connection_lost(f"fragment {seq} was evicted from the buffer mid-send", up._clock()))
            return 0.0
        now = up._clock()
        if data:
            self.offset += len(data)
            self.apply(s.fragment_data(data, now))
        if done:
            info = up.fragment_log.info(seq) or self.cur
            up._timeline.complete(seq, info.last_ms - info.first_ms)
            self.cur = None
            self.apply(s.end_fragment(now))
        return 0.0

    def apply(self, events) -> None:
        up = self.up
        for ev in events:
            if isinstance(ev, putmedia.Write):
                self.conn.write(ev.data)
                up.stats.bytes_sent += len(ev.data)
            elif isinstance(ev, putmedia.EndBody):
                self.conn.end_body()
            elif isinstance(ev, putmedia.FragmentDone):
                up._release(ev.seq)
                up.stats.fragments_done += 1
                up._backoff.reset()
                up._emit(FragmentPersisted(ev.seq, ev.producer_ms, ev.done_at - ev.sent_at))
            elif isinstance(ev, putmedia.FragmentSkipped):
                up._release(ev.seq)
                up.stats.fragments_skipped += 1
                log.error("fragment %d (producer timestamp %d) skipped: KVS error %s %s", ev.seq, ev.producer_ms,
                          ev.error_id, ev.error_code or "")
                up._emit(ev)
            elif isinstance(ev, putmedia.Report):
                log.warning("%s", ev.message)
            elif isinstance(ev, putmedia.SessionEnded):
                pass
