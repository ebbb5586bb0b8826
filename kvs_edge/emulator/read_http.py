"""The network shell of the read APIs (read_api.py): SigV4 as the control plane checks it, JSON replies, and streaming
bodies (chunked) for GetMediaForFragmentList, GetClip and the live GetMedia.

GetMedia stays open while the stream has a PutMedia connection and sends each fragment as it persists; once it has
sent everything and no producer is connected it ends the body after END_IDLE_S (the service keeps it open longer; how
long is not documented), so a reader of an uploaded file gets the whole stream and an end.
"""

from __future__ import annotations

import time
import uuid

import h11

from kvs_edge.emulator import read_api
from kvs_edge.emulator.store import StoreError

OPERATIONS = read_api.OPERATIONS
END_IDLE_S = 2.0
POLL_S = 0.5


def serve(emu, h: h11.Connection, conn, path: str, target: str, headers: dict, body: bytes) -> bool:
    """Answer one read request on the emulator's connection. True: the connection may serve another request."""
    from kvs_edge.emulator.server import SERVER_NAME, _send_json  # the server imports this module

    ok, reply = emu._signed_json(h, conn, "POST", target, headers, body,
                                 lambda doc: read_api.handle(emu.store, path, doc, now_ms=int(time.time() * 1000)))
    if not ok:
        return True
    if isinstance(reply, read_api.JsonReply):
        _send_json(h, conn, 200, reply.body)
        return True
    conn.sendall(h.send(h11.Response(status_code=200, headers=[
        (b"content-type", reply.content_type.encode()), (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
        (b"server", SERVER_NAME)])))
    try:
        if isinstance(reply, read_api.MediaReply):
            for chunk in reply.chunks:
                conn.sendall(h.send(h11.Data(data=chunk)))
        else:
            _stream_live(emu, h, conn, reply)
    except StoreError:  # the stream was deleted while being read: end the connection, as a broken response
        return False
    if not emu._running:
        return False
    conn.sendall(h.send(h11.EndOfMessage()))
    return True


def _stream_live(emu, h: h11.Connection, conn, session: read_api.GetMediaSession) -> None:
    idle_since = time.monotonic()
    while emu._running:
        sent = session.sent
        for d in session.poll():
            conn.sendall(h.send(h11.Data(data=d)))
        now = time.monotonic()
        if session.sent > sent:
            idle_since = now
        elif emu.stats(session.stream).active == 0 and now - idle_since >= END_IDLE_S:
            return
        session.wait(POLL_S)
