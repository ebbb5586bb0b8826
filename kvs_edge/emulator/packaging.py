"""The checks Kinesis Video Streams applies only when it packages media for playback (HLS, DASH, GetClip, GetImages).

PutMedia accepts a stream whose codec private data is missing or broken; the service refuses it later, at playback
("Codec private data is not validated at ingest, only when media is packaged for HLS/DASH/clips",
video-playback-requirements.html). These checks are pure over the archive and raise StoreError with the service's
exception names, which the server sends as REST-JSON errors (x-amzn-ErrorType). Sources: docs/kvs-read-side.md.
"""

from __future__ import annotations

from typing import Iterable

from kvs_edge.emulator import archive_reader
from kvs_edge.emulator.archive_reader import Track
from kvs_edge.emulator.store import ArchiveEntry, Store, StoreError
from kvs_edge.media.h264 import H264Error, parse_avcc

H264 = "V_MPEG4/ISO/AVC"
H265 = "V_MPEGH/ISO/HEVC"
AAC = "A_AAC"
G711 = "A_MS/ACM"  # G.711 in an MS WAVEFORMATEX (the API reference's GetClip/GetHLSStreamingSessionURL pages)
AUDIO_CODECS = (AAC, G711)
VIDEO_CODECS = (H264, H265)
MAX_HLS_CPD_CHANGES = 500  # "up to 500 codec private data changes per HLS session"


def check_stream(store: Store, stream: str) -> None:
    """NoDataRetentionException: "A streaming session was requested for a stream that does not retain data (that is,
    has a DataRetentionInHours of 0)." (GetHLSStreamingSessionURL errors)."""
    info = store.describe(stream)
    if int(info.get("DataRetentionInHours") or 0) <= 0:
        raise StoreError(400, "NoDataRetentionException",
                         f"The stream {stream} does not retain data (DataRetentionInHours is 0): nothing can be played. "
                         "Update its data retention, then ingest again.")


def check_tracks(tracks: list[Track]) -> None:
    """Track 1 H.264 or H.265, other tracks AAC; codec private data present and valid on every track."""
    by_number = {t.number: t for t in tracks}
    video = by_number.get(1)
    # "The codec ID of track 1 should be V_MPEG/ISO/AVC (for h.264) or V_MPEGH/ISO/HEVC (for H.265). Optionally, the
    #  codec ID of track 2 should be A_AAC (for AAC) or A_MS/ACM (for G.711)." -> UnsupportedStreamMediaTypeException
    if video is None or video.codec_id not in VIDEO_CODECS:
        raise StoreError(400, "UnsupportedStreamMediaTypeException",
                         f"Track 1 has codec {video.codec_id if video else None!r}; playback needs H.264 "
                         f"({H264}) or H.265 ({H265}) on track 1.")
    for t in tracks:
        if t.number != 1 and t.codec_id not in AUDIO_CODECS:
            raise StoreError(400, "UnsupportedStreamMediaTypeException",
                             f"Track {t.number} has codec {t.codec_id!r}; playback supports only AAC ({AAC}) or "
                             f"G.711 ({G711}) beside the video.")
    for t in tracks:
        # "No codec private data was found in at least one of tracks of the video stream."
        if not t.codec_private:
            raise StoreError(400, "MissingCodecPrivateDataException",
                             f"No codec private data was found in track {t.number} ({t.codec_id}): the producer must "
                             "send CodecPrivate (avcC for H.264) in the MKV track header.")
        problem = codec_private_problem(t)
        # "The codec private data in at least one of the tracks of the video stream is not valid for this operation."
        if problem:
            raise StoreError(400, "InvalidCodecPrivateDataException",
                             f"The codec private data of track {t.number} ({t.codec_id}) is not valid: {problem}.")


def codec_private_problem(t: Track) -> str | None:
    """Why the track's codec private data is not valid for playback, or None."""
    cpd = t.codec_private or b""
    if t.codec_id == H264:
        try:
            parse_avcc(cpd)
        except H264Error as e:
            return f"not an AVCDecoderConfigurationRecord ({e})"
    elif t.codec_id == H265:
        # HEVCDecoderConfigurationRecord: configurationVersion 1, 23 bytes before the NAL arrays
        if len(cpd) < 23 or cpd[0] != 1:
            return "not an HEVCDecoderConfigurationRecord"
    elif t.codec_id == AAC:
        # "AudioSpecificConfig ... 2 or 5 bytes; LATM is refused" (video-playback-requirements.html)
        if len(cpd) not in (2, 5):
            return f"AAC AudioSpecificConfig of {len(cpd)} bytes (expected 2 or 5)"
    elif t.codec_id == G711:
        # WAVEFORMATEX: 18 bytes; format tag 6 (A-law) or 7 (mu-law)
        if len(cpd) < 18 or int.from_bytes(cpd[:2], "little") not in (6, 7):
            return "not a WAVEFORMATEX for G.711 (format tag 6 or 7)"
    return None


def check_playable(store: Store, stream: str, entries: Iterable[ArchiveEntry], *,
                   max_cpd_changes: int | None = None) -> None:
    """Everything the service checks before it packages `entries` (in play order) for playback.

    ResourceNotFoundException for no entries ("a time range that has no fragments"); NoDataRetentionException;
    per session: UnsupportedStreamMediaTypeException, MissingCodecPrivateDataException,
    InvalidCodecPrivateDataException; the tracks (numbers, codecs) must not change within the packaged sequence
    ("tracks may not change within a session"); at most `max_cpd_changes` changes of track 1's codec private data
    (500 per HLS session; 0 for GetClip: "codec private data must not change within the clip").
    """
    entries = list(entries)
    check_stream(store, stream)
    if not entries:
        raise StoreError(404, "ResourceNotFoundException", "No fragments found in the requested time range.")
    seen: dict[str, list[Track]] = {}
    layout = None
    last_cpd = None
    changes = 0
    for e in entries:
        tracks = seen.get(e.session)
        if tracks is None:
            tracks = seen[e.session] = archive_reader.tracks_of(store, stream, e)
            check_tracks(tracks)
        shape = sorted((t.number, t.codec_id) for t in tracks)
        if layout is None:
            layout = shape
        elif shape != layout:
            raise StoreError(400, "UnsupportedStreamMediaTypeException",
                             f"The tracks change within the requested media (fragment {e.fragment_number}: {shape}, "
                             f"before: {layout}); the service does not support track changes within a session.")
        cpd = next(t.codec_private for t in tracks if t.number == 1)
        if last_cpd is not None and cpd != last_cpd:
            changes += 1
            if max_cpd_changes is not None and changes > max_cpd_changes:
                raise StoreError(400, "InvalidCodecPrivateDataException",
                                 f"The codec private data of track 1 changes {changes} times in the requested media "
                                 f"(at most {max_cpd_changes} allowed here; fragment {e.fragment_number}).")
        last_cpd = cpd
