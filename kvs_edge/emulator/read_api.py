"""The emulator's read-side data APIs, in the shapes of botocore's `kinesis-video-archived-media` and
`kinesis-video-media` service models (REST-JSON, POST /<operation>): ListFragments, GetMediaForFragmentList, GetClip,
GetImages and GetMedia. Pure over the Store: a request body in, a reply out; the server moves the bytes.

    reply = handle(store, "/listFragments", body, now_ms=...)
      JsonReply(body)                          -> HTTP 200 JSON
      MediaReply(content_type, chunks)         -> HTTP 200, a streaming body of `chunks` (finite)
      GetMediaSession                          -> HTTP 200, a live streaming body: poll() for documents as they persist
      raises StoreError                        -> an AWS error (x-amzn-ErrorType)

Request/response shapes, limits and sources: docs/kvs-read-side.md.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

from kvs_edge.emulator import archive_reader as ar, media_export, packaging
from kvs_edge.emulator.archive_reader import PRODUCER, SELECTOR_TYPES, SERVER
from kvs_edge.emulator.store import ArchiveEntry, Store, StoreError

OPERATIONS = ("/listFragments", "/getMediaForFragmentList", "/getClip", "/getImages", "/getMedia")

MKV_CONTENT_TYPE = "video/webm"
MP4_CONTENT_TYPE = "video/mp4"
LIST_FRAGMENTS_MAX = 1000  # MaxResults 1..1000 (service model)
FRAGMENT_LIST_MAX = 1000  # GetMediaForFragmentList Fragments: 1..1000
CLIP_MAX_FRAGMENTS = 200  # "the first 100 MB or the first 200 fragments"
CLIP_MAX_BYTES = 100 * 1024 * 1024
RANGE_MAX_MS = 24 * 3600 * 1000  # EndTimestamp "must be within 24 hours of the specified StartTimestamp"
IMAGES_MIN_INTERVAL_MS = 200  # "The minimum value that can be provided is 200 ms"
IMAGES_MAX_RANGE_MS = 300_000  # "more than 300 seconds above StartTimestamp" -> error
IMAGES_PAGE = 25  # "The default limit is 25 images per API response ... greater than this ... a page size of 25"
IMAGES_MAX_RESULTS = 100
GET_MEDIA_ERROR_NOT_FOUND = 4000  # "4000 - Requested fragment is not found"

# GetMedia's service tags (API reference, GetMedia Payload). Where in the document they go is not documented: the
# fragment's identity before its cluster, the reader's position after it (so a reader sees the token once it has the
# whole fragment).
TAG_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
TAG_MILLIS_BEHIND_NOW = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
TAG_CONTINUATION_TOKEN = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
TAG_ERROR_CODE = "AWS_KINESISVIDEO_ERROR_CODE"
TAG_ERROR_ID = "AWS_KINESISVIDEO_ERROR_ID"
# GetMediaForFragmentList names its timestamp tags differently (API reference, GetMediaForFragmentList Payload).
TAG_SERVER_SIDE_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_SIDE_TIMESTAMP"
TAG_PRODUCER_SIDE_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_SIDE_TIMESTAMP"
TAG_EXCEPTION_ERROR_CODE = "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE"
TAG_EXCEPTION_MESSAGE = "AWS_KINESISVIDEO_EXCEPTION_MESSAGE"


@dataclass
class JsonReply:
    body: dict


@dataclass
class MediaReply:
    content_type: str
    chunks: Iterable[bytes]


def _bad(message: str) -> StoreError:
    return StoreError(400, "InvalidArgumentException", message)


# ---------------------------------------------------------------- request fields


def parse_timestamp(value, field: str) -> int:
    """A REST-JSON timestamp (botocore sends epoch seconds as a number; ISO 8601 strings are accepted) -> epoch ms."""
    if isinstance(value, bool) or value is None:
        raise _bad(f"{field} must be a timestamp.")
    if isinstance(value, (int, float)):
        return round(value * 1000)
    if isinstance(value, str):
        try:
            return round(float(value) * 1000)
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(f"{field} {value!r} is not a timestamp.") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return round(t.timestamp() * 1000)
    raise _bad(f"{field} must be a timestamp.")


def seconds(ms: int) -> float:
    """Epoch ms -> the epoch seconds REST-JSON timestamps carry."""
    return ms / 1000


def _stream_name(store: Store, body: dict) -> str:
    name, arn = body.get("StreamName"), body.get("StreamARN")
    if name is not None and arn is not None:
        raise _bad("Specify either StreamName or StreamARN, not both.")
    if name is None and arn is None:
        raise _bad("StreamName or StreamARN is required.")
    return store.describe(name, arn)["StreamName"]


def _selector_range(sel, field: str) -> tuple[str, int, int]:
    """(FragmentSelectorType, start ms, end ms) of a {FragmentSelectorType, TimestampRange} selector."""
    if not isinstance(sel, dict):
        raise _bad(f"{field} is required.")
    kind = sel.get("FragmentSelectorType")
    if kind not in SELECTOR_TYPES:
        raise _bad(f"{field}.FragmentSelectorType must be one of {list(SELECTOR_TYPES)}.")
    rng = sel.get("TimestampRange")
    if not isinstance(rng, dict):
        raise _bad(f"{field}.TimestampRange is required.")
    start = parse_timestamp(rng.get("StartTimestamp"), "StartTimestamp")
    end = parse_timestamp(rng.get("EndTimestamp"), "EndTimestamp")
    if end < start:
        raise _bad("EndTimestamp must not be earlier than StartTimestamp.")
    return kind, start, end


def _token(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def _untoken(token) -> dict:
    try:
        obj = json.loads(base64.urlsafe_b64decode(str(token).encode()))
        if isinstance(obj, dict):
            return obj
    except (ValueError, binascii.Error):
        pass
    raise _bad("NextToken is not valid: pass the NextToken of the previous response unchanged.")


# ---------------------------------------------------------------- operations


def handle(store: Store, path: str, body: dict, *, now_ms: int):
    """Run one read operation. See the module docstring for what comes back."""
    if not isinstance(body, dict):
        raise StoreError(400, "SerializationException", "The request body must be a JSON object.")
    stream = _stream_name(store, body)
    if path == "/listFragments":
        return list_fragments(store, stream, body)
    if path == "/getMediaForFragmentList":
        return get_media_for_fragment_list(store, stream, body)
    if path == "/getClip":
        return get_clip(store, stream, body)
    if path == "/getImages":
        return get_images(store, stream, body)
    if path == "/getMedia":
        return GetMediaSession(store, stream, body, now_ms=now_ms)
    raise StoreError(404, "UnknownOperationException", f"Unknown operation {path}")


def fragment_json(e: ArchiveEntry) -> dict:
    """A Fragment as ListFragments returns it."""
    return {"FragmentNumber": e.fragment_number, "FragmentSizeInBytes": e.size,
            "ProducerTimestamp": seconds(e.producer_ts_ms), "ServerTimestamp": seconds(e.server_ts_ms),
            "FragmentLengthInMilliseconds": ar.duration_ms(e)}


def list_fragments(store: Store, stream: str, body: dict) -> JsonReply:
    """ListFragments: every stored fragment whose start lies in the range (duplicates too: the listing shows what is
    archived). "FragmentSelector ... is only required when the NextToken isn't passed in the API."""
    limit = body.get("MaxResults", LIST_FRAGMENTS_MAX)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= LIST_FRAGMENTS_MAX:
        raise _bad(f"MaxResults must be an integer from 1 to {LIST_FRAGMENTS_MAX}.")
    if body.get("NextToken"):
        t = _untoken(body["NextToken"])
        kind, start, end, offset = t.get("t"), t.get("s"), t.get("e"), t.get("o", 0)
        if kind not in SELECTOR_TYPES or not isinstance(offset, int):
            raise _bad("NextToken is not valid: pass the NextToken of the previous response unchanged.")
    else:
        kind, start, end = _selector_range(body.get("FragmentSelector"), "FragmentSelector")
        offset = 0
    got = ar.list_fragments(store, stream, selector_type=kind, start_ms=start, end_ms=end)
    page = got[offset:offset + limit]
    out: dict = {"Fragments": [fragment_json(e) for e in page]}
    if offset + limit < len(got):
        out["NextToken"] = _token({"t": kind, "s": start, "e": end, "o": offset + limit})
    return JsonReply(out)


