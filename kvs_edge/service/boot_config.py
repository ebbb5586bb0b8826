"""Import a configuration written on the SD card's boot partition (kvs-edge.yaml, from any laptop) into /etc.

Run once at boot by kvs-edge-boot-config.service, before the main service:
- a valid file (checked by kvs_edge.config.load_config, the checker of `kvs-edge check-config`) replaces the target;
  the previous target is kept as config.yaml.bak; the boot file is overwritten with zeros and removed, so that keys do
  not stay on a FAT partition any laptop can read;
- an invalid file is renamed kvs-edge.yaml.invalid next to kvs-edge.yaml.error saying why, and the previous
  configuration stays in place.
The file is only ever parsed as YAML data (yaml.safe_load through load_config): never executed, never sourced.
Windows line endings, a UTF-8 BOM and UTF-16 text (Notepad's "Unicode") are converted to plain UTF-8 with LF.
No message or log line carries a value from the file. The caller reports the Result (`summary()`, `messages`).
"""

from __future__ import annotations

import codecs
import datetime
import grp
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kvs_edge.config import Config, ConfigError, config_warnings, has_placeholders, load_config
from kvs_edge.replace_file import replacing

log = logging.getLogger(__name__)

BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
TARGET = Path("/etc/kvs-edge/config.yaml")
BOOT_FILE_NAME = "kvs-edge.yaml"
SERVICE_GROUP = "kvs-edge"
MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Result:
    """outcome: "none" (no file), "applied" or "invalid"."""

    outcome: str
    target: Path
    source: Path | None = None
    backup: Path | None = None
    invalid_file: Path | None = None
    error_file: Path | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line for the journal."""
        if self.outcome == "none":
            return "no kvs-edge.yaml on the boot partition: nothing to import"
        if self.outcome == "applied":
            kept = f" (previous kept as {self.backup})" if self.backup else ""
            return f"applied {self.source} to {self.target}{kept}; removed it from the boot partition"
        return (f"{self.source} is invalid: renamed to {self.invalid_file}, reasons in {self.error_file}; "
                f"{self.target} unchanged")


def find_boot_file(boot_dirs: list[Path] | tuple[Path, ...] = BOOT_DIRS) -> Path | None:
    for d in boot_dirs:
        candidate = Path(d) / BOOT_FILE_NAME
        if candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None


def normalise(raw: bytes) -> bytes:
    """Text from any editor -> UTF-8 without BOM, LF line ends. Undecodable bytes are returned as they are, for the
    checker to explain."""
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = raw.decode("utf-16")
        else:
            text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw
    return text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")


def import_boot_config(boot_dirs: list[Path] | tuple[Path, ...] = BOOT_DIRS, target: Path = TARGET, *,
                       group: str = SERVICE_GROUP, now: datetime.datetime | None = None) -> Result:
    """Look for kvs-edge.yaml in boot_dirs (first found wins) and apply it to target. OSError on I/O failures."""
    target = Path(target)
    source = find_boot_file(boot_dirs)
    if source is None:
        return Result("none", target)
    for other in boot_dirs:
        extra = Path(other) / BOOT_FILE_NAME
        if extra != source and extra.is_file():
            log.warning("%s is ignored this time: %s was imported first", extra, source)

    size = source.stat().st_size
    data = normalise(source.read_bytes()) if size <= MAX_BYTES else None

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".import", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data or b"")
            f.flush()
            os.fsync(f.fileno())
        if data is None:
            cfg, messages = None, [f"{source}: the file is {size} bytes; a configuration is a few kB at most"]
        else:
            # Validated where it will live, so that relative paths in it resolve as they will when it is used.
            cfg, messages = _check(tmp)
            messages = [m.replace(str(tmp), str(source)) for m in messages]
        if messages:
            return _reject(source, target, messages, now)
        backup = _apply(tmp, target, group)
    finally:
        tmp.unlink(missing_ok=True)  # already gone once applied
    warnings = config_warnings(cfg, target)  # after the move: one looks at the installed file's mode

    _wipe_and_remove(source)
    (source.parent / (BOOT_FILE_NAME + ".error")).unlink(missing_ok=True)  # about an earlier file
    return Result("applied", target, source=source, backup=backup, warnings=tuple(warnings))


def _check(path: Path) -> tuple[Config | None, list[str]]:
    """(the settings, the checker's messages): no messages when the file can be applied."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return None, list(exc.messages)
    if has_placeholders(cfg):
        # Valid YAML, but the example's CHANGE-ME placeholders: applying it would replace a working configuration
        # with one that cannot stream.
        return cfg, [w for w in config_warnings(cfg, path) if "placeholder" in w]
    return cfg, []


def _apply(new: Path, target: Path, group: str) -> Path | None:
    """Install `new` as `target` (mode 0640 root:group, or 0600 without that group), keeping the old one as .bak."""
    mode = 0o600
    try:
        gid = grp.getgrnam(group).gr_gid
        os.chown(new, 0 if os.geteuid() == 0 else -1, gid)
        mode = 0o640
    except (KeyError, PermissionError):
        pass
    os.chmod(new, mode)

    backup = None
    if target.exists():
        backup = target.with_name(target.name + ".bak")
        _copy_keep_owner(target, backup)
    os.replace(new, target)
    _fsync_dir(target.parent)
    return backup


def _copy_keep_owner(src: Path, dst: Path) -> None:
    st = src.stat()
    write_atomically(dst, src.read_bytes(), st.st_mode & 0o777, st.st_uid, st.st_gid)


def write_atomically(dst: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """dst holds `data` with `mode` (and owner uid:gid when allowed) from the first byte: written to a temporary file
    in its folder, synced, renamed over dst; a power cut leaves the old or the new file."""
    with replacing(dst, mode=mode) as tmp_name, open(tmp_name, "wb") as f:
        if uid >= 0:
            try:
                os.fchown(f.fileno(), uid, gid)
            except PermissionError:
                pass
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _reject(source: Path, target: Path, messages: list[str], now: datetime.datetime | None) -> Result:
    invalid = source.with_name(BOOT_FILE_NAME + ".invalid")
    error = source.with_name(BOOT_FILE_NAME + ".error")
    os.replace(source, invalid)
    when = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    lines = [
        f"kvs-edge could not use {BOOT_FILE_NAME} ({when}).",
        f"It was renamed {invalid.name}; the device keeps its previous configuration ({target}).",
        "",
        "Problems:",
        *(f"  - {m}" for m in messages),
        "",
        f"Fix the file, rename it back to {BOOT_FILE_NAME} and restart the device.",
        f"(Check it first on any computer with kvs-edge: kvs-edge check-config {BOOT_FILE_NAME})",
    ]
    # CRLF: this file is read on the laptop the SD card was written from.
    error.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    _fsync_dir(source.parent)
    return Result("invalid", target, source=source, invalid_file=invalid, error_file=error, messages=tuple(messages))


def _wipe_and_remove(path: Path) -> None:
    """Overwrite the credentials with zeros before unlinking (best effort on flash), then remove the file."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        log.warning("could not overwrite %s before removing it: %s", path, exc.strerror or exc)
    path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Public names for the IoT credentials import (iot_provision.py), which wipes and syncs the same way.
wipe_and_remove = _wipe_and_remove
fsync_dir = _fsync_dir
