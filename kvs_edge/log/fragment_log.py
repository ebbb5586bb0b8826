"""The fragment log: an on-disk ring buffer of MKV fragments between the muxer and the uploader.

FragmentLog is the facade other modules use. It is built from two halves along the line between the threads:
    segment_writer.SegmentWriter  the writer thread's: lock file, next_seq, recovery, rotation, disk writes, sync,
                                  disk-failure fallback to memory
    index.FragmentIndex           the shared books: fragments and segments, the reader API, eviction, memory mode

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
  is cut, and the fragment being written at a crash or power cut keeps its whole frames (salvaged: each frame is a
  checksummed record and the Cluster has an unknown size, so its first frames are a valid, shorter fragment; see
  log/segment.py). Dropping it whole lost up to fragment_seconds + sync_seconds at a power cut, not sync_seconds.
"""

from __future__ import annotations

from .index import (DEFAULT_MEMORY_MAX_BYTES, EVICT_LOG_INTERVAL_S, FragmentGone, FragmentIndex, FragmentInfo,  # noqa: F401
                    LogInUse, LogStats, MiB)
from .segment_writer import (DEFAULT_DISK_RETRY_S, DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_SECONDS, SEQ_BLOCK,  # noqa: F401
                             SegmentWriter, read_boot_id)


class FragmentLog(SegmentWriter):
    """One log directory: the writer API (add_header, start_fragment, append, end_fragment, close) for the muxer
    thread, the reader API (next_fragment, header, info, read, release, wake) for the uploader thread, stats() from
    anywhere. See the module docstring for the policies."""
