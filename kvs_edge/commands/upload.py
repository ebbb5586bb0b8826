"""`kvs-edge upload INPUT [--config FILE] [--stream NAME] [--fps N]`: send a file through the same muxer, fragment log
and uploader as the appliance; exit 0 once every fragment is PERSISTED (RECEIVED on a stream that keeps no data).

The file is muxed into a temporary fragment log first (it is read much faster than real time), then stamped so that its
last frame ends just before now: KVS rejects producer timestamps in the future.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

from kvs_edge import logsetup
from kvs_edge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, KvsEdgeError, UsageError, one_line

log = logging.getLogger("kvs_edge")


def settings(args, environ=os.environ):
    """The Config this upload runs with: --config FILE (with --stream overriding stream.name), or else one built from
    --stream and the AWS_* environment through the same parser as a file, so every other setting keeps config.py's
    defaults. Raises ConfigError (exit 78) or UsageError (exit 2)."""
    import dataclasses

    from kvs_edge.config import load_config, parse_config

    if args.config:
        cfg = load_config(args.config)
        if args.stream:
            cfg = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, name=args.stream))
        return cfg
    if not args.stream:
        raise UsageError("give --stream NAME (or --config FILE with stream.name)")
    aws = {"credentials": "default", "profile": environ.get("AWS_PROFILE"),
           "endpoint_url": environ.get("AWS_ENDPOINT_URL_KINESIS_VIDEO") or environ.get("AWS_ENDPOINT_URL"),
           "ca_bundle": environ.get("AWS_CA_BUNDLE")}
    stream = {"name": args.stream}
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        stream["region"] = region
    return parse_config({"stream": stream, "aws": {k: v for k, v in aws.items() if v}},
                        "kvs-edge upload (--stream and the AWS_* environment)")


def mux_file_into_log(path: str, fps: float | None, frag_log, fragment_seconds: float) -> dict:
    """Read the file with the file source (unpaced: the file's own timestamps) and write its fragments to the log.

    The file's audio track, if any, goes along as track 2 (AAC passed through, ADTS stripped, or transcoded); audio
    that cannot be used is one notice and the video goes alone."""
    from kvs_edge.config import SourceConfig
    from kvs_edge.media.av_muxer import AvMuxer
    from kvs_edge.media.fragmenter import AudioTrack
    from kvs_edge.recorder import Recorder
    from kvs_edge.sources.av import FileSource

    # this command reports a failed source itself, in one line: the source's own journal line would repeat it
    logging.getLogger("kvs_edge.sources").setLevel(logging.CRITICAL)
    recorder = Recorder(frag_log)
    notices: list[str] = []

    def apply(events):
        notices.extend(n.message for n in recorder.apply(events)[1])

    def audio_track():
        a = source.audio
        return AudioTrack(a.asc, a.sample_rate, a.channels) if a is not None and a.asc else None

    muxer = AvMuxer(int(fragment_seconds * 1000), audio_track)

    def emit(frame):
        apply(muxer.push_video(frame.data, frame.timestamp_ns // 1_000_000, frame.key))

    def on_audio(frame):
        apply(muxer.push_audio(frame.data, frame.timestamp_ns // 1_000_000))

    source = FileSource(SourceConfig(type="file", uri=path, fps=fps or SourceConfig.fps), paced=False,
                        on_audio=on_audio)
    source.start(emit)
    while not (source.finished or source.error):
        time.sleep(0.05)
    source.stop()
    if source.error:
        raise UsageError(str(source.error))
    apply(muxer.close())
    if source.audio_error:
        notices.append(source.audio_error + "; sending video only")
    return {"fragments": recorder.fragments, "frames": recorder.frames, "audio_frames": recorder.audio_frames,
            "notices": notices}


def main(args) -> int:
    logsetup.configure("warning", getattr(args, "verbose", False))
    from kvs_edge.clock import FixedOffset
    from kvs_edge.config import ConfigError
    from kvs_edge.kvs.control import ControlPlane, DataEndpoint
    from kvs_edge.kvs.credentials import resolve_credentials
    from kvs_edge.kvs.uploader import Error, FragmentPersisted, FragmentSkipped, Uploader
    from kvs_edge.log import FragmentLog

    if not os.path.isfile(args.input):
        print(f"kvs-edge upload: {args.input}: no such file", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = settings(args)
    except ConfigError as e:
        print("\n".join(e.messages), file=sys.stderr)
        return e.exit_code
    except UsageError as e:
        print(f"kvs-edge upload: {e.message}", file=sys.stderr)
        return e.exit_code
    stream, region, aws, upload_cfg, stream_cfg = cfg.stream.name, cfg.stream.region, cfg.aws, cfg.upload, cfg.stream
    if args.input.lower().endswith((".h264", ".264")) and not args.fps:
        print("kvs-edge upload: a raw .h264 file has no timing: give --fps N", file=sys.stderr)
        return EXIT_USAGE

    with tempfile.TemporaryDirectory(prefix="kvs-edge-upload-") as tmp:
        frag_log = FragmentLog(os.path.join(tmp, "log"), 1 << 40, sync_interval_s=3600)
        try:
            state = mux_file_into_log(args.input, args.fps, frag_log, stream_cfg.fragment_seconds)
        except (UsageError, ValueError) as e:  # ValueError: H.264 the muxer cannot take
            print(f"kvs-edge upload: {one_line(e, 1000)}", file=sys.stderr)
            return EXIT_USAGE
        for n in dict.fromkeys(state["notices"]):
            print(f"kvs-edge upload: {n}", file=sys.stderr)
        total = state["fragments"]
        if total == 0:
            print(f"kvs-edge upload: {args.input}: no complete H.264 fragment to send", file=sys.stderr)
            return EXIT_USAGE
        st = frag_log.stats()
        # the last frame ends 1 s before now: nothing in the future, order kept
        offset = int(time.time() * 1000) - 1000 - (st.newest_last_ms or 0)
        try:
            creds = resolve_credentials(aws, config_path=args.config)
            control = ControlPlane(region, creds, endpoint_url=aws.endpoint_url, ca_bundle=aws.ca_bundle)
            info = control.ensure_stream(stream, create=stream_cfg.create, retention_hours=stream_cfg.retention_hours,
                                         kms_key_id=stream_cfg.kms_key_id)
        except KvsEdgeError as e:  # credentials (78), the control plane (78 when unusable as configured, else 1)
            print(f"kvs-edge upload: {e.message}", file=sys.stderr)
            return e.exit_code
        keeps = int(info.get("DataRetentionInHours") or 0) > 0
        progress = {"done": 0, "skipped": 0, "errors": [], "t0": time.monotonic(), "bytes": st.bytes}
        tty = sys.stderr.isatty()

        def on_event(ev):
            if isinstance(ev, FragmentPersisted):
                progress["done"] += 1
            elif isinstance(ev, FragmentSkipped):
                progress["skipped"] += 1
                print(f"\nkvs-edge upload: KVS rejected fragment {ev.seq} at {ev.producer_ms} "
                      f"({ev.error_code}, {ev.error_id}): skipped", file=sys.stderr)
            elif isinstance(ev, Error):
                progress["errors"].append(ev.message)
            if tty:
                n = progress["done"] + progress["skipped"]
                dt = max(time.monotonic() - progress["t0"], 1e-6)
                mbps = progress["bytes"] * n / max(total, 1) / dt / 1e6
                bar = "#" * int(30 * n / total)
                sys.stderr.write(f"\r[{bar:<30}] {n}/{total} fragments acknowledged  {mbps:6.2f} MB/s")
                sys.stderr.flush()

        uploader = Uploader(frag_log, stream_name=stream, region=region, endpoint=DataEndpoint(control, stream),
                            credentials=creds, timebase=FixedOffset(offset), keeps_data=keeps,
                            ca_bundle=aws.ca_bundle, stale_after_s=upload_cfg.stale_seconds,
                            connect_timeout_s=upload_cfg.connect_timeout_seconds, on_event=on_event)
        ok = uploader.drain(timeout=max(120.0, 10.0 * total))
        if tty:
            sys.stderr.write("\n")
        frag_log.close()
        control.close()
    if not ok:
        reason = progress["errors"][-1] if progress["errors"] else "not every fragment was acknowledged in time"
        print(f"kvs-edge upload: failed: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    if progress["skipped"]:
        print(f"kvs-edge upload: {progress['skipped']} of {total} fragments were rejected by KVS", file=sys.stderr)
        return EXIT_FAILURE
    audio = f" and {state['audio_frames']} audio frames" if state["audio_frames"] else ""
    print(f"{args.input}: {state['frames']} frames{audio} in {total} fragments {'PERSISTED' if keeps else 'RECEIVED'} "
          f"in stream {stream}")
    return EXIT_OK
