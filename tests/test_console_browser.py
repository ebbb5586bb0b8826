"""The emulator's web console in a real browser: Debian's headless Chromium driven by Selenium (chromedriver), the
test pattern streamed live by `kvs-edge run`. The page loads, the stream's state is shown, the video element plays
(currentTime advances) through hls.js, thumbnails (GetImages) and the fragment list appear; a screenshot is saved."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from kvs_edge.emulator import web
from support.appliance import config_dict, wait_until, write_config
from support.kvs_client import put_media_requests
from support.sdk_data import sdk_file

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "kvs_edge" / "emulator" / "static"
ARTIFACTS = Path(os.environ.get("KVS_EDGE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.parametrize("shipped, license_file, license_words", [
    ("hls.min.js", "hls.js.LICENSE.txt", "Apache License"),
    ("dash.mediaplayer.min.js", "dash.js.LICENSE.txt", "dash.js BSD License Agreement")])
def test_shipped_players_are_the_npm_releases_named_in_the_readme(shipped, license_file, license_words):
    readme = (STATIC / "README.md").read_text()
    want = re.search(rf"`{re.escape(shipped)}` sha256\s+`([0-9a-f]{{64}})`", readme).group(1)
    assert hashlib.sha256((STATIC / shipped).read_bytes()).hexdigest() == want
    assert license_words in (STATIC / license_file).read_text()
    assert shipped in web.STATIC_FILES and license_file in web.STATIC_FILES
    html = (STATIC / "console.html").read_text()
    assert f'src="/console/static/{shipped}"' in html
    assert "//cdn" not in html and "https://" not in html  # no CDN: everything comes from the emulator


def test_console_api_shows_state_and_error_acks(emulator):
    """The JSON behind the page: what the emulator knows about each stream, ERROR ACKs with their ids."""
    emulator.create_stream("cam")
    emulator.faults.error_on_fragment(4000, nth=3)
    data = sdk_file("ref.mkv").read_bytes()
    status, acks, _ = put_media_requests(emulator.url, "cam", data)
    errors = [a for a in acks if a["EventType"] == "ERROR"]
    assert status == 200 and [a["ErrorId"] for a in errors] == [4000]
    wait_until(lambda: emulator.stats("cam").active == 0, 10, "the PutMedia connection to close")
    state = requests.get(emulator.url + "/console/api/streams", timeout=30).json()
    entries = emulator.archive("cam")
    assert state == [{
        "StreamName": "cam", "Status": "ACTIVE", "DataRetentionInHours": 24, "Fragments": len(entries),
        "Bytes": sum(e.size for e in entries), "LastFragmentAgeSeconds": state[0]["LastFragmentAgeSeconds"],
        "ActiveConnections": 0, "ErrorAcks": [{"ErrorId": 4000, "FragmentTimecode": errors[0]["FragmentTimecode"]}],
        "HttpErrors": []}]
    assert 0 <= state[0]["LastFragmentAgeSeconds"] < 120
    frags = requests.get(emulator.url + "/console/api/fragments?stream=cam", timeout=30).json()
    assert [f["FragmentNumber"] for f in frags] == [e.fragment_number for e in reversed(entries)]
    # fragments ingested within 30 s: the console's player gets a LIVE session (the newest 5)
    url = requests.get(emulator.url + "/console/api/hls?stream=cam", timeout=30).json()["url"]
    playlist = requests.get(url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"), timeout=30).text
    assert "#EXT-X-ENDLIST" not in playlist and playlist.count("getMP4MediaFragment") == min(5, len(entries))
    # a minute later there is no LIVE data: the whole archive ON_DEMAND
    url = web.console_session(emulator, "cam", time.time() + 60)
    playlist = requests.get(url.replace("getHLSMasterPlaylist", "getHLSMediaPlaylist"), timeout=30).text
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.count("getMP4MediaFragment") == len(entries)
    # the same choice for the DASH player, through GetDASHStreamingSessionURL's parameter names
    url = requests.get(emulator.url + "/console/api/dash?stream=cam", timeout=30).json()["url"]
    mpd = requests.get(url, timeout=30).text
    assert "/dash/v1/getDASHManifest.mpd?SessionToken=" in url
    assert 'type="dynamic"' in mpd and mpd.count("<SegmentURL ") == min(5, len(entries))
    mpd = requests.get(web.console_session(emulator, "cam", time.time() + 60, "DASH"), timeout=30).text
    assert 'type="static"' in mpd and mpd.count("<SegmentURL ") == len(entries)
    images = requests.get(emulator.url + "/console/api/images?stream=cam", timeout=30).json()
    assert len(images) == len(entries) and all("ImageContent" in i for i in images)
    missing = requests.get(emulator.url + "/console/api/fragments?stream=nope", timeout=30)
    assert missing.status_code == 404 and missing.headers["x-amzn-errortype"] == "ResourceNotFoundException"


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are missing: `make interop-test` installs them (apt: chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1100",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no host but the emulator's
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


PLAYER_STATE_JS = """
const v = document.getElementById('player');
return {t: v.currentTime, paused: v.paused, ended: v.ended, w: v.videoWidth, h: v.videoHeight,
        err: v.error && v.error.code, audio_bytes: v.webkitAudioDecodedByteCount,
        url: window.kvsConsole.url, protocol: window.kvsConsole.protocol, errors: window.kvsConsole.errors,
        note: document.getElementById('player-state').textContent,
        hosts: [...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).host))]};"""


def player_state(browser) -> dict:
    return browser.execute_script(PLAYER_STATE_JS)


def browser_log(browser) -> str:
    return "\n".join(f"{e['level']} {e['message']}" for e in browser.get_log("browser"))


def video_plays(browser, advance: float = 2.0, start_timeout: float = 90,
                fatal_only: bool = False) -> tuple[float, float, dict]:
    """Wait until the console's video element plays (currentTime > 0, then `advance` seconds further) without a
    media error or a player error event (fatal_only: no fatal one); (t0, t1, player_state)."""
    def now_t():
        st = player_state(browser)
        errors = [e for e in st["errors"] if e["fatal"] or not fatal_only]
        assert st["err"] is None and not errors, (st, browser_log(browser))
        return st["t"]
    try:
        t0 = wait_until(lambda: (t := now_t()) > 0 and t, start_timeout, "the video to start playing")
        t1 = wait_until(lambda: (t := now_t()) >= t0 + advance and t, 60, f"currentTime to advance {advance} s")
    except AssertionError as e:
        raise AssertionError(f"{e}\nplayer: {player_state(browser)}\nbrowser log:\n{browser_log(browser)}") from None
    return t0, t1, player_state(browser)


def save_screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    assert browser.save_screenshot(str(shot))
    return shot


@contextlib.contextmanager
def streaming_test_pattern(emulator, tmp_path):
    """`kvs-edge run` streams the 320x240 test pattern (15 fps, 1-s fragments) to stream `cam` of the emulator; the
    body runs once two fragments are persisted; it must exit 0 on SIGTERM afterwards."""
    emulator.create_stream("cam")
    cfg = write_config(tmp_path / "c.yaml", config_dict(emulator, tmp_path / "buf", fps=15, width=320, height=240,
                                                         fragment_seconds=1))
    proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(emulator.archive("cam")) >= 2, 60, "two fragments persisted")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.timeout(240)
def test_console_plays_the_live_test_pattern(emulator, tmp_path, browser):
    with streaming_test_pattern(emulator, tmp_path):
        browser.get(emulator.url + "/")
        assert browser.title == "kvs-edge emulator console"
        t0, t1, state = video_plays(browser, fatal_only=True)  # hls.js recovers from its non-fatal errors itself
        assert (state["w"], state["h"]) == (320, 240), state
        assert "/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=" in state["url"]
        # the stream table: the stream, its fragments as the archive counts them, no ERROR ACKs
        row = wait_until(lambda: browser.execute_script(
            "const r = document.querySelector('#streams tr.stream'); return r && [...r.cells].map(c => c.textContent);"),
            10, "the streams table")
        assert row[0] == "cam" and row[1] == "ACTIVE" and row[6] == "none"
        assert 2 <= int(row[2]) <= len(emulator.archive("cam"))
        frag_rows = wait_until(lambda: browser.execute_script(
            "return document.querySelectorAll('#fragments tbody tr').length;"), 10, "the fragment list")
        assert frag_rows >= 2
        thumbs = wait_until(lambda: browser.execute_script(
            "return [...document.querySelectorAll('#thumbs img')].filter(i => i.complete && i.naturalWidth).length;"),
            30, "thumbnails from GetImages")
        assert thumbs >= 1
        time.sleep(0.5)  # let the player paint a few more frames for the screenshot
        shot = save_screenshot(browser, "console-browser.png")
        print(f"\nconsole screenshot: {shot}  (video currentTime {t0:.2f} -> {t1:.2f} s)")