def get_media_for_fragment_list(store: Store, stream: str, body: dict) -> MediaReply:
    """GetMediaForFragmentList: one MKV document per listed fragment, in the order asked, each with the fragment's
    number and SERVER_SIDE/PRODUCER_SIDE timestamps; an unknown number becomes a document of exception tags."""
    numbers = body.get("Fragments")
    if not isinstance(numbers, list) or not 1 <= len(numbers) <= FRAGMENT_LIST_MAX \
            or not all(isinstance(n, str) and n for n in numbers):
        raise _bad(f"Fragments must list 1 to {FRAGMENT_LIST_MAX} fragment numbers.")
    by_number = {e.fragment_number: e for e in ar.entries(store, stream)}

    def chunks() -> Iterator[bytes]:
        for n in numbers:
            e = by_number.get(n)
            if e is None:
                yield ar.tags_document([(TAG_FRAGMENT_NUMBER, n),
                                        (TAG_EXCEPTION_ERROR_CODE, str(GET_MEDIA_ERROR_NOT_FOUND)),
                                        (TAG_EXCEPTION_MESSAGE, f"Fragment {n} was not found in stream {stream}.")])
                continue
            yield ar.fragment_document(store, stream, e, tags_before=[
                (TAG_FRAGMENT_NUMBER, e.fragment_number),
                (TAG_SERVER_SIDE_TIMESTAMP, ar.epoch_seconds(e.server_ts_ms)),
                (TAG_PRODUCER_SIDE_TIMESTAMP, ar.epoch_seconds(e.producer_ts_ms))])

    return MediaReply(MKV_CONTENT_TYPE, chunks())


