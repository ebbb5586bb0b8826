"""EBML/Matroska writer (pure) for the subset Kinesis Video Streams ingests (docs/kvs-putmedia.md section 4).

A session is `session_header()` followed by clusters: `cluster_head()` then `simple_block()`s, with `tags()` between
clusters. Segment and Cluster have unknown size, so the stream is written forward only, frame by frame.
"""

from __future__ import annotations

import os
import struct

from kvs_edge import __version__
from kvs_edge.media.ebml import encode_element as element  # the EBML primitives live once, in ebml
from kvs_edge.media.ebml import encode_id, encode_size  # noqa: F401  (mkv.encode_size stays public)

# Element IDs: one table (matroska_ids) for this writer and the ebml reader; re-exported as mkv.CLUSTER etc.
from kvs_edge.media.matroska_ids import (  # noqa: F401
    EBML, EBML_VERSION, EBML_READ_VERSION, EBML_MAX_ID_LENGTH, EBML_MAX_SIZE_LENGTH, DOC_TYPE, DOC_TYPE_VERSION,
    DOC_TYPE_READ_VERSION, SEGMENT, INFO, SEGMENT_UID, TIMECODE_SCALE, TITLE, MUXING_APP, WRITING_APP, TRACKS,
    TRACK_ENTRY, TRACK_NUMBER, TRACK_UID, TRACK_TYPE, NAME, CODEC_ID, CODEC_PRIVATE, VIDEO, PIXEL_WIDTH,
    PIXEL_HEIGHT, AUDIO, SAMPLING_FREQUENCY, CHANNELS, CLUSTER, TIMECODE, POSITION, SIMPLE_BLOCK, TAGS, TAG, SIMPLE_TAG, TAG_NAME, TAG_STRING,
)

UNKNOWN_SIZE = b"\xff"  # 1-byte vint with all value bits set: size unknown
CODEC_ID_H264 = "V_MPEG4/ISO/AVC"
APP_NAME = f"kvs-edge {__version__}"
TRACK_NAME = "kvs_edge_video"
CODEC_ID_AAC = "A_AAC"
AUDIO_TRACK_NAME = "kvs_edge_audio"
AUDIO_TRACK = 2  # KVS playback: track 1 video, optional track 2 AAC (docs/kvs-service-facts.md)
END_OF_FRAGMENT = "AWS_KINESISVIDEO_END_OF_FRAGMENT"

MAX_TAGS_PER_FRAGMENT = 10
MAX_TAG_NAME_BYTES = 128
MAX_TAG_VALUE_BYTES = 256
MAX_CODEC_PRIVATE = 1 << 20  # the SDK's cap

# cluster_head(): 1F43B675 FF | E7 88 <8-byte timecode> | A7 81 00
CLUSTER_TIMECODE_OFFSET = 7
CLUSTER_HEAD_SIZE = 18

INT16_MIN, INT16_MAX = -32768, 32767


# ---------------------------------------------------------------- primitives


