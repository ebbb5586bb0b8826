"""IoT device credentials dropped on the boot partition, moved into /etc/kvs-edge/iot/ (issue 16: one image plus
per-device files is a fleet).

On the FAT partition (any laptop can write it), in a folder `kvs-edge-iot/`, the three files the AWS IoT console
hands out for a thing, under their download names or short ones:

    certificate   *certificate.pem.crt  or  certificate.pem     -> <target>/certificate.pem.crt
    private key   *private.pem.key      or  private.key          -> <target>/private.pem.key
    CA            AmazonRootCA*.pem     or  ca.pem   (optional)  -> <target>/AmazonRootCA.pem

Installed with owner-only permissions (folder 0700, files 0600, owned by the service user when it exists), each
written to a temporary file and renamed, so a power cut leaves the old or the new file; then the originals are
overwritten with zeros and removed from the FAT side (`boot_config.wipe_and_remove`), and the folder with them.
Nothing is installed and nothing wiped when a file is missing or is not PEM of its kind; the message names the file,
never its content. No log line or message ever carries a byte of a key or certificate.
The configuration's aws.iot.cert_file / key_file / ca_file point at the installed paths (`INSTALLED`).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from kvs_edge.service.boot_config import fsync_dir, wipe_and_remove, write_atomically

FOLDER = "kvs-edge-iot"
TARGET_DIR = Path("/etc/kvs-edge/iot")
SERVICE_USER = "kvs-edge"
MAX_BYTES = 64 * 1024  # a PEM certificate or key is a few kB

# role -> (accepted names on the boot partition: exact, or suffix match with "*"; installed name; PEM marker)
ROLES = {
    "certificate": (("*certificate.pem.crt", "certificate.pem"), "certificate.pem.crt", b"-----BEGIN CERTIFICATE-----"),
    "private key": (("*private.pem.key", "private.key"), "private.pem.key", b"PRIVATE KEY-----"),
    "CA": (("AmazonRootCA*.pem", "ca.pem"), "AmazonRootCA.pem", b"-----BEGIN CERTIFICATE-----"),
}
REQUIRED = ("certificate", "private key")
INSTALLED = {role: TARGET_DIR / spec[1] for role, spec in ROLES.items()}


@dataclass(frozen=True)
class IotResult:
    """outcome: "none" (no folder), "installed" or "invalid"."""

    outcome: str
    installed: dict[str, Path] = field(default_factory=dict)
    messages: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.outcome == "none":
            return "no kvs-edge-iot/ folder on the boot partition: no IoT credentials to import"
        if self.outcome == "installed":
            return ("installed IoT " + ", ".join(f"{r} as {p}" for r, p in self.installed.items())
                    + " (owner-only); removed them from the boot partition")
        return "IoT credentials on the boot partition not installed: " + "; ".join(self.messages)


def _matches(name: str, pattern: str) -> bool:
    if "*" in pattern:
        head, tail = pattern.split("*", 1)
        return name.startswith(head) and name.endswith(tail) and len(name) >= len(head) + len(tail)
    return name == pattern


def find_folder(boot_dirs) -> Path | None:
    for d in boot_dirs:
        folder = Path(d) / FOLDER
        if folder.is_dir() and not folder.is_symlink():
            return folder
    return None


def classify(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """(role -> file, problems): which file is which, by name; every problem one line naming a file."""
    found: dict[str, Path] = {}
    problems: list[str] = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.is_symlink():
            continue
        roles = [r for r, (names, _, _) in ROLES.items() if any(_matches(entry.name, n) for n in names)]
        if not roles:
            problems.append(f"{entry}: not a file kvs-edge expects here (certificate.pem.crt, private.pem.key, "
                            "AmazonRootCA1.pem); remove it")
            continue
        role = roles[0]
        if role in found:
            problems.append(f"{entry}: a second {role} (besides {found[role].name}); keep one")
            continue
        found[role] = entry
    for role in REQUIRED:
        if role not in found:
            problems.append(f"{folder}: no {role} file ({ROLES[role][0][0]} as the IoT console names it)")
    for role, path in found.items():
        size = path.stat().st_size
        if size > MAX_BYTES:
            problems.append(f"{path}: {size} bytes is not a PEM {role}")
            continue
        if ROLES[role][2] not in path.read_bytes():
            problems.append(f"{path}: not a PEM {role} (no {ROLES[role][2].decode().strip('-')} block)")
    return found, problems


def import_iot_credentials(boot_dirs, target_dir: Path = TARGET_DIR, *, owner: str = SERVICE_USER) -> IotResult:
    """Move the IoT credentials from the boot partition into target_dir (see the module text). OSError on I/O."""
    folder = find_folder(boot_dirs)
    if folder is None:
        return IotResult("none")
    found, problems = classify(folder)
    if problems:
        return IotResult("invalid", messages=tuple(problems))
    uid = gid = -1
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(owner)
            uid, gid = pw.pw_uid, pw.pw_gid
        except KeyError:
            uid, gid = 0, 0  # no service user (yet): root-only
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(target_dir, 0o700)
    if uid >= 0:
        os.chown(target_dir, uid, gid)
    installed = {}
    for role, src in found.items():
        dest = target_dir / ROLES[role][1]
        write_atomically(dest, src.read_bytes(), 0o600, uid, gid)
        installed[role] = dest
    fsync_dir(target_dir)
    for src in found.values():
        wipe_and_remove(src)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else is in it: left for the owner
    fsync_dir(folder.parent)
    return IotResult("installed", installed=installed)