def clip_fragments(store: Store, stream: str, kind: str, start: int, end: int) -> list[ArchiveEntry]:
    """The fragments of a clip (or any packaged range): start in [start, end], duplicates resolved by producer
    timestamp, checked for playback; at most 200 fragments and 100 MB ("The output will contain the first 100 MB or
    the first 200 fragments from the specified start timestamp")."""
    got = ar.list_fragments(store, stream, selector_type=kind, start_ms=start, end_ms=end, dedupe=kind == PRODUCER)
    picked, size = [], 0
    for e in got:
        if len(picked) >= CLIP_MAX_FRAGMENTS or (picked and size + e.size > CLIP_MAX_BYTES):
            break
        picked.append(e)
        size += e.size
    # GetClip: "codec private data must not change within the clip" (kvs-service-facts.md, Other read APIs)
    packaging.check_playable(store, stream, picked, max_cpd_changes=0)
    return picked


def get_clip(store: Store, stream: str, body: dict) -> MediaReply:
    """GetClip: an MP4 of the range, remuxed from the stored fragments (never re-encoded)."""
    kind, start, end = _selector_range(body.get("ClipFragmentSelector"), "ClipFragmentSelector")
    if end - start > RANGE_MAX_MS:
        raise _bad("EndTimestamp must be within 24 hours of StartTimestamp.")
    picked = clip_fragments(store, stream, kind, start, end)
    try:
        data = media_export.remux_mp4(ar.fragment_document(store, stream, e) for e in picked)
    except media_export.MediaError as e:
        # "One or more frames in the requested clip could not be parsed based on the specified codec."
        raise StoreError(400, "InvalidMediaFrameException", str(e)) from None
    return MediaReply(MP4_CONTENT_TYPE, [data])


