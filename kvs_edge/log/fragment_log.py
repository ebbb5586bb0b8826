"""The fragment log: an on-disk ring buffer of MKV fragments between the muxer and the uploader.

Layout under `path`:
    NNNNNNNNNNNNNNNNNNNN.seg   append-only segment files (name = seq of the first fragment started in it), records as in
                               segment.py; a fragment never spans two segments
    next_seq                   high-water mark that keeps seq increasing across restarts, even after every segment
                               was deleted (rewritten once per start and once per SEQ_BLOCK fragments)
    lock                       flock()ed while a FragmentLog has the directory open

Threads: one writer (the muxer), one reader (the uploader), stats() from anywhere. The writer does its file I/O outside
the lock and publishes under it; readers wait on a Condition that every append notifies, and read the fragment being
written from memory (a frame is readable as soon as append() returns, before it reaches the file).

Policies:
- write(2) to the page cache per frame, no fsync while online; while a backlog exists (an unreleased complete fragment
  older than sync_interval_s) fdatasync the dirty segments and fsync the directory at most every sync_interval_s.
- release(): a segment whose fragments are all released is deleted at once (the active one: at the next fragment).
- over max_bytes: the oldest segments go, with every fragment in them, counted and logged (one line a minute); never
  the active segment (so never a partial fragment) and never the fragment the reader is in the middle of unless
  nothing else can go. segment_bytes is clamped to max_bytes/8 so that a segment is a small share of the cap; rotation
  also happens at segment_seconds so that, online, a segment is deleted before the kernel writes its pages back
  (vm.dirty_expire_centisecs, 30 s). The cap is exceeded only when the active segment alone (the fragment being
  written and the ones before it in that segment) is larger than it.
- a write error (disk full, read-only, I/O error): one warning line, the log keeps working from memory (bounded by
  memory_max_bytes, oldest memory fragments evicted first) and tries the disk again at a fragment start every
  disk_retry_s. The fragment being written at the switch continues in memory, so the reader loses nothing. Fragments
  held in memory stay there until released or evicted (they are not copied to disk later) and a restart loses them.
- recovery at open: every complete fragment (END record present, checksum good) is kept, the torn tail of each segment
  is cut, an unfinished fragment is discarded (not kept up to its last frame: KVS needs whole fragments).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import threading
import time
import weakref
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from . import segment as fmt

log = logging.getLogger("kvs_edge.log")

MiB = 1 << 20
DEFAULT_SEGMENT_BYTES = 8 * MiB
DEFAULT_SEGMENT_SECONDS = 8.0
DEFAULT_MEMORY_MAX_BYTES = 32 * MiB
DEFAULT_DISK_RETRY_S = 10.0
EVICT_LOG_INTERVAL_S = 60.0
SEQ_BLOCK = 1 << 16

# The OS boundary: module-level so that a test can inject a fault (ENOSPC, EIO) where no real small file system can
# be mounted, or count syncs. Same signatures as the os functions.
_write = os.write
_fdatasync = os.fdatasync
_fsync = os.fsync


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


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


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


def _segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


def _is_segment_name(name: str) -> bool:
    return len(name) == 24 and name.endswith(".seg") and name[:20].isdigit()


class FragmentLog:
    def __init__(self, path: str | os.PathLike, max_bytes: int, *, boot_id: str | None = None,
                 sync_interval_s: float = 2.0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS, memory_max_bytes: int | None = None,
                 disk_retry_s: float = DEFAULT_DISK_RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self._path = os.fspath(path)
        self._max_bytes = int(max_bytes)
        self._boot_id = boot_id or read_boot_id()
        self._sync_interval = float(sync_interval_s)
        # At least ~8 segments fit under the cap, so that evicting one frees a small share of it.
        self._segment_bytes = max(4096, min(int(segment_bytes), self._max_bytes // 8))
        self._segment_seconds = float(segment_seconds)
        self._memory_max = int(memory_max_bytes if memory_max_bytes is not None
                               else min(self._max_bytes, DEFAULT_MEMORY_MAX_BYTES))
        self._disk_retry_s = float(disk_retry_s)
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
        self._pending_releases: list[tuple[int, _Seg]] = []
        self._reading: int | None = None  # the fragment the reader is in the middle of
        self._wake_gen = 0
        self._closed = False
        # writer state
        self._open: _Frag | None = None
        self._active: _Seg | None = None
        self._active_fd: int | None = None
        self._unsynced: dict[str, int] = {}  # closed segments with data not yet fdatasync'ed -> their fd
        self._dirty = False
        self._dir_dirty = False
        self._last_sync = clock()
        self._retry_at = 0.0
        self._lock_fd: int | None = None
        self._evict_log_at = -math.inf
        self._evict_pending = [0, 0]  # fragments, bytes evicted since the last log line
        self._next_seq = 0
        self._seq_hwm = 0
        self._next_header_id = 0
        self._open_disk()

    # ------------------------------------------------------------------ opening and recovery

    def _open_disk(self) -> None:
        try:
            os.makedirs(self._path, exist_ok=True)
        except OSError as e:
            self._to_memory(e)
            return
        self._take_lock()
        try:
            self._recover()
        except OSError as e:  # unreadable directory
            self._to_memory(e)
            return
        self._next_seq = max(self._next_seq, self._read_hwm())
        self._seq_hwm = self._next_seq + SEQ_BLOCK
        if self._mode == "disk":
            try:
                self._write_hwm(self._seq_hwm)
            except OSError as e:
                self._to_memory(e)

    def _take_lock(self) -> None:
        lock_path = os.path.join(self._path, "lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            try:
                fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return  # read-only and no lock file: nothing else can be writing here either
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogInUse(f"buffer {self._path} is in use by another kvs-edge process: stop that one first") from None
        self._lock_fd = fd
        # a FragmentLog dropped without close() (a test simulating a crash) releases the directory when collected
        self._lock_finalizer = weakref.finalize(self, os.close, fd)

    def _recover(self) -> None:
        names = sorted(n for n in os.listdir(self._path) if _is_segment_name(n))
        scans = []
        for name in names:
            p = os.path.join(self._path, name)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError as e:
                log.warning("buffer: cannot read %s (%s): skipping it", p, e.strerror or e)
                continue
            scan = fmt.scan_segment(data)
            scans.append((name, p, len(data), scan))
            self._headers.update(scan.headers)
            self._next_seq = max(self._next_seq, scan.max_seq + 1, int(name[:20]) + 1)
        released = {s for _, _, _, scan in scans for s in scan.releases}
        cut = kept = salvaged = 0
        now = self._clock()
        for name, p, flen, scan in scans:
            live = [f for f in scan.fragments if f.seq not in released and f.seq not in self._frags]
            if not live:
                self._unlink(p)
                continue
            size = flen
            if flen > scan.clean_length:
                cut += 1
                log.info("buffer: cut the torn tail of %s at byte %d of %d (%s)", p, scan.clean_length, flen,
                         scan.error)
                try:
                    os.truncate(p, scan.clean_length)
                    size = scan.clean_length
                except OSError:
                    pass
            seg = _Seg(name, p, size, now)
            seg.headers = set(scan.headers)
            self._segments[name] = seg
            self._disk_bytes += size
            for sf in live:
                fr = _Frag(sf.seq, sf.header_id, sf.boot_id, sf.first_ms)
                fr.last_ms, fr.size, fr.frames, fr.crc = sf.last_ms, sf.size, sf.frames, sf.crc
                fr.complete = True
                fr.salvaged = sf.salvaged
                salvaged += sf.salvaged
                fr.segment = seg
                fr.offsets, fr.ends = sf.offsets, sf.ends
                self._frags[sf.seq] = fr
                seg.live.add(sf.seq)
                kept += 1
        self._frags = dict(sorted(self._frags.items()))
        for hid, data in self._headers.items():
            self._header_ids.setdefault(data, hid)
        self._next_header_id = max(self._headers, default=-1) + 1
        if scans:
            log.info("buffer at %s: %d fragments waiting (%d bytes), %d torn segment tails cut, %d fragments cut "
                     "short kept with their whole frames", self._path, kept, self._disk_bytes, cut, salvaged)
        if self._disk_bytes > self._max_bytes:
            self._make_room(0)

    def _read_hwm(self) -> int:
        try:
            with open(os.path.join(self._path, "next_seq"), encoding="ascii") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_hwm(self, value: int) -> None:
        final = os.path.join(self._path, "next_seq")
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write(fd, b"%d\n" % value)
            _fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._sync_dir()

    # ------------------------------------------------------------------ writer side (one thread: the muxer)

    def add_header(self, header: bytes) -> int:
        header = bytes(header)
        with self._cond:
            hid = self._header_ids.get(header)
            if hid is None:
                hid = self._next_header_id
                self._next_header_id += 1
                self._headers[hid] = header
                self._header_ids[header] = hid
            return hid

    def start_fragment(self, header_id: int, timecode_ms: int, data: bytes) -> int:
        if self._closed:
            raise RuntimeError("the fragment log is closed")
        if self._open is not None:
            raise RuntimeError("start_fragment() while a fragment is open: call end_fragment() first")
        with self._cond:
            header = self._headers.get(header_id)
        if header is None:
            raise KeyError(f"unknown header id {header_id}: call add_header() first")
        data = bytes(data)
        self._housekeeping()
        self._flush_evict_log()
        seq = self._alloc_seq()
        now = self._clock()
        if self._mode == "disk":
            if self._needs_rotation(now):
                self._rotate(seq, now)
        elif now >= self._retry_at:
            self._retry_at = now + self._disk_retry_s
            if self._rotate(seq, now, retry=True):
                with self._cond:
                    self._mode = "disk"
                log.warning("buffer at %s is writable again: buffering to disk resumed", self._path)
        if self._mode == "disk":
            self._write_releases()

        f = _Frag(seq, header_id, self._boot_id, timecode_ms)
        f.buf = bytearray(data)
        f.size = len(data)
        f.crc = zlib.crc32(data)
        on_disk = self._mode == "disk"
        if not on_disk:
            self._make_memory_room(len(data))
        with self._cond:
            self._frags[seq] = f
            if on_disk:
                f.segment = self._active
                self._active.live.add(seq)
            else:
                self._memory_bytes += f.size
            self._open = f
            self._cond.notify_all()
        if on_disk:
            seg = self._active
            f.disk_start = seg.size
            if header_id not in seg.headers:
                if self._disk_write(fmt.header_record(header_id, header)) is not None:
                    seg.headers.add(header_id)
            if f.segment is not None:
                rec, data_off = fmt.start_record(seq, header_id, timecode_ms, self._boot_id, data)
                off = self._disk_write(rec)
                if off is not None:
                    f.offsets.append(off + data_off)
                    f.ends.append(len(data))
        self._maybe_sync()
        return seq

    def append(self, data: bytes, timecode_ms: int) -> None:
        f = self._open
        if f is None:
            raise RuntimeError("append() without start_fragment()")
        data = bytes(data)
        if f.segment is None:
            self._make_memory_room(len(data))
        with self._cond:
            f.buf += data
            f.size += len(data)
            f.frames += 1
            f.last_ms = max(f.last_ms, timecode_ms)
            if f.segment is None:
                self._memory_bytes += len(data)
            self._cond.notify_all()
        f.crc = zlib.crc32(data, f.crc)
        if f.segment is not None:
            rec, data_off = fmt.data_record(f.seq, timecode_ms, data)
            off = self._disk_write(rec)
            if off is not None:
                f.offsets.append(off + data_off)
                f.ends.append(f.ends[-1] + len(data))
        self._maybe_sync()

    def end_fragment(self) -> None:
        f = self._open
        if f is None:
            raise RuntimeError("end_fragment() without start_fragment()")
        if f.segment is not None:
            self._disk_write(fmt.end_record(f.seq, f.size, f.frames, f.first_ms, f.last_ms, f.crc))
        with self._cond:
            f.complete = True
            f.completed_at = self._clock()
            if f.segment is not None:
                f.buf = None  # the reader now reads it from the file (page cache)
            self._open = None
            self._cond.notify_all()
        self._maybe_sync()

    def close(self) -> None:
        """End the open fragment (dropped if it has no frame), write pending release records, sync if anything is
        waiting on disk, close the files. Readers keep working on what is in the log."""
        if self._closed:
            return
        f = self._open
        if f is not None:
            if f.frames:
                self.end_fragment()
            else:
                self._abandon_open()
        self._housekeeping()
        if self._mode == "disk" and self._active is not None:
            self._write_releases()
        with self._cond:
            waiting = any(fr.segment is not None for fr in self._frags.values())
        if self._mode == "disk" and waiting and (self._dirty or self._unsynced or self._dir_dirty):
            self._sync(self._clock())
        self._deactivate()
        for fd in self._unsynced.values():
            os.close(fd)
        self._unsynced.clear()
        if self._lock_fd is not None:
            self._lock_finalizer()  # closes the fd once
            self._lock_fd = None
        self._flush_evict_log(force=True)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> FragmentLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    # ------------------------------------------------------------------ internals: writing

    def _alloc_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        if self._next_seq >= self._seq_hwm:
            self._seq_hwm += SEQ_BLOCK
            if self._mode == "disk":
                try:
                    self._write_hwm(self._seq_hwm)
                except OSError as e:
                    log.warning("buffer: cannot record the fragment counter in %s: %s", self._path, e.strerror or e)
        return seq

    def _housekeeping(self) -> None:
        """Writer-side chore: close the fds of segments deleted meanwhile."""
        with self._cond:
            stale = [name for name in self._unsynced if name not in self._segments]
        for name in stale:
            os.close(self._unsynced.pop(name))

    def _write_releases(self) -> None:
        """Record releases of fragments whose segment still exists, so that a restart does not send them again.
        Written between fragments only, so that a torn fragment never takes release records with it."""
        with self._cond:
            seqs = [seq for seq, seg in self._pending_releases if seg.name in self._segments]
            self._pending_releases.clear()
        if seqs and self._active is not None:
            self._disk_write(b"".join(fmt.release_record(s) for s in seqs))

    def _needs_rotation(self, now: float) -> bool:
        seg = self._active
        if seg is None:
            return True
        return (not seg.live or seg.size >= self._segment_bytes
                or now - seg.created_at >= self._segment_seconds)

    def _rotate(self, seq: int, now: float, retry: bool = False) -> bool:
        """Start a new active segment. False (and memory mode) when the disk refuses."""
        self._deactivate()
        name = _segment_name(seq)
        path = os.path.join(self._path, name)
        try:
            if retry:
                os.makedirs(self._path, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            self._disk_failed(e)
            return False
        seg = _Seg(name, path, 0, now)
        seg.active = True
        with self._cond:
            self._segments[name] = seg
        self._active, self._active_fd = seg, fd
        self._dir_dirty = True
        return self._disk_write(fmt.MAGIC) is not None

    def _deactivate(self) -> None:
        """Close the active segment for writing (kept for a later fdatasync if it holds unsynced data)."""
        seg, fd = self._active, self._active_fd
        if seg is None:
            return
        self._active = self._active_fd = None
        victim = None
        with self._cond:
            seg.active = False
            if not seg.live:
                victim = self._forget_segment(seg)
        if victim is None and self._dirty:
            self._unsynced[seg.name] = fd
        else:
            os.close(fd)
        self._dirty = False
        if victim is not None:
            self._unlink(victim.path)

    def _disk_write(self, data: bytes) -> int | None:
        """Append to the active segment; the offset written at, or None after switching to memory."""
        seg = self._active
        n = len(data)
        self._make_room(n)
        off = seg.size
        view = memoryview(data)
        done = 0
        try:
            while done < n:
                done += _write(self._active_fd, view[done:])
        except OSError as e:
            self._disk_failed(e)
            return None
        with self._cond:
            seg.size += n
            self._disk_bytes += n
        self._dirty = True
        return off

    def _disk_failed(self, e: OSError) -> None:
        """A write to the buffer disk failed: cut the partial records, carry on in memory."""
        seg, fd, f = self._active, self._active_fd, self._open
        if seg is not None:
            cut = f.disk_start if f is not None and f.segment is seg else seg.size
            try:
                os.ftruncate(fd, cut)
            except OSError:
                pass  # read-only: the torn tail is cut when the log is next opened
            with self._cond:
                self._disk_bytes -= seg.size - cut
                seg.size = cut
                if f is not None and f.segment is seg:
                    seg.live.discard(f.seq)
                    f.segment = None
                    f.offsets, f.ends = array("Q"), array("Q")
                    self._memory_bytes += f.size
            self._dirty = False  # what is left is complete records; nothing more will be synced from this fd
        self._deactivate()
        self._to_memory(e)

    def _to_memory(self, e: OSError) -> None:
        reason = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            line = (f"buffer disk full at {self._path}: streaming live from memory, oldest video will be lost if the "
                    "network is down")
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            line = (f"buffer at {self._path} is not writable ({reason}): streaming live from memory, oldest video will "
                    "be lost if the network is down; check buffer.path and the file system")
        else:
            line = (f"buffer at {self._path} failed ({reason}): streaming live from memory, oldest video will be lost "
                    "if the network is down")
        with self._cond:
            was_disk = self._mode == "disk"
            self._mode = "memory"
            self._last_error = line
        self._retry_at = self._clock() + self._disk_retry_s
        if was_disk:
            log.warning("%s", line)
        else:  # a failed retry: the line was already said
            log.debug("buffer: disk still unusable: %s", reason)

    def _abandon_open(self) -> None:
        f = self._open
        self._open = None
        with self._cond:
            self._frags.pop(f.seq, None)
            if f.segment is None:
                self._memory_bytes -= f.size
            else:
                f.segment.live.discard(f.seq)
            self._cond.notify_all()
        if f.segment is not None and f.segment is self._active:
            try:
                os.ftruncate(self._active_fd, f.disk_start)
                with self._cond:
                    self._disk_bytes -= self._active.size - f.disk_start
                    self._active.size = f.disk_start
            except OSError:
                pass

    # ------------------------------------------------------------------ internals: room, eviction, deletion

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
        except OSError as e:
            log.debug("buffer: cannot delete %s: %s", path, e)
            return
        log.debug("buffer: deleted %s", path)
        self._dir_dirty = True

    # ------------------------------------------------------------------ internals: durability

    def _backlog(self, now: float) -> bool:
        with self._cond:
            for f in self._frags.values():
                if f.complete and f.segment is not None:
                    return now - f.completed_at >= self._sync_interval
        return False

    def _maybe_sync(self) -> None:
        if self._mode != "disk" or not (self._dirty or self._unsynced or self._dir_dirty):
            return
        now = self._clock()
        if now - self._last_sync < self._sync_interval or not self._backlog(now):
            return
        self._sync(now)

    def _sync(self, now: float) -> None:
        self._last_sync = now
        try:
            if self._dirty and self._active_fd is not None:
                _fdatasync(self._active_fd)
                self._dirty = False
            for name in list(self._unsynced):
                fd = self._unsynced.pop(name)
                try:
                    _fdatasync(fd)
                finally:
                    os.close(fd)
            if self._dir_dirty:
                self._sync_dir()
        except OSError as e:
            self._disk_failed(e)

    def _sync_dir(self) -> None:
        self._dir_dirty = False
        fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _fsync(fd)
        finally:
            os.close(fd)

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
