"""The fragment log's segment writer: the writer thread's half (the muxer).

SegmentWriter owns the files: the lock file, the high-water mark of fragment numbers (next_seq), recovery of the
segments at open, rotation of the active segment, the disk writes of the records of segment.py, the periodic
fdatasync while a backlog exists, and the fall-back to memory when the disk fails (and the retries). It publishes
what it wrote into the books of index.FragmentIndex under their Condition; fragment_log.FragmentLog is the facade.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import weakref
import zlib
from array import array
from collections.abc import Callable

from kvs_edge.config import BufferConfig

from . import segment as fmt
from .index import FragmentIndex, LogInUse, _Frag, _Seg

log = logging.getLogger("kvs_edge.log")

MiB = 1 << 20
DEFAULT_SEGMENT_BYTES = 8 * MiB
DEFAULT_SEGMENT_SECONDS = 8.0
DEFAULT_DISK_RETRY_S = 10.0
SEQ_BLOCK = 1 << 16

# The OS boundary: module-level so that a test can inject a fault (ENOSPC, EIO) where no real small file system can
# be mounted, or count syncs. Same signatures as the os functions.
_write = os.write
_fdatasync = os.fdatasync
_fsync = os.fsync


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError as e:  # not Linux, or /proc not mounted: fragments are labelled with an unknown boot
        log.debug("buffer: no boot id (%s): fragments are labelled 'unknown'", e)
        return "unknown"


def _segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


def _is_segment_name(name: str) -> bool:
    return len(name) == 24 and name.endswith(".seg") and name[:20].isdigit()


class SegmentWriter(FragmentIndex):
    """The writer thread's half of the fragment log: files, rotation, sync, recovery, disk-failure fallback."""

    def __init__(self, path: str | os.PathLike, max_bytes: int, *, boot_id: str | None = None,
                 sync_interval_s: float = BufferConfig.sync_seconds, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS, memory_max_bytes: int | None = None,
                 disk_retry_s: float = DEFAULT_DISK_RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(os.fspath(path), max_bytes, memory_max_bytes, clock)
        self._boot_id = boot_id or read_boot_id()
        self._sync_interval = float(sync_interval_s)
        # At least ~8 segments fit under the cap, so that evicting one frees a small share of it.
        self._segment_bytes = max(4096, min(int(segment_bytes), self._max_bytes // 8))
        self._segment_seconds = float(segment_seconds)
        self._disk_retry_s = float(disk_retry_s)
        # writer state (the writer thread's alone)
        self._active: _Seg | None = None
        self._active_fd: int | None = None
        self._unsynced: dict[str, int] = {}  # closed segments with data not yet fdatasync'ed -> their fd
        self._dirty = False
        self._last_sync = clock()
        self._retry_at = 0.0
        self._lock_fd: int | None = None
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
            except OSError as e:
                # read-only and no lock file: nothing else can be writing here either
                log.debug("buffer: no lock file at %s (%s): the directory is read-only", lock_path, e.strerror or e)
                return
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
                except OSError as e:  # read-only: the reader stops at the clean length anyway (the index ends there)
                    log.warning("buffer: cannot cut the torn tail of %s (%s): it is cut at the next start", p,
                                e.strerror or e)
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
        except FileNotFoundError:
            return 0  # a new buffer: seq starts after the segments found
        except (OSError, ValueError) as e:
            log.warning("buffer: cannot read the fragment counter in %s (%s): continuing after the newest segment",
                        self._path, e)
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

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
            except OSError as te:  # read-only: recovery cuts the torn tail when the log is next opened
                log.warning("buffer: cannot cut the partial record at byte %d of %s (%s): it is cut at the next start",
                            cut, seg.path, te.strerror or te)
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
            except OSError as e:  # the fragment has no END record: recovery discards it at the next start
                log.warning("buffer: cannot cut the unfinished fragment %d from %s (%s): it is discarded at the next "
                            "start", f.seq, f.segment.path, e.strerror or e)
            else:
                with self._cond:
                    self._disk_bytes -= self._active.size - f.disk_start
                    self._active.size = f.disk_start

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
