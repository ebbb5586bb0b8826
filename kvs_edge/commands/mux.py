"""`kvs-edge mux INPUT -o OUTPUT [--fps N] [--start-ms EPOCH_MS] [--audio AUDIO]`: an Annex B H.264 file -> the MKV
session(s) the uploader would send, each closed with an end-of-fragment tag. With --audio, a sound file (any container
FFmpeg reads: .aac/ADTS, .m4a, .wav, .mp3 ...) becomes track 2, AAC (sources/aac_input.py), starting with the video.

PyAV's raw H.264 demuxer (libavcodec's parser) splits the file into access units; frame i is stamped
`start + floor(i * 1000 / fps)` ms, as the official SDK stamps a file. Fragments are cut at every key frame at least
MUX_FRAGMENT_MS after the fragment's start, which is the SDK's key-frame fragmentation for key-frame intervals of 1 s and
more (KVS's minimum fragment duration). Unusable input: one line on stderr, exit 2, no output file left behind.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO, Iterator

from kvs_edge.errors import EXIT_OK, EXIT_USAGE, UsageError
from kvs_edge.media import h264, mkv
from kvs_edge.media.av_muxer import AvMuxer
from kvs_edge.media.fragmenter import AudioTrack, FragmentStart, FrameWritten, Notice, SessionStart
from kvs_edge.replace_file import replacing

MUX_FRAGMENT_MS = 1000


class UnusableInput(UsageError):
    """The input cannot be muxed; str(e) is the one line for the user."""


@dataclass
class MuxResult:
    frames_in: int = 0
    frames_written: int = 0
    sessions: int = 0
    fragments: int = 0
    bytes_written: int = 0
    audio_frames: int = 0
    warnings: list[str] = field(default_factory=list)


def frame_timestamp_ms(start_ms: int, index: int, fps: Fraction) -> int:
    """Frame `index` of a file at `fps`: start + floor(index * 1000 / fps) (exact for fractional rates)."""
    return start_ms + math.floor(index * 1000 / fps)


def parse_fps(fps: float | str | Fraction) -> Fraction:
    """29.97 -> 2997/100 exactly (not the binary float); raises UnusableInput when not positive and finite."""
    try:
        f = Fraction(fps) if isinstance(fps, Fraction) else Fraction(str(fps))
    except (ValueError, ZeroDivisionError):
        raise UnusableInput(f"--fps {fps}: not a number") from None
    if f <= 0 or f > 1000:
        raise UnusableInput(f"--fps {fps}: must be a frame rate above 0 and at most 1000")
    return f


def read_access_units(path: str) -> Iterator[tuple[bytes, bool]]:
    """(Annex B access unit, key) pairs of a raw H.264 file, split by libavcodec's H.264 parser (PyAV)."""
    import av

    try:
        container = av.open(path, format="h264")
    except av.error.InvalidDataError:
        raise UnusableInput(f"{path}: not an Annex B H.264 stream") from None
    except (OSError, av.error.FFmpegError) as e:
        raise UnusableInput(f"{path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    with container:
        try:
            for pkt in container.demux(video=0):
                if pkt.size:
                    yield bytes(pkt), bool(pkt.is_keyframe)
        except av.error.FFmpegError as e:
            raise UnusableInput(f"{path}: not a readable H.264 stream ({e})") from None


def check_tail_decodes(gop: list[bytes], sps: list[bytes], pps: list[bytes], path: str) -> None:
    """Decode the last group of pictures with libavcodec's strict error detection: a truncated last frame fails.

    (A frame missing only its very last byte or two can still pass: the decoder tolerates that much overread.)
    """
    import av

    if not gop:
        return
    dec = av.CodecContext.create("h264", "r")
    dec.options = {"err_detect": "crccheck+bitstream+buffer+careful+explode"}
    dec.thread_count = 1  # with frame threads libavcodec reports slice errors late or not at all
    dec.thread_type = "NONE"
    first = h264.join_annexb(sps + pps) + gop[0]
    prev = av.logging.get_level()
    av.logging.set_level(av.logging.PANIC)  # the one-line error below says it; no decoder chatter on stderr
    try:
        for i, au in enumerate([first] + gop[1:]):
            try:
                dec.decode(av.Packet(au))
            except av.error.FFmpegError:
                where = "the last frame" if i == len(gop) - 1 else f"frame {i + 1} of the last {len(gop)}"
                raise UnusableInput(f"{path}: {where} is damaged or truncated (it does not decode); "
                                    f"cut the file at a frame boundary") from None
        try:
            dec.decode(None)
        except av.error.FFmpegError:
            raise UnusableInput(f"{path}: the last frame is damaged or truncated (it does not decode)") from None
    finally:
        av.logging.set_level(prev)


def read_audio(path: str, start_ms: int):
    """(the AAC input, an iterator of (raw AAC frame, timestamp ms)) of a sound file, timed from start_ms."""
    import av

    from kvs_edge.sources.aac_input import AacFromStream, AudioUnusable

    try:
        container = av.open(path)
    except (OSError, av.error.FFmpegError) as e:
        raise UnusableInput(f"--audio {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    if not container.streams.audio:
        container.close()
        raise UnusableInput(f"--audio {path}: has no audio stream")
    stream = container.streams.audio[0]
    try:
        src = AacFromStream(stream, what=f"--audio {path}")
    except Exception as e:
        container.close()
        raise UnusableInput(f"--audio {path}: its {stream.codec_context.name} audio cannot be used ({e})") from None

    def frames():
        with container:
            try:
                for pkt in container.demux(stream):
                    if not pkt.size:
                        continue
                    media = None if pkt.pts is None else int(Fraction(pkt.pts) * Fraction(stream.time_base) * 10**9)
                    for data, ns in src.feed(pkt, media):
                        yield data, start_ms + ns // 1_000_000
                for data, ns in src.flush():
                    yield data, start_ms + ns // 1_000_000
            except AudioUnusable as e:
                raise UnusableInput(str(e)) from None
            except av.error.FFmpegError as e:
                raise UnusableInput(f"--audio {path}: read error ({e})") from None

    return src, frames()


def mux_file(input_path: str, out: BinaryIO, fps: float | Fraction, start_ms: int,
             target_ms: int = MUX_FRAGMENT_MS, audio_path: str | None = None) -> MuxResult:
    """Mux a raw H.264 file (and a sound file) into `out`. Raises UnusableInput for input that cannot become a valid
    KVS stream."""
    rate = parse_fps(fps)
    if start_ms < 0:
        raise UnusableInput(f"--start-ms {start_ms}: must not be negative")
    try:
        if os.path.getsize(input_path) == 0:
            raise UnusableInput(f"{input_path}: the file is empty")
    except OSError as e:
        raise UnusableInput(f"{input_path}: cannot read it: {e.strerror}") from None
    audio_src, audio_frames = read_audio(audio_path, start_ms) if audio_path else (None, iter(()))
    audio_next = next(audio_frames, None)
    muxer = AvMuxer(target_ms, lambda: AudioTrack(audio_src.asc, audio_src.sample_rate, audio_src.channels)
                    if audio_src is not None and audio_src.asc else None, audio=audio_src is not None,
                    max_wait_ms=2000)
    frag = muxer.fragmenter
    res = MuxResult()
    in_session = False
    last_sps: list[bytes] = []
    last_pps: list[bytes] = []
    gop: list[bytes] = []
    index = 0

    def write(b: bytes) -> None:
        out.write(b)
        res.bytes_written += len(b)

    def handle(events) -> None:
        nonlocal in_session
        for e in events:
            if isinstance(e, FrameWritten):
                write(e.data)
            elif isinstance(e, FragmentStart):
                write(e.data)
            elif isinstance(e, SessionStart):
                if in_session:
                    write(mkv.end_of_fragment_tag())
                    res.warnings.append("SPS/PPS change inside the file: the output holds one session per codec "
                                        "configuration, one after the other")
                write(e.header)
                in_session = True
            elif isinstance(e, Notice):
                if e.kind == "b_frames":
                    raise UnusableInput(f"{input_path}: the stream has B-frames, which Kinesis Video Streams rejects "
                                        f"(error 4004); re-encode it without B-frames (e.g. x264 bframes=0)")
                if e.kind == "malformed":
                    raise UnusableInput(f"{input_path}: frame {index} is damaged or not H.264, so the file cannot "
                                        f"be muxed as it is")
                res.warnings.append(e.message)

    for index, (au, key) in enumerate(read_access_units(input_path)):
        if key:  # remember the last GOP and its parameter sets for check_tail_decodes()
            try:
                nals = h264.split_annexb(au)
            except h264.H264Error:
                nals = []  # the fragmenter reports it
            gop = []
            sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
            pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
            last_sps, last_pps = sps or last_sps, pps or last_pps
        gop.append(au)
        ts = frame_timestamp_ms(start_ms, index, rate)
        while audio_next is not None and audio_next[1] <= ts:
            handle(muxer.push_audio(*audio_next))
            audio_next = next(audio_frames, None)
        handle(muxer.push_video(au, ts, key))
    while audio_next is not None:  # the sound that outlasts the last picture stays in the last fragment
        handle(muxer.push_audio(*audio_next))
        audio_next = next(audio_frames, None)
    handle(muxer.close())
    st = frag.stats
    res.frames_in, res.frames_written = st.frames_in, st.frames_written
    res.sessions, res.fragments = st.sessions, st.fragments
    res.audio_frames = st.audio_written
    if st.frames_written == 0:
        if st.frames_in == 0:
            raise UnusableInput(f"{input_path}: no H.264 frames found")
        raise UnusableInput(f"{input_path}: no key frame with SPS/PPS found, so nothing can be decoded "
                            f"({st.frames_in} frames read)")
    check_tail_decodes(gop, last_sps, last_pps, input_path)
    write(mkv.end_of_fragment_tag())
    return res


def main(args) -> int:
    output = args.output
    start_ms = args.start_ms if args.start_ms is not None else int(time.time() * 1000)
    umask = os.umask(0)
    os.umask(umask)
    opened = False  # the output's folder took the temporary file: an OSError after that is a write failure
    try:
        with replacing(output, mode=0o666 & ~umask) as tmp, open(tmp, "wb") as f:
            opened = True
            res = mux_file(args.input, f, args.fps, start_ms, audio_path=getattr(args, "audio", None))
    except UnusableInput as e:
        print(f"kvs-edge mux: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"kvs-edge mux: cannot write {output}: {e.strerror or e}", file=sys.stderr)
        return 1 if opened else EXIT_USAGE
    for w in res.warnings:
        print(f"kvs-edge mux: note: {w}", file=sys.stderr)
    audio = f" and {res.audio_frames} audio frames" if res.audio_frames else ""
    print(f"{output}: {res.frames_written} frames{audio} in {res.fragments} fragments, {res.sessions} session(s), "
          f"{res.bytes_written} bytes")
    return EXIT_OK

