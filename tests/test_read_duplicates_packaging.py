"""Duplicates resolved at read time and the packaging rules the service applies only at playback, through botocore's
clients against the emulator, with the official SDK's sessions (and byte surgery on them) as the producer."""

from __future__ import annotations

import io
import time

import av
import pytest

from kvs_edge.emulator import archive_reader, packaging
from kvs_edge.emulator.store import StoreError
from support.kvs_client import cluster_timecodes, put_media_requests, set_cluster_timecode
from support.sdk_data import sdk_file
from test_read_api import client, data_client, decode_pts, split_documents

SDK_FRAMES = 180
T0, T1 = 1_699_999_000, 1_700_050_000  # around the SDK sessions' producer time (1700000000.000 + 6 s)


def ref() -> bytes:
    return sdk_file("ref.mkv").read_bytes()


def send(emu, stream: str, data: bytes) -> list[dict]:
    status, acks, err = put_media_requests(emu.url, stream, data)
    assert status == 200, err
    return acks


def accepted(acks: list[dict]) -> bool:
    return all(a["EventType"] != "ERROR" for a in acks) and sum(a["EventType"] == "PERSISTED" for a in acks) > 0


def clip_frames(emu, stream: str, kind="PRODUCER_TIMESTAMP", start=T0, end=T1) -> list[int]:
    """PTS (ms, rebased) of every frame of GetClip's MP4 over the range."""
    r = data_client(emu, stream, "GET_CLIP").get_clip(StreamName=stream, ClipFragmentSelector={
        "FragmentSelectorType": kind, "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}})
    return decode_pts(r["Payload"].read())


def listed(emu, stream: str) -> list[dict]:
    r = data_client(emu, stream, "LIST_FRAGMENTS").list_fragments(StreamName=stream, FragmentSelector={
        "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T1}})
    return r["Fragments"]


def without_codec_private(data: bytes) -> bytes:
    """The session with its CodecPrivate element overwritten by a Void element of the same length (sizes unchanged)."""
    at = data.index(bytes.fromhex("63a2"), 0, 400)  # in the track header (ref.layout.txt: @232, 42 bytes)
    size = data[at + 2] & 0x7F
    return data[:at] + bytes([0xEC, 0x80 | (size + 1)]) + bytes(size + 1) + data[at + 3 + size:]


def with_codec_private_byte(data: bytes, index: int, value: int) -> bytes:
    at = data.index(bytes.fromhex("63a2"), 0, 400) + 3
    return data[:at + index] + bytes([value]) + data[at + index + 1:]


def shifted(data: bytes, ms: int) -> bytes:
    for i, tc in enumerate(cluster_timecodes(data)):
        data = set_cluster_timecode(data, i, tc + ms)
    return data


def check_each_frame_once(emu, stream: str) -> None:
    frames = clip_frames(emu, stream)
    assert len(frames) == SDK_FRAMES and len(set(frames)) == SDK_FRAMES
    # GetMedia is not deduplicated: it returns every stored chunk in ingestion order
    r = data_client(emu, stream, "GET_MEDIA").get_media(StreamName=stream,
                                                       StartSelector={"StartSelectorType": "EARLIEST"})
    assert sum(len(decode_pts(d)) for d in split_documents(r["Payload"].read())) == 2 * SDK_FRAMES


def test_sdk_session_sent_twice_is_accepted_twice_and_read_once(emulator):
    """The service accepts a second session over timestamps the stream already holds (offline upload, resend after
    a lost PERSISTED ACK) and returns the oldest-ingested set when reading by producer timestamp."""
    client(emulator, "kinesisvideo").create_stream(StreamName="dup", DataRetentionInHours=24)
    first = send(emulator, "dup", ref())
    second = send(emulator, "dup", ref())
    assert accepted(first) and accepted(second), [a for a in second if a["EventType"] == "ERROR"]
    archive = emulator.archive("dup")
    assert len(archive) == 12 and len({e.session for e in archive}) == 2
    assert len(listed(emulator, "dup")) == 12  # ListFragments shows what is stored, both copies
    check_each_frame_once(emulator, "dup")
    # the oldest-ingested copy is the one served
    kept = archive_reader.list_fragments(emulator.store, "dup", selector_type="PRODUCER_TIMESTAMP", dedupe=True)
    assert [e.fragment_number for e in kept] == [e.fragment_number for e in archive[:6]]


def test_partly_overlapping_sessions_are_resolved_at_read_time(emulator):
    """Three sessions: the same producer range twice, then one that repeats half of it and adds 3 s."""
    client(emulator, "kinesisvideo").create_stream(StreamName="dup2", DataRetentionInHours=24)
    assert accepted(send(emulator, "dup2", ref()))
    assert accepted(send(emulator, "dup2", ref()))
    # a third session, partly overlapping: its first 3 fragments repeat, the rest is new
    third = shifted(ref(), 3000)
    assert accepted(send(emulator, "dup2", third))
    frames = clip_frames(emulator, "dup2")
    assert len(frames) == SDK_FRAMES + 90 and len(set(frames)) == len(frames)
    # by server timestamp there is no de-duplication: every stored frame
    now = time.time()
    assert len(clip_frames(emulator, "dup2", "SERVER_TIMESTAMP", now - 3600, now + 1)) == 3 * SDK_FRAMES


def test_session_without_codec_private_persists_but_does_not_play(emulator):
    client(emulator, "kinesisvideo").create_stream(StreamName="nocpd", DataRetentionInHours=24)
    acks = send(emulator, "nocpd", without_codec_private(ref()))
    assert accepted(acks) and sum(a["EventType"] == "PERSISTED" for a in acks) == 6  # ingest does not check CPD
    c = data_client(emulator, "nocpd", "GET_CLIP")
    with pytest.raises(c.exceptions.MissingCodecPrivateDataException):
        c.get_clip(StreamName="nocpd", ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T1}})
    # GetImages reports it per image (its error list has no codec exceptions)
    r = data_client(emulator, "nocpd", "GET_IMAGES").get_images(
        StreamName="nocpd", ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=1_700_000_000.0,
        EndTimestamp=1_700_000_001.0, SamplingInterval=500, Format="JPEG")
    assert [i.get("Error") for i in r["Images"]] == ["MEDIA_ERROR"] * 3
    # the listing and GetMedia still serve what is stored
    assert len(listed(emulator, "nocpd")) == 6


def test_invalid_codec_private_and_unsupported_codec(emulator):
    kv = client(emulator, "kinesisvideo")
    kv.create_stream(StreamName="badcpd", DataRetentionInHours=24)
    assert accepted(send(emulator, "badcpd", with_codec_private_byte(ref(), 0, 7)))  # configurationVersion 7
    c = data_client(emulator, "badcpd", "GET_CLIP")
    sel = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T1}}
    with pytest.raises(c.exceptions.InvalidCodecPrivateDataException):
        c.get_clip(StreamName="badcpd", ClipFragmentSelector=sel)

    kv.create_stream(StreamName="mpeg4", DataRetentionInHours=24)
    data = ref().replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/ASP", 1)  # same length: MPEG-4 Part 2
    assert accepted(send(emulator, "mpeg4", data))
    c = data_client(emulator, "mpeg4", "GET_CLIP")  # (each client has its own exception classes)
    with pytest.raises(c.exceptions.UnsupportedStreamMediaTypeException):
        c.get_clip(StreamName="mpeg4", ClipFragmentSelector=sel)


