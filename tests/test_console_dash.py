"""The emulator's DASH played by a real DASH player: dash.js (the reference player, shipped in
kvs_edge/emulator/static/) in Debian's headless Chromium, through the console's own player code. The session URLs
are the ones GetDASHStreamingSessionURL returns to botocore's unchanged client (ON_DEMAND of an uploaded file, with
and without an AAC track) or the console's LIVE session while `kvs-edge run` streams. Played means: currentTime
advances (to the end for ON_DEMAND), the picture has the stream's size, no dash.js error event, every request went to
the emulator."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.support.ui import Select

from support.appliance import config_dict, wait_until, write_config
from support.avgen import H, W, make_av_file
from support.h264gen import make_h264
from test_console_browser import browser  # noqa: F401  (fixture)
from test_console_browser import player_state, save_screenshot, streaming_test_pattern, video_plays
from test_emulator_hls import dash_url
from test_read_api import FRAMES
from test_read_api import uploaded  # noqa: F401  (fixture: in.h264 by `kvs-edge upload`, 640x480, 30 fps)

ROOT = Path(__file__).resolve().parents[1]
FPS = 30  # in.h264


def on_demand_dash(emu, stream: str) -> str:
    archive = emu.archive(stream)
    return dash_url(emu, stream, PlaybackMode="ON_DEMAND", DASHFragmentSelector={
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": min(e.producer_ts_ms for e in archive) / 1000,
                           "EndTimestamp": max(e.producer_ts_ms for e in archive) / 1000 + 0.001}})


def play_in_console(browser, emu, url: str, protocol: str = "DASH") -> None:
    """Open the console and hand its player a session URL (after the console has started its own player)."""
    browser.get(emu.url + "/")
    wait_until(lambda: browser.execute_script("return window.kvsConsole.protocol"), 60, "the console's player")
    browser.execute_script("window.kvsConsole.play(arguments[0], arguments[1]);", url, protocol)


def played_to_the_end(browser, seconds: float) -> dict:
    """Wait for the video element's `ended` (ON_DEMAND: a static MPD plays out), then its state."""
    wait_until(lambda: (st := player_state(browser))["errors"] or st["ended"], seconds + 60, "the video to end")
    return player_state(browser)


def only_the_emulator(state: dict, emu) -> None:
    assert state["hosts"] == [urlsplit(emu.url).netloc], state["hosts"]  # no CDN, no time server: the emulator only


@pytest.mark.timeout(240)
def test_dash_js_plays_an_uploaded_file_on_demand(uploaded, browser):  # noqa: F811
    emu = uploaded
    url = on_demand_dash(emu, "cam")
    play_in_console(browser, emu, url)
    t0, t1, state = video_plays(browser)
    assert state["protocol"] == "DASH" and state["url"] == url
    assert (state["w"], state["h"]) == (640, 480), state
    end = played_to_the_end(browser, FRAMES / FPS)
    assert not end["errors"] and end["err"] is None, end
    assert end["t"] == pytest.approx(FRAMES / FPS, abs=2 / FPS), end  # every segment played
    only_the_emulator(end, emu)
    print(f"\ndash.js ON_DEMAND: currentTime {t0:.2f} -> {t1:.2f} -> ended at {end['t']:.3f} s")


@pytest.mark.timeout(240)
def test_dash_js_plays_video_with_aac_sound(emulator, tmp_path, browser):  # noqa: F811
    src = tmp_path / "in.mp4"
    seconds = 4
    make_av_file(src, seconds=seconds)
    emulator.create_stream("av")
    upload_file(emulator, tmp_path, src, "av")
    play_in_console(browser, emulator, on_demand_dash(emulator, "av"))
    _, _, state = video_plays(browser, advance=1.0)
    assert (state["w"], state["h"]) == (W, H), state
    end = played_to_the_end(browser, seconds)
    assert not end["errors"] and end["err"] is None, end
    assert end["t"] == pytest.approx(seconds, abs=0.2), end
    assert end["audio_bytes"] > 0, end  # Chromium decoded the AAC track
    only_the_emulator(end, emulator)


def upload_file(emu, tmp_path, src: Path, stream: str, *extra: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", config_dict(emu, tmp_path / "buf", stream=stream))
    r = subprocess.run([sys.executable, "-m", "kvs_edge", "upload", str(src), "--config", str(cfg), *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(240)
def test_dash_js_plays_across_a_codec_private_data_change(emulator, tmp_path, browser):  # noqa: F811
    """The camera's resolution and profile change between two PutMedia sessions (new codec private data): the MPD has
    two Periods with their own init segments, codecs and sizes, and dash.js plays from the first into the second."""
    emulator.create_stream("cpd")
    for i, (w, h, profile) in enumerate(((320, 240, "baseline"), (640, 480, "main"))):
        src = tmp_path / f"{i}.h264"
        src.write_bytes(make_h264(60, w, h, 30, profile=profile).annexb)
        if i:  # `upload` stamps a file to end 1 s before now: the second 2-s file must not overlap the first
            time.sleep(2.5)
        upload_file(emulator, tmp_path, src, "cpd", "--fps", "30")
    play_in_console(browser, emulator, on_demand_dash(emulator, "cpd"))
    video_plays(browser, advance=0.5)
    sizes = set()
    wait_until(lambda: (st := player_state(browser))["errors"] or st["ended"] or sizes.add((st["w"], st["h"])),
               120, "the video to end")
    end = player_state(browser)
    assert not end["errors"] and end["err"] is None, end
    assert {(320, 240), (640, 480)} <= sizes, sizes  # both Periods were shown
    only_the_emulator(end, emulator)


@pytest.mark.timeout(240)
def test_console_plays_the_live_test_pattern_over_dash(emulator, tmp_path, browser):  # noqa: F811
    with streaming_test_pattern(emulator, tmp_path):
        browser.get(emulator.url + "/")
        wait_until(lambda: browser.execute_script("return window.kvsConsole.protocol"), 60, "the console's player")
        Select(browser.find_element("id", "protocol")).select_by_visible_text("DASH")  # the HLS/DASH switch
        wait_until(lambda: player_state(browser)["protocol"] == "DASH", 30, "the console to switch to DASH")
        # 8 s: well past the first LIVE window (5 fragments of 1 s), across manifest updates that slide it
        t0, t1, state = video_plays(browser, advance=8.0)
        assert "/dash/v1/getDASHManifest.mpd?SessionToken=" in state["url"]
        assert (state["w"], state["h"]) == (320, 240), state
        assert not state["paused"], state
        only_the_emulator(state, emulator)
        shot = save_screenshot(browser, "console-dash.png")
        print(f"\nconsole (DASH) screenshot: {shot}  (video currentTime {t0:.2f} -> {t1:.2f} s)")
