"""HLS playback of stored fragments: session parameters, playlists and segments. Pure: no sockets, no store, no clock
(every call that depends on time takes `now`, epoch seconds); the network shell is playback.py.

    params = parse_request(body, now)                    # GetHLSStreamingSessionURL's request JSON -> SessionParams
    s = HlsSession(params, token, now)
    s.add([Item(entry, init_key), ...], now)             # fragments in play order (the shell selects and dedupes them)
    s.master_playlist(video) / s.media_playlist(now)     # text
    remux(doc, container, base_ms) -> Remuxed            # one fragment's MKV document -> fMP4 init + moof/mdat, or TS

Segments are made by REMUXING the stored fragment with PyAV (packets copied, never decoded or re-encoded): one HLS media
segment per KVS fragment, as the service does. Every segment of a session shares one timeline: frame time minus the
session's `base_ms`, so the fMP4 `tfdt` (FFmpeg's `frag_discont` with an edit list) and the TS PTS continue from one
segment to the next.

Request rules quoted from API_reader_GetHLSStreamingSessionURL / API_reader_HLSTimestampRange (docs/kvs-read-side.md).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction

from kvs_edge.emulator.store import ArchiveEntry, StoreError

LIVE, LIVE_REPLAY, ON_DEMAND = "LIVE", "LIVE_REPLAY", "ON_DEMAND"
PLAYBACK_MODES = (LIVE, LIVE_REPLAY, ON_DEMAND)
FMP4, TS = "FRAGMENTED_MP4", "MPEG_TS"
CONTAINERS = (FMP4, TS)
PRODUCER, SERVER = "PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"
ALWAYS, NEVER, ON_DISCONTINUITY = "ALWAYS", "NEVER", "ON_DISCONTINUITY"

EXPIRES_MIN_S, EXPIRES_MAX_S, EXPIRES_DEFAULT_S = 300, 43_200, 300
MAX_RESULTS_LIMIT = 5000
LIVE_RECENT_MS = 30_000  # "LIVE is requested for a stream that has no fragments within the last 30 seconds"
GAP_MS = 50  # ON_DISCONTINUITY: "a gap or overlap between fragments of more than 50 milliseconds"
TIMESCALE = 90_000  # media timescale of every segment (the MPEG-TS clock; fMP4 uses the same)

MASTER = "getHLSMasterPlaylist.m3u8"
MEDIA = "getHLSMediaPlaylist.m3u8"
MP4_INIT = "getMP4InitFragment.mp4"
MP4_MEDIA = "getMP4MediaFragment.mp4"
TS_MEDIA = "getTSFragment.ts"
PATH_PREFIX = "/hls/v1/"
DASH_MANIFEST = "getDASHManifest.mpd"
DASH_PATH_PREFIX = "/dash/v1/"
UTC_DIRECT = "urn:mpeg:dash:utc:direct:2014"
KVS_XMLNS = "https://kinesisvideo.amazonaws.com/dash"  # the service's namespace URI for kvs:fn/kvs:ts is not documented


def _bad(message: str) -> StoreError:
    return StoreError(400, "InvalidArgumentException", message)


def timestamp_ms(value, what: str) -> int:
    """A botocore REST-JSON timestamp (epoch seconds, int or float) as epoch milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{what} must be a timestamp (epoch seconds).")
    return round(value * 1000)


@dataclass(frozen=True)
class SessionParams:
    stream: str | None
    arn: str | None
    mode: str
    container: str
    selector: str
    start_ms: int | None
    end_ms: int | None
    discontinuity: str
    display_timestamp: bool
    max_results: int
    expires_s: int
    protocol: str = "HLS"  # or "DASH" (GetDASHStreamingSessionURL: fMP4 only, one MPD instead of two playlists)
    display_number: bool = False  # DASH DisplayFragmentNumber


def _choice(body: dict, key: str, allowed: tuple, default: str) -> str:
    v = body.get(key, default)
    if v is None:
        return default
    if v not in allowed:
        raise _bad(f"{key} must be one of {', '.join(allowed)} (got {v!r}).")
    return v


