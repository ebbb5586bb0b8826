"""Shared fixtures: a local KVS emulator on a free loopback port, plain HTTP or TLS (trustme CA).

    def test_x(emulator):            # kvs_edge.emulator.Emulator, started, data in a tmp dir
        emulator.create_stream("cam")
        ... emulator.url, DEFAULT_ACCESS_KEY_ID / DEFAULT_SECRET_ACCESS_KEY ...

    def test_y(tls_emulator):        # the same over https; tls_emulator.ca_file is the CA to trust

    def test_z(make_emulator):       # make_emulator(persist_delay_s=0.5, idle_timeout_s=2, tls=True, ...) -> started

    def test_w(sim):                 # the fake picamera2/libcamera world (tests/fakes)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trustme

from kvs_edge.emulator import Emulator


@pytest.fixture
def make_emulator(tmp_path):
    started: list[Emulator] = []
    ca_holder: dict = {}

    def make(*, tls: bool = False, data_dir=None, **kw) -> Emulator:
        cert = key = ca_file = None
        if tls:
            if "ca" not in ca_holder:
                ca_holder["ca"] = trustme.CA()
            ca = ca_holder["ca"]
            d = tmp_path / f"tls{len(started)}"
            d.mkdir()
            issued = ca.issue_cert("127.0.0.1", "localhost")
            cert, key, ca_file = d / "server.pem", d / "server.key", d / "ca.pem"
            for i, blob in enumerate(issued.cert_chain_pems):
                blob.write_to_path(str(cert), append=i > 0)
            issued.private_key_pem.write_to_path(str(key))
            ca.cert_pem.write_to_path(str(ca_file))
        emu = Emulator(data_dir or tmp_path / f"kvs-data{len(started)}", tls_cert=cert and str(cert),
                       tls_key=key and str(key), **kw)
        emu.ca_file = str(ca_file) if ca_file else None
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def emulator(make_emulator) -> Emulator:
    """A running emulator over plain HTTP on a free port (data in a tmp dir)."""
    return make_emulator()


@pytest.fixture
def tls_emulator(make_emulator) -> Emulator:
    """A running emulator over TLS; `tls_emulator.ca_file` is the trustme CA (PEM) that signed its certificate."""
    return make_emulator(tls=True)


FAKES = Path(__file__).resolve().parent / "fakes"


def _purge_fake_camera_modules() -> None:
    for name in list(sys.modules):
        if name in ("picamera2", "libcamera") or name.startswith("picamera2."):
            del sys.modules[name]


@pytest.fixture
def sim(monkeypatch):
    """The fake Pi camera world (tests/fakes/picamera2_sim.py), reset; picamera2 itself is imported only when a source
    starts, after the test set the world up (`sim.reset(platform="pisp", stall_after_frames=...)`)."""
    monkeypatch.syspath_prepend(str(FAKES))
    _purge_fake_camera_modules()
    import picamera2_sim

    picamera2_sim.reset()
    yield picamera2_sim
    picamera2_sim.world.unblock.set()  # release a stalled fake camera's stop()
    _purge_fake_camera_modules()


# ------------------------------------------------------------------ figures shown at the end of the run
_FIGURES: list[str] = []


@pytest.fixture
def figures():
    """`figures(line)`: a measured figure to show in the test output (a "figures" section after the results)."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


# Tests that cross a heavyweight part written by others run in `make interop-test`, not `make test` (which stays under
# 15 minutes): the official KVS C producer SDK (fixture `sdk`, built from its source archives) and headless Chromium
# playing the emulator's HLS and DASH (fixture `browser`). CI runs both targets.
INTEROP_FIXTURES = frozenset({"sdk", "browser"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEROP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.interop)
