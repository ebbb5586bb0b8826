"""The playback packaging rules on track headers (pure): which codecs and codec private data the service plays."""

from __future__ import annotations

import pytest

from kvs_edge.emulator.archive_reader import Track, parse_tracks
from kvs_edge.emulator.packaging import check_tracks
from kvs_edge.emulator.store import StoreError
from support.sdk_data import sdk_file


def avcc() -> bytes:
    header = sdk_file("ref.mkv").read_bytes()[:277]  # ref.layout.txt: the first Cluster is at 277
    (video,) = parse_tracks(header)
    assert (video.number, video.codec_id, video.width, video.height) == (1, "V_MPEG4/ISO/AVC", 640, 480)
    return video.codec_private


def error_of(tracks) -> str | None:
    try:
        check_tracks(tracks)
    except StoreError as e:
        return e.error_type
    return None


@pytest.mark.parametrize("audio,expected", [
    (Track(2, "A_AAC", bytes.fromhex("1210")), None),  # AAC-LC 44.1 kHz stereo: 2 bytes
    (Track(2, "A_AAC", bytes.fromhex("2b920800")), "InvalidCodecPrivateDataException"),  # 4 bytes
    (Track(2, "A_AAC", None), "MissingCodecPrivateDataException"),
    (Track(2, "A_MS/ACM", (7).to_bytes(2, "little") + bytes(16)), None),  # mu-law WAVEFORMATEX
    (Track(2, "A_MS/ACM", (1).to_bytes(2, "little") + bytes(16)), "InvalidCodecPrivateDataException"),  # PCM
    (Track(2, "A_OPUS", b"OpusHead"), "UnsupportedStreamMediaTypeException"),
])
def test_audio_track_rules(audio, expected):
    assert error_of([Track(1, "V_MPEG4/ISO/AVC", avcc()), audio]) == expected


def test_video_track_rules():
    assert error_of([Track(1, "V_MPEG4/ISO/AVC", avcc())]) is None
    assert error_of([Track(1, "V_MPEG4/ISO/AVC", avcc()[:6])]) == "InvalidCodecPrivateDataException"
    assert error_of([Track(1, "V_MPEG4/ISO/AVC", b"")]) == "MissingCodecPrivateDataException"
    assert error_of([Track(1, "V_MPEGH/ISO/HEVC", bytes([1]) + bytes(22))]) is None
    assert error_of([Track(1, "V_MPEGH/ISO/HEVC", bytes([0]) + bytes(22))]) == "InvalidCodecPrivateDataException"
    assert error_of([Track(1, "V_VP8", b"")]) == "UnsupportedStreamMediaTypeException"
    assert error_of([Track(2, "V_MPEG4/ISO/AVC", avcc())]) == "UnsupportedStreamMediaTypeException"  # no track 1
