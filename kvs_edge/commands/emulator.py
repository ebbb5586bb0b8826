"""`kvs-edge emulator`: run the local KVS endpoint until SIGINT/SIGTERM, or print a stream's archive index (--list)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from kvs_edge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from kvs_edge.emulator import (DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator, FaultSpecError,
                               parse_fault_spec, read_archive_index)
from kvs_edge.emulator.store import StoreError



def _list(args) -> int:
    try:
        entries = read_archive_index(args.data_dir, args.list)
    except StoreError as e:
        print(f"kvs-edge emulator: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{'fragment number':<48} {'producer ts (ms)':>16} {'server ts (ms)':>16} {'size':>9} {'frames':>6}  "
          f"defects  session")
    for e in entries:
        print(f"{e.fragment_number:<48} {e.producer_ts_ms:>16} {e.server_ts_ms:>16} {e.size:>9} {e.frames:>6}  "
              f"{','.join(e.defects) or '-':<7}  {e.session}")
    print(f"{len(entries)} fragments, {sum(e.frames for e in entries)} frames", file=sys.stderr)
    return EXIT_OK


def main(args) -> int:
    if args.list:
        return _list(args)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("kvs-edge emulator: give both --tls-cert and --tls-key (or neither for plain HTTP)", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.access_key_id) != bool(args.secret_access_key):
        print("kvs-edge emulator: give both --access-key-id and --secret-access-key (or neither for the demo "
              "credentials)", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    kw = {}
    if args.persist_delay is not None:
        kw["persist_delay_s"] = args.persist_delay
    if args.max_connection_seconds is not None:
        kw["max_connection_s"] = args.max_connection_seconds
    if getattr(args, "advertise_url", None):
        kw["advertise_url"] = args.advertise_url
    akid = args.access_key_id or DEFAULT_ACCESS_KEY_ID
    try:
        emu = Emulator(args.data_dir, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       access_key_id=akid, secret_access_key=args.secret_access_key or DEFAULT_SECRET_ACCESS_KEY,
                       region=args.region, **kw)
    except (OSError, ValueError) as e:
        print(f"kvs-edge emulator: cannot use the TLS certificate/key: {e}", file=sys.stderr)
        return EXIT_USAGE
    iot = None
    if args.iot_port is not None:
        if not (args.tls_cert and args.iot_client_ca):
            print("kvs-edge emulator: --iot-port needs --tls-cert/--tls-key (its server certificate) and "
                  "--iot-client-ca (the CA of the device certificates)", file=sys.stderr)
            return EXIT_USAGE
        from kvs_edge.emulator.iot import IotCredentialsServer

        # like the real provider: fresh short-lived keys at every request, accepted by the KVS endpoint
        try:
            iot = IotCredentialsServer(args.tls_cert, args.tls_key, args.iot_client_ca, access_key_id=akid,
                                       secret_access_key="unused", lifetime_s=args.iot_lifetime,
                                       role_alias=args.iot_role_alias, host=args.host, port=args.iot_port,
                                       rotate_keys=True, on_issue=emu.add_credentials)
        except OSError as e:
            print(f"kvs-edge emulator: cannot serve the IoT credentials provider on port {args.iot_port}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        later = [parse_fault_spec(spec, emu.faults) for spec in args.fault]
    except FaultSpecError as e:
        print(f"kvs-edge emulator: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        emu.start()
    except OSError as e:
        print(f"kvs-edge emulator: cannot listen on {args.host}:{args.port}: {e.strerror or e}; "
              f"pick another --port", file=sys.stderr)
        return EXIT_FAILURE
    if iot is not None:
        iot.start()
    for start in later:
        if start:
            start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"KVS emulator listening on {emu.url}  (region {args.region}, data in {args.data_dir})")
    if args.secret_access_key:
        print(f"accepted credentials: access key id {akid} with the secret given by --secret-access-key")
    else:
        print(f"accepted credentials (demo): AWS_ACCESS_KEY_ID={akid} "
              f"AWS_SECRET_ACCESS_KEY={DEFAULT_SECRET_ACCESS_KEY}")
    info = {"url": emu.url, "region": args.region, "access_key_id": akid}
    if iot is not None:
        info |= {"iot_endpoint": iot.endpoint, "iot_role_alias": iot.role_alias}
        print(f"AWS IoT credentials provider on https://{iot.endpoint} (role alias {iot.role_alias}, "
              f"credentials valid {args.iot_lifetime:g} s)")
    print(json.dumps(info), flush=True)
    print(f"web console (for this machine only: unsigned routes): {emu.url}/", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        if iot is not None:
            iot.stop()
        emu.stop()
    print("KVS emulator stopped", flush=True)
    return EXIT_OK