def uint_element(element_id: int, value: int, width: int | None = None) -> bytes:
    if value < 0:
        raise ValueError("negative unsigned integer")
    if width is None:
        width = max(1, (value.bit_length() + 7) // 8)
    return element(element_id, value.to_bytes(width, "big"))


def string_element(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("utf-8"))


# ---------------------------------------------------------------- session header


def ebml_header() -> bytes:
    return element(EBML, b"".join((
        uint_element(EBML_VERSION, 1),
        uint_element(EBML_READ_VERSION, 1),
        uint_element(EBML_MAX_ID_LENGTH, 4),
        uint_element(EBML_MAX_SIZE_LENGTH, 8),
        string_element(DOC_TYPE, "matroska"),
        uint_element(DOC_TYPE_VERSION, 2),
        uint_element(DOC_TYPE_READ_VERSION, 2),
    )))


def float_element(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", float(value)))


def audio_track_entry(asc: bytes, sample_rate: int, channels: int) -> bytes:
    """Track 2, A_AAC: CodecPrivate = the AudioSpecificConfig, Audio{SamplingFrequency, Channels}.

    KVS: "AudioSpecificConfig for AAC (2 or 5 bytes; LATM is refused)" (docs/kvs-service-facts.md): checked here so
    that a config KVS playback would refuse never reaches a stream.
    """
    from kvs_edge.media.aac import parse_asc

    cfg = parse_asc(asc)  # AacError (a ValueError) for anything but a 2- or 5-byte ASC
    if (cfg.sample_rate, cfg.channels) != (sample_rate, channels):
        raise ValueError(f"AudioSpecificConfig says {cfg.sample_rate} Hz x {cfg.channels}, the track "
                         f"{sample_rate} Hz x {channels}")
    return element(TRACK_ENTRY, b"".join((
        uint_element(TRACK_NUMBER, AUDIO_TRACK),
        uint_element(TRACK_UID, AUDIO_TRACK),
        uint_element(TRACK_TYPE, 2),
        string_element(NAME, AUDIO_TRACK_NAME),
        string_element(CODEC_ID, CODEC_ID_AAC),
        element(AUDIO, float_element(SAMPLING_FREQUENCY, sample_rate) + uint_element(CHANNELS, channels)),
        element(CODEC_PRIVATE, bytes(asc)),
    )))


def session_header(*, width: int, height: int, codec_private: bytes, segment_uid: bytes | None = None,
                   audio: bytes | None = None) -> bytes:
    """EBML header + Segment of unknown size + Info + Tracks (one H.264 video track, number 1, and the AAC track 2
    when `audio` holds its TrackEntry from audio_track_entry())."""
    if segment_uid is None:
        segment_uid = os.urandom(16)
    if len(segment_uid) != 16:
        raise ValueError("SegmentUID must be 16 bytes")
    if not (0 < width < 65536 and 0 < height < 65536):
        raise ValueError(f"invalid picture size {width}x{height}")
    if not codec_private or len(codec_private) > MAX_CODEC_PRIVATE:
        raise ValueError("codec private data must be 1 byte .. 1 MiB")
    info = element(INFO, b"".join((
        element(SEGMENT_UID, segment_uid),
        uint_element(TIMECODE_SCALE, 1_000_000),
        string_element(MUXING_APP, APP_NAME),
        string_element(WRITING_APP, APP_NAME),
    )))
    track = element(TRACK_ENTRY, b"".join((
        uint_element(TRACK_NUMBER, 1),
        uint_element(TRACK_UID, 1),
        uint_element(TRACK_TYPE, 1),
        string_element(NAME, TRACK_NAME),
        string_element(CODEC_ID, CODEC_ID_H264),
        element(VIDEO, uint_element(PIXEL_WIDTH, width) + uint_element(PIXEL_HEIGHT, height)),
        element(CODEC_PRIVATE, bytes(codec_private)),
    )))
    return ebml_header() + encode_id(SEGMENT) + UNKNOWN_SIZE + info + element(TRACKS, track + (audio or b""))


# ---------------------------------------------------------------- clusters and blocks

_CLUSTER_PREFIX = encode_id(CLUSTER) + UNKNOWN_SIZE + encode_id(TIMECODE) + encode_size(8, 1)
_POSITION_0 = uint_element(POSITION, 0)
assert len(_CLUSTER_PREFIX) == CLUSTER_TIMECODE_OFFSET


def cluster_head(timecode_ms: int) -> bytes:
    """Cluster of unknown size + Timecode (8-byte uint at CLUSTER_TIMECODE_OFFSET) + Position 0."""
    if not 0 <= timecode_ms < 1 << 64:
        raise ValueError(f"cluster timecode {timecode_ms} out of range")
    return _CLUSTER_PREFIX + timecode_ms.to_bytes(8, "big") + _POSITION_0


def retime_cluster_head(head: bytes, timecode_ms: int) -> bytes:
    """The same cluster head with its Timecode replaced (the uploader stamps the producer timestamp)."""
    if len(head) < CLUSTER_HEAD_SIZE or not head.startswith(_CLUSTER_PREFIX):
        raise ValueError("not a cluster head written by cluster_head()")
    if not 0 <= timecode_ms < 1 << 64:
        raise ValueError(f"cluster timecode {timecode_ms} out of range")
    o = CLUSTER_TIMECODE_OFFSET
    return head[:o] + timecode_ms.to_bytes(8, "big") + head[o + 8:]


_SIMPLE_BLOCK_ID = encode_id(SIMPLE_BLOCK)


def simple_block(rel_timecode: int, key: bool, payload: bytes, track: int = 1) -> bytes:
    """SimpleBlock: track vint, int16 timecode relative to the cluster, flags (0x80 = key frame), payload."""
    return simple_block_head(rel_timecode, key, len(payload), track) + payload


def simple_block_head(rel_timecode: int, key: bool, payload_size: int, track: int = 1) -> bytes:
    """The bytes of a SimpleBlock before its payload (so a caller can join the payload from pieces, copying once):
    ID A3, the size (shortest vint), track vint, int16 timecode, flags. Built as one integer for the sizes of video
    frames (the muxer calls this once per frame)."""
    if not INT16_MIN <= rel_timecode <= INT16_MAX:
        raise ValueError(f"block timecode {rel_timecode} ms outside the int16 range of a cluster")
    if not 1 <= track <= 126:
        raise ValueError("track number must be 1..126")
    size = 4 + payload_size
    w = 3 if 16383 <= size < 2097151 else 2 if 127 <= size < 16383 else 1 if 0 <= size < 127 else 0
    if w:  # the shortest vint (encode_size's rule: an all-ones value means "unknown", so 127 takes two bytes)
        return ((((0xA3 << 8 * w) | (1 << 7 * w) | size) << 32) | ((0x80 | track) << 24)
                | ((rel_timecode & 0xFFFF) << 8) | (0x80 if key else 0)).to_bytes(w + 5, "big")
    return (_SIMPLE_BLOCK_ID + encode_size(size) + bytes((0x80 | track,))
            + rel_timecode.to_bytes(2, "big", signed=True) + (b"\x80" if key else b"\x00"))


# ---------------------------------------------------------------- tags


def validate_user_tag(name: str, value: str) -> None:
    """Raise ValueError unless KVS would accept this fragment metadata tag."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError("tag name and value must be strings")
    nb = len(name.encode("utf-8"))
    if nb == 0:
        raise ValueError("tag name is empty")
    if nb > MAX_TAG_NAME_BYTES:
        raise ValueError(f"tag name {name[:40]!r}... is {nb} bytes; KVS allows at most {MAX_TAG_NAME_BYTES}")
    if name.startswith("AWS"):
        raise ValueError(f"tag name {name!r} starts with 'AWS', which KVS reserves")
    vb = len(value.encode("utf-8"))
    if vb > MAX_TAG_VALUE_BYTES:
        raise ValueError(f"value of tag {name!r} is {vb} bytes; KVS allows at most {MAX_TAG_VALUE_BYTES}")


def _tags(pairs: list[tuple[str, str]]) -> bytes:
    body = b"".join(
        element(TAG, element(SIMPLE_TAG, string_element(TAG_NAME, n) + string_element(TAG_STRING, v)))
        for n, v in pairs)
    return element(TAGS, body)


def tags(pairs: list[tuple[str, str]]) -> bytes:
    """User fragment metadata (written between clusters, before the cluster it belongs to): at most 10 tags."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no tags given")
    if len(pairs) > MAX_TAGS_PER_FRAGMENT:
        raise ValueError(f"{len(pairs)} tags; KVS allows at most {MAX_TAGS_PER_FRAGMENT} per fragment")
    for n, v in pairs:
        validate_user_tag(n, v)
    return _tags(pairs)


def service_tags(pairs: list[tuple[str, str]]) -> bytes:
    """A Tags element of tags the service itself writes (AWS_KINESISVIDEO_...): no user-tag limits apply."""
    return _tags(list(pairs))


_EOF_TAG = _tags([(END_OF_FRAGMENT, "")])


def end_of_fragment_tag() -> bytes:
    """The AWS_KINESISVIDEO_END_OF_FRAGMENT tag that tells KVS the preceding fragment is complete."""
    return _EOF_TAG
