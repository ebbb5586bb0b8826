"""Who this device is, and the placeholders a fleet's one configuration uses for it (issue 16).

A fleet flashes one image (one kvs-edge.yaml) onto many devices; stream names and the IoT thing name may therefore
hold placeholders that each device fills in itself:

    {hostname}    the host name (`socket.gethostname()`, or <root>/etc/hostname)
    {serial}      the Pi's serial number: <root>/proc/device-tree/serial-number (NUL-terminated), else the
                  "Serial" line of <root>/proc/cpuinfo; leading zeros kept, as the Pi prints it
    {machine_id}  <root>/etc/machine-id (systemd's per-installation id)
    {camera}      the camera entry's name (or its index when it has none)
    {thing_name}  aws.iot.thing_name, itself resolved first (it may not use {thing_name} or {camera})

Pure: `fill(template, values)` substitutes; `read_identity(root)` is the only function that reads files, from a root
folder a test points at a fake device tree / cpuinfo. Nothing here touches the network.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDERS = ("hostname", "serial", "machine_id", "camera", "thing_name")
_FIELD = re.compile(r"\{([^{}]*)\}")


class IdentityError(ValueError):
    """A placeholder that cannot be filled: unknown, or a value this device does not have. One line for the user."""


@dataclass(frozen=True)
class DeviceIdentity:
    hostname: str | None
    serial: str | None
    machine_id: str | None

    def values(self) -> dict[str, str | None]:
        return {"hostname": self.hostname, "serial": self.serial, "machine_id": self.machine_id}


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("ascii", "replace")
    except OSError:
        return None


def read_serial(root: str | os.PathLike = "/") -> str | None:
    """The serial number of a Raspberry Pi: the device tree's serial-number, else /proc/cpuinfo's Serial line."""
    root = Path(root)
    tree = _read(root / "proc/device-tree/serial-number")
    if tree is not None:
        s = tree.strip("\0 \n\t")
        if s:
            return s
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "serial" and value.strip():
            return value.strip()
    return None


def read_identity(root: str | os.PathLike = "/", *, hostname: str | None = None) -> DeviceIdentity:
    """This device's identity, read under `root` ("/" on the device; a fake tree in tests). hostname: given, else
    <root>/etc/hostname when root is not "/", else socket.gethostname()."""
    root = Path(root)
    if hostname is None:
        if root == Path("/"):
            hostname = socket.gethostname() or None
        else:
            hostname = (_read(root / "etc/hostname") or "").strip() or None
    machine_id = (_read(root / "etc/machine-id") or "").strip() or None
    return DeviceIdentity(hostname=hostname, serial=read_serial(root), machine_id=machine_id)


def placeholders_in(template: str) -> list[str]:
    """The placeholder names a template uses, in order ("{serial}-cam" -> ["serial"])."""
    return _FIELD.findall(template)


def check_template(template: str, *, allowed: tuple[str, ...] = PLACEHOLDERS) -> None:
    """IdentityError when a template uses a placeholder outside `allowed` (before anything is filled)."""
    for name in placeholders_in(template):
        if name not in allowed:
            raise IdentityError(f"unknown placeholder {{{name}}} (known: "
                                f"{', '.join('{' + p + '}' for p in allowed)})")


def fill(template: str, values: dict[str, str | None]) -> str:
    """The template with every {name} replaced by values[name]. IdentityError for an unknown name, or one whose value
    this device does not have (no serial number on a PC, ...)."""
    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            raise IdentityError(f"unknown placeholder {{{name}}}")
        value = values[name]
        if value is None or value == "":
            raise IdentityError(f"{{{name}}} has no value on this device ({_WHERE.get(name, 'not given')})")
        return value

    return _FIELD.sub(one, template)


_WHERE = {
    "serial": "no /proc/device-tree/serial-number and no Serial line in /proc/cpuinfo",
    "machine_id": "no /etc/machine-id",
    "hostname": "no host name",
    "thing_name": "aws.iot.thing_name is not set",
}


def sanitize_for_stream(value: str) -> str:
    """A value made fit for a KVS stream name: characters outside [a-zA-Z0-9_.-] become '-' (a host name may hold
    none of those, but a serial or a thing name could)."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", value)


def resolve_config(cfg, device: DeviceIdentity):
    """The Config with every placeholder filled for this device: aws.iot.thing_name first, then each camera's
    stream name and stream tag values ({camera} = the entry's name or index). Pure. IdentityError (one line, naming
    the key) when a value is missing or a resolved stream name is not a valid one, or two cameras end up with one
    stream."""
    import dataclasses

    from kvs_edge.config import _STREAM_NAME  # the one rule for a stream name

    base = device.values()
    aws = cfg.aws
    thing = None
    if aws.iot is not None:
        try:
            thing = fill(aws.iot.thing_name, base)
        except IdentityError as e:
            raise IdentityError(f"aws.iot.thing_name: {e}") from None
        aws = dataclasses.replace(aws, iot=dataclasses.replace(aws.iot, thing_name=thing))
    cameras = []
    seen: dict[str, str] = {}
    single = len(cfg.cameras) == 1 and cfg.cameras[0].name is None
    for cam in cfg.cameras:
        where = "stream" if single else f"cameras[{cam.index}].stream"
        values = base | {"camera": cam.label, "thing_name": thing}
        try:
            name = fill(cam.stream.name, {k: None if v is None else sanitize_for_stream(v) for k, v in values.items()})
        except IdentityError as e:
            raise IdentityError(f"{where}.name: {e}") from None
        if not _STREAM_NAME.match(name):
            raise IdentityError(f"{where}.name: {name!r} is not a valid stream name (1 to 256 letters, digits, '.', "
                                "'_' and '-')")
        if name in seen:
            raise IdentityError(f"{where}.name: {name!r} is also the stream of {seen[name]}; give each camera its own")
        seen[name] = f"cameras[{cam.index}]"
        tags = []
        for key, value in cam.stream.tags:
            try:
                tags.append((key, fill(value, values)))
            except IdentityError as e:
                raise IdentityError(f"{where}.tags.{key}: {e}") from None
        stream = dataclasses.replace(cam.stream, name=name, tags=tuple(tags))
        cameras.append(dataclasses.replace(cam, stream=stream))
    return dataclasses.replace(cfg, aws=aws, stream=cameras[0].stream, cameras=tuple(cameras))


def resolved_names(cfg) -> list[str]:
    """One line per camera, for check-config and the journal: "camera front: stream pi7-front"."""
    lines = [f"camera {cam.label}: stream {cam.stream.name}" for cam in cfg.cameras]
    if cfg.aws.iot is not None:
        lines.append(f"IoT thing: {cfg.aws.iot.thing_name}")
    return lines
