"""HLS streaming sessions over the emulator's archive: the state between GetHLSStreamingSessionURL and the player's
GETs. No sockets: web.py moves the bytes; hls.py makes playlists and segments; archive_reader/packaging (the read side)
select fragments and apply the service's playback checks.

    pb = Playback(store)
    pb.create_hls(body, data_endpoint, now) -> {"HLSStreamingSessionURL": ".../hls/v1/getHLSMasterPlaylist.m3u8?..."}
    pb.hls_get(action, query, now) -> (content_type, bytes)      # action = getHLSMasterPlaylist.m3u8, ...

As the service: the session URL carries the only credential (SessionToken), so the HLS GETs are not SigV4-signed;
the token expires after `Expires` seconds.
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading

from kvs_edge.emulator import archive_reader, hls, packaging
from kvs_edge.emulator.archive_reader import PRODUCER
from kvs_edge.emulator.store import ArchiveEntry, Store, StoreError

M3U8 = "application/vnd.apple.mpegurl"
MP4 = "video/mp4"
MP2T = "video/MP2T"
MPD = "application/dash+xml"
_SEGMENT_CACHE = 48  # remuxed segments kept (a player asks each once; two players of one session share them)


class Playback:
    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()
        self._sessions: dict[str, hls.HlsSession] = {}
        self._tracks: dict[tuple[str, str], list] = {}  # (stream, PutMedia session) -> tracks of its header
        self._segments: collections.OrderedDict = collections.OrderedDict()
        self._refresh_lock = threading.Lock()  # one playlist refresh at a time (sessions are few; refreshes cheap)

    # ------------------------------------------------------------------ GetHLSStreamingSessionURL
    def create_hls(self, body: dict, data_endpoint: str, now: float) -> dict:
        token = self._create(hls.parse_request(body, now), now)
        return {"HLSStreamingSessionURL": f"{data_endpoint}{hls.PATH_PREFIX}{hls.MASTER}?SessionToken={token}"}

    def create_dash(self, body: dict, data_endpoint: str, now: float) -> dict:
        """GetDASHStreamingSessionURL: the same sessions and fMP4 segments, described by one MPD."""
        token = self._create(hls.parse_dash_request(body, now), now)
        return {"DASHStreamingSessionURL": f"{data_endpoint}{hls.DASH_PATH_PREFIX}{hls.DASH_MANIFEST}"
                                           f"?SessionToken={token}"}

    def _create(self, params: hls.SessionParams, now: float) -> str:
        stream = self.store.describe(params.stream, params.arn)["StreamName"]
        packaging.check_stream(self.store, stream)
        token = secrets.token_urlsafe(48)
        s = hls.HlsSession(params, token, now, stream=stream)
        items = self._refresh(s, now, initial=True)
        if not items:
            # "GetHLSStreamingSessionURL ... throw[s] this error if a session with a PlaybackMode of ON_DEMAND or
            #  LIVE_REPLAY is requested for a stream that has no fragments within the requested time range, or if a
            #  session with a PlaybackMode of LIVE is requested for a stream that has no fragments within the last
            #  30 seconds." (ResourceNotFoundException)
            where = "within the last 30 seconds" if params.mode == hls.LIVE else "within the requested time range"
            raise StoreError(404, "ResourceNotFoundException", f"No fragments found {where} in stream {stream}.")
        with self._lock:
            self._drop_expired(now)
            self._sessions[token] = s
        return token

    def _refresh(self, s: hls.HlsSession, now: float, initial: bool = False) -> list[hls.Item]:
        """Add what the session may list now; the packaging checks run on every fragment before it is listed."""
        p = s.params
        entries = archive_reader.list_fragments(self.store, s.stream, selector_type=p.selector,
                                                dedupe=p.selector == PRODUCER)
        if initial and p.mode == hls.LIVE:
            recent = now * 1000 - hls.LIVE_RECENT_MS
            if not any(e.server_ts_ms >= recent for e in entries):
                return []
        picked = s.select(entries, now)
        if not picked:
            return []
        # codec private data present and valid, tracks unchanged, <= 500 CPD changes per HLS session
        check = ([s.listed[-1].entry] if s.listed else []) + picked
        packaging.check_playable(self.store, s.stream, check, max_cpd_changes=packaging.MAX_HLS_CPD_CHANGES)
        if p.container == hls.TS and any(t.codec_id == packaging.H265 for e in picked
                                         for t in self._tracks_of(s.stream, e)):
            # "MPEG-TS output does not support H.265" (kvs-service-facts.md, Playback requirements)
            raise StoreError(400, "UnsupportedStreamMediaTypeException",
                             "ContainerFormat MPEG_TS does not carry H.265: use FRAGMENTED_MP4.")
        items = [hls.Item(e, self._init_key(s.stream, e)) for e in picked]
        keys = [li.init_key for li in s.listed[-1:]] + [i.init_key for i in items]
        changes = sum(1 for a, b in zip(keys, keys[1:]) if a != b)
        if s.cpd_changes + changes > packaging.MAX_HLS_CPD_CHANGES:
            raise StoreError(400, "InvalidCodecPrivateDataException",
                             f"The codec private data of track 1 changed more than {packaging.MAX_HLS_CPD_CHANGES} "
                             "times in this HLS session.")
        s.cpd_changes += changes
        s.add(items)
        return items

    def _tracks_of(self, stream: str, e: ArchiveEntry) -> list:
        key = (stream, e.session)
        with self._lock:
            got = self._tracks.get(key)
        if got is None:
            got = archive_reader.tracks_of(self.store, stream, e)
            with self._lock:
                self._tracks[key] = got
        return got

    def _init_key(self, stream: str, e: ArchiveEntry) -> str:
        """Fragments with equal tracks (codec ids and private data) share one init segment."""
        h = hashlib.sha256()
        for t in self._tracks_of(stream, e):
            h.update(f"{t.number}:{t.codec_id}:{t.width}x{t.height}:".encode() + (t.codec_private or b"") + b"|")
        return h.hexdigest()[:16]

    def _drop_expired(self, now: float) -> None:
        for tok in [t for t, s in self._sessions.items() if s.expired(now)]:
            del self._sessions[tok]

    def session(self, token: str | None, now: float) -> hls.HlsSession:
        with self._lock:
            s = self._sessions.get(token or "")
        if s is None:
            raise StoreError(404, "ResourceNotFoundException", "No such HLS streaming session: get a new URL from "
                                                               "GetHLSStreamingSessionURL.")
        if s.expired(now):
            raise StoreError(403, "NotAuthorizedException", "The HLS streaming session has expired (Expires); get a "
                                                            "new URL from GetHLSStreamingSessionURL.")
        return s

    # ------------------------------------------------------------------ the player's GETs
    def _media_of(self, s: hls.HlsSession, e: ArchiveEntry) -> tuple[str, int | None, int | None]:
        """(codecs, width, height) of a fragment's tracks: track 1, plus AAC track 2 if any."""
        tracks = self._tracks_of(s.stream, e)
        video = next(t for t in tracks if t.number == 1)
        codecs = hls.avc_codecs(video.codec_private) if video.codec_id == packaging.H264 else "hvc1"
        if any(t.codec_id == packaging.AAC for t in tracks):
            codecs += ",mp4a.40.2"
        return codecs, video.width, video.height

    def _bandwidth(self, s: hls.HlsSession) -> int:
        """Peak bits/s of the session's fragments, for the master playlist or the MPD."""
        return max((e.size * 8000 // max(1, hls.fragment_duration_ms(e)) for e in (li.entry for li in s.listed)),
                   default=1)

    def hls_get(self, action: str, query: dict, now: float, protocol: str = "HLS") -> tuple[str, bytes]:
        """One GET of a session's resource; `protocol` is the URL's (/hls/v1/ or /dash/v1/)."""
        s = self.session(query.get("SessionToken"), now)
        if s.params.protocol != protocol:
            raise StoreError(404, "ResourceNotFoundException", f"This is not an {protocol} streaming session.")
        if action == hls.MASTER and protocol == "HLS":
            return M3U8, s.master_playlist(*self._media_of(s, s.listed[0].entry), self._bandwidth(s)).encode()
        if action in (hls.MEDIA, hls.DASH_MANIFEST) and action == (hls.MEDIA if protocol == "HLS" else
                                                                    hls.DASH_MANIFEST):
            with self._refresh_lock:
                if s.params.mode != hls.ON_DEMAND:
                    self._refresh(s, now)
                if protocol == "DASH":
                    media = lambda e: self._media_of(s, e)  # noqa: E731  (per Period: codec private data changes)
                    return MPD, s.dash_manifest(now, media, self._bandwidth(s)).encode()
                return M3U8, s.media_playlist(now).encode()
        number = query.get("FragmentNumber")
        if not number:
            raise StoreError(400, "MissingParameterException", "FragmentNumber is required.")
        li = s.fragment(number)
        container = s.params.container
        if action == hls.MP4_INIT and container == hls.FMP4:
            return MP4, self._remux(s, li.entry).init
        if action == hls.MP4_MEDIA and container == hls.FMP4:
            return MP4, self._remux(s, li.entry).media
        if action == hls.TS_MEDIA and container == hls.TS:
            return MP2T, self._remux(s, li.entry).media
        raise StoreError(404, "ResourceNotFoundException", f"{action} is not part of a {container} HLS session.")

    def _remux(self, s: hls.HlsSession, e: ArchiveEntry) -> hls.Remuxed:
        key = (s.stream, e.fragment_number, s.params.container, s.base_ms)
        with self._lock:
            got = self._segments.get(key)
            if got is not None:
                self._segments.move_to_end(key)
                return got
        doc = archive_reader.fragment_document(self.store, s.stream, e)
        got = hls.remux(doc, s.params.container, s.base_ms)
        with self._lock:
            self._segments[key] = got
            while len(self._segments) > _SEGMENT_CACHE:
                self._segments.popitem(last=False)
        return got
