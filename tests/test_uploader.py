"""The uploader end to end: real fragment log -> uploader -> TLS -> the KVS emulator on loopback. No mocks.

Media: real H.264 (160x120, 10 fps, a key frame a second) through the real fragmenter into a real FragmentLog; the
archive the emulator writes is read back with PyAV (an independent Matroska demuxer) and compared frame by frame.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time

import av
import pytest
import trustme
from botocore.credentials import Credentials

from kvs_edge.clock import FixedOffset
from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator
from kvs_edge.kvs import uploader
from kvs_edge.kvs.control import ControlPlane, DataEndpoint
from kvs_edge.log.fragment_log import FragmentLog
from kvs_edge.media import h264
from kvs_edge.media.fragmenter import FragmentEnd, FragmentStart, Fragmenter, FrameWritten, SessionStart
from support.h264gen import make_h264

FPS = 10
FRAGMENTS = 10
STREAM = "cam"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def video():
    return make_h264(frames=FRAGMENTS * FPS, width=160, height=120, fps=FPS, gop=FPS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return str(d / "server.pem"), str(d / "ca.pem")


class Rig:
    def __init__(self, tmp_path, pki, **emu_kw):
        server_pem, self.ca_file = pki
        self.emu = Emulator(tmp_path / "emu", tls_cert=server_pem, tls_key=server_pem, **emu_kw).start()
        self.emu.create_stream(STREAM, retention_hours=24)
        self.creds = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
        self.control = ControlPlane("us-east-1", self.creds, endpoint_url=self.emu.url, ca_bundle=self.ca_file)
        self.log = FragmentLog(tmp_path / "log", 64 << 20, boot_id="test-boot", sync_interval_s=60)
        self.events: list = []
        self.start_ms = (int(time.time() * 1000) - 600_000) // 1000 * 1000  # 10 minutes ago, whole second

    def uploader(self, creds=None, **kw):
        kw.setdefault("stale_after_s", 3.0)
        kw.setdefault("backoff_base_s", 0.05)
        kw.setdefault("backoff_cap_s", 0.4)
        return uploader.Uploader(self.log, stream_name=STREAM, region="us-east-1",
                                 endpoint=DataEndpoint(self.control, STREAM), credentials=creds or self.creds,
                                 timebase=FixedOffset(0), ca_bundle=self.ca_file, on_event=self.events.append, **kw)

    def frame_ms(self, i):
        return self.start_ms + i * 1000 // FPS

    def write(self, video, pace_s=0.0, progress=None, first_index=0):
        """The muxer's side: frames through the fragmenter into the log, optionally paced like a camera."""
        frag = Fragmenter(target_ms=1000)
        header_id = None
        done = 0
        for i, u in enumerate(video.units):
            evs = frag.push(u.data, self.frame_ms(first_index + i), u.key)
            for ev in evs:
                done += self._apply(ev, header_id)
                if isinstance(ev, SessionStart):
                    header_id = self.log.add_header(ev.header)
            if progress is not None:
                progress[0] = done
            if pace_s:
                time.sleep(pace_s)
        for ev in frag.close():
            done += self._apply(ev, header_id)
        if progress is not None:
            progress[0] = done

    def _apply(self, ev, header_id) -> int:
        if isinstance(ev, FragmentStart):
            self.log.start_fragment(header_id, ev.timecode_ms, ev.data)
        elif isinstance(ev, FrameWritten):
            self.log.append(ev.data, ev.timecode_ms)
        elif isinstance(ev, FragmentEnd):
            self.log.end_fragment()
            return 1
        return 0

    def archived_frames(self):
        """(pts ms, sha1 of the AVCC payload) of every frame in the emulator's archive, by PyAV."""
        out = []
        for path in self.emu.archive_files(STREAM):
            with av.open(str(path), format="matroska") as c:
                for p in c.demux(video=0):
                    if p.size:
                        out.append((p.pts, hashlib.sha1(bytes(p)).hexdigest()))
        return out

    def expected_frames(self, video, first_index=0):
        return [(self.frame_ms(first_index + i), hashlib.sha1(h264.annexb_to_avcc(u.data)).hexdigest())
                for i, u in enumerate(video.units)]

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def close(self):
        self.emu.stop()
        self.control.close()
        self.log.close()


