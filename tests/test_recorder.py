"""Recorder: real fragmenter events into a real FragmentLog, read back and demuxed by PyAV (an independent parser)."""

from __future__ import annotations

import io

import av

from kvs_edge.log import FragmentLog
from kvs_edge.media.fragmenter import Fragmenter, Notice
from kvs_edge.recorder import Recorder
from support.h264gen import make_h264

FPS = 10


def _read_all(frag_log: FragmentLog, seq: int) -> bytes:
    out = b""
    while True:
        data, done = frag_log.read(seq, len(out), 1 << 20, timeout=0)
        out += data
        if done:
            return out


def test_recorder_writes_sessions_fragments_and_frames_and_reports_what_started(tmp_path):
    enc = make_h264(3 * FPS, 160, 120, fps=FPS, gop=FPS)
    frag_log = FragmentLog(tmp_path / "log", 64 << 20, sync_interval_s=3600)
    rec = Recorder(frag_log)
    frag = Fragmenter(target_ms=1000)
    started, notices = [], []
    for i, u in enumerate(enc.units):
        s, n = rec.apply(frag.push(u.data, 5_000 + i * 100, u.key))
        started += s
        notices += n
    assert rec.open_seq is not None  # the last fragment stays open until the fragmenter closes it
    s, n = rec.apply(frag.close())
    started += s
    notices += n
    assert rec.open_seq is None and notices == []

    infos = []
    after = None
    while (info := frag_log.next_fragment(after, timeout=0)) is not None:
        infos.append(info)
        after = info.seq
    assert [(i.seq, i.first_ms) for i in infos] == started == [(started[0][0] + k, 5_000 + k * 1000) for k in range(3)]
    assert rec.fragments == 3 and rec.frames == 3 * FPS and all(i.complete for i in infos)
    assert {i.header_id for i in infos} == {rec.header_id}

    # the log holds a stream that an independent demuxer reads back frame for frame
    body = frag_log.header(rec.header_id) + b"".join(_read_all(frag_log, i.seq) for i in infos)
    with av.open(io.BytesIO(body), format="matroska") as c:
        pkts = [p for p in c.demux(video=0) if p.size]
    assert [p.pts for p in pkts] == [5_000 + i * 100 for i in range(3 * FPS)]
    assert [bool(p.is_keyframe) for p in pkts] == [u.key for u in enc.units]
    frag_log.close()


def test_recorder_passes_notices_back_and_writes_nothing_for_them(tmp_path):
    enc = make_h264(FPS, 160, 120, fps=FPS, gop=FPS)
    frag_log = FragmentLog(tmp_path / "log", 64 << 20, sync_interval_s=3600)
    rec = Recorder(frag_log)
    frag = Fragmenter(target_ms=1000)
    # frames before the first key frame are dropped by the fragmenter with a Notice: nothing reaches the log
    started, notices = rec.apply(frag.push(enc.units[1].data, 0, False))
    assert started == [] and frag_log.next_fragment(None, timeout=0) is None and rec.frames == 0
    started, more = rec.apply(frag.push(enc.units[0].data, 100, True))
    notices += more
    assert len(started) == 1 and rec.frames == 1
    notices += rec.apply(frag.close())[1]
    assert [n.kind for n in notices] == ["dropped_before_key"] and isinstance(notices[0], Notice)
    kinds = [n.kind for n in rec.apply(frag.push(b"\x00\x00\x01", 300, True))[1]]
    assert kinds == ["malformed"] and rec.frames == 1
    frag_log.close()
