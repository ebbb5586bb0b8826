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
import types

from kvs_edge import logsetup
from kvs_edge.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE

log = logging.getLogger("kvs_edge")


def _settings(args):
    """(stream name, region, aws section) from --config and the command line; the AWS_* environment otherwise."""
    from kvs_edge.config import load_config

    if args.config:
        cfg = load_config(args.config)
        return args.stream or cfg.stream.name, cfg.stream.region, cfg.aws, cfg.upload, cfg.stream
    if not args.stream:
        raise ValueError("give --stream NAME (or --config FILE with stream.name)")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    aws = types.SimpleNamespace(credentials="default", profile=os.environ.get("AWS_PROFILE"), access_key_id=None,
                                secret_access_key=None, session_token=None,
                                endpoint_url=os.environ.get("AWS_ENDPOINT_URL_KINESIS_VIDEO")
                                or os.environ.get("AWS_ENDPOINT_URL"),
                                ca_bundle=os.environ.get("AWS_CA_BUNDLE"), iot=None)
    upload = types.SimpleNamespace(stale_seconds=10.0, max_connection_minutes=40, connect_timeout_seconds=10.0)
    stream = types.SimpleNamespace(create=False, retention_hours=24, kms_key_id=None, fragment_seconds=2.0)
    return args.stream, region, aws, upload, stream


def mux_file_into_log(path: str, fps: float | None, frag_log, fragment_seconds: float) -> dict:
    """Read the file with the file source (unpaced: the file's own timestamps) and write its fragments to the log."""
    from kvs_edge.media.fragmenter import Fragmenter
    from kvs_edge.recorder import Recorder
    from kvs_edge.sources.av import FileSource

    # this command reports a failed source itself, in one line: the source's own journal line would repeat it
    logging.getLogger("kvs_edge.sources").setLevel(logging.CRITICAL)
    src_cfg = types.SimpleNamespace(type="file", uri=path, fps=fps or 30, loop=False)
    source = FileSource(src_cfg, fragment_seconds=fragment_seconds, paced=False)
    fragmenter = Fragmenter(target_ms=int(fragment_seconds * 1000))
    recorder = Recorder(frag_log)
    notices: list[str] = []

    def apply(events):
        notices.extend(n.message for n in recorder.apply(events)[1])

    def emit(frame):
        apply(fragmenter.push(frame.data, frame.timestamp_ns // 1_000_000, frame.key))

    source.start(emit)
    while not (source.finished or source.error):
        time.sleep(0.05)
    source.stop()
    if source.error:
        raise ValueError(str(source.error))
    apply(fragmenter.close())
    return {"fragments": recorder.fragments, "frames": recorder.frames, "notices": notices}


def main(args) -> int:
    logsetup.configure("warning", getattr(args, "verbose", False))
    from kvs_edge.clock import FixedOffset
    from kvs_edge.config import ConfigError
    from kvs_edge.kvs.control import ControlPlane, ControlPlaneError, DataEndpoint
    from kvs_edge.kvs.credentials import CredentialsError, resolve_credentials
    from kvs_edge.kvs.uploader import Error, FragmentPersisted, FragmentSkipped, Uploader
    from kvs_edge.log import FragmentLog

    if not os.path.isfile(args.input):
        print(f"kvs-edge upload: {args.input}: no such file", file=sys.stderr)
        return EXIT_USAGE
    try:
        stream, region, aws, upload_cfg, stream_cfg = _settings(args)
    except ConfigError as e:
        print("\n".join(e.messages), file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"kvs-edge upload: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.input.lower().endswith((".h264", ".264")) and not args.fps:
        print("kvs-edge upload: a raw .h264 file has no timing: give --fps N", file=sys.stderr)
        return EXIT_USAGE

    with tempfile.TemporaryDirectory(prefix="kvs-edge-upload-") as tmp:
        frag_log = FragmentLog(os.path.join(tmp, "log"), 1 << 40, sync_interval_s=3600)
        try:
            state = mux_file_into_log(args.input, args.fps, frag_log, stream_cfg.fragment_seconds)
        except ValueError as e:
            print(f"kvs-edge upload: {e}", file=sys.stderr)
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
        except (CredentialsError, ControlPlaneError) as e:
            print(f"kvs-edge upload: {e}", file=sys.stderr)
            return EXIT_CONFIG if isinstance(e, CredentialsError) else EXIT_FAILURE
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
    print(f"{args.input}: {state['frames']} frames in {total} fragments {'PERSISTED' if keeps else 'RECEIVED'} "
          f"in stream {stream}")
    return EXIT_OK