def parse_dash_request(body: dict, now: float) -> SessionParams:
    """Validate a GetDASHStreamingSessionURL request body: the HLS rules with DASH's names (DASHFragmentSelector,
    MaxManifestFragmentResults, DisplayFragmentNumber); always fragmented MP4, no discontinuity flags."""
    if not isinstance(body, dict):
        raise StoreError(400, "SerializationException", "The request body must be a JSON object.")
    for key in ("ContainerFormat", "DiscontinuityMode", "HLSFragmentSelector", "MaxMediaPlaylistFragmentResults"):
        if key in body:
            raise _bad(f"{key} is not a GetDASHStreamingSessionURL parameter.")
    same = {k: v for k, v in body.items() if k not in ("DASHFragmentSelector", "MaxManifestFragmentResults",
                                                        "DisplayFragmentNumber")}
    if "DASHFragmentSelector" in body:
        same["HLSFragmentSelector"] = body["DASHFragmentSelector"]
    if "MaxManifestFragmentResults" in body:
        same["MaxMediaPlaylistFragmentResults"] = body["MaxManifestFragmentResults"]
    same["DiscontinuityMode"] = NEVER
    p = parse_request(same, now)
    number = _choice(body, "DisplayFragmentNumber", (ALWAYS, NEVER), NEVER) == ALWAYS
    return SessionParams(**{**p.__dict__, "protocol": "DASH", "display_number": number})


def parse_request(body: dict, now: float) -> SessionParams:
    """Validate a GetHLSStreamingSessionURL request body; InvalidArgumentException for what the service refuses."""
    if not isinstance(body, dict):
        raise StoreError(400, "SerializationException", "The request body must be a JSON object.")
    name, arn = body.get("StreamName"), body.get("StreamARN")
    if (name is None) == (arn is None):
        raise _bad("Specify exactly one of StreamName and StreamARN.")
    mode = _choice(body, "PlaybackMode", PLAYBACK_MODES, LIVE)
    container = _choice(body, "ContainerFormat", CONTAINERS, FMP4)
    sel = body.get("HLSFragmentSelector") or {}
    if not isinstance(sel, dict):
        raise _bad("HLSFragmentSelector must be an object.")
    selector = _choice(sel, "FragmentSelectorType", (PRODUCER, SERVER), SERVER)
    rng = sel.get("TimestampRange")
    start_ms = end_ms = None
    if rng is not None:
        # "This value should not be present if PlaybackType is LIVE." (HLSTimestampRange)
        if mode == LIVE:
            raise _bad("HLSFragmentSelector.TimestampRange must not be set when PlaybackMode is LIVE.")
        # "If the HLSTimestampRange value is specified, the StartTimestamp value is required."
        if rng.get("StartTimestamp") is None:
            raise _bad("TimestampRange.StartTimestamp is required when a TimestampRange is given.")
        start_ms = timestamp_ms(rng["StartTimestamp"], "StartTimestamp")
        if rng.get("EndTimestamp") is not None:
            end_ms = timestamp_ms(rng["EndTimestamp"], "EndTimestamp")
            # "This value must be within 24 hours of the specified StartTimestamp, and it must be later than the
            #  StartTimestamp value. If FragmentSelectorType for the request is SERVER_TIMESTAMP, this value must be
            #  in the past."
            if end_ms <= start_ms or end_ms - start_ms > 24 * 3600 * 1000:
                raise _bad("EndTimestamp must be later than StartTimestamp and within 24 hours of it.")
            if selector == SERVER and end_ms > now * 1000:
                raise _bad("EndTimestamp must be in the past for SERVER_TIMESTAMP.")
    # "The EndTimestamp value is required for ON_DEMAND mode, but optional for LIVE_REPLAY mode."
    if mode == ON_DEMAND and (start_ms is None or end_ms is None):
        raise _bad("ON_DEMAND needs HLSFragmentSelector.TimestampRange with StartTimestamp and EndTimestamp.")
    if mode == LIVE_REPLAY and start_ms is None:
        raise _bad("LIVE_REPLAY needs HLSFragmentSelector.TimestampRange.StartTimestamp.")
    # "The default is ALWAYS when HLSFragmentSelector is set to SERVER_TIMESTAMP, and NEVER when it is set to
    #  PRODUCER_TIMESTAMP."
    disc = _choice(body, "DiscontinuityMode", (ALWAYS, NEVER, ON_DISCONTINUITY), ALWAYS if selector == SERVER else NEVER)
    display = _choice(body, "DisplayFragmentTimestamp", (ALWAYS, NEVER), NEVER) == ALWAYS
    expires = body.get("Expires", EXPIRES_DEFAULT_S)
    if expires is None:
        expires = EXPIRES_DEFAULT_S
    if isinstance(expires, bool) or not isinstance(expires, int) or not EXPIRES_MIN_S <= expires <= EXPIRES_MAX_S:
        raise _bad(f"Expires must be an integer from {EXPIRES_MIN_S} to {EXPIRES_MAX_S} seconds.")
    # "The default is 5 fragments if PlaybackMode is LIVE or LIVE_REPLAY, and 1,000 if PlaybackMode is ON_DEMAND."
    max_results = body.get("MaxMediaPlaylistFragmentResults")
    if max_results is None:
        max_results = 1000 if mode == ON_DEMAND else 5
    if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS_LIMIT:
        raise _bad(f"MaxMediaPlaylistFragmentResults must be an integer from 1 to {MAX_RESULTS_LIMIT}.")
    return SessionParams(name, arn, mode, container, selector, start_ms, end_ms, disc, display, max_results, expires)


