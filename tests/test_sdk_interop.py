"""The official KVS C producer SDK (producer-c 1.6.0 on PIC 1.2.0, built from the source archives) streams through
`kvs-edge emulator` over TLS: code this project did not write judges the emulator's PutMedia, ACKs and faults.

Each test runs the SDK's own `kvsVideoOnlyRealtimeStreamingSample` unchanged (25 fps, a key frame every 45 frames, 9
metadata tags per fragment) for a few seconds, with `KVS_DEBUG_DUMP_DATA_FILE_DIR` saving every body it sends. Then:
the sample exits 0; its log shows no ACK discarded ("already expired upload handle") or refused ("Failed to submit
ACK"); and every frame it put on the wire is in the emulator's archive with the same bytes (both sides read back
with PyAV). Fault modes are given on the emulator's command line (`--fault`), as a user would.

Skips only when the SDK cannot be built here: the source archives are absent (put them in ../shared/third-party or
set KVS_SDK_ARCHIVES) or the compiler packages are missing and could not be installed (`make sdk-tools`).
"""

from __future__ import annotations

import pytest

from support.kvs_sdk import EmulatorProcess, Frames, SdkUnavailable, build_sdk, frames_in, run_sample

STREAM = "sdk-cam"
SECONDS = 12  # of sample time per run: 6-7 fragments of 1.8 s

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sdk():
    try:
        return build_sdk()
    except SdkUnavailable as e:
        pytest.skip(f"the KVS C producer SDK cannot be built here: {e}")


def stream_through(sdk, tmp_path, figures, name: str, faults: list[str], seconds: int = SECONDS):
    with EmulatorProcess(tmp_path, faults=faults) as emu:
        run = run_sample(sdk, emu, STREAM, seconds, tmp_path)
    wire, archived = frames_in(run.dumps), frames_in(emu.archive_files(STREAM))
    figures(f"SDK interop [{name}]: sent {len(wire.keys)} fragments / {wire.count} frames, archived "
            f"{len(archived.keys)} / {archived.count} ({len(emu.archive_index(STREAM))} index entries); "
            f"ACKs processed by the SDK {run.processed_acks} of {sum(run.received.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(run.received.items()))}); "
            f"{len(run.dumps)} PutMedia requests, {run.stale_resets} stale resets, "
            f"stream errors {run.stream_errors or 'none'}; exit {run.exit_code} after {run.seconds:.1f} s")
    return run, emu, wire, archived


def assert_no_frame_lost(wire: Frames, archived: Frames) -> None:
    missing = sorted(set(wire.by_pts) - set(archived.by_pts))
    assert not missing, f"{len(missing)} frames sent but not archived, first at {missing[:3]} ms"
    changed = [t for t, digest in wire.by_pts.items() if archived.by_pts[t] != digest]
    assert not changed, f"{len(changed)} frames archived with other bytes than sent, first at {changed[:3]} ms"
    assert wire.keys <= archived.keys


def assert_sdk_content(run) -> None:
    assert run.exit_code == 0, f"the sample exited {run.exit_code}:\n{run.log_text[-3000:]}"
    assert run.discarded_acks == 0, "the SDK discarded ACKs as for an already expired upload handle"
    assert run.failed_acks == 0, "the SDK refused ACKs (Failed to submit ACK)"
    assert run.dumps and run.received.get("PERSISTED", 0) > 0


def test_clean_run_every_ack_counted_and_every_frame_archived(sdk, tmp_path, figures):
    run, emu, wire, archived = stream_through(sdk, tmp_path, figures, "clean", [])
    assert_sdk_content(run)
    assert run.stale_resets == 0 and run.stream_errors == []
    assert len(run.dumps) == 1  # one PutMedia connection for the whole run
    assert wire.count >= SECONDS * 25 * 0.8 and len(wire.keys) >= 5
    assert_no_frame_lost(wire, archived)
    # every fragment acknowledged three times, in order; nothing else (no ERROR)
    fragments = len(wire.keys)
    assert run.received == {"BUFFERING": fragments, "RECEIVED": fragments, "PERSISTED": fragments}
    assert run.processed_acks == 3 * fragments
    assert len(emu.archive_index(STREAM)) == fragments  # nothing stored twice


FAULTS = {
    # id: (--fault specs, what must be seen in the SDK's log besides recovering)
    "error-5000": (["error=5000@2"], lambda run: "0x5200006d" in run.stream_errors),  # STATUS_ACK_ERR_ACK_INTERNAL_ERROR
    "dropped-connection": (["drop-after-bytes=500000"], lambda run: len(run.dumps) >= 2),
    "http-503-on-putmedia": (["fail=2:503@/putMedia"], lambda run: "HTTP Error 503" in run.log_text),
    "throttled-putmedia": (["fail=2:throttle@/putMedia"], lambda run: "ClientLimitExceededException" in run.log_text),
    "http-500-on-control-plane": (["fail=2:500"], lambda run: "HTTP Error 500" in run.log_text),
    "stall": (["stall=7"], lambda run: run.stale_resets >= 1 and len(run.dumps) >= 2),
    "refuse": (["refuse=3"], lambda run: "Couldn't connect to server" in run.log_text),
    "delayed-acks": (["delay-acks=2"], lambda run: run.stale_resets == 0),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_mode_the_sdk_recovers_and_no_frame_is_lost(sdk, tmp_path, figures, name):
    specs, seen = FAULTS[name]
    run, emu, wire, archived = stream_through(sdk, tmp_path, figures, name, specs)
    assert_sdk_content(run)
    assert seen(run), f"the fault {specs} left no trace in the SDK's log"
    assert_no_frame_lost(wire, archived)
