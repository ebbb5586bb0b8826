"""The Python Producer API (issue 17): the README's example streaming a file to the emulator and to an independent
endpoint (tests/support/recording_kvs.py, parsed with PyAV and ebmlite), misuse errors, metadata limits, events."""

from __future__ import annotations

import io
import re
import textwrap
import time
from pathlib import Path

import av
import pytest

from kvs_edge import FragmentPersisted, FrameError, Producer, TagError
from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from support.h264gen import make_h264, read_kvs_mkv
from support.recording_kvs import RecordingKvs

README = Path(__file__).resolve().parent.parent / "README.md"
FPS = 30
MID = 40  # put_metadata after this frame: the tag belongs to the fragment that starts at the next key frame (60)


def readme_example() -> str:
    """The code block of README "Use it from Python" (the issue's documented example, verbatim)."""
    text = README.read_text()
    section = text[text.index("## Use it from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def program_for(example: str) -> str:
    """The example with its three calls spread over a file's frames: put_frame for each frame (paced at 30 fps, since
    timestamp_ns=None stamps now), put_metadata after frame MID, flush at the end. Every line is the README's."""
    lines = example.rstrip("\n").split("\n")
    head = [ln for ln in lines if not ln.startswith("    p.")]
    put_frame, put_metadata, flush = (ln.strip() for ln in lines if ln.startswith("    p."))
    assert put_frame.startswith("p.put_frame(") and put_metadata.startswith("p.put_metadata(")
    assert flush.startswith("p.flush(")
    body = textwrap.indent(textwrap.dedent(f"""\
        for i, access_unit in enumerate(frames):
            {put_frame}
            if i == MID:
                {put_metadata}
            time.sleep(1 / FPS)
        flushed = {flush.split('#')[0].strip()}
        stats = p.stats
        """), "    ")
    return "import time\n" + "\n".join(head) + "\n" + body


@pytest.fixture
def aws_env(monkeypatch):
    """botocore's chain finds these (credentials=None); AWS_ENDPOINT_URL points it at the test endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_ACCESS_KEY)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return monkeypatch


def run_example(frames) -> dict:
    ns = {"frames": frames, "MID": MID, "FPS": FPS}
    exec(compile(program_for(readme_example()), "README example", "exec"), ns)
    return ns


def test_the_readme_example_is_the_documented_one():
    example = readme_example()
    assert example.startswith('from kvs_edge import Producer\nwith Producer("my-stream", region="eu-west-1",')
    assert 'p.put_metadata("camera", "front", persistent=False)' in example
    assert "p.flush(timeout=30)" in example


def test_documented_example_streams_a_file_to_the_emulator(make_emulator, aws_env):
    emulator = make_emulator(region="eu-west-1")  # the example's region
    aws_env.setenv("AWS_ENDPOINT_URL", emulator.url)
    emulator.create_stream("my-stream")
    video = make_h264(90, 160, 120, fps=FPS, gop=FPS)
    ns = run_example([u.data for u in video.units])
    assert ns["flushed"] is True
    st = ns["stats"]
    assert st.frames == 90 and st.fragments >= 2 and st.fragments_persisted == st.fragments
    assert st.backlog_fragments == 0 and st.fragments_skipped == 0
    archived = emulator.archive("my-stream")
    assert len(archived) == st.fragments


def test_documented_example_to_an_independent_endpoint_every_fragment_persisted_and_the_tag_in_place(aws_env):
    kvs = RecordingKvs("my-stream").start()
    try:
        aws_env.setenv("AWS_ENDPOINT_URL", kvs.url)
        video = make_h264(90, 160, 120, fps=FPS, gop=FPS)
        ns = run_example([u.data for u in video.units])
    finally:
        kvs.stop()
    assert ns["flushed"] is True
    session = read_kvs_mkv(kvs.body)  # ebmlite: one Segment, clusters, the Tags before each
    assert len(session.clusters) == ns["stats"].fragments_persisted >= 2
    assert sorted(kvs.acked) == sorted(c.timecode for c in session.clusters)  # every fragment PERSISTED
    counts = [len(c.blocks) for c in session.clusters]
    assert sum(counts) == 90
    first_after_mid = next(k for k in range(len(counts)) if sum(counts[:k]) > MID)
    for k, cluster in enumerate(session.clusters):
        tags = [t for group in cluster.tags_before for t in group]
        assert (("camera", "front") in tags) == (k == first_after_mid), (k, tags)
    # PyAV (FFmpeg) decodes what the endpoint received: every frame, the picture size of the source
    with av.open(io.BytesIO(kvs.body), format="matroska") as c:
        pictures = [f for f in c.decode(video=0)]
    assert len(pictures) == 90 and (pictures[0].width, pictures[0].height) == (160, 120)


@pytest.fixture
def producer(emulator):
    emulator.create_stream("cam")
    events = []
    p = Producer("cam", region="us-east-1", credentials=(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY),
                 endpoint_url=emulator.url, fragment_seconds=1.0, on_event=events.append)
    p.test_events = events
    yield p
    p.close(timeout=0)


def test_misuse_not_h264(producer):
    for bad, what in ((b"\xff\xd8\xff\xe0 a JPEG", "not H.264 in Annex B form"),
                      ("text", "takes the bytes"), (b"", "empty access unit")):
        with pytest.raises(FrameError, match=what) as ei:
            producer.put_frame(bad)
        assert "\n" not in str(ei.value)
    assert producer.stats.frames == 0


def test_misuse_b_frames_is_refused_and_nothing_is_written(producer):
    video = make_h264(12, 160, 120, fps=FPS, gop=12, profile="main", bframes=2)
    t0 = time.time_ns()
    accepted, refused = 0, []
    for i, u in enumerate(video.units):
        try:
            producer.put_frame(u.data, timestamp_ns=t0 + i * 33_333_333)
            accepted += 1
        except FrameError as e:
            refused.append(str(e))
    assert refused and all("B-frame" in m and "4004" in m for m in refused)
    assert producer.stats.frames == accepted
    assert producer.flush(timeout=20)
    assert producer.pipeline.fragmenter.stats.dropped_b_frames == 0  # none reached the muxer


def test_misuse_timestamp_not_increasing(producer):
    video = make_h264(3, 160, 120, fps=FPS, gop=30)
    t0 = time.time_ns() // 1_000_000 * 1_000_000  # on a millisecond: t0 + 0.5 ms is the same millisecond
    producer.put_frame(video.units[0].data, timestamp_ns=t0)
    with pytest.raises(FrameError, match="is not after the previous frame"):
        producer.put_frame(video.units[1].data, timestamp_ns=t0)
    with pytest.raises(FrameError, match="at least 1 ms"):
        producer.put_frame(video.units[1].data, timestamp_ns=t0 + 500_000)
    producer.put_frame(video.units[1].data, timestamp_ns=t0 + 33_000_000)
    assert producer.stats.frames == 2


def test_metadata_limits(producer):
    with pytest.raises(TagError, match="at most 128"):
        producer.put_metadata("n" * 129, "v")
    with pytest.raises(TagError, match="at most 256"):
        producer.put_metadata("name", "v" * 257)
    with pytest.raises(TagError, match="reserves"):
        producer.put_metadata("AWS_MINE", "v")
    producer.put_metadata("AWS_KINESISVIDEO_NOTIFICATION", "motion")  # one of the service's event tags
    for i in range(9):
        producer.put_metadata(f"t{i}", str(i))
    with pytest.raises(TagError, match="at most 10 per fragment"):
        producer.put_metadata("eleventh", "x")


def test_persistent_tags_on_every_fragment_and_events(producer):
    producer.put_metadata("site", "berlin-3", persistent=True)
    video = make_h264(90, 160, 120, fps=FPS, gop=FPS)
    t0 = time.time_ns() - 10_000_000_000
    for i, u in enumerate(video.units):
        producer.put_frame(u.data, timestamp_ns=t0 + i * 33_333_334)
    assert producer.flush(timeout=30)
    persisted = [e for e in producer.test_events if isinstance(e, FragmentPersisted)]
    assert len(persisted) == producer.stats.fragments_persisted == 3
    assert producer.stats.connection == "connected"
    # each fragment in the log carried the tag; the emulator counted them per fragment (over 10 would be 4009)
    assert producer.stats.fragments_skipped == 0


def test_bad_settings_are_one_clear_error_each():
    with pytest.raises(ValueError, match="fragment_seconds"):
        Producer("cam", region="us-east-1", credentials=("a", "b"), fragment_seconds=60)
    with pytest.raises(ValueError, match="credentials"):
        Producer("cam", region="us-east-1", credentials=42)


def test_disk_buffer_keeps_what_was_not_sent_for_the_next_producer(emulator, tmp_path):
    """buffer_path: fragments put while KVS was unreachable are sent by the next Producer on that folder."""
    emulator.create_stream("cam")
    creds = (DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
    video = make_h264(60, 160, 120, fps=FPS, gop=FPS)
    t0 = time.time_ns() - 60_000_000_000
    offline = Producer("cam", region="us-east-1", credentials=creds, endpoint_url="http://127.0.0.1:9",
                       fragment_seconds=1.0, buffer_path=str(tmp_path / "buf"))
    for i, u in enumerate(video.units):
        offline.put_frame(u.data, timestamp_ns=t0 + i * 33_333_334)
    assert offline.flush(timeout=1) is False  # nowhere to send it
    assert offline.stats.connection == "offline" and offline.stats.last_error
    offline.close(timeout=0)
    with Producer("cam", region="us-east-1", credentials=creds, endpoint_url=emulator.url, fragment_seconds=1.0,
                  buffer_path=str(tmp_path / "buf")) as p:
        persisted = []
        for ev in p.events(timeout=20):
            if isinstance(ev, FragmentPersisted):
                persisted.append(ev.seq)
            if len(persisted) == 2:
                break
        assert sorted(persisted) == [0, 1] and p.stats.backlog_fragments == 0
    assert len(emulator.archive("cam")) == 2
