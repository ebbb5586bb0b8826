"""A tiny RTSP camera on loopback: RTSP 1.0 (RFC 2326) control, H.264 in RTP (RFC 6184) interleaved on the TCP
connection, as an IP camera serves it to `rtsp_transport=tcp` clients. Enough for FFmpeg's RTSP demuxer.

    cam = RtspCamera(units, fps=30).start()   # units: Annex B access units (e.g. from make_h264)
    cam.url                                     # rtsp://127.0.0.1:PORT/stream1
    cam.drop()                                  # the camera goes away: connections cut, port closed
    cam.restart()                               # it comes back on the same port
    cam.frozen.set()                            # it hangs: connections stay open, no more video (until cleared)

It streams the units in a loop, paced at `fps`, each session from the first unit (a key frame).

With `audio=RtpAudio(...)` it serves a second track (interleaved channels 2-3): AAC (RFC 3640 mpeg4-generic AAC-hbr,
config in the SDP), AAC without a config (a broken camera), or G.711 A-law (PCMA, payload type 8). Both tracks' RTP
timestamps come from one capture clock, and RTCP Sender Reports (RFC 3550 6.4.1: NTP time + the RTP timestamp of the
same instant) go out for each track at PLAY and every second after, as cameras do: that is how a receiver (FFmpeg's
RTSP demuxer) puts audio and video on one time line. Audio frame j is captured at `audio.start_s + j * spf / rate`
seconds after video unit 0 (`media_s`), for tests that measure the A/V offset.
"""

from __future__ import annotations

import base64
import socket
import struct
import threading
import time

MAX_PAYLOAD = 1400
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970


