"""Issue 14 for RTSP sources: the camera's own audio track, from the project's RTSP camera fake (tests/fakes/
rtsp_camera.py: H.264 + AAC (RFC 3640) or G.711 A-law, RTP interleaved over TCP, RTCP Sender Reports per track) read
by FFmpeg's RTSP demuxer through PyAV: AAC passed through untouched, PCMA transcoded to AAC-LC with a valid config,
every audio frame delivered, and the input's A/V offset kept within 10 ms; audio that cannot be used is one line and
the video keeps flowing. Then the same camera through `kvs-edge run` into the emulator's archive."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from fakes.rtsp_camera import RtpAudio, RtspCamera, split_annexb
from kvs_edge.media import aac, h264
from kvs_edge.media.aac_encoder import AacEncoder
from kvs_edge.sources import open_source
from kvs_edge.sources.av import rtsp_source
from support.appliance import config_dict, wait_until, write_config
from support.h264gen import make_h264

ROOT = Path(__file__).resolve().parents[1]
FPS = 15
SECONDS = 10  # the length of the served loops: longer than any test reads, so each frame's index is unambiguous
AUDIO_START_S = 0.137  # the input's A/V offset: audio frame 0 is captured this long after video unit 0
MAX_OFFSET_ERROR_MS = 10.0


@pytest.fixture(scope="module")
def units():
    units = [u.data for u in make_h264(FPS * SECONDS, 160, 120, FPS, gop=FPS, profile="baseline").units]
    assert len({slices(u) for u in units}) == len(units)  # every unit can be told apart
    return units


def slices(data: bytes, avcc: bool = False) -> tuple[bytes, ...]:
    nals = list(h264.iter_avcc(data, 4)) if avcc else split_annexb(data)
    return tuple(n for n in nals if h264.nal_type(n) not in (h264.NAL_SPS, h264.NAL_PPS, h264.NAL_AUD))


def noise(rate: int, seconds: float, seed: int) -> np.ndarray:
    return ((np.random.default_rng(seed).random((1, int(rate * seconds)), dtype=np.float32) - 0.5) * 0.6)


@pytest.fixture(scope="module")
def aac_track():
    enc = AacEncoder(48000, 1, 64000)
    frames = [d for d, _ in enc.encode_array(noise(48000, SECONDS, 1))]
    assert len(set(frames)) == len(frames)
    return RtpAudio("aac", frames, 48000, aac.SAMPLES_PER_FRAME, config=enc.asc, start_s=AUDIO_START_S)


def decode_all(codec: str, packets: list[bytes], rate: int, extradata: bytes | None = None) -> np.ndarray:
    """Mono samples (float, -1..1) an independent FFmpeg decoder makes of `packets`."""
    dec = av.CodecContext.create(codec, "r")
    dec.sample_rate, dec.layout = rate, "mono"
    if extradata:
        dec.extradata = extradata
    out = [f.to_ndarray().reshape(-1) for p in packets for f in dec.decode(av.Packet(p))]
    pcm = np.concatenate(out).astype(np.float64)
    return pcm / 32768.0 if codec.startswith("pcm") else pcm


@pytest.fixture(scope="module")
def pcma_track():
    """G.711 A-law at 8 kHz, 20 ms packets, made with FFmpeg's encoder; `pcm` is what a decoder gets back."""
    rate, spf = 8000, 160
    enc = av.CodecContext.create("pcm_alaw", "w")
    enc.sample_rate, enc.layout, enc.format = rate, "mono", "s16"
    f = av.AudioFrame.from_ndarray((noise(rate, SECONDS, 2) * 32767).astype(np.int16), format="s16", layout="mono")
    f.sample_rate = rate
    law = b"".join(bytes(p) for p in enc.encode(f) + enc.encode(None))
    track = RtpAudio("pcma", [law[k:k + spf] for k in range(0, len(law) - spf + 1, spf)], rate, spf,
                     start_s=AUDIO_START_S)
    track.pcm = decode_all("pcm_alaw", [law], rate)
    return track


@pytest.fixture(scope="module")
def latm_track(aac_track):
    """The AAC of aac_track as MP4A-LATM at 48 kHz; `pcm`: the served frames decoded (sample n at start_s + n/rate:
    the encoder's priming frame is frame 0, as AacEncoder stamps it)."""
    track = RtpAudio("latm", aac_track.frames, 48000, aac.SAMPLES_PER_FRAME, config=aac_track.config,
                     start_s=AUDIO_START_S)
    track.pcm = decode_all("aac", aac_track.frames, 48000, aac_track.config)
    return track


