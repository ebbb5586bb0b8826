"""An independent KVS endpoint for tests: Python's http.server, no kvs_edge code.

It answers DescribeStream and GetDataEndpoint (JSON, as botocore expects), records every PutMedia body byte for byte,
and answers a PERSISTED ACK for each cluster once the cluster is complete (the next cluster starts, or the
AWS_KINESISVIDEO_END_OF_FRAGMENT tag follows it). Clusters are found with a plain byte search for the Cluster ID and
its 8-byte Timecode, as a producer writes them (docs/kvs-putmedia.md section 4). Tests parse the recorded bytes with
PyAV and ebmlite.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLUSTER = bytes.fromhex("1F43B675")
TIMECODE_8 = bytes.fromhex("E788")
EOF_TAG_NAME = b"AWS_KINESISVIDEO_END_OF_FRAGMENT"


class RecordingKvs:
    def __init__(self, stream: str = "my-stream") -> None:
        self.stream = stream
        self.bodies: list[bytes] = []  # one per PutMedia request
        self.acked: list[int] = []  # FragmentTimecodes acknowledged
        self.requests: list[tuple[str, dict]] = []  # (path, headers) of every request
        kvs = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                kvs.requests.append((self.path, dict(self.headers)))
                if self.path == "/putMedia":
                    return kvs._put_media(self)
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path == "/describeStream":
                    body = {"StreamInfo": {"StreamName": kvs.stream, "Status": "ACTIVE", "DataRetentionInHours": 24,
                                           "StreamARN": f"arn:aws:kinesisvideo:eu-west-1:123456789012:stream/"
                                                        f"{kvs.stream}/1", "Version": "1",
                                           "MediaType": "video/h264"}}
                elif self.path == "/getDataEndpoint":
                    body = {"DataEndpoint": kvs.url}
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "RecordingKvs":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    def _put_media(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        buf = bytearray()
        index = len(self.bodies)
        self.bodies.append(b"")
        done = 0  # clusters acknowledged in this request

        def ack(tc: int) -> None:
            line = json.dumps({"EventType": "PERSISTED", "FragmentTimecode": tc,
                               "FragmentNumber": str(91343852333181432392682062600000000 + len(self.acked))})
            data = (line + "\n").encode()
            h.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()
            self.acked.append(tc)

        def clusters() -> list[tuple[int, int]]:
            out, pos = [], 0
            while (i := buf.find(CLUSTER, pos)) >= 0:
                j = buf.find(TIMECODE_8, i, i + 12)
                if j >= 0 and len(buf) >= j + 10:
                    out.append((i, int.from_bytes(buf[j + 2:j + 10], "big")))
                pos = i + 4
            return out

        while True:
            size_line = h.rfile.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            chunk = h.rfile.read(size) if size else b""
            h.rfile.readline()  # CRLF after the chunk
            buf += chunk
            self.bodies[index] = bytes(buf)
            found = clusters()
            for n, (offset, tc) in enumerate(found):
                if n < done:
                    continue
                complete = n + 1 < len(found) or buf.find(EOF_TAG_NAME, offset) >= 0
                if complete:
                    ack(tc)
                    done += 1
            if size == 0:
                break
        for _offset, tc in clusters()[done:]:  # the body ended: the last cluster is complete
            ack(tc)
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
