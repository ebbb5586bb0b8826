"""The emulator's read side through botocore's unchanged `kinesis-video-archived-media` and `kinesis-video-media`
clients on loopback: ListFragments, GetMedia, GetMediaForFragmentList, GetClip, GetImages; media checked with PyAV
(decoding) and ebmlite (the MKV tags), never with kvs_edge's own parsers."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import botocore.session
import pytest
from botocore.config import Config

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator
from support.appliance import config_dict, wait_until, write_config
from support.h264gen import read_kvs_mkv
from support.kvs_client import PutMediaClient, split_at_clusters
from support.sdk_data import sdk_file

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 180  # in.h264: 640x480, 30 fps, an IDR every 30 frames
EBML_MAGIC = bytes.fromhex("1a45dfa3")
SERVICE_TAGS = ["AWS_KINESISVIDEO_FRAGMENT_NUMBER", "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
                "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"]
POSITION_TAGS = ["AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "AWS_KINESISVIDEO_CONTINUATION_TOKEN"]


def client(emu: Emulator, service: str, endpoint: str | None = None):
    return botocore.session.get_session().create_client(
        service, region_name="us-east-1", endpoint_url=endpoint or emu.url,
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID, aws_secret_access_key=DEFAULT_SECRET_ACCESS_KEY,
        config=Config(retries={"max_attempts": 1}, read_timeout=30))


def data_client(emu: Emulator, stream: str, api: str):
    """A data-plane client on the endpoint GetDataEndpoint returns for `api`, as an AWS application does it."""
    endpoint = client(emu, "kinesisvideo").get_data_endpoint(StreamName=stream, APIName=api)["DataEndpoint"]
    service = "kinesis-video-media" if api == "GET_MEDIA" else "kinesis-video-archived-media"
    return client(emu, service, endpoint)


def split_documents(payload: bytes) -> list[bytes]:
    """A GetMedia payload cut into its MKV documents (each starts with an EBML header: 1A45DFA3 + DocType matroska)."""
    starts, i = [], payload.find(EBML_MAGIC)
    while i >= 0:
        if b"matroska" in payload[i:i + 48]:
            starts.append(i)
        i = payload.find(EBML_MAGIC, i + 1)
    assert starts and starts[0] == 0, "the payload does not start with an MKV document"
    return [payload[a:b] for a, b in zip(starts, starts[1:] + [len(payload)])]


def decode_pts(data: bytes, fmt: str | None = None) -> list[int]:
    """PTS in ms of every video frame PyAV decodes."""
    with av.open(io.BytesIO(data), format=fmt) as c:
        s = c.streams.video[0]
        return [int(f.pts * f.time_base * 1000) for f in c.decode(s)]


def upload(emu: Emulator, tmp: Path, stream: str) -> None:
    cfg = write_config(tmp / "c.yaml", config_dict(emu, tmp / "buf", stream=stream))
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "upload", str(sdk_file("in.h264")), "--config", str(cfg),
                        "--fps", "30"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory):
    """An emulator holding the SDK's in.h264 uploaded by `kvs-edge upload` (1-s fragments), shared by the module."""
    tmp = tmp_path_factory.mktemp("read")
    with Emulator(tmp / "data") as emu:
        client(emu, "kinesisvideo").create_stream(StreamName="cam", DataRetentionInHours=24)
        upload(emu, tmp, "cam")
        yield emu


