"""The upload policy's shell: the fragment log as the uploader sees it (upload.mode events or schedule).

`UploadGate(frag_log, ...)` stands where the Uploader expects a fragment log: `next_fragment()` returns only fragments
the policy (upload_policy.decide) selects, oldest first; `release()` of an acknowledged fragment marks it uploaded (in
memory and in the folder's `uploaded` file, so a restart does not send it again) but keeps it in the log: the DVR
holds uploaded video too. Fragments the policy calls EXPIRED (events mode, older than buffer.retain_seconds and in no
event) and uploaded ones older than buffer.retain_seconds are released to the log here, so its ordinary deletion
frees them; without retain_seconds they stay until buffer.max_bytes evicts the oldest.

`trigger(label, seconds)` may be called from any thread (the control socket, the motion detector): it records the
trigger in `events.jsonl` next to the log (so `kvs-edge events` lists it, and an event survives a restart) and wakes
the uploader. `tags_for(info)` gives the uploader the event's metadata Tags; `paused()` tells it to end an idle
session when nothing is selected.

Times: fragments carry capture ms on CLOCK_MONOTONIC of their boot (FragmentInfo.first_ms, boot_id); triggers are
taken on the same clock (`clock.monotonic_ns`). A fragment of another boot is placed on this boot's clock through the
time base (its producer timestamp minus this boot's offset); while that is unknown it is never selected by an event.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from kvs_edge.media.event_tags import event_tag_count, fragment_tags
from kvs_edge.media.fragment_tags import count_tags
from kvs_edge.log import FragmentGone
from kvs_edge.media.mkv import MAX_TAG_NAME_BYTES, MAX_TAG_VALUE_BYTES, MAX_TAGS_PER_FRAGMENT
from kvs_edge.schedule import Window, window_open
from kvs_edge.upload_policy import Decision, Mode, Trigger, decide, event_for, forget_before, merge

log = logging.getLogger("kvs_edge.upload_gate")

EVENTS_FILE = "events.jsonl"
# the most bytes 10 tags can take at a fragment's start (name and value at their limits, element heads generous)
_TAGS_HEAD_BYTES = MAX_TAGS_PER_FRAGMENT * (MAX_TAG_NAME_BYTES + MAX_TAG_VALUE_BYTES + 64)
UPLOADED_FILE = "uploaded"  # seqs acknowledged by KVS and kept in the log for the DVR, one per line


@dataclass(frozen=True)
class RecordedTrigger:
    """One line of events.jsonl."""

    at_ms: int  # recording clock (CLOCK_MONOTONIC ms of boot_id)
    wall_ms: int | None  # epoch ms when the clock was synchronized, else None
    boot_id: str
    label: str
    seconds: float
    continues: bool = False  # more of the same event (the motion detector still sees motion): extends it


@dataclass
class GateStats:
    fragments_uploaded: int = 0
    bytes_uploaded: int = 0
    fragments_recorded: int = 0
    bytes_recorded: int = 0
    fragments_expired: int = 0
    triggers: int = 0


def read_events(folder: str | os.PathLike) -> list[RecordedTrigger]:
    """The triggers recorded in a log folder (the service's own or a copy), oldest first; bad lines are skipped."""
    path = Path(folder) / EVENTS_FILE
    out: list[RecordedTrigger] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(RecordedTrigger(**json.loads(line)))
        except (ValueError, TypeError):
            log.warning("%s: skipping an unreadable line", path)
    return out


class UploadGate:
    def __init__(self, frag_log, *, mode: Mode, pre_seconds: float, post_seconds: float,
                 retain_seconds: float | None, windows: tuple[Window, ...] = (), tz=None, notify: bool = False,
                 images: bool = False, clock, boot_id: str, synchronized: Callable[[], bool] = lambda: True,
                 other_boot_ms: Callable[[object], int | None] | None = None, folder: str | os.PathLike | None = None):
        """clock: clock.Clock (monotonic_ns, wall_ns); other_boot_ms(info): a fragment of another boot on this boot's
        recording clock, or None while unknown."""
        self.log = frag_log
        self.mode = Mode(mode)
        self.pre_ms = int(pre_seconds * 1000)
        self.post_ms = int(post_seconds * 1000)
        self.retain_ms = None if retain_seconds is None else int(retain_seconds * 1000)
        self.windows = tuple(windows)
        self.tz = tz
        self.notify = notify
        self.images = images
        self.clock = clock
        self.boot_id = boot_id
        self.synchronized = synchronized
        self.other_boot_ms = other_boot_ms
        self.folder = Path(folder) if folder is not None else None
        self.stats = GateStats()
        self._lock = threading.Lock()
        # one scan of the log at a time: the uploader's (next_fragment, paused, release) and the appliance's expiry timer
        self._scan_lock = threading.RLock()
        self._triggers: list[Trigger] = []
        self._counted_seq = -1  # recorded-bytes bookkeeping: complete fragments up to here are counted
        self._uploaded: set[int] = set()
        self.idle = True  # nothing selected at the last look from the start (written by the uploader thread only)
        self._window_cache: tuple | None = None  # ((minute, synchronized, windows), open)
        self._notified: dict[int, int] = {}  # an event's first-trigger ms -> the seq that carries its one-shot tags
        if self.folder is not None:
            self._load_uploaded()
            for t in read_events(self.folder):
                if t.boot_id == boot_id:
                    self._triggers.append(Trigger(t.at_ms, t.label, t.seconds))

    def _load_uploaded(self) -> None:
        path = self.folder / UPLOADED_FILE
        try:
            seqs = {int(x) for x in path.read_text().split()}
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s): fragments already uploaded may be sent again", path, e)
            return
        present = {f.seq for f in self.log.fragments()}
        self._uploaded = seqs & present
        try:  # rewrite it with only the seqs still in the log
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{q}\n" for q in sorted(self._uploaded)))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot rewrite %s: %s", path, e.strerror or e)

    # -- triggers (any thread) ---------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return self.clock.monotonic_ns() // 1_000_000

    def trigger(self, label: str = "trigger", seconds: float = 0.0, at_ms: int | None = None,
                continues: bool = False) -> RecordedTrigger:
        at = self.now_ms() if at_ms is None else at_ms
        wall = self.clock.wall_ns() // 1_000_000 if self.synchronized() else None
        rec = RecordedTrigger(at, wall, self.boot_id, label or "trigger", float(seconds), continues)
        with self._lock:
            self._triggers.append(Trigger(at, rec.label, rec.seconds))
            self.stats.triggers += 0 if continues else 1
        if self.folder is not None:
            try:
                with open(self.folder / EVENTS_FILE, "a") as f:
                    f.write(json.dumps(asdict(rec)) + "\n")
            except OSError as e:
                log.warning("cannot record the event in %s: %s", self.folder / EVENTS_FILE, e.strerror or e)
        if not continues:
            log.info("event %r at %d ms (uploading from %.1f s before to %.1f s after)", rec.label, at,
                     self.pre_ms / 1000, seconds + self.post_ms / 1000)
        wake = getattr(self.log, "wake", None)
        if wake:
            wake()
        return rec

    def spans(self):
        with self._lock:
            return merge(self._triggers, self.pre_ms, self.post_ms)

    def active_event(self) -> bool:
        now = self.now_ms()
        return any(s.start_ms <= now <= s.end_ms for s in self.spans())

    # -- the policy over the log -------------------------------------------------------------------------------
    def _span_of(self, info) -> tuple[int, int] | None:
        if info.boot_id == self.boot_id:
            return info.first_ms, info.last_ms
        if self.other_boot_ms is None:
            return None
        first = self.other_boot_ms(info)
        return None if first is None else (first, first + info.last_ms - info.first_ms)

    def _window(self) -> bool:
        """Is an upload window open? Evaluated once per wall-clock minute (a window opens and closes on minutes)."""
        if self.mode is not Mode.SCHEDULE:
            return False
        now_s = self.clock.wall_ns() / 1e9
        key = (int(now_s // 60), self.synchronized(), self.windows)
        if self._window_cache is None or self._window_cache[0] != key:
            self._window_cache = (key, window_open(self.windows, now_s, self.tz, synchronized=key[1]) is not None)
        return self._window_cache[1]

    def _decide(self, info, spans, now_ms: int, window: bool) -> Decision:
        span = self._span_of(info)
        if span is None:  # another boot, not placeable yet: uploadable by a schedule, never expired
            return Decision.UPLOAD if self.mode is not Mode.EVENTS and (self.mode is Mode.CONTINUOUS or window) \
                else Decision.KEEP
        return decide(self.mode, span[0], span[1], now_ms=now_ms, spans=spans, window_is_open=window,
                      retain_ms=self.retain_ms)

    def _select(self, after_seq: int | None):
        """(the oldest selected fragment after after_seq or None, the newest seq in the log or None)."""
        with self._scan_lock:
            return self._select_locked(after_seq)

    def expire(self) -> int:
        """Release what buffer.retain_seconds no longer keeps, without selecting anything: the appliance calls it on
        its own timer (event_service.py), so that local retention holds while the uploader is not asking for
        fragments (the control plane unreachable, no credentials yet). Returns the fragments released."""
        if self.retain_ms is None:
            return 0
        with self._scan_lock:
            before = len(self.log.fragments())
            self._select_locked(-1, expire_only=True)
            return before - len(self.log.fragments())

    def _select_locked(self, after_seq: int | None, expire_only: bool = False):
        infos = self.log.fragments()
        self._count_recorded(infos)
        now = self.now_ms()
        spans = self.spans()
        window = self._window()
        chosen = None
        for info in infos:
            if info.seq in self._uploaded:
                span = self._span_of(info)
                if self.retain_ms is not None and span is not None and span[1] < now - self.retain_ms:
                    self._expire(info)
                continue
            d = self._decide(info, spans, now, window)
            if d is Decision.EXPIRED and info.complete:
                self._expire(info)
            elif d is Decision.UPLOAD and chosen is None and not expire_only and (after_seq is None
                                                                                 or info.seq > after_seq):
                chosen = info
        if after_seq is None:
            self.idle = chosen is None
        if infos and self.mode is Mode.EVENTS:
            oldest = self._span_of(infos[0])
            if oldest is not None:
                self._forget_events_before(oldest[0])
        return chosen, (infos[-1].seq if infos else None)

    def _forget_events_before(self, oldest_ms: int) -> None:
        """Drop the triggers of events that ended before the oldest fragment kept: nothing can be selected by them."""
        with self._lock:
            spans = merge(self._triggers, self.pre_ms, self.post_ms)
            live = forget_before(spans, oldest_ms)
            if len(live) < len(spans):
                cutoff = live[0].start_ms if live else None
                self._triggers = [t for t in self._triggers if cutoff is not None and t.at_ms - self.pre_ms >= cutoff]

    def _count_recorded(self, infos) -> None:
        for info in infos:
            if info.complete and info.seq > self._counted_seq:
                self._counted_seq = info.seq
                self.stats.fragments_recorded += 1
                self.stats.bytes_recorded += info.size

    def _expire(self, info) -> None:
        try:
            self.log.release(info.seq)
        except (LookupError, ValueError):
            return
        if info.seq in self._uploaded:
            self._uploaded.discard(info.seq)
        else:
            self.stats.fragments_expired += 1

    # -- what the uploader calls ---------------------------------------------------------------------------------
    def next_fragment(self, after_seq: int | None, timeout: float):
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            chosen, newest = self._select(after_seq)
            if chosen is not None:
                return chosen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # wait for the next fragment to start, a trigger (wake) or the timeout; then look again
            self.log.next_fragment(newest, timeout=min(remaining, 1.0))

    def paused(self) -> bool:
        """Nothing is selected now: the uploader may close its idle session."""
        chosen, _ = self._select(None)
        return chosen is None

    def tags_for(self, info) -> bytes:
        if self.mode is not Mode.EVENTS:
            return b""
        span = self._span_of(info)
        if span is None:
            return b""
        ev = event_for(self.spans(), *span)
        if ev is None:
            return b""
        # the service's one-shot tags go on the fragment the first trigger falls in (the first one ending after it),
        # and again on that same fragment if it is resent
        first = span[1] >= ev.first_ms and self._notified.setdefault(ev.first_ms, info.seq) == info.seq
        # docs/kvs-putmedia.md section 3: "at most 10 metadata tags" per fragment, counting the ones the recorder
        # already wrote at the fragment's start (the `metadata:` block): the event's tags take only the room left
        room = MAX_TAGS_PER_FRAGMENT - self._tags_in(info.seq)
        out = fragment_tags(ev.label, first=first, notify=self.notify, images=self.images, room=room)
        if room < event_tag_count(notify=first and self.notify, images=first and self.images):
            log.warning("fragment %d already has %d metadata tags: its event tags were cut to fit KVS's %d per "
                        "fragment; put fewer tags under metadata:", info.seq, MAX_TAGS_PER_FRAGMENT - room,
                        MAX_TAGS_PER_FRAGMENT)
        return out

    def _tags_in(self, seq: int) -> int:
        """How many tags fragment `seq` starts with in the log (written by the recorder before its cluster)."""
        try:
            head, _ = self.log.read(seq, 0, _TAGS_HEAD_BYTES, timeout=0)
        except (FragmentGone, ValueError):
            return 0
        try:
            return count_tags(head)
        except ValueError:  # broken tags: the session skips such a fragment itself (putmedia.py)
            return 0

    def release(self, seq: int) -> None:
        """The uploader got `seq` acknowledged: never offer it again; the log keeps it for the DVR."""
        info = self.log.info(seq)
        with self._scan_lock:
            if info is None or seq in self._uploaded:
                return
            self._uploaded.add(seq)
        self.stats.fragments_uploaded += 1
        self.stats.bytes_uploaded += info.size
        if self.folder is not None:
            try:
                with open(self.folder / UPLOADED_FILE, "a") as f:
                    f.write(f"{seq}\n")
            except OSError as e:
                log.warning("cannot note fragment %d as uploaded in %s: %s", seq, self.folder, e.strerror or e)

    def __getattr__(self, name):  # header, read, info, stats, wake, fragments: the log's own
        return getattr(self.log, name)