def read_live(units, track: RtpAudio, seconds: float, *, rtcp: bool = True, **kw):
    """Serve `track` beside the video and run the RTSP source with audio for `seconds` of delivered video:
    (camera url, source, video frames, audio frames)."""
    cam = RtspCamera(units, fps=FPS, audio=track, rtcp=rtcp).start()
    src = rtsp_source(SimpleNamespace(uri=cam.url), **kw)
    video, audio = [], []
    src.on_audio = audio.append
    src.start(video.append)
    try:
        wait_until(lambda: len(video) >= seconds * FPS or src.error, 60, f"{seconds} s of video")
    finally:
        src.stop(timeout=5.0)
        cam.drop()
    assert src.error is None, src.error
    return cam.url, src, video, audio


def video_offsets(units, frames: list[tuple[int, bytes]], avcc: bool = False) -> list[tuple[int, int]]:
    """[(capture ns at the camera (unit i at i / FPS s), timestamp - capture ns)] of delivered (ts, data) frames."""
    index = {slices(u): i for i, u in enumerate(units)}
    got = [index[slices(data, avcc)] for _, data in frames]
    assert got == list(range(got[0], got[0] + len(got)))  # every frame, in order, from one session
    return [(i * 1_000_000_000 // FPS, ts - i * 1_000_000_000 // FPS) for (ts, _), i in zip(frames, got)]


def audio_offsets(track: RtpAudio, frames: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """The same for passed-through AAC frames, which must be every served frame from the first one on, in order."""
    idx = [track.frames.index(data) for _, data in frames]
    assert len(idx) >= 3 * 48000 // 1024 and idx == list(range(idx[0], idx[0] + len(idx)))
    return [(round(track.media_s(j) * 1e9), ts - round(track.media_s(j) * 1e9)) for (ts, _), j in zip(frames, idx)]


def av_errors_ms(video: list[tuple[int, int]], audio: list[tuple[int, int]]) -> list[float]:
    """For each audio frame: its (timestamp - capture time) minus that of the video frame captured nearest to it;
    0 when the input's A/V offset is kept exactly."""
    caps = [c for c, _ in video]
    errors = []
    for cap, off in audio:
        k = min(range(len(caps)), key=lambda i: abs(caps[i] - cap))
        errors.append((off - video[k][1]) / 1e6)
    return errors


def pairs(frames) -> list[tuple[int, bytes]]:
    return [(f.timestamp_ns, f.data) for f in frames]


@pytest.mark.timeout(120)
def test_rtsp_aac_is_passed_through_with_every_frame_in_sync(units, aac_track, caplog):
    caplog.set_level(logging.INFO)
    url, src, video, audio = read_live(units, aac_track, 4)
    assert "AAC passed through" in caplog.text and src.audio_error is None
    assert src.audio.asc == aac_track.config  # the camera's own config, 2 bytes
    assert aac.parse_asc(src.audio.asc).sample_rate == 48000
    # every audio frame from the first one on, untouched and in order, each as far from its video as at the camera
    errors = av_errors_ms(video_offsets(units, pairs(video)), audio_offsets(aac_track, pairs(audio)))
    print(f"{len(errors)} audio frames: A/V offset error min {min(errors):.2f} max {max(errors):.2f} ms")
    assert max(abs(e) for e in errors) <= MAX_OFFSET_ERROR_MS, errors
    ts = [a.timestamp_ns for a in audio]
    assert all(b > a for a, b in zip(ts, ts[1:]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, codec", [("pcma", "pcm_alaw"), ("latm", "aac")])
def test_rtsp_g711_and_latm_are_transcoded_to_aac_in_sync(units, pcma_track, latm_track, kind, codec, caplog):
    """G.711, and LATM: FFmpeg's MP4A-LATM depacketizer hands over the tail of the StreamMuxConfig (the ASC followed
    by LATM fields, 5 bytes here) as the config, which is not an AudioSpecificConfig KVS playback takes: both are
    decoded and re-encoded to AAC-LC with a plain 2-byte config."""
    track = {"pcma": pcma_track, "latm": latm_track}[kind]
    rate = track.rate
    caplog.set_level(logging.INFO)
    url, src, video, audio = read_live(units, track, 4)
    assert f"{codec} transcoded to AAC-LC" in caplog.text and src.audio_error is None
    asc = aac.parse_asc(src.audio.asc)
    assert len(src.audio.asc) == 2 and (asc.sample_rate, asc.channels) == (rate, 1)
    # an independent decoder reads the AAC back; the frames are contiguous (one AAC frame = 1024 samples; the
    # stamps follow the video's mapping, which settles by fractions of a millisecond in the first frames)
    pcm = decode_all("aac", [a.data for a in audio], rate, src.audio.asc)
    step = 1024 * 1_000_000_000 // rate
    gaps = [b.timestamp_ns - a.timestamp_ns - step for a, b in zip(audio, audio[1:])]
    assert max(abs(g) for g in gaps) < 1_000_000, gaps
    assert len(pcm) >= 3 * rate
    # where does the decoded sound sit in what the camera sent? sample m is stamped audio[0] + m / rate; the
    # video's mapping turns that into a capture time, which names a served sample; the cross-correlation says
    # how far off the sound really is
    v_off = int(np.median([off for _, off in video_offsets(units, pairs(video))]))
    m0, n = rate // 2, rate // 2  # half a second, half a second in
    capture_s = (audio[0].timestamp_ns + m0 * 1_000_000_000 // rate - v_off) / 1e9
    expected = round((capture_s - AUDIO_START_S) * rate)
    chunk = pcm[m0:m0 + n] - pcm[m0:m0 + n].mean()
    lags = range(-rate // 10, rate // 10 + 1)  # +-100 ms
    score = [float(np.dot(chunk, track.pcm[expected + lag:expected + lag + n])) if expected + lag >= 0 else 0.0
             for lag in lags]
    best_ms = lags[int(np.argmax(score))] * 1000 / rate
    print(f"transcoded {codec}: the sound is {best_ms:.2f} ms from where the video puts it "
          f"(correlation {max(score):.1f}, 10th best {sorted(score)[-10]:.1f})")
    assert max(score) > 5 * sorted(score)[-10]  # a clear match, not noise against noise
    assert abs(best_ms) <= MAX_OFFSET_ERROR_MS


@pytest.mark.timeout(120)
def test_rtsp_audio_that_cannot_be_used_is_one_line_and_the_video_flows(units, aac_track, caplog):
    broken = RtpAudio("aac-noconfig", aac_track.frames, 48000, 1024, start_s=AUDIO_START_S)  # no config, no ADTS
    url, src, video, audio = read_live(units, broken, 3)
    assert audio == [] and len(video) >= 3 * FPS
    video_offsets(units, pairs(video))  # every video frame, in order
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{url}: AAC audio with neither a config nor ADTS headers: remux a file, or set a camera's audio to AAC or "
                        "G.711; sending video only"]
    assert src.audio_error and "\n" not in src.audio_error


@pytest.mark.timeout(120)
def test_rtsp_audio_without_rtcp_sender_reports_is_not_guessed(units, aac_track, caplog):
    """Without Sender Reports FFmpeg starts each track's time line at its own first packet: the A/V offset is
    unknown, so no audio goes out (rather than audio off by the input's offset), with one line saying why."""
    url, src, video, audio = read_live(units, aac_track, 3, rtcp=False, audio_sync_wait_s=1.0)
    assert audio == [] and src.audio_waiting > 0 and len(video) >= 3 * FPS
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"rtsp {url}: no RTCP Sender Report for 1 s: its audio cannot be synchronized with the "
                        "video; sending video only until one comes (check the camera's RTCP setting)"]


def test_open_source_gives_the_rtsp_source_the_audio_bitrate():
    src = open_source(SimpleNamespace(type="rtsp", uri="rtsp://10.1.2.3/s1", audio=SimpleNamespace(bitrate=96000)),
                      fragment_seconds=1.0)
    assert src.audio_bitrate == 96000 and hasattr(src, "on_audio")


def archive_frames(data: bytes):
    """(video [(ms, AVCC bytes)], audio [(ms, bytes)], audio config) of an archived MKV, read with PyAV."""
    with av.open(io.BytesIO(data)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        asc = bytes(a.codec_context.extradata or b"")
        vid, aud = [], []
        for p in c.demux(v, a):
            if p.size and p.pts is not None:
                (vid if p.stream is v else aud).append((int(p.pts * p.time_base * 1_000_000_000), bytes(p)))
    return vid, aud, asc


@pytest.mark.timeout(240)
def test_rtsp_camera_with_aac_through_run_into_the_emulator(emulator, units, aac_track, tmp_path):
    emulator.create_stream("cam")
    cam = RtspCamera(units, fps=FPS, audio=aac_track).start()
    data = config_dict(emulator, tmp_path / "buf", source={"type": "rtsp", "uri": cam.url,
                                                           "audio": {"device": "auto"}})
    cfg = write_config(tmp_path / "c.yaml", data)
    proc = subprocess.Popen([sys.executable, "-m", "kvs_edge", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def span_s():
            e = emulator.archive("cam")
            return len(e) > 3 and (e[-1].producer_ts_ms - e[0].producer_ts_ms) / 1000 >= 4

        wait_until(lambda: span_s() or proc.poll() is not None, 120, "4 s of the camera archived")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        cam.drop()
    assert proc.returncode == 0, err
    files = emulator.archive_files("cam")
    assert len(files) == 1, files  # one session: the audio never went missing
    vid, aud, asc = archive_frames(Path(files[0]).read_bytes())
    assert asc == aac_track.config  # both tracks, the camera's AAC config untouched
    errors = av_errors_ms(video_offsets(units, vid, avcc=True), audio_offsets(aac_track, aud))  # every audio frame
    print(f"archive: {len(vid)} video, {len(aud)} audio frames; A/V offset error min {min(errors):.2f} "
          f"max {max(errors):.2f} ms")
    assert max(abs(e) for e in errors) <= MAX_OFFSET_ERROR_MS, errors
