"""Backlog drain after an outage: how much of a capped uplink the uploader uses to empty the fragment log.

    .venv/bin/python bench/drain.py [--mb 40] [--cap 2000000]

The emulator (in a child process, over TLS) reads request bodies at most --cap bytes/s (its `rate_limit` fault: a
slow uplink). A fragment log holds --mb MB of 1-s fragments waiting since an outage; the uploader drains it
(`Uploader.drain`), and the rate is body bytes / wall time, as a share of the cap. Reference in the same run: curl
sending the same MKV bytes, chunked, with the same signed headers, to the same capped emulator.
Target: the uploader's share >= 90 %.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from upload import body_bytes, make_session, run_curl, run_uploader  # noqa: E402  (bench/upload.py)


def serve(data_dir, cert, cap, q, stop):
    from kvs_edge.emulator import Emulator

    emu = Emulator(data_dir, tls_cert=cert, tls_key=cert, idle_timeout_s=120).start()
    emu.faults.rate_limit(cap)
    q.put(emu.url)
    stop.wait()
    emu.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=40, help="backlog size in MB")
    ap.add_argument("--cap", type=int, default=2_000_000, help="uplink cap in bytes/s (default 2 MB/s = 16 Mbit/s)")
    a = ap.parse_args()

    import trustme
    from botocore.credentials import Credentials

    from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

    with tempfile.TemporaryDirectory(prefix="kvs-edge-drain-") as tmp:
        ca = trustme.CA()
        cert = os.path.join(tmp, "server.pem")
        issued = ca.issue_cert("127.0.0.1")
        issued.private_key_and_cert_chain_pem.write_to_path(cert)
        ca_file = os.path.join(tmp, "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        q, stop = mp.Queue(), mp.Event()
        server = mp.Process(target=serve, args=(os.path.join(tmp, "emu"), cert, a.cap, q, stop), daemon=True)
        server.start()
        url = q.get(timeout=30)
        creds = Credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
        import botocore.session

        s = botocore.session.Session()
        s.set_credentials(DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY)
        client = s.create_client("kinesisvideo", region_name="us-east-1", endpoint_url=url, verify=ca_file)
        for name in ("drain-ours", "drain-curl"):
            client.create_stream(StreamName=name, DataRetentionInHours=0)
        start_ms = int(time.time() * 1000) - 3_600_000  # an hour-old backlog
        header, frags = make_session(a.mb, start_ms)
        body = body_bytes(header, frags)
        _, ours_wall, ours_bytes, ours_done = run_uploader(url, ca_file, creds, "drain-ours", header, frags, tmp)
        body_path = os.path.join(tmp, "body.mkv")
        Path(body_path).write_bytes(body)
        _, curl_wall, curl_received = run_curl(url, ca_file, creds, "drain-curl", body_path, start_ms)
        stop.set()
        server.join(10)
    cap_mb = a.cap / 1e6
    print(f"\nbacklog of {len(body) / 1e6:.1f} MB ({len(frags)} fragments of 1 s) drained through an uplink capped "
          f"at {cap_mb:.1f} MB/s ({a.cap * 8 / 1e6:.0f} Mbit/s), emulator over TLS in another process\n")
    print("| client | wall s | MB/s | share of the cap | fragments acknowledged |")
    print("|---|---:|---:|---:|---:|")
    print(f"| kvs-edge uploader (fragment log -> PutMedia) | {ours_wall:.1f} | {ours_bytes / ours_wall / 1e6:.2f} | "
          f"{100 * ours_bytes / ours_wall / a.cap:.0f} % | {ours_done}/{len(frags)} |")
    print(f"| curl, same bytes, same signed headers | {curl_wall:.1f} | {len(body) / curl_wall / 1e6:.2f} | "
          f"{100 * len(body) / curl_wall / a.cap:.0f} % | {curl_received}/{len(frags)} |")
    print("\ntarget: the uploader's share >= 90 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