def all_fragments(emu, selector_type="PRODUCER_TIMESTAMP", start=0, end=4_000_000_000, page=2, stream="cam"):
    c = data_client(emu, stream, "LIST_FRAGMENTS")
    out, kw = [], {"FragmentSelector": {"FragmentSelectorType": selector_type,
                                        "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}}}
    while True:
        r = c.list_fragments(StreamName=stream, MaxResults=page, **kw)
        out += r["Fragments"]
        if not r.get("NextToken"):
            return out
        kw = {"NextToken": r["NextToken"]}


# ------------------------------------------------------------------ ListFragments


def test_list_fragments_pages_through_every_fragment_with_the_service_fields(uploaded):
    frags = all_fragments(uploaded, page=2)
    archive = uploaded.archive("cam")
    assert sorted(f["FragmentNumber"] for f in frags) == sorted(e.fragment_number for e in archive)
    assert len(frags) == len(archive) >= 3
    for f in frags:
        assert set(f) == {"FragmentNumber", "FragmentSizeInBytes", "ProducerTimestamp", "ServerTimestamp",
                          "FragmentLengthInMilliseconds"}
        e = next(a for a in archive if a.fragment_number == f["FragmentNumber"])
        assert f["FragmentSizeInBytes"] == e.size
        assert round(f["ProducerTimestamp"].timestamp() * 1000) == e.producer_ts_ms  # botocore parsed a datetime
        assert round(f["ServerTimestamp"].timestamp() * 1000) == e.server_ts_ms
        assert f["FragmentLengthInMilliseconds"] == e.last_frame_ms - e.first_frame_ms
    # a producer-time range selects by each fragment's start
    first = min(e.producer_ts_ms for e in archive)
    some = all_fragments(uploaded, start=first / 1000, end=(first + 1500) / 1000, page=100)
    assert sorted(round(f["ProducerTimestamp"].timestamp() * 1000) for f in some) == \
        sorted(e.producer_ts_ms for e in archive if first <= e.producer_ts_ms <= first + 1500)
    # server-time range: all of them were received in the last hour
    now = time.time()
    assert len(all_fragments(uploaded, "SERVER_TIMESTAMP", now - 3600, now + 1, page=100)) == len(archive)
    assert all_fragments(uploaded, "SERVER_TIMESTAMP", now + 60, now + 120) == []


def test_list_fragments_errors_are_the_services(uploaded):
    c = data_client(uploaded, "cam", "LIST_FRAGMENTS")
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.list_fragments(StreamName="nope", FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP", "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 1}})
    with pytest.raises(c.exceptions.InvalidArgumentException):
        c.list_fragments(StreamName="cam", NextToken="garbage!")
    bad = client(uploaded, "kinesis-video-archived-media")
    bad._request_signer._credentials = botocore.credentials.Credentials(DEFAULT_ACCESS_KEY_ID, "wrong")
    with pytest.raises(bad.exceptions.ClientError) as e:
        bad.list_fragments(StreamName="cam", FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP", "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 1}})
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# ------------------------------------------------------------------ GetMedia


def get_media(emu, stream="cam", **selector) -> list[bytes]:
    r = data_client(emu, stream, "GET_MEDIA").get_media(StreamName=stream, StartSelector=selector)
    assert r["ContentType"] == "video/webm"
    return split_documents(r["Payload"].read())


def doc_tags(doc: bytes) -> tuple[dict, dict]:
    """(tags before the cluster, tags after it) of one GetMedia document, read with ebmlite."""
    s = read_kvs_mkv(doc)
    assert len(s.clusters) == 1
    before = {k: v for group in s.clusters[0].tags_before for k, v in group}
    after = {k: v for group in s.trailing_tags for k, v in group}
    return before, after