def get_images(store: Store, stream: str, body: dict) -> JsonReply:
    """GetImages: an image every SamplingInterval ms from StartTimestamp to EndTimestamp (inclusive), from the frame
    shown at that time; NO_MEDIA where no fragment covers it, MEDIA_ERROR where its media cannot make an image."""
    kind = body.get("ImageSelectorType")
    if kind not in SELECTOR_TYPES:
        raise _bad(f"ImageSelectorType must be one of {list(SELECTOR_TYPES)}.")
    fmt = body.get("Format")
    if fmt not in (media_export.JPEG, media_export.PNG):
        raise _bad("Format must be JPEG or PNG.")
    start = parse_timestamp(body.get("StartTimestamp"), "StartTimestamp")
    end = parse_timestamp(body.get("EndTimestamp"), "EndTimestamp")
    if end < start:
        raise _bad("EndTimestamp must not be earlier than StartTimestamp.")
    if end - start > IMAGES_MAX_RANGE_MS:
        raise _bad("The range from StartTimestamp to EndTimestamp must not exceed 300 seconds.")
    interval = body.get("SamplingInterval")
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < IMAGES_MIN_INTERVAL_MS:
        raise _bad(f"SamplingInterval must be an integer number of milliseconds, at least {IMAGES_MIN_INTERVAL_MS}.")
    max_results = body.get("MaxResults", IMAGES_PAGE)
    if not isinstance(max_results, int) or isinstance(max_results, bool) or not 1 <= max_results <= IMAGES_MAX_RESULTS:
        raise _bad(f"MaxResults must be an integer from 1 to {IMAGES_MAX_RESULTS}.")
    quality = 80  # "If no value is provided, the default value of the JPEGQuality key will be set to 80."
    cfg = body.get("FormatConfig") or {}
    if "JPEGQuality" in cfg:
        try:
            quality = int(cfg["JPEGQuality"])
        except (TypeError, ValueError):
            quality = 0
        if not 1 <= quality <= 100:
            raise _bad("FormatConfig JPEGQuality must be an integer from 1 to 100.")
    width, height = body.get("WidthPixels"), body.get("HeightPixels")
    for name, v, top in (("WidthPixels", width, 3840), ("HeightPixels", height, 2160)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top):
            raise _bad(f"{name} must be an integer from 1 to {top}.")
    packaging.check_stream(store, stream)  # NoDataRetentionException
    first = start
    if body.get("NextToken"):
        first = _untoken(body["NextToken"]).get("next")
        if not isinstance(first, int) or not start <= first <= end:
            raise _bad("NextToken is not valid for this time range.")
    samples = list(range(first, end + 1, interval))
    page = samples[:min(max_results, IMAGES_PAGE)]
    frags = ar.list_fragments(store, stream, selector_type=kind, dedupe=kind == PRODUCER)
    decoded: dict[str, list | str] = {}
    images = []
    for t in page:
        images.append(_image_at(store, stream, frags, kind, t, decoded, fmt, width, height, quality))
    out: dict = {"Images": images}
    if len(samples) > len(page):
        out["NextToken"] = _token({"next": samples[len(page)]})
    return JsonReply(out)


def _covering(frags: list[ArchiveEntry], kind: str, t: int) -> ArchiveEntry | None:
    """The fragment shown at time t on the selector's clock: it starts at or before t and its last frame (plus one
    frame's duration) is not before t."""
    best = None
    for e in frags:
        s = ar.start_ms_of(e, kind)
        span = e.last_frame_ms - e.first_frame_ms
        step = span // (e.frames - 1) if e.frames > 1 else 0
        if s <= t <= s + span + step:
            best = e
    return best


def _image_at(store, stream, frags, kind, t, decoded, fmt, width, height, quality) -> dict:
    img: dict = {"TimeStamp": seconds(t)}
    e = _covering(frags, kind, t)
    if e is None:
        img["Error"] = "NO_MEDIA"
        return img
    if e.fragment_number not in decoded:
        try:
            tracks = ar.tracks_of(store, stream, e)
            packaging.check_tracks(tracks)
            decoded[e.fragment_number] = media_export.decode_video(ar.fragment_document(store, stream, e))
        except (StoreError, media_export.MediaError) as err:
            decoded[e.fragment_number] = str(err)
    frames = decoded[e.fragment_number]
    at = t - ar.start_ms_of(e, kind) + e.first_frame_ms  # the same instant on the fragment's producer clock
    shown = [f for ts, f in frames if ts <= at] if isinstance(frames, list) else []
    if not shown:
        img["Error"] = "MEDIA_ERROR"
        return img
    frame = shown[-1]
    if width is None and height is not None:  # "its original aspect ratio will be used to calculate the WidthPixels"
        width = max(1, round(frame.width * height / frame.height))
    elif height is None and width is not None:
        height = max(1, round(frame.height * width / frame.width))
    try:
        data = media_export.encode_image(frame, fmt, width=width, height=height, jpeg_quality=quality)
    except media_export.MediaError:
        img["Error"] = "MEDIA_ERROR"
        return img
    img["ImageContent"] = base64.b64encode(data).decode()
    return img