def test_no_retention_and_empty_range(emulator):
    kv = client(emulator, "kinesisvideo")
    kv.create_stream(StreamName="noret", DataRetentionInHours=0)
    assert all(a["EventType"] != "ERROR" for a in send(emulator, "noret", ref()))
    sel = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T1}}
    c = data_client(emulator, "noret", "GET_CLIP")
    with pytest.raises(c.exceptions.NoDataRetentionException):
        c.get_clip(StreamName="noret", ClipFragmentSelector=sel)
    i = data_client(emulator, "noret", "GET_IMAGES")
    with pytest.raises(i.exceptions.NoDataRetentionException):
        i.get_images(StreamName="noret", ImageSelectorType="SERVER_TIMESTAMP", StartTimestamp=0, EndTimestamp=1,
                     SamplingInterval=200, Format="PNG")
    kv.create_stream(StreamName="empty", DataRetentionInHours=1)
    c = data_client(emulator, "empty", "GET_CLIP")
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.get_clip(StreamName="empty", ClipFragmentSelector=sel)


def test_codec_private_changes_are_counted_across_sessions(emulator):
    """A clip may not change codec private data; an HLS session may change it up to 500 times."""
    client(emulator, "kinesisvideo").create_stream(StreamName="cpd", DataRetentionInHours=24)
    assert accepted(send(emulator, "cpd", ref()))
    # the same SPS/PPS with another profile-compatibility byte: a different but valid avcC
    assert accepted(send(emulator, "cpd", with_codec_private_byte(shifted(ref(), 10_000), 2, 0x40)))
    entries = archive_reader.list_fragments(emulator.store, "cpd", selector_type="PRODUCER_TIMESTAMP", dedupe=True)
    packaging.check_playable(emulator.store, "cpd", entries, max_cpd_changes=packaging.MAX_HLS_CPD_CHANGES)
    with pytest.raises(StoreError) as e:
        packaging.check_playable(emulator.store, "cpd", entries, max_cpd_changes=0)
    assert e.value.error_type == "InvalidCodecPrivateDataException"
    c = data_client(emulator, "cpd", "GET_CLIP")
    with pytest.raises(c.exceptions.InvalidCodecPrivateDataException):
        c.get_clip(StreamName="cpd", ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": T0, "EndTimestamp": T1}})
    # each session alone is one clip
    assert len(clip_frames(emulator, "cpd", start=T0, end=1_700_000_005.0)) == SDK_FRAMES


def test_fragment_documents_open_alone_in_pyav(emulator):
    """archive_reader.fragment_document (what HLS and GetMedia build on): every fragment of every SDK session."""
    client(emulator, "kinesisvideo").create_stream(StreamName="docs", DataRetentionInHours=24)
    for name in ("ref.mkv", "eofr.session1.mkv", "meta.session1.mkv"):
        assert accepted(send(emulator, "docs", sdk_file(name).read_bytes()))
    for e in archive_reader.entries(emulator.store, "docs"):
        with av.open(io.BytesIO(archive_reader.fragment_document(emulator.store, "docs", e))) as c:
            assert len([f for f in c.decode(video=0)]) == e.frames


def test_index_lines_without_byte_ranges_are_located_in_the_session_file(emulator):
    """A data directory written before the index recorded byte ranges still serves fragments alone."""
    import json

    client(emulator, "kinesisvideo").create_stream(StreamName="old", DataRetentionInHours=24)
    assert accepted(send(emulator, "old", ref()))
    recorded = archive_reader.entries(emulator.store, "old")
    idx = emulator.store.get("old").path / "index.jsonl"
    lines = [json.loads(x) for x in idx.read_text().splitlines()]
    idx.write_text("".join(json.dumps({k: v for k, v in d.items() if k not in ("offset", "length", "header_size")})
                           + "\n" for d in lines))
    assert all(e.offset is None for e in emulator.archive("old"))
    assert archive_reader.entries(emulator.store, "old") == recorded


def test_clip_of_documents_going_back_in_time_keeps_every_frame_in_order(emulator):
    """media_export.remux_mp4 given the same fragment twice (as a server-time clip over a resend would): both copies,
    the second after the first, decoding times strictly increasing (checked by PyAV on the MP4)."""
    from kvs_edge.emulator import media_export

    client(emulator, "kinesisvideo").create_stream(StreamName="twice", DataRetentionInHours=24)
    assert accepted(send(emulator, "twice", ref()))
    e = archive_reader.entries(emulator.store, "twice")[0]
    doc = archive_reader.fragment_document(emulator.store, "twice", e)
    mp4 = media_export.remux_mp4([doc, doc])
    with av.open(io.BytesIO(mp4)) as m:
        dts = [p.dts for p in m.demux(video=0) if p.size]
    assert len(dts) == 2 * e.frames and all(a < b for a, b in zip(dts, dts[1:]))
    assert len(decode_pts(mp4)) == 2 * e.frames
