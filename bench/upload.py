"""Client CPU per GB sent to PutMedia over TLS on loopback: kvs-edge beside curl, same bytes, same emulator, one run.

    .venv/bin/python bench/upload.py [--mb 256]

The emulator runs in a child process (its CPU is not counted). One MKV session of --mb megabytes (1-s fragments of
30 frames, AVCC frames of random bytes behind a real H.264 header) is sent three ways, each to a stream of its own
with no retention (so RECEIVED completes a fragment and nothing is archived):

  kvs-edge uploader   fragment log on disk -> Uploader (session + transport + TLS), this process's CPU
  kvs-edge transport  the same bytes from memory straight into PutMediaConnection, this process's CPU
  curl                /usr/bin/curl -H 'Transfer-Encoding: chunked' --data-binary @- with the same signed headers,
                      the child's CPU (RUSAGE_CHILDREN)

Prints CPU seconds per GB of body and the ratio to curl. Target: kvs-edge <= 1.5 x curl.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FPS = 30
FRAME_BYTES = 40_000  # ~9.6 Mbit/s at 30 fps


def serve(data_dir, cert, q, stop):
    from kvs_edge.emulator import Emulator

    emu = Emulator(data_dir, tls_cert=cert, tls_key=cert, idle_timeout_s=120).start()
    q.put(emu.url)
    stop.wait()
    emu.stop()


def make_session(mb: int, start_ms: int):
    """(header, fragments): fragments = [(first_ms, [(ms, key, simple_block bytes)])]."""
    from kvs_edge.media import h264, mkv
    from support.h264gen import make_h264

    enc = make_h264(frames=1, width=640, height=480, fps=FPS)
    nals = h264.split_annexb(enc.units[0].data)
    sps = [n for n in nals if h264.nal_type(n) == h264.NAL_SPS]
    pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
    header = mkv.session_header(width=640, height=480, codec_private=h264.build_avcc(sps, pps))
    rng = random.Random(5)
    pool = rng.randbytes(FRAME_BYTES * 8)
    frames_total = mb * 1_000_000 // FRAME_BYTES
    frags = []
    for i in range(frames_total):
        ms = start_ms + i * 1000 // FPS
        key = i % FPS == 0
        off = (i * 7919) % (len(pool) - FRAME_BYTES)
        nal = (b"\x65" if key else b"\x41") + pool[off:off + FRAME_BYTES - 5]
        avcc = len(nal).to_bytes(4, "big") + nal
        if key:
            frags.append((ms, []))
        frags[-1][1].append((ms, key, avcc))
    return header, frags


def body_bytes(header, frags):
    from kvs_edge.media import mkv

    out = [header]
    for first, frames in frags:
        out.append(mkv.cluster_head(first))
        out += [mkv.simple_block(ms - first, key, data) for ms, key, data in frames]
    out.append(mkv.end_of_fragment_tag())
    return b"".join(out)


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_uploader(url, ca, creds, stream, header, frags, workdir):
    from kvs_edge.clock import FixedOffset
    from kvs_edge.kvs.uploader import Uploader
    from kvs_edge.log.fragment_log import FragmentLog
    from kvs_edge.media import mkv

    log = FragmentLog(Path(workdir) / f"log-{stream}", 4 << 30, boot_id="bench", sync_interval_s=3600)
    hid = log.add_header(header)
    for first, frames in frags:
        log.start_fragment(hid, first, mkv.cluster_head(first))
        for ms, key, data in frames:
            log.append(mkv.simple_block(ms - first, key, data), ms)
        log.end_fragment()

    class Endpoint:
        def get(self):
            return url

        def invalidate(self):
            pass

    up = Uploader(log, stream_name=stream, region="us-east-1", endpoint=Endpoint(), credentials=creds,
                  timebase=FixedOffset(0), keeps_data=False, ca_bundle=ca, stale_after_s=60)
    c0, t0 = cpu_self(), time.monotonic()
    ok = up.drain(600)
    c1, t1 = cpu_self(), time.monotonic()
    log.close()
    if not ok:
        raise SystemExit(f"uploader did not finish: {up.stats}")
    return c1 - c0, t1 - t0, up.stats.bytes_sent, up.stats.fragments_done


def run_transport(url, ca, creds, stream, body, start_ms):
    from kvs_edge.kvs.transport import ConnectionLost, PutMediaConnection, signed_request

    c0, t0 = cpu_self(), time.monotonic()
    target, headers = signed_request(url, stream_name=stream, region="us-east-1", credentials=creds,
                                     producer_start_ms=start_ms)
    conn = PutMediaConnection.open(url, target, headers, stream_name=stream, region="us-east-1", ca_bundle=ca)
    view = memoryview(body)
    pos, acks = 0, 0
    step = 256 * 1024
    while pos < len(body):
        if conn.writable:
            conn.write(view[pos:pos + step])
            pos += step
            acks += received(conn.poll(0))
        else:
            acks += received(conn.poll(0.05))
    conn.end_body()
    try:
        while True:
            acks += received(conn.poll(0.5))
    except ConnectionLost:
        pass
    c1, t1 = cpu_self(), time.monotonic()
    return c1 - c0, t1 - t0, len(body), acks


def received(acks) -> int:
    return sum(1 for a in acks if getattr(a, "event_type", None) == "RECEIVED")


def run_curl(url, ca, creds, stream, body_path, start_ms):
    from kvs_edge.kvs.transport import signed_request

    target, headers = signed_request(url, stream_name=stream, region="us-east-1", credentials=creds,
                                     producer_start_ms=start_ms)
    acks_path = body_path + ".acks"
    cmd = ["/usr/bin/curl", "-sS", "--cacert", ca, "-X", "POST", "-o", acks_path, "--data-binary", "@-",
           "-H", "Expect:"]
    for k, v in headers:
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url + target)
    c0, t0 = cpu_children(), time.monotonic()
    with open(body_path, "rb") as f:
        p = subprocess.run(cmd, stdin=f, capture_output=True)
    c1, t1 = cpu_children(), time.monotonic()
    if p.returncode != 0:
        raise SystemExit(f"curl failed ({p.returncode}): {p.stderr.decode()[:300]}")
    received = Path(acks_path).read_text().count('"RECEIVED"')
    return c1 - c0, t1 - t0, received


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="megabytes of body per run (default 256)")
    args = ap.parse_args()

    import trustme
    from botocore.credentials import Credentials

    from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as work:
        ca = trustme.CA()
        cert = os.path.join(work, "server.pem")
        ca_file = os.path.join(work, "ca.pem")
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert)
        ca.cert_pem.write_to_path(ca_file)
        ctx = mp.get_context("spawn")
        q, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=serve, args=(os.path.join(work, "emu"), cert, q, stop), daemon=True)
        proc.start()
        url = q.get(timeout=30)
        try:
            from kvs_edge.kvs.control import ControlPlane

            creds = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
            control = ControlPlane("us-east-1", creds, endpoint_url=url, ca_bundle=ca_file)
            for s in ("bench-uploader", "bench-transport", "bench-curl"):
                control._client.create_stream(StreamName=s, DataRetentionInHours=0)
            data_url = control.data_endpoint("bench-uploader")
            frozen = creds.get_frozen_credentials()
            start_ms = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
            header, frags = make_session(args.mb, start_ms)
            body = body_bytes(header, frags)
            body_path = os.path.join(work, "body.mkv")
            Path(body_path).write_bytes(body)
            gb = len(body) / 1e9
            print(f"body: {len(body) / 1e6:.1f} MB, {len(frags)} fragments of {FPS} frames, TLS on loopback, "
                  f"{os.cpu_count()} CPUs")

            u_cpu, u_wall, u_bytes, u_acks = run_uploader(data_url, ca_file, creds, "bench-uploader", header, frags, work)
            t_cpu, t_wall, t_bytes, t_acks = run_transport(data_url, ca_file, frozen, "bench-transport", body,
                                                           start_ms)
            c_cpu, c_wall, c_acks = run_curl(data_url, ca_file, frozen, "bench-curl", body_path, start_ms)
            rows = [("kvs-edge uploader (log -> TLS)", u_cpu, u_wall, u_bytes, u_acks),
                    ("kvs-edge transport (memory -> TLS)", t_cpu, t_wall, t_bytes, t_acks),
                    ("curl --data-binary @- chunked", c_cpu, c_wall, len(body), c_acks)]
            print(f"{'client':36} {'CPU s':>7} {'wall s':>7} {'MB/s':>7} {'CPU s/GB':>9} {'x curl':>7} "
                  f"{'RECEIVED':>9}")
            curl_per_gb = c_cpu / gb
            for name, cpu, wall, n, acked in rows:
                per_gb = cpu / (n / 1e9)
                print(f"{name:36} {cpu:7.2f} {wall:7.2f} {n / 1e6 / wall:7.1f} {per_gb:9.2f} "
                      f"{per_gb / curl_per_gb:7.2f} {acked:6d}/{len(frags)}")
            print("target: kvs-edge <= 1.50 x curl")
            control.close()
        finally:
            stop.set()
            proc.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
