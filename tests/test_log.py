"""The fragment log on a real directory: restart, reader/writer, size cap, release, fsync policy, torn tails."""

from __future__ import annotations

import gc
import logging
import os
import queue
import random
import shutil
import threading
import zlib

import pytest

from kvs_edge.log import FragmentGone, FragmentLog, LogInUse
from kvs_edge.log import segment_writer as fl_mod
from kvs_edge.log import segment as fmt

HEADER_A = b"\x1a\x45\xdf\xa3 session header A"
HEADER_B = b"\x1a\x45\xdf\xa3 session header B (new SPS)"


class FakeClock:
    """Monotonic seconds, moved by the test."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def frames_of(seq: int, n: int = 5, size: int = 700) -> list[bytes]:
    rnd = random.Random(seq)
    return [rnd.randbytes(rnd.randint(1, size)) for _ in range(n)]


def write_fragment(log: FragmentLog, hid: int, first_ms: int, frames: list[bytes], head: bytes = b"CLUSTER") -> int:
    seq = log.start_fragment(hid, first_ms, head)
    for i, fr in enumerate(frames):
        log.append(fr, first_ms + 33 * i)
    log.end_fragment()
    return seq


def read_all(log: FragmentLog, seq: int, step: int = 333) -> bytes:
    out = bytearray()
    while True:
        data, done = log.read(seq, len(out), step, timeout=0)
        out += data
        if done:
            return bytes(out)
        assert data, "a complete fragment must not need waiting"


def backlog(log: FragmentLog) -> list[int]:
    seqs, after = [], None
    while (info := log.next_fragment(after, timeout=0)) is not None:
        seqs.append(info.seq)
        after = info.seq
    return seqs


def seg_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def test_restart_keeps_backlog_in_order_with_headers_and_timecodes(tmp_path):
    log = FragmentLog(tmp_path, 10 << 20, boot_id="boot-1", segment_bytes=8192)
    a, b = log.add_header(HEADER_A), log.add_header(HEADER_B)
    assert a != b and log.add_header(HEADER_A) == a
    written = {}
    for i in range(12):
        hid = a if i < 6 else b
        frames = frames_of(i)
        seq = write_fragment(log, hid, 5000 + 2000 * i, frames, head=b"CL%d" % i)
        written[seq] = (hid, 5000 + 2000 * i, 5000 + 2000 * i + 33 * (len(frames) - 1), b"CL%d" % i + b"".join(frames))
    seqs = sorted(written)
    for s in seqs[:3] + [seqs[6]]:
        log.release(s)
    assert len(seg_files(tmp_path)) > 1
    log.close()

    log2 = FragmentLog(tmp_path, 10 << 20, boot_id="boot-2", segment_bytes=8192)
    left = [s for s in seqs[3:] if s != seqs[6]]
    assert backlog(log2) == left
    for s in left:
        hid, first, last, data = written[s]
        info = log2.info(s)
        assert (info.first_ms, info.last_ms, info.size, info.frames, info.complete, info.boot_id) == \
            (first, last, len(data), 5, True, "boot-1")
        assert log2.header(info.header_id) == (HEADER_A if hid == a else HEADER_B)
        assert read_all(log2, s) == data
    # the same header bytes get the same id after the restart; new fragments come after the backlog
    assert log2.add_header(HEADER_B) == log2.info(left[-1]).header_id
    new = write_fragment(log2, log2.add_header(HEADER_B), 99_000, frames_of(99))
    assert new > max(seqs) and backlog(log2) == left + [new]
    assert log2.info(new).boot_id == "boot-2"
    log2.close()


def test_release_deletes_a_segment_at_once_and_seq_survives_an_empty_log(tmp_path):
    log = FragmentLog(tmp_path, 10 << 20, segment_bytes=4096)
    hid = log.add_header(HEADER_A)
    seqs = [write_fragment(log, hid, 2000 * i, frames_of(i, n=4, size=600)) for i in range(8)]
    files = seg_files(tmp_path)
    assert len(files) >= 3
    first_seg_seqs = [s for s in seqs if s < int(files[1][:20])]
    for s in first_seg_seqs[:-1]:
        log.release(s)
        assert files[0] in seg_files(tmp_path)
    log.release(first_seg_seqs[-1])
    assert files[0] not in seg_files(tmp_path)  # deleted by release() itself, before it returned
    for s in seqs:
        log.release(s)
    log.close()
    assert seg_files(tmp_path) == []
    log2 = FragmentLog(tmp_path, 10 << 20)
    assert backlog(log2) == []
    assert write_fragment(log2, log2.add_header(HEADER_A), 0, frames_of(1)) > max(seqs)
    log2.close()


def test_reader_gets_each_frame_while_the_fragment_is_being_written(tmp_path):
    log = FragmentLog(tmp_path, 10 << 20)
    hid = log.add_header(HEADER_A)
    events: queue.Queue = queue.Queue()
    got = bytearray()

    def reader():
        info = log.next_fragment(None, timeout=60)  # blocked until the writer starts a fragment
        events.put(("started", info.seq, info.complete))
        while True:
            data, done = log.read(info.seq, len(got), 1 << 20, timeout=60)
            got.extend(data)
            events.put(("read", len(got), done))
            if done:
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    frames = frames_of(7, n=10)
    seq = log.start_fragment(hid, 0, b"HEAD")
    assert events.get(timeout=30)[0] == "started"
    expected = b"HEAD"
    ev = events.get(timeout=30)
    assert ev == ("read", len(expected), False)
    for i, fr in enumerate(frames):
        log.append(fr, 33 * i)
        expected += fr
        # the reader, blocked in read() for up to 60 s, has this frame before the next append and before the end
        ev = events.get(timeout=30)
        while ev[1] < len(expected):  # (an empty frame would not produce a read event; none are empty here)
            ev = events.get(timeout=30)
        assert ev == ("read", len(expected), False)
        assert log.info(seq).complete is False
    log.end_fragment()
    assert events.get(timeout=30) == ("read", len(expected), True)
    t.join(timeout=30)
    assert bytes(got) == expected
    log.close()


def wake_until_answered(log: FragmentLog, results: queue.Queue):
    """wake() until the blocked call returns (a wake() before the reader blocks is not meant to be remembered)."""
    for _ in range(3000):
        log.wake()
        try:
            return results.get(timeout=0.01)
        except queue.Empty:
            pass
    raise AssertionError("wake() did not return the blocked reader")


def test_wake_returns_blocked_readers(tmp_path):
    log = FragmentLog(tmp_path, 10 << 20)
    results: queue.Queue = queue.Queue()
    t = threading.Thread(target=lambda: results.put(log.next_fragment(None, timeout=120)), daemon=True)
    t.start()
    assert wake_until_answered(log, results) is None  # long before its 120 s timeout
    hid = log.add_header(HEADER_A)
    seq = log.start_fragment(hid, 0, b"H")
    t = threading.Thread(target=lambda: results.put(log.read(seq, 1, 100, timeout=120)), daemon=True)
    t.start()
    assert wake_until_answered(log, results) == (b"", False)
    log.close()


def test_size_cap_evicts_the_oldest_whole_fragments_counted_and_logged(tmp_path, caplog):
    clock = FakeClock()
    cap = 64 * 1024
    log = FragmentLog(tmp_path, cap, segment_bytes=8192, clock=clock)
    hid = log.add_header(HEADER_A)
    sizes, contents = {}, {}
    caplog.set_level(logging.WARNING, logger="kvs_edge.log")
    for i in range(60):
        frames = frames_of(i, n=6, size=900)
        seq = write_fragment(log, hid, 2000 * i, frames)
        contents[seq] = b"CLUSTER" + b"".join(frames)
        sizes[seq] = len(contents[seq])
        assert sum(os.path.getsize(tmp_path / n) for n in seg_files(tmp_path)) <= cap
    st = log.stats()
    kept = backlog(log)
    evicted = sorted(set(sizes) - set(kept))
    assert st.evicted_fragments == len(evicted) > 0
    assert st.evicted_bytes == sum(sizes[s] for s in evicted)
    assert st.fragments == len(kept) and st.bytes <= cap
    # the oldest went, the newest stayed: every evicted seq is older than every kept one, and the newest is kept
    assert max(evicted) < min(kept) and kept[-1] == max(sizes)
    assert kept == list(range(min(kept), max(kept) + 1))
    for s in kept:
        assert read_all(log, s) == contents[s]  # never a partial fragment
    with pytest.raises(FragmentGone):
        log.read(evicted[0], 0, 100, timeout=0)
    assert log.info(evicted[0]) is None
    lines = [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(lines) == 1, lines  # the first eviction is said at once, then at most one line a minute
    clock.t += 61
    write_fragment(log, hid, 999_000, frames_of(1, n=6, size=900))
    lines = [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(lines) == 2 and "dropped the" in lines[1]
    log.close()


def test_eviction_spares_the_fragment_the_reader_is_in_the_middle_of(tmp_path):
    log = FragmentLog(tmp_path, 64 * 1024, segment_bytes=8192)
    hid = log.add_header(HEADER_A)
    first = write_fragment(log, hid, 0, frames_of(0, n=6, size=900))
    whole = b"CLUSTER" + b"".join(frames_of(0, n=6, size=900))
    part, done = log.read(first, 0, 100, timeout=0)  # the uploader is sending it
    assert not done
    for i in range(1, 60):
        write_fragment(log, hid, 2000 * i, frames_of(i, n=6, size=900))
    assert log.stats().evicted_fragments > 0
    kept = backlog(log)
    # the one being read stayed although it is the oldest; fragments newer than it were dropped instead
    assert kept[0] == first and any(s not in kept for s in range(first + 1, kept[-1]))
    rest, done = log.read(first, 100, 1 << 20, timeout=0)
    assert done and part + rest == whole
    log.close()


def test_no_fsync_while_online_bounded_sync_while_backlog(tmp_path, monkeypatch):
    """Fake clock; the OS boundary (fdatasync/fsync) is wrapped to record when syncs happen."""
    clock = FakeClock()
    log = FragmentLog(tmp_path, 100 << 20, sync_interval_s=2.0, segment_bytes=64 * 1024, clock=clock)
    syncs: list[tuple[str, float]] = []
    real_fdatasync, real_fsync = fl_mod._fdatasync, fl_mod._fsync
    monkeypatch.setattr(fl_mod, "_fdatasync", lambda fd: (syncs.append(("data", clock.t)), real_fdatasync(fd))[1])
    monkeypatch.setattr(fl_mod, "_fsync", lambda fd: (syncs.append(("dir", clock.t)), real_fsync(fd))[1])
    hid = log.add_header(HEADER_A)
    frame_s = 1 / 30
    pending: list[tuple[float, int]] = []  # (time the ACK arrives, seq)

    def run(fragments: int, online: bool) -> None:
        for _ in range(fragments):
            seq = log.start_fragment(hid, int(clock.t * 1000), b"C")
            for _ in range(60):
                clock.t += frame_s
                while online and pending and pending[0][0] <= clock.t:
                    log.release(pending.pop(0)[1])
                log.append(b"x" * 2000, int(clock.t * 1000))
            log.end_fragment()
            pending.append((clock.t + 1.0, seq))  # acknowledged 1 s after it completes

    run(20, online=True)  # 40 s of video
    assert syncs == []
    offline_from = clock.t
    pending.clear()  # the network is gone: no more ACKs
    run(10, online=False)
    data_syncs = [t for kind, t in syncs if kind == "data"]
    assert data_syncs and syncs[0][0] == "data"
    # the first sync once the oldest unacknowledged fragment is older than sync_interval, then every ~2 s, never more
    # often: so a power cut loses at most ~sync_interval of video
    assert data_syncs[0] - offline_from <= 2.0 + frame_s + 1e-9
    moments = sorted(set(data_syncs))  # one sync moment may fdatasync several segments
    gaps = [b - a for a, b in zip(moments, moments[1:])]
    assert len(moments) >= 8  # 20 s offline
    assert all(2.0 - 1e-9 <= g <= 2.0 + frame_s + 1e-9 for g in gaps), gaps
    assert clock.t - data_syncs[-1] <= 2.0 + frame_s
    assert any(kind == "dir" for kind, _ in syncs)  # segments created during the backlog are made durable too
    log.close()


def _write_one_segment(path, n: int, leave_open: bool):
    log = FragmentLog(path, 100 << 20, segment_bytes=1 << 20)
    hid = log.add_header(HEADER_A)
    contents = {}
    for i in range(n):
        frames = frames_of(i, n=4, size=300)
        seq = write_fragment(log, hid, 2000 * i, frames)
        contents[seq] = b"CLUSTER" + b"".join(frames)
    if leave_open:
        log.start_fragment(hid, 2000 * n, b"CLUSTER")
        log.append(b"torn frame" * 10, 2000 * n)
    (seg,) = seg_files(path)
    with open(os.path.join(path, seg), "rb") as f:
        data = f.read()
    log.close()
    return seg, data, contents


def test_torn_tail_cut_at_open_and_log_usable_after(tmp_path):
    seg, data, contents = _write_one_segment(tmp_path / "orig", 6, leave_open=True)
    scan_ends = {}  # seq -> offset where its END record ends, found by searching the file for the expected record
    for i, s in enumerate(sorted(contents)):
        rec = fmt.end_record(s, len(contents[s]), 4, 2000 * i, 2000 * i + 99, zlib.crc32(contents[s]))
        assert data.count(rec) == 1
        scan_ends[s] = data.find(rec) + len(rec)
    salvages = []
    for cut in sorted(set(random.Random(5).sample(range(len(data) + 1), 60)) | {len(data), 0, 9}):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        with open(d / seg, "wb") as f:
            f.write(data[:cut])
        log = FragmentLog(d, 100 << 20)
        kept = backlog(log)
        # the complete fragments, and the one the cut falls in with its whole frames (salvaged: a power cut keeps
        # what was flushed of the fragment being written)
        salvaged = [f.seq for f in fmt.scan_segment(data[:cut]).fragments if f.salvaged]
        assert kept == [s for s in sorted(contents) if scan_ends[s] <= cut] + salvaged, cut
        for s in kept:
            got = read_all(log, s)
            if s in salvaged:
                frames = frames_of(sorted(contents).index(s), n=4, size=300) if s in contents else [b"torn frame" * 10]
                whole = [b"CLUSTER" + b"".join(frames[:k]) for k in range(1, len(frames) + 1)]
                assert got in whole  # its first frames, whole
                salvages.append(s)
            else:
                assert got == contents[s]
        # the log is usable after the cut: new fragments, then a reopen sees old and new in order
        new = write_fragment(log, log.add_header(HEADER_A), 50_000, [b"new"])
        log.close()
        log = FragmentLog(d, 100 << 20)
        assert backlog(log) == kept + [new]
        log.close()
        shutil.rmtree(d)
    assert len(salvages) >= 10  # the cuts fell inside fragments often enough to check the salvage


def test_a_second_process_cannot_open_the_same_log(tmp_path):
    log = FragmentLog(tmp_path, 1 << 20)
    with pytest.raises(LogInUse, match="in use by another kvs-edge process"):
        FragmentLog(tmp_path, 1 << 20)
    log.close()
    log = FragmentLog(tmp_path, 1 << 20)
    seq = write_fragment(log, log.add_header(HEADER_A), 0, [b"kept"])
    del log  # dropped without close(), as a crash would: the directory is free again once it is collected
    gc.collect()
    with FragmentLog(tmp_path, 1 << 20) as log:
        assert backlog(log) == [seq] and read_all(log, seq) == b"CLUSTERkept"


def test_misuse_is_reported(tmp_path):
    log = FragmentLog(tmp_path, 1 << 20)
    with pytest.raises(KeyError):
        log.start_fragment(5, 0, b"")
    hid = log.add_header(HEADER_A)
    seq = log.start_fragment(hid, 0, b"x")
    with pytest.raises(RuntimeError):
        log.start_fragment(hid, 0, b"x")
    with pytest.raises(ValueError):
        log.release(seq)  # still being written
    with pytest.raises(ValueError):
        log.read(seq, 5, 10, timeout=0)  # past the end
    log.append(b"y", 1)
    log.end_fragment()
    log.release(seq)
    with pytest.raises(FragmentGone):
        log.read(seq, 0, 10, timeout=0)
    log.close()


def test_reader_and_writer_threads_with_rotation_eviction_and_releases(tmp_path):
    """A reader thread streams and releases while the writer writes past the cap: every fragment the reader finishes
    is byte-exact; the others were evicted (FragmentGone) or are still in the log; no exception, no hang."""
    log = FragmentLog(tmp_path, 96 * 1024, segment_bytes=12 * 1024)
    hid = log.add_header(HEADER_A)
    expected: dict[int, bytes] = {}
    finished: dict[int, bytes] = {}
    gone: list[int] = []
    errors: list[BaseException] = []
    rnd = random.Random(3)

    def reader():
        try:
            after = None
            while (info := log.next_fragment(after, timeout=30)) is not None:
                buf = bytearray()
                try:
                    while True:
                        data, done = log.read(info.seq, len(buf), rnd.randint(1, 5000), timeout=30)
                        buf += data
                        if done:
                            break
                    finished[info.seq] = bytes(buf)
                    if rnd.random() < 0.5:
                        log.release(info.seq)
                except FragmentGone:
                    gone.append(info.seq)
                after = info.seq
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for i in range(150):
        frames = frames_of(1000 + i, n=4, size=1500)
        seq = log.start_fragment(hid, 2000 * i, b"C%d" % i)
        for k, fr in enumerate(frames):
            log.append(fr, 2000 * i + k)
        log.end_fragment()
        expected[seq] = b"C%d" % i + b"".join(frames)
    log.close()
    t.join(timeout=60)
    assert not t.is_alive() and not errors, errors
    for seq, data in finished.items():
        assert data == expected[seq], seq
    st = log.stats()
    skipped = set(expected) - set(finished) - set(gone)  # evicted before the reader got to them
    assert not set(finished) & set(gone)
    assert st.evicted_fragments >= len(gone) + len(skipped)  # nothing vanished that was not counted as evicted
    assert st.evicted_fragments > 0  # the cap was hit while the reader was streaming
    assert len(finished) > 20