class GetMediaSession:
    """One GetMedia response: MKV documents in fragment-number (ingestion) order, from the StartSelector on, then live
    as fragments persist. Each document: session header, Tags (FRAGMENT_NUMBER, SERVER_TIMESTAMP,
    PRODUCER_TIMESTAMP), the cluster, Tags (MILLIS_BEHIND_NOW, CONTINUATION_TOKEN).

    StartSelectorType (API reference, GetMedia StartSelector):
      EARLIEST            "Start with earliest available chunk on the stream."
      NOW                 "Start with the latest chunk on the stream": the fragments that persist after the request.
      FRAGMENT_NUMBER     AfterFragmentNumber "from where you want the GetMedia API to start returning the fragments":
                          that fragment first (the type's own text says "the chunk after"; the two texts disagree).
      SERVER_TIMESTAMP / PRODUCER_TIMESTAMP  "the chunk containing the fragment that has the specified timestamp";
                          none contains it: the first one after it.
      CONTINUATION_TOKEN  "starts with the chunk identified by the continuation token": a document's token names the
                          fragment after it.
    """

    content_type = MKV_CONTENT_TYPE

    def __init__(self, store: Store, stream: str, body: dict, *, now_ms: int):
        self.store = store
        self.stream = stream
        sel = body.get("StartSelector")
        if not isinstance(sel, dict):
            raise _bad("StartSelector is required.")
        kind = sel.get("StartSelectorType")
        got = ar.entries(store, stream)
        self.known = len(got)
        self.sent = 0
        if kind == "EARLIEST":
            self.after = -1
        elif kind == "NOW":
            self.after = max((int(e.fragment_number) for e in got), default=-1)
        elif kind == "FRAGMENT_NUMBER":
            number = sel.get("AfterFragmentNumber")
            if not isinstance(number, str) or not number.isdigit():
                raise _bad("AfterFragmentNumber is required with StartSelectorType FRAGMENT_NUMBER.")
            if not any(e.fragment_number == number for e in got):
                raise StoreError(404, "ResourceNotFoundException",
                                 f"Fragment {number} does not exist in stream {stream}.")
            self.after = int(number) - 1
        elif kind in (SERVER_TIMESTAMP_SELECTOR, PRODUCER_TIMESTAMP_SELECTOR):
            t = parse_timestamp(sel.get("StartTimestamp"), "StartTimestamp")
            clock = SERVER if kind == SERVER_TIMESTAMP_SELECTOR else PRODUCER
            self.after = _before_timestamp(got, clock, t)
        elif kind == "CONTINUATION_TOKEN":
            token = sel.get("ContinuationToken")
            if not isinstance(token, str) or not token.isdigit():
                raise _bad("ContinuationToken is required with StartSelectorType CONTINUATION_TOKEN: pass the "
                           f"{TAG_CONTINUATION_TOKEN} tag of the last document read.")
            self.after = int(token)
        else:
            raise _bad("StartSelectorType must be one of NOW, EARLIEST, FRAGMENT_NUMBER, SERVER_TIMESTAMP, "
                       "PRODUCER_TIMESTAMP, CONTINUATION_TOKEN.")

    def poll(self) -> Iterator[bytes]:
        """The documents of every fragment persisted since the last poll (after the selector's position), one at a
        time (a reader of a long archive never holds more than one fragment)."""
        got = ar.entries(self.store, self.stream)
        self.known = len(got)
        latest = max((e.server_ts_ms for e in got), default=0)
        for e in got:
            if int(e.fragment_number) <= self.after:
                continue
            doc = ar.fragment_document(self.store, self.stream, e, tags_before=[
                (TAG_FRAGMENT_NUMBER, e.fragment_number),
                (TAG_SERVER_TIMESTAMP, ar.epoch_seconds(e.server_ts_ms)),
                (TAG_PRODUCER_TIMESTAMP, ar.epoch_seconds(e.producer_ts_ms))], tags_after=[
                (TAG_MILLIS_BEHIND_NOW, str(max(0, latest - e.server_ts_ms))),
                (TAG_CONTINUATION_TOKEN, e.fragment_number)])
            self.after = int(e.fragment_number)
            self.sent += 1
            yield doc

    def wait(self, timeout_s: float) -> None:
        """Block until a fragment persists (or the timeout)."""
        ar.wait_for_fragments(self.store, self.stream, self.known, timeout_s)


SERVER_TIMESTAMP_SELECTOR, PRODUCER_TIMESTAMP_SELECTOR = SERVER, PRODUCER


def _before_timestamp(got: list[ArchiveEntry], clock: str, t: int) -> int:
    """The GetMedia position (the fragment number before the first to send) for a start timestamp: the fragment
    containing t, else the first starting after t (ingestion order). On the server clock a fragment lasts until the
    next one arrives: the first of those that arrived last at or before t."""
    if clock == SERVER:
        before = [e.server_ts_ms for e in got if e.server_ts_ms <= t]
        if before:
            return int(next(e for e in got if e.server_ts_ms == max(before)).fragment_number) - 1
    for e in got:
        s = ar.start_ms_of(e, clock)
        if s <= t <= s + ar.duration_ms(e):
            return int(e.fragment_number) - 1
    for e in got:
        if ar.start_ms_of(e, clock) > t:
            return int(e.fragment_number) - 1
    return max((int(e.fragment_number) for e in got), default=-1)