class RtpAudio:
    """An audio track to serve: kind "aac" (frames: raw AAC, config: the AudioSpecificConfig), "latm" (the same AAC
    as MP4A-LATM, RFC 3016, config in the SDP as a StreamMuxConfig: what many cameras send), "aac-noconfig" (AAC
    payload, no config in the SDP) or "pcma" (frames: A-law bytes, `spf` samples each)."""

    def __init__(self, kind: str, frames: list[bytes], rate: int, spf: int, *, channels: int = 1,
                 config: bytes = b"", start_s: float = 0.0) -> None:
        self.kind, self.frames, self.rate, self.spf = kind, frames, rate, spf
        self.channels, self.config, self.start_s = channels, config, start_s

    def media_s(self, j: int) -> float:
        return self.start_s + j * self.spf / self.rate

    def sdp(self) -> list[str]:
        if self.kind == "pcma":
            return ["m=audio 0 RTP/AVP 8", f"a=rtpmap:8 PCMA/{self.rate}", "a=control:trackID=1"]
        if self.kind == "latm":
            return ["m=audio 0 RTP/AVP 98", f"a=rtpmap:98 MP4A-LATM/{self.rate}/{self.channels}",
                    f"a=fmtp:98 profile-level-id=15;object=2;cpresent=0;config={stream_mux_config(self.config).hex()}",
                    "a=control:trackID=1"]
        fmtp = "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3"
        if self.kind == "aac":
            fmtp += f";config={self.config.hex()}"
        return ["m=audio 0 RTP/AVP 97", f"a=rtpmap:97 MPEG4-GENERIC/{self.rate}/{self.channels}",
                f"a=fmtp:97 {fmtp}", "a=control:trackID=1"]

    def packet(self, j: int, seq: int, timestamp: int, ssrc: int) -> bytes:
        frame = self.frames[j % len(self.frames)]
        if self.kind == "pcma":
            payload, pt = frame, 8
        elif self.kind == "latm":  # RFC 3016 / ISO 14496-3 PayloadLengthInfo (255, 255, ..., rest) + PayloadMux
            payload, pt = b"\xff" * (len(frame) // 255) + bytes([len(frame) % 255]) + frame, 98
        else:  # RFC 3640 3.2: AU-headers-length (bits), one AU-header: 13 bits size, 3 bits index
            payload, pt = struct.pack("!HH", 16, len(frame) << 3) + frame, 97
        return struct.pack("!BBHII", 0x80, 0x80 | pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def stream_mux_config(asc: bytes) -> bytes:
    """ISO 14496-3 StreamMuxConfig for one program, one layer, audioMuxVersion 0: the SDP `config` of MP4A-LATM."""
    bits = "0" "1" "000000" "0000" "000"  # audioMuxVersion, allStreamsSameTimeFraming, numSubFrames, numProgram, Layer
    bits += "".join(f"{b:08b}" for b in asc)  # AudioSpecificConfig
    bits += "000" "11111111" "0" "0"  # frameLengthType 0, latmBufferFullness, otherDataPresent, crcCheckPresent
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def sender_report(ssrc: int, wall_s: float, rtp_ts: int, packets: int, octets: int) -> bytes:
    """RTCP SR (RFC 3550 6.4.1) without report blocks."""
    ntp = int((wall_s + NTP_EPOCH_OFFSET) * (1 << 32))
    return struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets, octets)


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
                 path: str = "stream1", audio: RtpAudio | None = None, rtcp: bool = True) -> None:
        self.units = units
        self.rtcp = rtcp  # False: no Sender Reports (a camera that cannot give the tracks a common time line)
        self.audio = audio
        self.audio_sent = 0
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
                "a=control:trackID=0"] + (self.audio.sdp() if self.audio else []) + [""]).encode()
            self._reply(conn, send_lock, cseq, ["Content-Type: application/sdp", f"Content-Base: {uri.rstrip('/')}/"],
                        sdp)
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "TCP" not in transport.upper():
                with send_lock:
                    conn.sendall(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode())
                return method
            channels = "2-3" if uri.rstrip("/").endswith("trackID=1") else "0-1"
            self._reply(conn, send_lock, cseq, ["Session: 4B565345;timeout=60",
                                                f"Transport: RTP/AVP/TCP;unicast;interleaved={channels}"])
        elif method == "PLAY":
            self.sessions += 1
            self._reply(conn, send_lock, cseq, ["Session: 4B565345", "Range: npt=0.000-"])
        elif method == "TEARDOWN":
            self._reply(conn, send_lock, cseq, ["Session: 4B565345"])
        else:  # GET_PARAMETER keep-alives and anything else
            self._reply(conn, send_lock, cseq, ["Session: 4B565345"])
        return method

    def _stream(self, conn, send_lock, down: threading.Event) -> None:
        v_ssrc, a_ssrc, v_base, a_base = 0x4B565345, 0x4B564155, 1000, 5000
        seq = aseq = 1
        t0 = time.monotonic()
        wall0 = time.time()  # the capture clock's NTP time of video unit 0
        i = j = 0
        next_sr = 0.0
        audio = self.audio

        def send(channel: int, packet: bytes) -> None:
            conn.sendall(b"$" + bytes([channel]) + struct.pack("!H", len(packet)) + packet)

        try:
            while not down.is_set():
                if self.frozen.is_set():
                    down.wait(0.05)
                    t0 = time.monotonic() - i / self.fps
                    continue
                now_media = time.monotonic() - t0
                if self.rtcp and now_media >= next_sr:  # a Sender Report per track: the same instant on both RTP clocks
                    with send_lock:
                        send(1, sender_report(v_ssrc, wall0 + now_media, v_base + round(now_media * 90000), i, 0))
                        if audio is not None:
                            a_ts = a_base + round((now_media - audio.start_s) * audio.rate)
                            send(3, sender_report(a_ssrc, wall0 + now_media, a_ts, j, 0))
                    next_sr = now_media + 1.0
                video_due = i / self.fps
                audio_due = audio.media_s(j) if audio is not None else float("inf")
                due = min(video_due, audio_due)
                delay = t0 + due - time.monotonic()
                if delay > 0:
                    down.wait(min(delay, max(0.0, next_sr - now_media)))
                    continue
                if audio_due < video_due:
                    p = audio.packet(j, aseq, a_base + j * audio.spf, a_ssrc)
                    with send_lock:
                        send(2, p)
                    aseq += 1
                    j += 1
                    self.audio_sent = j
                else:
                    au = self.units[i % len(self.units)]
                    packets, seq = rtp_packets(split_annexb(au), seq, v_base + i * 90000 // self.fps, v_ssrc)
                    with send_lock:
                        for p in packets:
                            send(0, p)
                    self.units_sent += 1
                    i += 1
        except OSError:
            return
