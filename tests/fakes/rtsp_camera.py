"""A tiny RTSP camera on loopback: RTSP 1.0 (RFC 2326) control, H.264 in RTP (RFC 6184) interleaved on the TCP
connection, as an IP camera serves it to `rtsp_transport=tcp` clients. Enough for FFmpeg's RTSP demuxer.

    cam = RtspCamera(units, fps=30).start()   # units: Annex B access units (e.g. from make_h264)
    cam.url                                     # rtsp://127.0.0.1:PORT/stream1
    cam.drop()                                  # the camera goes away: connections cut, port closed
    cam.restart()                               # it comes back on the same port
    cam.frozen.set()                            # it hangs: connections stay open, no more video (until cleared)

It streams the units in a loop, paced at `fps`, each session from the first unit (a key frame).
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time

MAX_PAYLOAD = 1400


def split_annexb(au: bytes) -> list[bytes]:
    out, starts = [], []
    i = au.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i)
        i = au.find(b"\x00\x00\x01", i + 3)
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(au)
        nal = au[s + 3:end]
        if k + 1 < len(starts):
            nal = nal.rstrip(b"\x00")
        if nal:
            out.append(nal)
    return out


def rtp_packets(nals: list[bytes], seq: int, timestamp: int, ssrc: int = 0x4B565345) -> tuple[list[bytes], int]:
    """RTP packets for one access unit: single NAL packets, FU-A for big NALs; marker on the last one."""
    payloads = []
    for nal in nals:
        if len(nal) <= MAX_PAYLOAD:
            payloads.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | 28
        body = nal[1:]
        for off in range(0, len(body), MAX_PAYLOAD):
            chunk = body[off:off + MAX_PAYLOAD]
            fu = nal[0] & 0x1F
            if off == 0:
                fu |= 0x80
            if off + MAX_PAYLOAD >= len(body):
                fu |= 0x40
            payloads.append(bytes([indicator, fu]) + chunk)
    packets = []
    for k, p in enumerate(payloads):
        marker = 0x80 if k == len(payloads) - 1 else 0
        header = struct.pack("!BBHII", 0x80, marker | 96, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        packets.append(header + p)
        seq += 1
    return packets, seq


class RtspCamera:
    def __init__(self, units: list[bytes], fps: int = 30, host: str = "127.0.0.1", port: int = 0,
                 path: str = "stream1") -> None:
        self.units = units
        self.fps = fps
        self.host = host
        self.port = port
        self.path = path
        nals = split_annexb(units[0])
        self.sps = next(n for n in nals if n[0] & 0x1F == 7)
        self.pps = next(n for n in nals if n[0] & 0x1F == 8)
        self.sessions = 0  # PLAY requests served
        self.units_sent = 0
        self.requests: list[str] = []  # request lines (method + transport) seen, for tests
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._down = threading.Event()
        self.frozen = threading.Event()

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}/{self.path}"

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self) -> "RtspCamera":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(4)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._down = threading.Event()
        threading.Thread(target=self._accept, args=(ls, self._down), daemon=True, name="rtsp-accept").start()
        return self

    def drop(self) -> None:
        """The camera disappears: every connection is cut and the port refuses new ones."""
        self._down.set()
        with self._lock:
            conns, self._conns = self._conns, []
            ls, self._listener = self._listener, None
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone would not)
            except OSError:
                pass
            ls.close()

    def restart(self) -> None:
        self.start()

    stop = drop

    # -- serving ------------------------------------------------------------------------------------------------------
    def _accept(self, ls: socket.socket, down: threading.Event) -> None:
        while not down.is_set():
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, down), daemon=True, name="rtsp-conn").start()

    def _serve(self, conn: socket.socket, down: threading.Event) -> None:
        send_lock = threading.Lock()
        buf = b""
        playing = threading.Event()
        try:
            while not down.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while buf:
                    if buf[:1] == b"$":  # interleaved RTCP from the client: skip it
                        if len(buf) < 4:
                            break
                        n = struct.unpack("!H", buf[2:4])[0]
                        if len(buf) < 4 + n:
                            break
                        buf = buf[4 + n:]
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buf[:end].decode("latin-1")
                    lines = head.split("\r\n")
                    headers = {k.strip().lower(): v.strip() for k, v in
                               (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                    clen = int(headers.get("content-length", "0"))
                    if len(buf) < end + 4 + clen:
                        break
                    buf = buf[end + 4 + clen:]
                    if self._answer(conn, send_lock, lines[0], headers) == "PLAY" and not playing.is_set():
                        playing.set()
                        threading.Thread(target=self._stream, args=(conn, send_lock, down), daemon=True,
                                         name="rtsp-rtp").start()
        except OSError:
            return

    def _reply(self, conn, send_lock, cseq: str, extra: list[str], body: bytes = b"") -> None:
        lines = ["RTSP/1.0 200 OK", f"CSeq: {cseq}", "Server: kvs-edge-test-camera"] + extra
        if body:
            lines.append(f"Content-Length: {len(body)}")
        msg = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        with send_lock:
            conn.sendall(msg)

    def _answer(self, conn, send_lock, request_line: str, headers: dict) -> str:
        method, uri = request_line.split(" ")[:2]
        cseq = headers.get("cseq", "0")
        self.requests.append(f"{method} {headers.get('transport', '')}".strip())
        if method == "OPTIONS":
            self._reply(conn, send_lock, cseq, ["Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"])
        elif method == "DESCRIBE":
            sprop = ",".join(base64.b64encode(x).decode() for x in (self.sps, self.pps))
            sdp = "\r\n".join([
                "v=0", f"o=- 1 1 IN IP4 {self.host}", "s=kvs-edge test camera", f"c=IN IP4 {self.host}", "t=0 0",
                "m=video 0 RTP/AVP 96", "a=rtpmap:96 H264/90000",
                f"a=fmtp:96 packetization-mode=1;profile-level-id={self.sps[1:4].hex()};sprop-parameter-sets={sprop}",
                "a=control:trackID=0", ""]).encode()
            self._reply(conn, send_lock, cseq, ["Content-Type: application/sdp", f"Content-Base: {uri.rstrip('/')}/"],
                        sdp)
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "TCP" not in transport.upper():
                with send_lock:
                    conn.sendall(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode())
                return method
            self._reply(conn, send_lock, cseq, ["Session: 4B565345;timeout=60",
                                                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1"])
        elif method == "PLAY":
            self.sessions += 1
            self._reply(conn, send_lock, cseq, ["Session: 4B565345", "Range: npt=0.000-"])
        elif method == "TEARDOWN":
            self._reply(conn, send_lock, cseq, ["Session: 4B565345"])
        else:  # GET_PARAMETER keep-alives and anything else
            self._reply(conn, send_lock, cseq, ["Session: 4B565345"])
        return method

    def _stream(self, conn, send_lock, down: threading.Event) -> None:
        seq = 1
        t0 = time.monotonic()
        i = 0
        try:
            while not down.is_set():
                if self.frozen.is_set():
                    down.wait(0.05)
                    t0 = time.monotonic() - i / self.fps
                    continue
                au = self.units[i % len(self.units)]
                packets, seq = rtp_packets(split_annexb(au), seq, 1000 + i * 90000 // self.fps)
                with send_lock:
                    for p in packets:
                        conn.sendall(b"$\x00" + struct.pack("!H", len(p)) + p)
                self.units_sent += 1
                i += 1
                delay = t0 + i / self.fps - time.monotonic()
                if delay > 0:
                    down.wait(delay)
        except OSError:
            return
