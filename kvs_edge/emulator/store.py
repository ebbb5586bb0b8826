"""The emulator's data directory: stream definitions, per-stream cursors, and the archive of persisted fragments.

Layout under DATA_DIR:
    streams/<name>/stream.json      StreamInfo as DescribeStream returns it, plus the cursor (last frame, fragment no.)
    streams/<name>/index.jsonl      one JSON line per persisted fragment (ArchiveEntry)
    streams/<name>/<session>.mkv    one playable MKV per PutMedia session: its header + its persisted clusters

Fragments are stored as they come, also when their timestamps overlap what the stream already holds (a new session,
an offline upload, a resend after a lost PERSISTED ACK): the service resolves duplicates at read time
(kvs_edge/emulator/archive_reader.py). Each index line records where its cluster lies in the session file
(`offset`, `length`) and how long that file's header is (`header_size`), so a fragment can be served alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvs_edge.emulator.ingest import FragmentRecord, StreamCursor

ACCOUNT_ID = "123456789012"
_NAME_RE = re.compile(r"^[a-zA-Z0-9_.\-]{1,256}$")


class StoreError(Exception):
    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class ArchiveEntry:
    fragment_number: str
    producer_ts_ms: int
    server_ts_ms: int
    size: int
    frames: int
    defects: list[str]
    session: str
    first_frame_ms: int
    last_frame_ms: int
    offset: int | None = None  # byte range of the fragment's Cluster in streams/<name>/<session>.mkv
    length: int | None = None
    header_size: int | None = None  # the session file's EBML header + Segment head + Info + Tracks
    tags: list[str] = field(default_factory=list)  # "NAME=VALUE" of the fragment's metadata tags


@dataclass
class StreamStats:
    connections_total: int = 0
    max_concurrent: int = 0
    active: int = 0
    error_acks: list[tuple[int, int]] = field(default_factory=list)  # (ErrorId, FragmentTimecode)
    http_errors: list[tuple[int, str]] = field(default_factory=list)  # (status, x-amzn-ErrorType) of PutMedia
    fragments_received: int = 0
    fragments_persisted: int = 0
    bytes_received: int = 0


class _Stream:
    def __init__(self, info: dict, cursor: StreamCursor, path: Path):
        self.info = info
        self.cursor = cursor
        self.path = path
        self.lock = threading.Lock()
        self.sessions: dict[str, Path] = {}
        self.stats = StreamStats()
        self.body_open = 0  # connections whose request body is still open (the 1-connection limit)
        self.tags: dict[str, str] = {}
        self.persisted = threading.Condition(self.lock)  # notified for every fragment archived (live readers)
        self.count: int | None = None  # fragments in the index (None: not counted yet)


def validate_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise StoreError(400, "InvalidArgumentException",
                         "StreamName must be 1-256 characters of a-z, A-Z, 0-9, '_', '.', '-'")
    return name


MAX_TAGS = 50


def validate_tags(tags) -> dict[str, str]:
    """The service model's ResourceTags: 1..50 entries, keys 1..128 characters, values 0..256 (TagStream,
    CreateStream)."""
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise StoreError(400, "InvalidArgumentException", f"Tags must be a map of at most {MAX_TAGS} entries.")
    for k, v in tags.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 128 or not isinstance(v, str) or len(v) > 256:
            raise StoreError(400, "InvalidArgumentException",
                             "A tag key is 1 to 128 characters and a tag value 0 to 256.")
    return dict(tags)


class Store:
    def __init__(self, data_dir: str | os.PathLike, region: str):
        self.root = Path(data_dir)
        self.region = region
        self._lock = threading.RLock()
        self._streams: dict[str, _Stream] = {}
        (self.root / "streams").mkdir(parents=True, exist_ok=True)
        for d in sorted((self.root / "streams").iterdir()):
            meta = d / "stream.json"
            if meta.is_file():
                doc = json.loads(meta.read_text())
                s = _Stream(doc["StreamInfo"], StreamCursor.from_dict(doc.get("Cursor", {})), d)
                s.tags = dict(doc.get("Tags", {}))
                s.sessions = {p.stem: p for p in sorted(d.glob("*.mkv"))}
                self._streams[s.info["StreamName"]] = s

    # ---------------------------------------------------------------- streams
    def create(self, name: str, *, retention_hours: int = 24, media_type: str | None = None,
               device_name: str | None = None, kms_key_id: str | None = None, tags: dict | None = None) -> dict:
        validate_name(name)
        tags = validate_tags(tags or {})
        if not isinstance(retention_hours, int) or isinstance(retention_hours, bool) or retention_hours < 0:
            raise StoreError(400, "InvalidArgumentException", "DataRetentionInHours must be an integer >= 0")
        with self._lock:
            if name in self._streams:
                raise StoreError(400, "ResourceInUseException", f"The stream {name} already exists.")
            created = time.time()
            info = {
                "DeviceName": device_name,
                "StreamName": name,
                "StreamARN": f"arn:aws:kinesisvideo:{self.region}:{ACCOUNT_ID}:stream/{name}/{int(created * 1000)}",
                "MediaType": media_type,
                "KmsKeyId": kms_key_id or f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:alias/aws/kinesisvideo",
                "Version": secrets.token_urlsafe(15)[:20],
                "Status": "ACTIVE",
                "CreationTime": created,
                "DataRetentionInHours": retention_hours,
            }
            info = {k: v for k, v in info.items() if v is not None}
            path = self.root / "streams" / name
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            s = _Stream(info, StreamCursor(), path)
            s.tags = tags
            self._streams[name] = s
            self._save(s)
            return dict(info)

    def get(self, name: str | None = None, arn: str | None = None) -> _Stream:
        with self._lock:
            if name is not None:
                s = self._streams.get(name)
            elif arn is not None:
                s = next((x for x in self._streams.values() if x.info["StreamARN"] == arn), None)
            else:
                raise StoreError(400, "InvalidArgumentException", "StreamName or StreamARN is required")
            if s is None:
                what = f"stream {name}" if name is not None else f"stream ARN {arn}"
                raise StoreError(404, "ResourceNotFoundException", f"The {what} does not exist.")
            return s

    def tag(self, name: str | None, arn: str | None, tags: dict) -> None:
        """TagStream: add or overwrite tags; "You can add up to 50 tags to a stream" (at most 50 in all)."""
        s = self.get(name, arn)
        tags = validate_tags(tags)
        with s.lock:
            if len(s.tags | tags) > MAX_TAGS:
                raise StoreError(400, "TagsPerResourceExceededLimitException",
                                 f"A stream can have at most {MAX_TAGS} tags.")
            s.tags.update(tags)
        self.save_cursor(s)

    def tags(self, name: str | None = None, arn: str | None = None) -> dict:
        return dict(self.get(name, arn).tags)

    def describe(self, name: str | None = None, arn: str | None = None) -> dict:
        return dict(self.get(name, arn).info)

    def list(self) -> list[dict]:
        with self._lock:
            return [dict(self._streams[k].info) for k in sorted(self._streams)]

    def delete(self, arn: str, version: str | None = None) -> None:
        with self._lock:
            s = self.get(arn=arn)
            if version is not None and version != s.info["Version"]:
                raise StoreError(400, "VersionMismatchException", "The stream version does not match CurrentVersion.")
            del self._streams[s.info["StreamName"]]
            shutil.rmtree(s.path, ignore_errors=True)

    def _save(self, s: _Stream) -> None:
        tmp = s.path / "stream.json.tmp"
        tmp.write_text(json.dumps({"StreamInfo": s.info, "Cursor": s.cursor.to_dict(), "Tags": s.tags}, indent=1))
        os.replace(tmp, s.path / "stream.json")

    def save_cursor(self, s: _Stream) -> None:
        with s.lock:
            if s.path.exists():
                self._save(s)

    # ---------------------------------------------------------------- archive
    def store_fragment(self, s: _Stream, rec: FragmentRecord) -> ArchiveEntry:
        with s.lock:
            if not s.path.exists():  # the stream was deleted meanwhile
                raise StoreError(404, "ResourceNotFoundException", "stream deleted")
            path = s.sessions.get(rec.session_id)
            with open(s.path / f"{rec.session_id}.mkv", "ab") as f:
                if path is None:
                    f.write(rec.session_header)
                    s.sessions[rec.session_id] = s.path / f"{rec.session_id}.mkv"
                offset = f.tell()
                f.write(rec.data)
            entry = ArchiveEntry(rec.number, rec.producer_ts_ms, rec.server_ts_ms, rec.size, rec.frames,
                                 list(rec.defects), rec.session_id, rec.first_frame_ms, rec.last_frame_ms,
                                 offset, len(rec.data), len(rec.session_header), list(rec.tags))
            with open(s.path / "index.jsonl", "a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
            s.stats.fragments_persisted += 1
            if s.count is not None:
                s.count += 1
            s.persisted.notify_all()
            self._save(s)
            return entry

    def archive(self, name: str) -> list[ArchiveEntry]:
        s = self.get(name)
        with s.lock:
            idx = s.path / "index.jsonl"
            if not idx.exists():
                return []
            return [ArchiveEntry(**json.loads(line)) for line in idx.read_text().splitlines() if line.strip()]

    def wait_for_fragments(self, name: str, known: int, timeout_s: float) -> int:
        """Block until the stream holds more than `known` fragments or `timeout_s` passed; the current count."""
        s = self.get(name)
        with s.lock:
            if s.count is None:
                idx = s.path / "index.jsonl"
                s.count = sum(1 for line in idx.read_text().splitlines() if line.strip()) if idx.exists() else 0
            s.persisted.wait_for(lambda: s.count > known or not s.path.exists(), timeout_s)
            return s.count

    def read_bytes(self, name: str, session: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of a session file (a fragment's cluster, or the session header at 0)."""
        s = self.get(name)
        with s.lock:
            path = s.sessions.get(session)
        if path is None:
            raise StoreError(404, "ResourceNotFoundException", f"session {session} of stream {name} is not stored")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise StoreError(500, "InternalFailure",
                             f"session file {path.name} is shorter than its index says")
        return data

    def archive_files(self, name: str) -> list[Path]:
        s = self.get(name)
        with s.lock:
            return [s.sessions[k] for k in sorted(s.sessions)]


def read_archive_index(data_dir: str | os.PathLike, name: str) -> list[ArchiveEntry]:
    """The archive index of a stream straight from a data directory (no running emulator needed)."""
    validate_name(name)
    idx = Path(data_dir) / "streams" / name / "index.jsonl"
    if not (Path(data_dir) / "streams" / name / "stream.json").exists():
        raise StoreError(404, "ResourceNotFoundException", f"The stream {name} does not exist in {data_dir}.")
    if not idx.exists():
        return []
    return [ArchiveEntry(**json.loads(line)) for line in idx.read_text().splitlines() if line.strip()]
