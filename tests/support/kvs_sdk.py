"""The official KVS C producer SDK as a client of `kvs-edge emulator`: build it (cached), run its
`kvsVideoOnlyRealtimeStreamingSample` against the emulator over TLS, and read back what each side saw.

    sdk = build_sdk()                                   # tools/kvs-sdk/build.sh; raises SdkUnavailable with a reason
    with EmulatorProcess(tmp, faults=["stall=6"]) as emu:   # `python -m kvs_edge emulator --port 0 --tls-...`
        run = run_sample(sdk, emu, "cam", seconds=12, workdir=tmp)
    run.exit_code, run.log_text, run.acks (the SDK's own counters), run.dumps (the bodies it sent)
    wire = frames_in(run.dumps); archived = frames_in(emu.archive_files("cam"))

Frames are read back with PyAV (FFmpeg's Matroska demuxer), a parser this project did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import trustme

from kvs_edge.emulator import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "kvs-sdk" / "build.sh"
SAMPLE = "kvsVideoOnlyRealtimeStreamingSample"
ARCHIVES_HINT = ("put amazon-kinesis-video-streams-pic-v1.2.0.tar.gz and amazon-kinesis-video-streams-producer-c-"
                 "v1.6.0.tar.gz in ../shared/third-party next to the clone, or set KVS_SDK_ARCHIVES to their folder")


class SdkUnavailable(Exception):
    """The SDK cannot be built here (archives absent, build tools missing): the reason says what to do."""


@dataclass(frozen=True)
class Sdk:
    root: Path

    @property
    def sample(self) -> Path:
        return self.root / "bin" / SAMPLE


def build_sdk(timeout_s: float = 1800) -> Sdk:
    """Build (or take from the cache) the SDK. SdkUnavailable when the archives or the compilers are absent; any
    other build failure is an error (AssertionError with the build's last lines)."""
    p = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout_s)
    if p.returncode == 3:
        raise SdkUnavailable(f"{p.stderr.strip()} ({ARCHIVES_HINT})")
    if p.returncode == 4:
        raise SdkUnavailable(p.stderr.strip())
    assert p.returncode == 0, f"building the KVS SDK failed:\n{p.stderr[-4000:]}"
    root = Path(p.stdout.strip().splitlines()[-1])
    assert (root / "bin" / SAMPLE).is_file(), f"no {SAMPLE} in {root}"
    return Sdk(root)


class EmulatorProcess:
    """`kvs-edge emulator` as a user runs it: its own process, TLS with a throwaway CA, faults from --fault."""

    def __init__(self, workdir: Path, faults: list[str] = (), extra_args: list[str] = ()):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "kvs-data"
        self.faults = list(faults)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.stdout_lines: list[str] = []
        self.log_path = self.workdir / "emulator.log"

    def __enter__(self) -> "EmulatorProcess":
        tls = self.workdir / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file, cert_file, key_file = tls / "ca.pem", tls / "server.pem", tls / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(str(cert_file), append=i > 0)
        cert.private_key_pem.write_to_path(str(key_file))
        cmd = [sys.executable, "-m", "kvs_edge", "emulator", "--port", "0", "--data-dir", str(self.data_dir),
               "--tls-cert", str(cert_file), "--tls-key", str(key_file)] + self.extra_args
        for f in self.faults:
            cmd += ["--fault", f]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout_lines.append(line.rstrip("\n"))
            if line.startswith("{"):
                self.url = json.loads(line)["url"]
                break
        if not self.url:
            self.__exit__()
            raise AssertionError(f"kvs-edge emulator did not start: {self.stdout_lines} "
                                 f"{self.log_path.read_text()[-2000:]}")
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rest, _ = self.proc.communicate(timeout=30)
                self.stdout_lines += rest.splitlines()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    @property
    def log_text(self) -> str:
        return self.log_path.read_text()

    def archive_index(self, stream: str) -> list[dict]:
        idx = self.data_dir / "streams" / stream / "index.jsonl"
        return [json.loads(x) for x in idx.read_text().splitlines() if x.strip()] if idx.exists() else []

    def archive_files(self, stream: str) -> list[Path]:
        return sorted((self.data_dir / "streams" / stream).glob("*.mkv"))


