"""The fragment log's index: what is in the log, the reader API, eviction and memory mode.

FragmentIndex holds the books every thread shares (guarded by one Condition): the fragments not yet released or
evicted, the segments they live in, the MKV headers, the byte counts and the mode (disk or memory). The reader (the
uploader) waits on the Condition and reads fragments back: from memory while one is being written or when the log is
in memory mode, else from its segment file through the index of record offsets. Eviction makes room under max_bytes
(oldest segments first) and under memory_max_bytes (oldest memory fragments first), never the fragment being written,
and the fragment the reader is in the middle of only when nothing else can go.

The writer side (segment_writer.SegmentWriter) derives from this class and does the file I/O; fragment_log.FragmentLog
is the facade the rest of kvs-edge uses.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from . import segment as fmt

log = logging.getLogger("kvs_edge.log")

MiB = 1 << 20
DEFAULT_MEMORY_MAX_BYTES = 32 * MiB
EVICT_LOG_INTERVAL_S = 60.0


class FragmentGone(LookupError):
    """The fragment is no longer in the log (evicted to make room, released, or never existed)."""


class LogInUse(RuntimeError):
    """Another process has this log directory open."""


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    seq: int
    header_id: int
    boot_id: str
    first_ms: int
    last_ms: int
    size: int
    frames: int
    complete: bool
    salvaged: bool = False  # recovered without its END record: the first `frames` frames of a fragment cut short


@dataclass(frozen=True, slots=True)
class LogStats:
    fragments: int  # unreleased fragments, including the one being written
    bytes: int  # on disk (segment files) plus fragments held in memory
    oldest_first_ms: int | None
    newest_last_ms: int | None
    backlog_ms: int  # sum of (last_ms - first_ms) over the unreleased fragments
    evicted_fragments: int
    evicted_bytes: int
    mode: str  # "disk" | "memory"
    last_error: str | None


class _Frag:
    __slots__ = ("seq", "header_id", "boot_id", "first_ms", "last_ms", "size", "frames", "complete", "completed_at",
                 "crc", "segment", "disk_start", "offsets", "ends", "buf", "salvaged")

    def __init__(self, seq: int, header_id: int, boot_id: str, first_ms: int) -> None:
        self.seq = seq
        self.header_id = header_id
        self.boot_id = boot_id
        self.first_ms = first_ms
        self.last_ms = first_ms
        self.size = 0
        self.frames = 0
        self.complete = False
        self.completed_at = -math.inf
        self.crc = 0
        self.segment: _Seg | None = None  # on disk (complete: read through offsets/ends) or None: in memory (buf)
        self.disk_start = 0  # file offset where this fragment's records begin (to cut it off after a write error)
        self.offsets = array("Q")
        self.ends = array("Q")
        self.buf: bytearray | None = None  # the bytes, while being written and for memory fragments
        self.salvaged = False

    def info(self) -> FragmentInfo:
        return FragmentInfo(self.seq, self.header_id, self.boot_id, self.first_ms, self.last_ms, self.size,
                            self.frames, self.complete, self.salvaged)


class _Seg:
    __slots__ = ("name", "path", "size", "live", "headers", "created_at", "active")

    def __init__(self, name: str, path: str, size: int, created_at: float) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.live: set[int] = set()  # unreleased, unevicted fragments stored here
        self.headers: set[int] = set()  # header ids with a HEADER record in this segment
        self.created_at = created_at
        self.active = False


class FragmentIndex:
    """The shared books, the reader API (one reader thread), eviction and the memory-mode accounting."""

    def __init__(self, path: str, max_bytes: int, memory_max_bytes: int | None, clock: Callable[[], float]) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._path = path
        self._max_bytes = int(max_bytes)
        self._memory_max = int(memory_max_bytes if memory_max_bytes is not None
                               else min(self._max_bytes, DEFAULT_MEMORY_MAX_BYTES))
        self._clock = clock
        self._cond = threading.Condition()
        # shared state (guarded by _cond)
        self._frags: dict[int, _Frag] = {}  # unreleased, unevicted, in seq order
        self._segments: dict[str, _Seg] = {}  # in seq order
        self._headers: dict[int, bytes] = {}
        self._header_ids: dict[bytes, int] = {}
        self._disk_bytes = 0
        self._memory_bytes = 0
        self._evicted_fragments = 0
        self._evicted_bytes = 0
        self._mode = "disk"
        self._last_error: str | None = None
        self._pending_releases: list[tuple[int, _Seg]] = []  # released fragments whose segment the writer records
        self._reading: int | None = None  # the fragment the reader is in the middle of
        self._wake_gen = 0
        self._closed = False
        self._open: _Frag | None = None  # the fragment being written (set by the writer; never evicted)
        self._dir_dirty = False  # a segment file was created or deleted: the writer fsyncs the directory
        self._evict_log_at = -math.inf
        self._evict_pending = [0, 0]  # fragments, bytes evicted since the last log line

    # ------------------------------------------------------------------ reader side (one thread: the uploader)

    def next_fragment(self, after_seq: int | None, timeout: float) -> FragmentInfo | None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._reading = None
            gen = self._wake_gen
            while True:
                for seq, f in self._frags.items():
                    if after_seq is None or seq > after_seq:
                        return f.info()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed or gen != self._wake_gen:
                    return None
                self._cond.wait(remaining)

    def fragments(self, after_seq: int | None = None) -> list[FragmentInfo]:
        """Every fragment in the log (unreleased, unevicted; the one being written last), oldest first."""
        with self._cond:
            return [f.info() for seq, f in self._frags.items() if after_seq is None or seq > after_seq]

    def header(self, header_id: int) -> bytes:
        with self._cond:
            try:
                return self._headers[header_id]
            except KeyError:
                raise KeyError(f"unknown header id {header_id}") from None

    def info(self, seq: int) -> FragmentInfo | None:
        with self._cond:
            f = self._frags.get(seq)
            return f.info() if f is not None else None

    def read(self, seq: int, offset: int, max_bytes: int, timeout: float) -> tuple[bytes, bool]:
        """Bytes of fragment `seq` from `offset` (at most max_bytes). Waits up to `timeout` while the fragment is
        being written and has nothing past `offset` yet. done=True once offset+len(data) is the size of a complete
        fragment. Raises FragmentGone if the fragment was evicted or released."""
        if offset < 0 or max_bytes <= 0:
            raise ValueError("offset must be >= 0 and max_bytes > 0")
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            gen = self._wake_gen
            while True:
                f = self._frags.get(seq)
                if f is None:
                    raise FragmentGone(f"fragment {seq} is no longer in the log")
                if offset > f.size:
                    raise ValueError(f"offset {offset} is past the end of fragment {seq} ({f.size} bytes)")
                if offset < f.size:
                    if f.buf is not None:
                        data = bytes(f.buf[offset:offset + max_bytes])
                        done = f.complete and offset + len(data) == f.size
                        self._reading = None if done else seq
                        return data, done
                    seg_path = f.segment.path
                    _start, _stop, pieces = fmt.chunk_span(f.offsets, f.ends, offset, max_bytes)
                    size = f.size
                    break
                if f.complete:
                    self._reading = None
                    return b"", True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or gen != self._wake_gen or self._closed:
                    return b"", False
                self._cond.wait(remaining)
        try:
            data = self._pread(seg_path, pieces)
        except OSError as e:
            with self._cond:
                if seq not in self._frags:
                    raise FragmentGone(f"fragment {seq} is no longer in the log") from None
                self._last_error = f"buffer: cannot read fragment {seq} from {seg_path}: {e.strerror or e}"
            log.warning("%s: dropping it", self._last_error)
            self._drop(seq)
            raise FragmentGone(f"fragment {seq} could not be read back: {e.strerror or e}") from None
        done = offset + len(data) == size
        with self._cond:
            self._reading = None if done else seq
        return data, done

    def release(self, seq: int) -> None:
        """The uploader got `seq` acknowledged. A segment whose fragments are all released is deleted at once."""
        victim = None
        with self._cond:
            f = self._frags.get(seq)
            if f is None:
                return
            if not f.complete:
                raise ValueError(f"fragment {seq} is still being written: release it once it is complete")
            del self._frags[seq]
            if self._reading == seq:
                self._reading = None
            seg = f.segment
            if seg is None:
                self._memory_bytes -= f.size
            else:
                seg.live.discard(seq)
                if not seg.live and not seg.active:
                    victim = self._forget_segment(seg)
                else:
                    self._pending_releases.append((seq, seg))
            self._cond.notify_all()
        if victim is not None:
            self._unlink(victim.path)

    def stats(self) -> LogStats:
        with self._cond:
            frags = self._frags
            oldest = next(iter(frags.values()), None)
            newest = next(reversed(frags.values()), None)
            return LogStats(
                fragments=len(frags),
                bytes=self._disk_bytes + self._memory_bytes,
                oldest_first_ms=oldest.first_ms if oldest else None,
                newest_last_ms=newest.last_ms if newest else None,
                backlog_ms=sum(f.last_ms - f.first_ms for f in frags.values()),
                evicted_fragments=self._evicted_fragments,
                evicted_bytes=self._evicted_bytes,
                mode=self._mode,
                last_error=self._last_error,
            )

    def wake(self) -> None:
        """Make blocked next_fragment()/read() calls return now (for shutdown)."""
        with self._cond:
            self._wake_gen += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ room, eviction, deletion

    def _make_room(self, n: int) -> None:
        if self._disk_bytes + n <= self._max_bytes:
            return
        victims = []
        with self._cond:
            while self._disk_bytes + n > self._max_bytes:
                seg = self._pick_victim()
                if seg is None:
                    break  # only the active segment is left: the fragment being written is never cut
                for seq in sorted(seg.live):
                    f = self._frags.pop(seq)
                    self._count_eviction(f)
                seg.live.clear()
                victims.append(self._forget_segment(seg))
            self._cond.notify_all()
        for seg in victims:
            self._unlink(seg.path)
        self._flush_evict_log()

    def _pick_victim(self) -> _Seg | None:
        fallback = None
        for seg in self._segments.values():
            if seg.active:
                continue
            if self._reading is not None and self._reading in seg.live:
                fallback = fallback or seg
                continue
            return seg
        return fallback

    def _make_memory_room(self, n: int) -> None:
        if self._memory_bytes + n <= self._memory_max:
            return
        with self._cond:
            candidates = [f for f in self._frags.values() if f.segment is None and f is not self._open]
            protected = [f for f in candidates if f.seq == self._reading]
            candidates = [f for f in candidates if f.seq != self._reading] + protected
            for f in candidates:
                if self._memory_bytes + n <= self._memory_max:
                    break
                del self._frags[f.seq]
                self._memory_bytes -= f.size
                self._count_eviction(f)
            self._cond.notify_all()
        self._flush_evict_log()

    def _count_eviction(self, f: _Frag) -> None:
        self._evicted_fragments += 1
        self._evicted_bytes += f.size
        self._evict_pending[0] += 1
        self._evict_pending[1] += f.size
        if self._reading == f.seq:
            self._reading = None

    def _flush_evict_log(self, force: bool = False) -> None:
        with self._cond:
            count, nbytes = self._evict_pending
            if not count:
                return
            now = self._clock()
            if not force and now - self._evict_log_at < EVICT_LOG_INTERVAL_S:
                return
            self._evict_log_at = now
            self._evict_pending = [0, 0]
            total = self._evicted_fragments
            where = "memory" if self._mode == "memory" else f"{self._path} (buffer.max_bytes={self._max_bytes})"
        log.warning("buffer full in %s: dropped the %d oldest fragments (%d bytes) not yet uploaded; %d dropped so far",
                    where, count, nbytes, total)

    def _drop(self, seq: int) -> None:
        with self._cond:
            f = self._frags.pop(seq, None)
            if f is None:
                return
            if f.segment is not None:
                f.segment.live.discard(seq)
            else:
                self._memory_bytes -= f.size
            self._count_eviction(f)
            self._cond.notify_all()

    def _forget_segment(self, seg: _Seg) -> _Seg:
        """Remove a segment from the books (caller holds the lock); the caller unlinks the file."""
        self._segments.pop(seg.name, None)
        self._disk_bytes -= seg.size
        return seg

    def _unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:  # the space is not freed: say so; the books no longer count the file
            log.warning("buffer: cannot delete %s (%s): delete it by hand to free the space", path, e.strerror or e)
            return
        log.debug("buffer: deleted %s", path)
        self._dir_dirty = True

    @staticmethod
    def _pread(path: str, pieces: list[tuple[int, int]]) -> bytes:
        start = pieces[0][0]
        stop = pieces[-1][0] + pieces[-1][1]
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            blob = os.pread(fd, stop - start, start)
        finally:
            os.close(fd)
        if len(blob) != stop - start:
            raise OSError(errno.EIO, "segment shorter than its index")
        if len(pieces) == 1:
            return blob
        mv = memoryview(blob)
        return b"".join(mv[o - start:o - start + n] for o, n in pieces)