def test_get_media_earliest_every_document_decodes_alone_with_the_service_tags(uploaded):
    docs = get_media(uploaded, StartSelectorType="EARLIEST")
    archive = uploaded.archive("cam")
    assert len(docs) == len(archive)
    pts = []
    for doc, e in zip(docs, archive):
        frames = decode_pts(doc)
        assert len(frames) == e.frames and frames[0] == e.first_frame_ms
        pts += frames
        before, after = doc_tags(doc)
        assert list(before) == SERVICE_TAGS and list(after) == POSITION_TAGS
        assert before["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] == e.fragment_number
        assert round(float(before["AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"]) * 1000) == e.producer_ts_ms
        assert round(float(before["AWS_KINESISVIDEO_SERVER_TIMESTAMP"]) * 1000) == e.server_ts_ms
        assert int(after["AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"]) == archive[-1].server_ts_ms - e.server_ts_ms
    assert len(pts) == FRAMES and pts == sorted(set(pts))


def test_get_media_start_selectors(uploaded):
    archive = uploaded.archive("cam")
    numbers = [e.fragment_number for e in archive]

    def numbers_of(docs):
        return [doc_tags(d)[0]["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for d in docs]

    assert numbers_of(get_media(uploaded, StartSelectorType="FRAGMENT_NUMBER", AfterFragmentNumber=numbers[2])) \
        == numbers[2:]
    third = archive[2]
    mid = (third.producer_ts_ms + 100) / 1000  # inside the third fragment
    assert numbers_of(get_media(uploaded, StartSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=mid)) == numbers[2:]
    # on the server clock: the fragment that arrived last at or before the time (uploads arrive within a millisecond)
    k = next(i for i in range(1, len(archive)) if archive[i].server_ts_ms > archive[i - 1].server_ts_ms)
    assert numbers_of(get_media(uploaded, StartSelectorType="SERVER_TIMESTAMP",
                                StartTimestamp=(archive[k].server_ts_ms + 0.4) / 1000)) == numbers[k:]
    # the continuation token of the second document resumes after it
    token = doc_tags(get_media(uploaded, StartSelectorType="EARLIEST")[1])[1]["AWS_KINESISVIDEO_CONTINUATION_TOKEN"]
    assert numbers_of(get_media(uploaded, StartSelectorType="CONTINUATION_TOKEN", ContinuationToken=token)) \
        == numbers[2:]
    # NOW: nothing new arrives, no producer is connected: an empty body that ends
    r = data_client(uploaded, "cam", "GET_MEDIA").get_media(StreamName="cam", StartSelector={"StartSelectorType": "NOW"})
    assert r["Payload"].read() == b""
    c = data_client(uploaded, "cam", "GET_MEDIA")
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.get_media(StreamName="cam", StartSelector={"StartSelectorType": "FRAGMENT_NUMBER",
                                                     "AfterFragmentNumber": "12345"})
    with pytest.raises(c.exceptions.InvalidArgumentException):
        c.get_media(StreamName="cam", StartSelector={"StartSelectorType": "CONTINUATION_TOKEN"})


@pytest.mark.timeout(120)
def test_get_media_now_streams_fragments_live_as_they_persist(emulator):
    """A reader with StartSelectorType NOW gets each fragment while the producer's connection is still open."""
    ref = sdk_file("ref.mkv").read_bytes()
    parts = split_at_clusters(ref)  # [header, cluster 1, cluster 2, ...]
    client(emulator, "kinesisvideo").create_stream(StreamName="live", DataRetentionInHours=1)
    got = bytearray()

    def documents_read() -> int:
        return len(split_documents(bytes(got))) if got else 0

    with PutMediaClient(emulator.url, "live") as pm:
        assert pm.response() == 200
        pm.send(parts[0] + parts[1])
        r = data_client(emulator, "live", "GET_MEDIA").get_media(StreamName="live",
                                                                 StartSelector={"StartSelectorType": "NOW"})
        reader = threading.Thread(target=lambda: [got.extend(c) for c in r["Payload"].iter_chunks(4096)],
                                  daemon=True)
        reader.start()
        for k, part in enumerate(parts[2:], start=1):  # cluster k+1 completes fragment k
            pm.send(part)
            pm.read_acks(10, until=lambda a: a["EventType"] == "PERSISTED")
            wait_until(lambda: documents_read() >= k, 20, f"fragment {k} in the GetMedia body while streaming")
        pm.finish()
        pm.read_until_end(20)
    reader.join(30)
    assert not reader.is_alive(), "GetMedia did not end after the producer left"
    docs = split_documents(bytes(got))
    archive = emulator.archive("live")
    nums = [doc_tags(d)[0]["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for d in docs]
    # every fragment persisted after the NOW request (the first completes when the second cluster starts)
    assert nums == [e.fragment_number for e in archive] and len(nums) == len(parts) - 1
    assert all(len(decode_pts(d)) == 30 for d in docs)


def test_get_media_for_fragment_list_in_the_order_asked(uploaded):
    archive = uploaded.archive("cam")
    want = [archive[3].fragment_number, archive[0].fragment_number]
    r = data_client(uploaded, "cam", "GET_MEDIA_FOR_FRAGMENT_LIST").get_media_for_fragment_list(
        StreamName="cam", Fragments=want)
    docs = split_documents(r["Payload"].read())
    assert len(docs) == 2
    for doc, n in zip(docs, want):
        before, _ = doc_tags(doc)
        e = next(a for a in archive if a.fragment_number == n)
        assert before == {"AWS_KINESISVIDEO_FRAGMENT_NUMBER": n,
                          "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP": f"{e.server_ts_ms / 1000:.3f}",
                          "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP": f"{e.producer_ts_ms / 1000:.3f}"}
        assert decode_pts(doc)[0] == e.first_frame_ms


# ------------------------------------------------------------------ GetClip, GetImages


def test_get_clip_is_an_mp4_with_every_frame_unchanged(uploaded):
    archive = uploaded.archive("cam")
    c = data_client(uploaded, "cam", "GET_CLIP")
    r = c.get_clip(StreamName="cam", ClipFragmentSelector={
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": archive[0].producer_ts_ms / 1000,
                           "EndTimestamp": archive[-1].producer_ts_ms / 1000}})
    assert r["ContentType"] == "video/mp4"
    mp4 = r["Payload"].read()
    assert mp4[4:8] == b"ftyp"
    with av.open(io.BytesIO(mp4)) as m:
        vs = m.streams.video[0]
        assert vs.codec_context.name == "h264" and (vs.width, vs.height) == (640, 480)
        cpd = vs.codec_context.extradata
        packets = [p for p in m.demux(vs) if p.size]
    # remuxed, not re-encoded: the packets are the stored frames, byte for byte (AVCC in MKV and MP4 alike)
    stored = b"".join(read_kvs_blocks(f) for f in uploaded.archive_files("cam"))
    assert len(packets) == FRAMES and b"".join(bytes(p) for p in packets) == stored
    assert cpd == read_kvs_mkv(uploaded.archive_files("cam")[0].read_bytes()).track["CodecPrivate"]
    assert len(decode_pts(mp4)) == FRAMES
    # an empty range: the service's ResourceNotFoundException
    with pytest.raises(c.exceptions.ResourceNotFoundException):
        c.get_clip(StreamName="cam", ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {"StartTimestamp": 10, "EndTimestamp": 20}})


def read_kvs_blocks(path: Path) -> bytes:
    return b"".join(b.payload for c in read_kvs_mkv(path.read_bytes()).clusters for b in c.blocks)


@pytest.mark.parametrize("fmt,codec", [("JPEG", "mjpeg"), ("PNG", "png")])
def test_get_images_every_interval_with_size_and_no_media(uploaded, fmt, codec):
    archive = uploaded.archive("cam")
    start = archive[0].producer_ts_ms
    c = data_client(uploaded, "cam", "GET_IMAGES")
    images, kw = [], {}
    while True:  # 7 s at 500 ms: 15 samples, pages of at most 25 -> ask 6 per page to exercise NextToken
        r = c.get_images(StreamName="cam", ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start / 1000,
                         EndTimestamp=(start + 7000) / 1000, SamplingInterval=500, Format=fmt, MaxResults=6,
                         WidthPixels=320, HeightPixels=200, **kw)
        assert len(r["Images"]) <= 6
        images += r["Images"]
        if not r.get("NextToken"):
            break
        kw = {"NextToken": r["NextToken"]}
    assert [round(i["TimeStamp"].timestamp() * 1000) for i in images] == list(range(start, start + 7001, 500))
    covered = [i for i in images if round(i["TimeStamp"].timestamp() * 1000) < start + 6000]
    assert all("ImageContent" in i and "Error" not in i for i in covered)
    assert [i.get("Error") for i in images if i not in covered] == ["NO_MEDIA"] * 3  # 6.0, 6.5 and 7.0 s: after the last frame
    for i in covered:
        pic = base64.b64decode(i["ImageContent"])
        with av.open(io.BytesIO(pic)) as p:
            assert p.streams.video[0].codec_context.name == codec
            frame = next(p.decode(video=0))
            assert (frame.width, frame.height) == (320, 200)
    with pytest.raises(c.exceptions.InvalidArgumentException):
        c.get_images(StreamName="cam", ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start / 1000,
                     EndTimestamp=(start + 1000) / 1000, SamplingInterval=100, Format=fmt)


def test_get_images_shows_the_frame_of_each_time(uploaded):
    """The image at t is the frame shown at t: compare against PyAV's own decode of the uploaded file."""
    archive = uploaded.archive("cam")
    start = archive[0].producer_ts_ms
    r = data_client(uploaded, "cam", "GET_IMAGES").get_images(
        StreamName="cam", ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=(start + 1000) / 1000,
        EndTimestamp=(start + 1000) / 1000, SamplingInterval=200, Format="PNG")
    (img,) = r["Images"]
    with av.open(io.BytesIO(base64.b64decode(img["ImageContent"]))) as p:
        got = next(p.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    with av.open(str(sdk_file("in.h264"))) as src:
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in src.decode(video=0)]
    diffs = [abs(got - f).mean() for f in frames]
    assert diffs.index(min(diffs)) == 30 and min(diffs) == 0  # frame 30 is shown at +1000 ms; PNG is lossless