def selector_ms(e: ArchiveEntry, selector: str) -> int:
    return e.producer_ts_ms if selector == PRODUCER else e.server_ts_ms


def fragment_duration_ms(e: ArchiveEntry) -> int:
    """Frame span plus one frame interval (the last frame lasts as long as the others on average)."""
    span = max(0, e.last_frame_ms - e.first_frame_ms)
    if e.frames > 1:
        return round(span * e.frames / (e.frames - 1))
    return span or 33


@dataclass(frozen=True)
class Item:
    """A fragment offered to a session, with the key of its init segment (same key = same codec private data)."""

    entry: ArchiveEntry
    init_key: str


@dataclass
class _Listed:
    entry: ArchiveEntry
    init_key: str
    discontinuity: bool
    run_start: int = 0  # index in HlsSession.listed of the first fragment of its run of equal init_key (DASH Period)


@dataclass
class HlsSession:
    """One streaming session: what its playlists list and which fragments its segment URLs may fetch."""

    params: SessionParams
    token: str
    created: float
    stream: str = ""
    base_ms: int | None = None  # timeline origin (producer ms) of every segment
    listed: list[_Listed] = field(default_factory=list)
    first_seq: int = 0  # media sequence number of listed[0]
    by_number: dict[str, _Listed] = field(default_factory=dict)
    cpd_changes: int = 0  # codec private data changes listed so far (at most 500 per HLS session)
    replay_done: bool = False  # LIVE_REPLAY with an EndTimestamp: every fragment of the range is listed

    @property
    def expires_at(self) -> float:
        return self.created + self.params.expires_s

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def select(self, entries: list[ArchiveEntry], now: float) -> list[ArchiveEntry]:
        """Which of the stream's fragments (sorted on the selector's clock) this session may list now."""
        p = self.params
        if p.mode == LIVE:
            # "fragments are not added to the HLS media playlist if they are older than the newest fragment in the
            #  playlist. If the missing fragment becomes available after a subsequent fragment is added to the
            #  playlist, the older fragment is not added, and the gap is not filled."
            if self.listed:
                newest = selector_ms(self.listed[-1].entry, p.selector)
                return [e for e in entries if selector_ms(e, p.selector) > newest]
            return entries[-p.max_results:]
        got = [e for e in entries if (p.start_ms is None or selector_ms(e, p.selector) >= p.start_ms)
               and (p.end_ms is None or selector_ms(e, p.selector) <= p.end_ms)]
        if p.mode == ON_DEMAND:
            # "When the PlaybackMode is ON_DEMAND, the oldest fragments are returned, up to this maximum number."
            return got[:p.max_results] if not self.listed else []
        # LIVE_REPLAY: "Instead of fragments being added as they are ingested, fragments are added as the duration of
        # the next fragment elapses." The session replays from StartTimestamp at real time.
        if not got:
            return []
        origin = selector_ms(self.listed[0].entry if self.listed else got[0], p.selector)
        elapsed_ms = (now - self.created) * 1000
        fresh = [e for e in got if e.fragment_number not in self.by_number]
        out = [e for i, e in enumerate(fresh)
               if selector_ms(e, p.selector) - origin <= elapsed_ms or (i == 0 and not self.listed)]
        self.replay_done = p.end_ms is not None and len(out) == len(fresh)
        return out

    def add(self, items: list[Item]) -> None:
        """Append fragments (in play order) to the session's sequence, marking discontinuities."""
        p = self.params
        for it in items:
            e = it.entry
            if e.fragment_number in self.by_number:
                continue
            prev = self.listed[-1] if self.listed else None
            if self.base_ms is None:
                self.base_ms = e.first_frame_ms
            disc = False
            if prev is not None:
                if p.discontinuity == ALWAYS:
                    disc = True
                elif p.discontinuity == ON_DISCONTINUITY:
                    expected = prev.entry.first_frame_ms + fragment_duration_ms(prev.entry)
                    disc = abs(e.first_frame_ms - expected) > GAP_MS
                if prev.init_key != it.init_key:
                    disc = True  # new codec private data: a new EXT-X-MAP, the decoder restarts
            same_run = prev is not None and prev.init_key == it.init_key
            li = _Listed(e, it.init_key, disc, prev.run_start if same_run else len(self.listed))
            self.listed.append(li)
            self.by_number[e.fragment_number] = li

    def window(self) -> tuple[int, list[_Listed]]:
        """(media sequence number of the first, the listed fragments the media playlist shows now)."""
        if self.params.mode == ON_DEMAND:
            return self.first_seq, self.listed
        n = self.params.max_results
        start = max(0, len(self.listed) - n)
        return self.first_seq + start, self.listed[start:]

    def ended(self, now: float) -> bool:
        p = self.params
        if p.mode == ON_DEMAND:
            return True
        return p.mode == LIVE_REPLAY and self.replay_done

    def fragment(self, number: str) -> _Listed:
        li = self.by_number.get(number)
        if li is None:
            raise StoreError(404, "ResourceNotFoundException",
                             f"Fragment {number} is not part of this streaming session.")
        return li

    # ------------------------------------------------------------------ playlists
    def _q(self, **extra) -> str:
        parts = [f"{k}={v}" for k, v in extra.items()] + [f"SessionToken={self.token}"]
        return "?" + "&".join(parts)

    def master_playlist(self, codecs: str, width: int | None, height: int | None, bandwidth: int) -> str:
        """The root resource: one variant (the stream's track 1, plus track 2 if any), its media playlist URL."""
        attrs = [f"BANDWIDTH={max(1, bandwidth)}", f'CODECS="{codecs}"']
        if width and height:
            attrs.append(f"RESOLUTION={width}x{height}")
        return "\n".join(["#EXTM3U", "#EXT-X-VERSION:7" if self.params.container == FMP4 else "#EXT-X-VERSION:3",
                          "#EXT-X-INDEPENDENT-SEGMENTS", "#EXT-X-STREAM-INF:" + ",".join(attrs),
                          MEDIA + self._q(), ""])

    def media_playlist(self, now: float) -> str:
        p = self.params
        seq, shown = self.window()
        before = self.listed[:len(self.listed) - len(shown)] if p.mode != ON_DEMAND else []
        disc_seq = sum(1 for li in before if li.discontinuity)
        target = max([1] + [-(-fragment_duration_ms(li.entry) // 1000) for li in shown])
        lines = ["#EXTM3U", "#EXT-X-VERSION:7" if p.container == FMP4 else "#EXT-X-VERSION:3",
                 f"#EXT-X-TARGETDURATION:{target}", f"#EXT-X-MEDIA-SEQUENCE:{seq}"]
        if disc_seq:
            lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{disc_seq}")
        if p.mode == ON_DEMAND:
            lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
        init_key = None
        for i, li in enumerate(shown):
            e = li.entry
            if li.discontinuity and i > 0:
                lines.append("#EXT-X-DISCONTINUITY")
            if p.container == FMP4 and li.init_key != init_key:
                init_key = li.init_key
                lines.append(f'#EXT-X-MAP:URI="{MP4_INIT}{self._q(FragmentNumber=e.fragment_number)}"')
            if p.display_timestamp:
                # "the HLS media playlist will contain the fragment's start timestamp" (ProgramDateTime tag), on the
                # selector's clock.
                lines.append("#EXT-X-PROGRAM-DATE-TIME:" + iso8601_ms(selector_ms(e, p.selector)))
            lines.append(f"#EXTINF:{fragment_duration_ms(e) / 1000:.3f},")
            name = MP4_MEDIA if p.container == FMP4 else TS_MEDIA
            lines.append(name + self._q(FragmentNumber=e.fragment_number))
        if self.ended(now):
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


    # ------------------------------------------------------------------ DASH
    def dash_manifest(self, now: float, media_of, bandwidth: int) -> str:
        """An MPD: one Period per run of fragments sharing codec private data, each a SegmentList (explicit URLs,
        a SegmentTimeline on the session's 90 kHz timeline) with the codecs and picture size of its run
        (media_of(entry) -> (codecs, width, height))). ON_DEMAND is static; LIVE and LIVE_REPLAY are dynamic
        (re-fetched every second)."""
        p = self.params
        seq, shown = self.window()
        static = p.mode == ON_DEMAND or self.ended(now)
        base = self.base_ms or 0
        attrs = {"xmlns": "urn:mpeg:dash:schema:mpd:2011", "xmlns:kvs": KVS_XMLNS, "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
                 "minBufferTime": "PT2S"}
        if static:
            end = max((li.entry.first_frame_ms - base + fragment_duration_ms(li.entry) for li in shown), default=0)
            attrs.update(type="static", mediaPresentationDuration=f"PT{end / 1000:.3f}S")
        else:
            depth = sum(fragment_duration_ms(li.entry) for li in shown)
            attrs.update(type="dynamic", availabilityStartTime=iso8601_ms(base), publishTime=iso8601_ms(int(now * 1000)),
                         minimumUpdatePeriod="PT1S", timeShiftBufferDepth=f"PT{max(depth, 1000) / 1000:.3f}S",
                         suggestedPresentationDelay="PT2S")
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               "<MPD " + " ".join(f'{k}="{v}"' for k, v in attrs.items()) + ">"]
        # One Period per run of equal codec private data. In a dynamic MPD, Period@id must be present and must not
        # change when the MPD is updated (ISO/IEC 23009-1, Period semantics): id, start and init segment come from the
        # run's first fragment, also after the LIVE window moved past it (with ids that moved with the window,
        # dash.js 5.2.1 took each update for a new Period and stopped after the first window: emulator defect, fixed).
        runs: list[list[_Listed]] = []
        for li in shown:
            if not runs or runs[-1][-1].init_key != li.init_key:
                runs.append([])
            runs[-1].append(li)
        number = seq
        for run in runs:
            begin = run[0].run_start
            start_ms = self.listed[begin].entry.first_frame_ms - base
            out.append(f'<Period id="{self.first_seq + begin}" start="PT{start_ms / 1000:.3f}S">')
            out.append('<AdaptationSet mimeType="video/mp4" segmentAlignment="true" startWithSAP="1">')
            codecs, width, height = media_of(run[0].entry)
            size = f' width="{width}" height="{height}"' if width and height else ""
            out.append(f'<Representation id="1" codecs="{codecs}"{size} bandwidth="{max(1, bandwidth)}">')
            offset = start_ms * TIMESCALE // 1000
            out.append(f'<SegmentList timescale="{TIMESCALE}" presentationTimeOffset="{offset}" '
                       f'startNumber="{number}">')
            first = self.listed[begin].entry.fragment_number
            out.append(f'<Initialization sourceURL="{_xml(MP4_INIT + self._q(FragmentNumber=first))}"/>')
            out.append("<SegmentTimeline>")
            for li in run:
                t = (li.entry.first_frame_ms - base) * TIMESCALE // 1000
                # "the Kinesis Video Streams fragment number is added to each S element in the manifest file with
                #  the attribute name kvs:fn" / "the accurate fragment timestamp is added ... kvs:ts"
                extra = f' kvs:fn="{li.entry.fragment_number}"' if p.display_number else ""
                if p.display_timestamp:
                    ms = selector_ms(li.entry, p.selector)
                    extra += f' kvs:ts="{ms // 1000}.{ms % 1000:03d}"'
                out.append(f'<S t="{t}" d="{fragment_duration_ms(li.entry) * TIMESCALE // 1000}"{extra}/>')
            out.append("</SegmentTimeline>")
            for li in run:
                out.append(f'<SegmentURL media="{_xml(MP4_MEDIA + self._q(FragmentNumber=li.entry.fragment_number))}"/>')
            out.append("</SegmentList></Representation></AdaptationSet></Period>")
            number += len(run)
        if not static:
            # A dynamic MPD's segments become available on the wall clock; without a UTCTiming element dash.js asks
            # a time server on the internet (time.akamai.com) and stops when it cannot. The service's MPD is not
            # documented here; the emulator's choice: its own clock, carried in the manifest itself (ISO 23009-1
            # "direct" scheme).
            out.append(f'<UTCTiming schemeIdUri="{UTC_DIRECT}" value="{iso8601_ms(int(now * 1000))}"/>')
        out.append("</MPD>")
        return "\n".join(out) + "\n"


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def iso8601_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def avc_codecs(avcc: bytes | None) -> str:
    """The RFC 6381 codecs string of an avcC record: avc1.PPCCLL."""
    if avcc and len(avcc) >= 4:
        return f"avc1.{avcc[1]:02x}{avcc[2]:02x}{avcc[3]:02x}"
    return "avc1.42e01e"


# ---------------------------------------------------------------------- remuxing
@dataclass(frozen=True)
class Remuxed:
    init: bytes | None  # fMP4: ftyp + moov (the same for every fragment with the same codec private data)
    media: bytes  # fMP4: moof + mdat; TS: the whole segment
    frames: int


_MP4_OPTIONS = {
    # empty_moov: an init segment without samples; frag_keyframe: one moof per fragment (it starts at a key frame);
    # default_base_moof: offsets relative to the moof (CMAF); frag_discont + use_editlist: the tfdt carries the
    # packet's own time instead of restarting at 0; skip_trailer: no mfra after the last fragment.
    "movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont+skip_trailer",
    "use_editlist": "1",
}


def remux(doc: bytes, container: str, base_ms: int) -> Remuxed:
    """One fragment's standalone MKV document -> an HLS segment, packets copied (never decoded), time = frame time -
    base_ms on a 90 kHz clock."""
    import av

    try:
        src = av.open(io.BytesIO(doc), format="matroska")
    except av.error.FFmpegError as e:
        raise StoreError(500, "InternalFailure", f"stored fragment is not readable MKV: {e}") from None
    out_buf = io.BytesIO()
    fmt = "mp4" if container == FMP4 else "mpegts"
    dst = av.open(out_buf, "w", format=fmt, options=_MP4_OPTIONS if container == FMP4 else {})
    frames = 0
    try:
        streams = [s for s in src.streams if s.type in ("video", "audio")]
        outs = {}
        for s in streams:
            o = dst.add_stream_from_template(s)
            o.time_base = Fraction(1, TIMESCALE)
            outs[s.index] = o
        packets = [p for p in src.demux(streams) if p.size and p.pts is not None]
        if not packets:
            raise StoreError(500, "InternalFailure", "stored fragment holds no frames")
        shift = {}
        low = None
        for p in packets:
            rel = p.pts * p.time_base - Fraction(base_ms, 1000)
            low = rel if low is None else min(low, rel)
        lift = -low if low < 0 else Fraction(0)  # never a negative time: move the fragment to the origin instead
        for p in packets:
            tb = p.time_base
            off = shift.setdefault(tb, (Fraction(base_ms, 1000) - lift) / tb)
            dts = p.dts if p.dts is not None else p.pts
            p.pts = round(p.pts - off)
            p.dts = round(dts - off)
            p.stream = outs[p.stream.index]
            dst.mux(p)
            frames += outs[p.stream.index].type == "video"
    finally:
        dst.close()
        src.close()
    data = out_buf.getvalue()
    if container == TS:
        return Remuxed(None, data, frames)
    split = init_end(data)
    return Remuxed(data[:split], data[split:], frames)


def top_level_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the top-level ISO BMFF boxes."""
    out, off = [], 0
    while off + 8 <= len(data):
        size, typ = struct.unpack(">I4s", data[off:off + 8])
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
        elif size == 0:
            size = len(data) - off
        if size < 8:
            raise ValueError(f"bad box size {size} at {off}")
        out.append((typ.decode("latin-1"), off, size))
        off += size
    return out


def init_end(data: bytes) -> int:
    """Where the init segment (ftyp + moov) ends and the first moof begins."""
    for typ, off, _ in top_level_boxes(data):
        if typ in ("moof", "styp", "sidx"):
            return off
    raise StoreError(500, "InternalFailure", "the remuxed fragment has no moof")
