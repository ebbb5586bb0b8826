"""The emulator's playback and console routes: the one hook `dispatch()` that server.py calls for every request.

Owns:
  POST /getHLSStreamingSessionURL,      SigV4-signed like every API call (botocore's kinesis-video-archived-media client)
       /getDASHStreamingSessionURL
  GET  /hls/v1/<action>?SessionToken=   HLS master/media playlists, init and media segments, and the DASH manifest
  GET  /dash/v1/<action>?SessionToken=  with the same segments (the token is the only credential, as on the service)
  GET  /  and  GET /console/...         the web console for a local developer: stream state, a live player (HLS
                                        with hls.js or DASH with dash.js, shipped in kvs_edge/emulator/static/),
                                        thumbnails, the fragment list. These routes are the emulator's own, unsigned
                                        and meant for localhost: the service has no such thing.
Everything else returns None and server.py carries on.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import h11

from kvs_edge.emulator import archive_reader, hls
from kvs_edge.emulator.store import StoreError

log = logging.getLogger(__name__)

SESSION_URL_PATHS = ("/getHLSStreamingSessionURL", "/getDASHStreamingSessionURL")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
STATIC_FILES = ("console.html", "console.js", "console.css", "hls.min.js", "hls.js.LICENSE.txt",
                "dash.mediaplayer.min.js", "dash.mediaplayer.min.js.LICENSE.txt", "dash.js.LICENSE.txt")
CONSOLE_FRAGMENTS = 60  # fragments listed per stream in the console (newest first)
CONSOLE_THUMBNAILS = 8


def handles(method: str, path: str) -> bool:
    return ((method == "POST" and path in SESSION_URL_PATHS) or (method == "GET" and (
        path == "/" or path.startswith((hls.PATH_PREFIX, hls.DASH_PATH_PREFIX, "/console/")))))


def dispatch(emu, h: h11.Connection, conn, method: str, target: str, path: str, headers: dict) -> bool | None:
    """Serve the request if it is one of ours (True/False: keep the connection); None: not ours."""
    if not handles(method, path):
        return None
    from kvs_edge.emulator.server import _send_error, _send_json

    body = emu._drain(h, conn)
    if body is None:
        _send_error(h, conn, 413, "InvalidArgumentException", "Request body too large.")
        return False
    now = time.time()
    try:
        if method == "POST":  # SigV4 and the JSON body as for every API call
            create = emu.playback.create_hls if path == "/getHLSStreamingSessionURL" else emu.playback.create_dash
            ok, out = emu._signed_json(h, conn, method, target, headers, body, lambda doc: create(doc, emu.url, now))
            if ok:
                _send_json(h, conn, 200, out)
            return True
        query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        for prefix, protocol in ((hls.PATH_PREFIX, "HLS"), (hls.DASH_PATH_PREFIX, "DASH")):
            if path.startswith(prefix):
                ctype, data = emu.playback.hls_get(path[len(prefix):], query, now, protocol)
                send_bytes(h, conn, 200, ctype, data, cache="no-cache")
                return True
        if path == "/" or path.startswith("/console/static/"):
            name = "console.html" if path == "/" else path[len("/console/static/"):]
            if name not in STATIC_FILES:
                raise StoreError(404, "ResourceNotFoundException", f"No console file {name}.")
            data = resources.files("kvs_edge.emulator").joinpath("static", name).read_bytes()
            send_bytes(h, conn, 200, STATIC_TYPES[name[name.rindex("."):]], data)
            return True
        if path.startswith("/console/api/"):
            _send_json(h, conn, 200, console_api(emu, path[len("/console/api/"):], query, now))
            return True
        raise StoreError(404, "ResourceNotFoundException", f"Unknown console route {path}")
    except StoreError as e:
        _send_error(h, conn, e.status, e.error_type, e.message)
    return True


def send_bytes(h: h11.Connection, conn, status: int, ctype: str, data: bytes, cache: str | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(data)).encode()),
               (b"access-control-allow-origin", b"*")]
    if cache:
        headers.append((b"cache-control", cache.encode()))
    conn.sendall(h.send(h11.Response(status_code=status, headers=headers)) + h.send(h11.Data(data=data))
                 + h.send(h11.EndOfMessage()))


# ---------------------------------------------------------------------- the console's JSON
def console_api(emu, what: str, query: dict, now: float):
    if what == "streams":
        return [stream_state(emu, info, now) for info in emu.store.list()]
    name = query.get("stream")
    if not name:
        raise StoreError(400, "InvalidArgumentException", "stream= is required.")
    if what == "fragments":
        got = archive_reader.list_fragments(emu.store, name)[-CONSOLE_FRAGMENTS:]
        return [{"FragmentNumber": e.fragment_number, "ProducerTimestamp": e.producer_ts_ms / 1000,
                 "ServerTimestamp": e.server_ts_ms / 1000, "FragmentSizeInBytes": e.size, "Frames": e.frames,
                 "FragmentLengthInMilliseconds": archive_reader.duration_ms(e), "Defects": e.defects}
                for e in reversed(got)]
    if what in ("hls", "dash"):
        return {"url": console_session(emu, name, now, what.upper())}
    if what == "images":
        return console_images(emu, name, now)
    raise StoreError(404, "ResourceNotFoundException", f"Unknown console API {what}")


def stream_state(emu, info: dict, now: float) -> dict:
    name = info["StreamName"]
    st = emu.stats(name)
    entries = emu.store.archive(name)
    last = max((e.server_ts_ms for e in entries), default=None)
    return {"StreamName": name, "Status": info.get("Status"), "DataRetentionInHours": info.get("DataRetentionInHours"),
            "Fragments": len(entries), "Bytes": sum(e.size for e in entries),
            "LastFragmentAgeSeconds": None if last is None else round(now - last / 1000, 1),
            "ActiveConnections": st.active,
            "ErrorAcks": [{"ErrorId": eid, "FragmentTimecode": tc} for eid, tc in st.error_acks],
            "HttpErrors": [{"Status": s, "ErrorType": t} for s, t in st.http_errors]}


def console_session(emu, name: str, now: float, protocol: str = "HLS") -> str:
    """An HLS or DASH session URL: LIVE when the stream had fragments in the last 30 s, else the whole archive
    ON_DEMAND (the request bodies a signed client would send, with each protocol's parameter names)."""
    create, selector, max_key, url_key = (
        (emu.playback.create_hls, "HLSFragmentSelector", "MaxMediaPlaylistFragmentResults", "HLSStreamingSessionURL")
        if protocol == "HLS" else
        (emu.playback.create_dash, "DASHFragmentSelector", "MaxManifestFragmentResults", "DASHStreamingSessionURL"))
    body = {"StreamName": name, "PlaybackMode": "LIVE", max_key: 5,
            selector: {"FragmentSelectorType": "PRODUCER_TIMESTAMP"}}
    try:
        return create(body, emu.url, now)[url_key]
    except StoreError as e:
        if e.error_type != "ResourceNotFoundException":
            raise
    entries = emu.store.archive(name)
    if not entries:
        raise StoreError(404, "ResourceNotFoundException", f"The stream {name} holds no fragments yet.")
    body.update({"PlaybackMode": "ON_DEMAND", max_key: 1000, selector: {
        "FragmentSelectorType": "SERVER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": min(e.server_ts_ms for e in entries) / 1000,
                           "EndTimestamp": min(now, max(e.server_ts_ms for e in entries) / 1000 + 0.001)}}})
    return create(body, emu.url, now)[url_key]


def console_images(emu, name: str, now: float) -> list:
    """A thumbnail per fragment of the newest CONSOLE_THUMBNAILS, through GetImages (read_api.get_images, the same
    code as the signed API): [{"TimeStamp": s, "ImageContent": base64 JPEG} | {"TimeStamp": s, "Error": ...}]."""
    from kvs_edge.emulator import read_api

    got = archive_reader.list_fragments(emu.store, name, selector_type=archive_reader.PRODUCER, dedupe=True)
    got = got[-CONSOLE_THUMBNAILS:]
    if not got:
        return []
    start, end = got[0].producer_ts_ms, got[-1].producer_ts_ms
    step = max(read_api.IMAGES_MIN_INTERVAL_MS, (end - start) // max(1, len(got) - 1))
    body = {"StreamName": name, "ImageSelectorType": archive_reader.PRODUCER, "Format": "JPEG",
            "StartTimestamp": start / 1000, "EndTimestamp": end / 1000, "SamplingInterval": step,
            "WidthPixels": 160, "MaxResults": CONSOLE_THUMBNAILS}
    return read_api.get_images(emu.store, name, body).body["Images"]
