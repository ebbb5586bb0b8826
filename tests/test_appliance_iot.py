"""A device fleet's setup end to end: AWS IoT certificate credentials that expire while the appliance streams."""

from __future__ import annotations

import threading
import time
import pytest
import trustme

from kvs_edge.appliance import Appliance
from kvs_edge.config import parse_config
from kvs_edge.emulator.iot import IotCredentialsServer
from support.appliance import archived_frames, config_dict, wait_until
from support.pki import client_files, server_files, write_ca

LIFETIME_S = 6


@pytest.mark.timeout(120)
def test_expiring_iot_credentials_are_refreshed_without_a_failed_request(tls_emulator, tmp_path):
    emu = tls_emulator
    emu.create_stream("cam")
    timers: list[threading.Timer] = []

    def issue(akid, secret):
        # the emulator accepts a key pair only until it expires, like AWS
        emu.add_credentials(akid, secret)
        t = threading.Timer(LIFETIME_S, emu.remove_credentials, args=(akid,))
        t.daemon = True
        t.start()
        timers.append(t)

    server_ca, device_ca = trustme.CA(), trustme.CA()
    srv = server_files(server_ca, tmp_path / "iot")
    dev = client_files(device_ca, tmp_path / "dev", "camera-01")
    iot = IotCredentialsServer(srv.cert_file, srv.key_file, write_ca(device_ca, tmp_path / "device-ca.pem"),
                               access_key_id="unused", secret_access_key="unused", lifetime_s=LIFETIME_S,
                               rotate_keys=True, on_issue=issue).start()
    data = config_dict(emu, tmp_path / "buf")
    data["aws"] = {"credentials": "iot", "endpoint_url": emu.url, "ca_bundle": emu.ca_file,
                   "iot": {"endpoint": iot.endpoint, "role_alias": iot.role_alias, "thing_name": "camera-01",
                           "cert_file": str(dev.cert_file), "key_file": str(dev.key_file),
                           "ca_file": str(srv.ca_file)}}
    app = Appliance(parse_config(data, "<test>"))
    # the first 10 PutMedia connections are cut after about a fragment and a half, so the uploader reconnects again
    # and again over several credential lifetimes: each new request is signed with whatever the provider holds then
    emu.faults.drop_after_bytes(60_000, times=10)
    try:
        app.start()
        t0 = time.monotonic()
        wait_until(lambda: emu.stats("cam").connections_total >= 8, 60, "eight reconnections")
        # and keep streaming across more than three lifetimes, the last connection included
        wait_until(lambda: time.monotonic() - t0 > 3.5 * LIFETIME_S, 60, "three credential lifetimes")
        app.pipeline.stop_capture()
        wait_until(lambda: app.fragment_log.stats().fragments == 0, 40, "every fragment to be acknowledged")
    finally:
        app.stop()
        iot.stop()
        for t in timers:
            t.cancel()
    stats = emu.stats("cam")
    assert iot.issued >= 4  # refreshed repeatedly during the upload
    assert stats.connections_total >= 6
    assert [s for s, _ in stats.http_errors if s in (401, 403)] == []  # never signed with expired keys
    assert archived_frames(emu) == app.source.frames