@dataclass
class SampleRun:
    exit_code: int
    seconds: float  # wall time of the whole run
    log_text: str
    dumps: list[Path]
    acks: dict[str, int] = field(default_factory=dict)  # the SDK's own ACK counters, last logged values
    received: dict[str, int] = field(default_factory=dict)  # ACKs curl handed to the SDK's parser, by EventType

    def count(self, needle: str) -> int:
        return self.log_text.count(needle)

    @property
    def discarded_acks(self) -> int:
        return self.count("already expired upload handle")

    @property
    def failed_acks(self) -> int:
        """ACKs the SDK's parser or state machine refused ("Failed to submit ACK: {"EventType"..."). The SDK also
        feeds HTTP error bodies (`{"__type": ...}`) to its ACK parser and logs the same line: those are not ACKs."""
        return self.count('Failed to submit ACK: {"EventType"')

    @property
    def stale_resets(self) -> int:
        """Connections the SDK reset because no BUFFERING ACK came for 5 s (its stale-connection state machine)."""
        return self.count("Connection Stale State Machine move to RESET_CONNECTION_STATE")

    @property
    def processed_acks(self) -> int:
        """ACKs the SDK received and acted on: every one it was handed minus those it discarded or refused."""
        return sum(self.received.values()) - self.discarded_acks - self.failed_acks

    @property
    def stream_errors(self) -> list[str]:
        return re.findall(r"Reporting stream error\. Errored timecode: \d+ Status: (0x[0-9a-f]+)", self.log_text)


_METRIC = re.compile(r"Number of (Buffered|Received|Persisted|Error) ACKs: (\d+)")
_RECEIVED = re.compile(r"Curl post body write function for stream with handle: \S+ and upload handle: \d+ "
                       r"returned: (\{.*?\})\s*$", re.M)
_SESSIONS = re.compile(r"Total number of streaming sessions: (\d+)")


def run_sample(sdk: Sdk, emu: EmulatorProcess, stream: str, seconds: int, workdir: Path,
               timeout_s: float | None = None) -> SampleRun:
    """Run the SDK's sample for `seconds` of streaming against `emu`; every body it sends is dumped to a file."""
    dump_dir = Path(workdir) / "sdk-dumps"
    if dump_dir.exists():
        shutil.rmtree(dump_dir)
    dump_dir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": DEFAULT_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": "us-east-1", "CONTROL_PLANE_URI": f"https://localhost:{emu.port}",
        "AWS_KVS_CACERT_PATH": str(emu.ca_file), "KVS_DEBUG_DUMP_DATA_FILE_DIR": str(dump_dir),
        "AWS_KVS_LOG_LEVEL": "2",  # DEBUG: the ACKs it receives and its stream metrics at the end
        "LD_LIBRARY_PATH": str(sdk.root / "lib") + os.pathsep + env.get("LD_LIBRARY_PATH", ""),
    })
    log_path = Path(workdir) / "sdk.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        p = subprocess.run([str(sdk.sample), stream, "h264", str(seconds), str(sdk.root / "samples")], env=env,
                           stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                           timeout=timeout_s or seconds + 60)
    text = log_path.read_text(errors="replace")
    run = SampleRun(p.returncode, time.monotonic() - started, text, sorted(dump_dir.glob("*.mkv")))
    for kind, n in _METRIC.findall(text):  # logged periodically: the last value wins
        run.acks[kind.lower()] = int(n)
    for body in _RECEIVED.findall(text):
        kind = json.loads(body).get("EventType")
        if kind:  # (not an HTTP error body)
            run.received[kind] = run.received.get(kind, 0) + 1
    for n in _SESSIONS.findall(text):
        run.acks["sessions"] = int(n)
    return run


@dataclass(frozen=True)
class Frames:
    """Frames read back by PyAV: absolute pts (ms) -> sha256 of the AVCC payload, key frames, fragment timecodes."""

    by_pts: dict[int, str]
    keys: set[int]
    clusters: set[int]  # pts of the key frames that start fragments (= cluster timecodes for SDK streams)

    @property
    def count(self) -> int:
        return len(self.by_pts)


def frames_in(files: list[Path]) -> Frames:
    """Every complete frame of the MKV files (a body cut off mid-frame ends there; a frame seen twice counts once).
    Raises AssertionError if one pts carries two different payloads."""
    by_pts: dict[int, str] = {}
    keys: set[int] = set()
    for f in files:
        if f.stat().st_size == 0:
            continue
        try:
            with av.open(str(f), format="matroska") as c:
                st = c.streams.video[0]
                tb = st.time_base
                for pkt in c.demux(st):
                    if pkt.size == 0 or pkt.pts is None or pkt.is_corrupt:
                        continue
                    pts = int(round(pkt.pts * tb * 1000))
                    digest = hashlib.sha256(bytes(pkt)).hexdigest()
                    assert by_pts.setdefault(pts, digest) == digest, f"{f.name}: two payloads for pts {pts} ms"
                    if pkt.is_keyframe:
                        keys.add(pts)
        except av.error.InvalidDataError:
            continue  # a body cut off before its first cluster
    return Frames(by_pts, keys, set(keys))
