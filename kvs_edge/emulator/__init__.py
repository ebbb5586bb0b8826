"""A local Kinesis Video Streams endpoint: control plane + PutMedia with SigV4 checks, MKV validation, ACKs, an
archive of what was persisted, and faults on demand. See server.Emulator.

    from kvs_edge.emulator import Emulator
    with Emulator("/tmp/kvs-data") as emu:
        emu.create_stream("cam")
        ... point a producer at emu.url with DEFAULT_ACCESS_KEY_ID / DEFAULT_SECRET_ACCESS_KEY ...
        emu.archive("cam"), emu.archive_files("cam")
"""

from kvs_edge.emulator.faults import Faults, FaultSpecError, parse_fault_spec
from kvs_edge.emulator.ingest import ERROR_CODES, Limits
from kvs_edge.emulator.server import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY, Emulator
from kvs_edge.emulator.store import ArchiveEntry, StreamStats, read_archive_index

__all__ = ["Emulator", "DEFAULT_ACCESS_KEY_ID", "DEFAULT_SECRET_ACCESS_KEY", "ArchiveEntry", "StreamStats", "Faults",
           "FaultSpecError", "parse_fault_spec", "ERROR_CODES", "Limits", "read_archive_index"]