@pytest.fixture
def rig(tmp_path, pki):
    r = Rig(tmp_path, pki)
    yield r
    r.close()


@pytest.fixture
def rig_factory(tmp_path, pki):
    made = []

    def make(**kw):
        made.append(Rig(tmp_path, pki, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def run_in_thread(up):
    stop = threading.Event()
    t = threading.Thread(target=up.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


# ------------------------------------------------------------------ the happy path


def test_upload_completes_every_frame_once_with_producer_timestamps(rig, video):
    rig.write(video)
    up = rig.uploader()
    assert up.drain(60)
    assert rig.log.next_fragment(None, 0) is None  # every fragment released
    assert rig.archived_frames() == rig.expected_frames(video)
    entries = rig.emu.archive(STREAM)
    assert [e.producer_ts_ms for e in entries] == [rig.frame_ms(k * FPS) for k in range(FRAGMENTS)]
    assert all(not e.defects for e in entries)
    persisted = rig.of(uploader.FragmentPersisted)
    assert [e.producer_ms for e in persisted] == [rig.frame_ms(k * FPS) for k in range(FRAGMENTS)]
    st = rig.emu.stats(STREAM)
    assert st.max_concurrent == 1 and st.connections_total == 1 and not st.error_acks
    assert up.stats.resends == 0 and up.stats.fragments_done == FRAGMENTS
    assert not rig.of(uploader.Error)


# ------------------------------------------------------------------ full duplex


def test_error_5000_mid_stream_is_acted_on_while_the_body_is_still_open(rig, video):
    rig.emu.faults.error_on_fragment(5000, nth=3)
    progress = [0]
    written_at_connect = []
    seen = rig.events

    def on_event(ev):
        seen.append(ev)
        if isinstance(ev, uploader.Connected):
            written_at_connect.append((ev.start_seq, progress[0]))

    up = rig.uploader()
    up.on_event = on_event
    stop, t = run_in_thread(up)
    writer = threading.Thread(target=rig.write, args=(video, 0.06, progress))
    writer.start()
    writer.join(60)
    assert up.drain(60)
    stop.set()
    t.join(10)
    assert rig.emu.stats(STREAM).error_acks == [(5000, rig.frame_ms(2 * FPS))]
    # the second connection starts at fragment 3 (seq of the third fragment) while the writer has written at most
    # a few more fragments: the client read the ERROR on the open connection, not after sending all it had
    assert len(written_at_connect) >= 2
    first_seq = written_at_connect[0][0]
    resend_seq, fragments_written = written_at_connect[1]
    assert resend_seq == first_seq + 2
    assert fragments_written < FRAGMENTS - 3
    disc = [e for e in rig.of(uploader.Disconnected) if e.kind == "error_ack"]
    assert len(disc) == 1 and "5000" in disc[0].reason
    assert rig.archived_frames() == rig.expected_frames(video)  # fragment 3 resent, nothing lost or doubled


# ------------------------------------------------------------------ faults


class DropEveryConnection:
    """The data endpoint as the uploader sees it, arming the emulator to cut the next PutMedia connection at a seeded
    random body offset each time the uploader is about to connect, until `n` connections were actually cut."""

    def __init__(self, inner, faults, rng, max_offset, n, events):
        self.inner, self.faults, self.rng, self.max_offset, self.n, self.events = inner, faults, rng, max_offset, n, events
        self.offsets = []

    def cut(self):
        return len([e for e in self.events if isinstance(e, uploader.Disconnected) and "connection lost" in e.reason])

    def get(self):
        if self.cut() < self.n:
            self.offsets.append(self.rng.randint(1, self.max_offset))
            self.faults.drop_after_bytes(self.offsets[-1])
        return self.inner.get()

    def invalidate(self):
        self.inner.invalidate()


def test_connection_dropped_at_20_random_offsets(rig_factory, video):
    import random

    rig = rig_factory(persist_delay_s=0.05)
    rig.write(video)
    infos = list(iter_infos(rig.log))
    header = len(rig.log.header(infos[0].header_id))
    biggest = max(i.size for i in infos)
    up = rig.uploader(backoff_cap_s=0.1)
    drops = DropEveryConnection(up.endpoint, rig.emu.faults, random.Random(1234), header + 2 * biggest, 20, rig.events)
    up.endpoint = drops
    assert up.drain(90)
    expected = rig.expected_frames(video)
    # whether a random offset lands inside what a connection still had to send depends on ACK timing: when the log
    # ran dry before 20 connections were cut, more video follows (the camera goes on), until 20 were
    for more in range(1, 6):
        if drops.cut() >= 20:
            break
        rig.write(video, first_index=more * len(video.units))
        expected += rig.expected_frames(video, first_index=more * len(video.units))
        assert up.drain(90)
    assert drops.cut() == 20
    frames = rig.archived_frames()
    assert set(frames) == set(expected)  # every frame archived, nothing else
    entries = rig.emu.archive(STREAM)
    by_ts = collections.defaultdict(list)
    for e in entries:
        by_ts[e.producer_ts_ms].append(e)
    dups = {ts: es for ts, es in by_ts.items() if len(es) > 1}
    duplicate_entries = sum(len(es) - 1 for es in dups.values())
    for ts, es in dups.items():
        # a duplicate is the same fragment again (same frames, same bytes), from a later session
        assert len({(e.size, e.frames, e.first_frame_ms, e.last_frame_ms) for e in es}) == 1
        assert len({e.session for e in es}) == len(es)
    counts = collections.Counter(frames)
    for i, f in enumerate(expected):  # each frame as often as its fragment was archived: once, or per duplicate
        assert counts[f] == len(by_ts[rig.frame_ms(i // FPS * FPS)])
    # KVS's 4004 applies within one PutMedia call: a fragment re-sent on a new connection is accepted again (a
    # duplicate when its first copy was stored), never refused, so the client skips nothing.
    assert rig.of(uploader.FragmentSkipped) == []
    # duplicates only come from resends of fragments whose PERSISTED the client never saw
    assert duplicate_entries <= up.stats.resends
    print(f"\n20 drops at offsets {sorted(drops.offsets)}: {rig.emu.stats(STREAM).connections_total} connections, "
          f"{up.stats.resends} fragment resends, {up.stats.received_unpersisted} seen RECEIVED-not-PERSISTED at a "
          f"drop, {duplicate_entries} duplicates archived")


def iter_infos(log):
    after = None
    while (info := log.next_fragment(after, 0)) is not None:
        yield info
        after = info.seq


@pytest.mark.parametrize("kind", ["503", "500", "throttle"])
def test_5xx_and_throttling_back_off_with_jitter_then_succeed(rig, video, kind):
    rig.write(video)
    rig.emu.faults.fail_next(4, kind, paths=["/putMedia"])
    up = rig.uploader(backoff_base_s=0.05, backoff_cap_s=1.0)
    assert up.drain(60)
    backoffs = rig.of(uploader.RetryScheduled)
    assert len(backoffs) == 4
    assert all(0 <= b.seconds <= 1.0 for b in backoffs)
    assert len({b.seconds for b in backoffs}) == 4  # jittered, not a fixed schedule
    errs = [e.message for e in rig.of(uploader.Error)]
    assert len(errs) == 4 and all("\n" not in m for m in errs)
    if kind == "throttle":
        assert all("throttling" in m for m in errs)
    else:
        assert all(f"server error {kind}" in m for m in errs)
    assert [s for s, _ in rig.emu.stats(STREAM).http_errors] == [400 if kind == "throttle" else int(kind)] * 4
    assert rig.archived_frames() == rig.expected_frames(video)


def test_4006_on_one_fragment_skips_it_and_the_rest_arrive(rig, video, caplog):
    rig.write(video)
    rig.emu.faults.error_on_fragment(4006, nth=4)
    up = rig.uploader()
    with caplog.at_level(logging.ERROR, logger="kvs_edge.uploader"):
        assert up.drain(60)
    skipped = rig.of(uploader.FragmentSkipped)
    bad_ts = rig.frame_ms(3 * FPS)
    assert [(s.producer_ms, s.error_id) for s in skipped] == [(bad_ts, 4006)]
    assert any(str(bad_ts) in r.getMessage() and "4006" in r.getMessage() for r in caplog.records)
    expected = [f for f in rig.expected_frames(video) if not bad_ts <= f[0] < bad_ts + 1000]
    assert rig.archived_frames() == expected
    assert rig.log.next_fragment(None, 0) is None


def test_a_stalled_server_is_reset_and_the_upload_resumes(rig, video):
    rig.write(video)
    up = rig.uploader(stale_after_s=0.5)
    still_stalled = []

    def on_event(ev):
        rig.events.append(ev)
        if isinstance(ev, uploader.Disconnected) and ev.kind == "stale":
            still_stalled.append(rig.emu.faults.stalled_for() > 0)

    up.on_event = on_event
    rig.emu.faults.stall(3.0)
    assert up.drain(60)
    assert still_stalled and still_stalled[0]  # the client reset the connection while the server was still stalled
    assert rig.archived_frames() == rig.expected_frames(video)


def test_rotation_loses_nothing_duplicates_nothing_and_never_overlaps(rig, video):
    up = rig.uploader(max_connection_s=2.0)
    stop, t = run_in_thread(up)
    rig.write(video, pace_s=0.05)  # 5 s of live video
    assert up.drain(60)
    stop.set()
    t.join(10)
    rotated = [e for e in rig.of(uploader.Disconnected) if e.kind == "rotated"]
    st = rig.emu.stats(STREAM)
    assert len(rotated) >= 2 and st.connections_total >= 3
    assert st.max_concurrent == 1  # never two connections at once
    assert not st.error_acks and not st.http_errors
    assert rig.archived_frames() == rig.expected_frames(video)  # nothing lost, nothing twice
    assert len(rig.emu.archive_files(STREAM)) == st.connections_total  # each session: a fresh header
    assert not [e for e in rig.of(uploader.Disconnected) if e.kind != "rotated"]


def test_wrong_secret_is_one_clear_line_without_the_secret(rig, video):
    rig.write(video)
    wrong = Credentials(DEFAULT_ACCESS_KEY_ID, "not-the-secret-zz9")
    up = rig.uploader(creds=wrong)
    got = threading.Event()
    up.on_event = lambda ev: (rig.events.append(ev), isinstance(ev, uploader.Error) and got.set())
    stop, t = run_in_thread(up)
    assert got.wait(30)
    stop.set()
    t.join(10)
    msg = rig.of(uploader.Error)[0].message
    assert "\n" not in msg and "not-the-secret-zz9" not in msg
    assert "kinesisvideo:PutMedia" in msg and "credentials" in msg


def test_a_new_codec_configuration_starts_a_new_session_with_its_header(rig, video):
    other = make_h264(frames=3 * FPS, width=176, height=144, fps=FPS, gop=FPS)
    rig.write(video)
    rig.write(other, first_index=len(video.units))
    up = rig.uploader()
    assert up.drain(60)
    files = rig.emu.archive_files(STREAM)
    assert len(files) == 2, rig.events
    sizes = []
    for path in files:
        with av.open(str(path), format="matroska") as c:
            s = c.streams.video[0]
            sizes.append((s.codec_context.width, s.codec_context.height))
    assert sizes == [(160, 120), (176, 144)]
    assert rig.archived_frames() == rig.expected_frames(video) + rig.expected_frames(other, len(video.units))
    assert [e.kind for e in rig.of(uploader.Disconnected)] == ["rotated", "rotated"], rig.events


def test_nothing_is_sent_until_the_clock_can_be_trusted(rig, video):
    synced = threading.Event()
    asked = []

    def timebase(info):  # the clock's side of the contract: None until synchronized
        asked.append(info.seq)
        return info.first_ms if synced.is_set() else None

    rig.write(video)
    up = rig.uploader()
    up.timebase = timebase
    stop, t = run_in_thread(up)
    while len(asked) < 3:
        time.sleep(0.05)
    assert rig.emu.stats(STREAM).connections_total == 0  # no connection while the time base is unknown
    synced.set()
    assert up.drain(60)
    stop.set()
    t.join(10)
    assert rig.archived_frames() == rig.expected_frames(video)
