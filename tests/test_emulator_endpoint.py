"""GetDataEndpoint names the address the client reached: through a port forwarder (a VM's guestfwd, a NAT) the
data endpoint is the forwarder's, so PutMedia goes back through it; --advertise-url overrides it."""

from __future__ import annotations

import socket
import threading

from kvs_edge.emulator import Emulator
from support.h264gen import SDK_DIR
from support.kvs_client import put_media_requests
from test_emulator import kvs_client

REF = (SDK_DIR / "ref.mkv").read_bytes()


class Forwarder:
    """A TCP port forwarder on loopback (what QEMU's guestfwd with socat is to a VM): every connection to its port
    is piped to the target port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on, as socat does; the other way keeps going
        except OSError:
            pass

    def close(self):
        self.sock.close()


class _Via:
    def __init__(self, url):
        self.url = url


def test_through_a_forwarder_the_data_endpoint_is_the_forwarder_and_putmedia_goes_through_it(emulator):
    fwd = Forwarder(emulator.port)
    try:
        via = f"http://127.0.0.1:{fwd.port}"
        client = kvs_client(_Via(via))
        client.create_stream(StreamName="cam", DataRetentionInHours=2)  # retention 0 gets no PERSISTED
        ep = client.get_data_endpoint(StreamName="cam", APIName="PUT_MEDIA")["DataEndpoint"]
        assert ep == via != emulator.url
        before = fwd.connections
        status, acks, _ = put_media_requests(ep, "cam", REF)
        assert status == 200 and [a["EventType"] for a in acks].count("PERSISTED") == 6
        assert fwd.connections > before
    finally:
        fwd.close()


def test_advertise_url_is_what_get_data_endpoint_answers(tmp_path):
    with Emulator(tmp_path, advertise_url="http://10.0.2.100:4566/") as emu:
        client = kvs_client(emu)
        client.create_stream(StreamName="cam")
        assert client.get_data_endpoint(StreamName="cam", APIName="PUT_MEDIA")["DataEndpoint"] == \
            "http://10.0.2.100:4566"


def test_a_host_header_without_port_gets_the_port_the_client_reached(emulator):
    # the official C producer SDK sends "Host: localhost" (no port, as for AWS on 443)
    assert emulator.data_endpoint({"host": "localhost"}) == f"http://localhost:{emulator.port}"
    assert emulator.data_endpoint({"host": "[::1]"}) == f"http://[::1]:{emulator.port}"
    assert emulator.data_endpoint({"host": "10.0.2.100:4566"}) == "http://10.0.2.100:4566"
    assert emulator.data_endpoint({}) == emulator.url
