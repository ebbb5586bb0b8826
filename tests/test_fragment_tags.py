"""Fragment metadata (media/fragment_tags.py): KVS's limits, and placement where the official SDK writes the tags
(tests/data/kvs-sdk/meta.session1.mkv, read with ebmlite): one Tags element per tag, between clusters, before the
fragment they belong to, persistent tags first."""

from __future__ import annotations

import pytest

from kvs_edge.config import ConfigError, parse_config
from kvs_edge.media import mkv
from kvs_edge.media.fragment_tags import FragmentTags, TagError, check_tag, tag_element, tags_prefix_length
from kvs_edge.media.h264 import NAL_IDR, nal_types, split_annexb
from support.h264gen import SDK_DIR, read_kvs_mkv
from support.recording_kvs import RecordingKvs


def test_limits():
    check_tag("n" * 128, "v" * 256)
    check_tag("AWS_KINESISVIDEO_IMAGE_GENERATION", "")
    for name, value, what in (("n" * 129, "", "at most 128"), ("é" * 65, "", "130 bytes"),
                              ("x", "é" * 129, "258 bytes"), ("AWSX", "v", "reserves"),
                              ("AWS_KINESISVIDEO_END_OF_FRAGMENT", "", "reserves"), ("", "v", "empty"),
                              ("x", 5, "strings")):
        with pytest.raises(TagError, match=what):
            check_tag(name, value)


def test_ten_per_fragment_persistent_replace_and_remove():
    t = FragmentTags({"site": "a"})
    t.put("site", "b", persistent=True)  # replaces: still one
    for i in range(9):
        t.put(f"q{i}", "x")
    with pytest.raises(TagError, match="at most 10"):
        t.put("one-more", "x")
    t.put("site", "", persistent=True)  # removes it (the SDK's way)
    t.put("one-more", "x")
    data = t.take()
    assert t.take() == b""  # queued tags are used once; no persistent tag left
    assert tags_prefix_length(data + mkv.cluster_head(5)) == len(data)


def test_tags_prefix_length_waits_for_whole_elements():
    data = tag_element("a", "b") + tag_element("c", "d")
    head = mkv.cluster_head(1)
    for cut in range(len(data)):
        got = tags_prefix_length(data[:cut])
        assert got is None or got == len(tag_element("a", "b")) and cut >= got, cut
    assert tags_prefix_length(data + head) == len(data)
    assert tags_prefix_length(head) == 0


def test_metadata_block_in_the_yaml():
    cfg = parse_config({"stream": {"name": "c"}, "metadata": {"site": "berlin-3", "serial": 1234}}, "t.yaml")
    assert cfg.metadata.tags == (("site", "berlin-3"), ("serial", "1234"))
    with pytest.raises(ConfigError) as ei:
        parse_config({"stream": {"name": "c"}, "metadata": {"AWS_X": "1", "ok": [1], **{f"t{i}": "v" for i in
                                                                                       range(11)}}}, "t.yaml")
    text = "\n".join(ei.value.messages)
    assert "metadata.AWS_X" in text and "metadata.ok: expected a text value" in text and "at most 10" in text


def sdk_frames():
    """in.h264 split into access units (one picture each), with the SDK's timestamps."""
    nals = split_annexb((SDK_DIR / "in.h264").read_bytes())
    units, cur = [], []
    for n in nals:
        t = n[0] & 0x1F
        if t in (1, 5) and any(x[0] & 0x1F in (1, 5) for x in cur):
            units.append(cur)
            cur = []
        cur.append(n)
    units.append(cur)
    return [b"".join(b"\x00\x00\x00\x01" + n for n in u) for u in units]


def test_tags_go_where_the_sdk_writes_them(monkeypatch):
    """The SDK's meta session: KVSREF_PERSISTENT=yes on every fragment, KVSREF_FRAGMENT=k put before fragment k."""
    from kvs_edge import Producer

    sdk = read_kvs_mkv((SDK_DIR / "meta.session1.mkv").read_bytes())
    frames = sdk_frames()
    assert len(frames) == 180
    kvs = RecordingKvs("ref").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", kvs.url)
    try:
        with Producer("ref", region="us-east-1", credentials=("AKIDEXAMPLE", "secret"), fragment_seconds=1.0) as p:
            p.put_metadata("KVSREF_PERSISTENT", "yes", persistent=True)
            k = 0
            for i, au in enumerate(frames):
                if NAL_IDR in nal_types(au) and i:
                    k += 1
                    p.put_metadata("KVSREF_FRAGMENT", str(k))
                p.put_frame(au, timestamp_ns=(1700000000000 + i * 1000 // 30) * 1_000_000)
            assert p.flush(timeout=30)
    finally:
        kvs.stop()
    ours = read_kvs_mkv(kvs.body)
    assert len(ours.clusters) == len(sdk.clusters) == 6
    assert [c.tags_before for c in ours.clusters] == [c.tags_before for c in sdk.clusters]
    assert [c.timecode for c in ours.clusters] == [c.timecode for c in sdk.clusters]


def test_the_appliance_writes_the_metadata_block_on_every_fragment(tmp_path):
    """`kvs-edge run`'s engine with a `metadata:` block, to the independent endpoint: every cluster has the tags."""
    from kvs_edge.appliance import Appliance
    from support.appliance import applied, config_dict, wait_until

    kvs = RecordingKvs("cam").start()
    try:
        data = config_dict(kvs, tmp_path / "buf", stream="cam")
        data["metadata"] = {"site": "berlin-3", "serial": "A1234"}
        app = Appliance(parse_config(data, "<test>"))
        app.start()
        try:
            wait_until(lambda: applied(app).pipeline.counters.fragments_persisted >= 2, 60, "two fragments")
        finally:
            app.stop()
    finally:
        kvs.stop()
    session = read_kvs_mkv(kvs.body)
    assert len(session.clusters) >= 2
    for c in session.clusters:
        assert [t for group in c.tags_before for t in group] == [("site", "berlin-3"), ("serial", "A1234")]


def test_count_tags_counts_simple_tags_as_the_emulator_does_and_stops_at_the_cluster():
    from kvs_edge.media.event_tags import fragment_tags
    from kvs_edge.media.fragment_tags import count_tags

    book = FragmentTags({"a": "1", "b": "2", "c": "3"})
    head = book.take()
    cluster = mkv.element(mkv.CLUSTER, b"\x00" * 8)
    assert count_tags(head + cluster) == 3 and count_tags(cluster) == 0 and count_tags(head[:-1]) == 2
    both = fragment_tags("door", first=True, notify=True, images=True)
    assert count_tags(both + head) == 7  # each service Tag holds its SimpleTag and the user pair


@pytest.mark.parametrize("notify, images", [(False, False), (True, False), (False, True), (True, True)])
def test_event_tags_never_take_more_than_the_room_left(notify, images):
    from kvs_edge.media.event_tags import EVENT_TAG, NOTIFICATION, event_tag_count, fragment_tags
    from kvs_edge.media.fragment_tags import count_tags

    full = event_tag_count(notify=notify, images=images)
    for room in range(0, 11):
        out = fragment_tags("door", first=True, notify=notify, images=images, room=room)
        # notify and images: 4 tags, or the notification's 2 when only 2 or 3 fit; then the user tag alone
        expected = full if room >= full else (2 if room >= 2 and (notify or images) else min(room, 1))
        assert count_tags(out) == expected, room
        if room >= 1:
            assert EVENT_TAG.encode() in out  # the user tag survives as long as there is room for one
        if notify and room >= 2:
            assert NOTIFICATION.encode() in out
