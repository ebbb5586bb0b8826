"""Placeholders filled from a fake device tree / cpuinfo (issue 16: one image for a fleet)."""

from __future__ import annotations

import pytest

from kvs_edge.config import ConfigError, parse_config
from kvs_edge.identity import DeviceIdentity, IdentityError, fill, read_identity, read_serial, resolve_config, \
    resolved_names

CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Hardware\t: BCM2835
Revision\t: d04170
Serial\t\t: 10000000abcdef01
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def fake_root(tmp_path, *, tree_serial: bytes | None = None, cpuinfo: str | None = CPUINFO,
              machine_id: str | None = "0123456789abcdef0123456789abcdef\n", hostname: str | None = "pi-7\n"):
    if tree_serial is not None:
        (tmp_path / "proc/device-tree").mkdir(parents=True)
        (tmp_path / "proc/device-tree/serial-number").write_bytes(tree_serial)
    if cpuinfo is not None:
        (tmp_path / "proc").mkdir(exist_ok=True)
        (tmp_path / "proc/cpuinfo").write_text(cpuinfo)
    (tmp_path / "etc").mkdir()
    if machine_id is not None:
        (tmp_path / "etc/machine-id").write_text(machine_id)
    if hostname is not None:
        (tmp_path / "etc/hostname").write_text(hostname)
    return tmp_path


def test_serial_from_the_device_tree_first(tmp_path):
    root = fake_root(tmp_path, tree_serial=b"00000000c0ffee42\x00")
    assert read_serial(root) == "00000000c0ffee42"


def test_serial_from_cpuinfo_without_a_device_tree(tmp_path):
    assert read_serial(fake_root(tmp_path)) == "10000000abcdef01"


def test_no_serial_on_a_pc(tmp_path):
    ident = read_identity(fake_root(tmp_path, cpuinfo="processor\t: 0\nmodel name\t: Intel\n"))
    assert ident.serial is None and ident.hostname == "pi-7"
    with pytest.raises(IdentityError, match=r"\{serial\} has no value on this device"):
        fill("cam-{serial}", ident.values())


def test_read_identity(tmp_path):
    ident = read_identity(fake_root(tmp_path))
    assert ident == DeviceIdentity(hostname="pi-7", serial="10000000abcdef01",
                                   machine_id="0123456789abcdef0123456789abcdef")


def fleet_config(tags=None, **aws):
    return parse_config({
        "stream": {"region": "eu-west-1", "create": True, "retention_hours": 48,
                   "tags": tags or {"serial": "{serial}", "site": "north"}},
        "aws": aws or {"credentials": "default"},
        "cameras": [
            {"name": "front", "stream": {"name": "{hostname}-{camera}"}, "source": {"type": "testpattern"}},
            {"stream": {"name": "{serial}-{camera}", "tags": {"mid": "{machine_id}"}},
             "source": {"type": "testpattern"}},
        ]}, "t")


def test_fleet_names_resolved_from_a_fake_device(tmp_path):
    ident = read_identity(fake_root(tmp_path))
    cfg = resolve_config(fleet_config(), ident)
    front, second = cfg.cameras
    assert front.stream.name == "pi-7-front"
    assert second.stream.name == "10000000abcdef01-1"  # {camera} is the index of an entry without a name
    assert front.stream.tags == (("serial", "10000000abcdef01"), ("site", "north"))
    assert dict(second.stream.tags) == {"serial": "10000000abcdef01", "site": "north",
                                        "mid": "0123456789abcdef0123456789abcdef"}
    assert (second.stream.region, second.stream.create, second.stream.retention_hours) == ("eu-west-1", True, 48)
    assert cfg.stream == front.stream
    assert resolved_names(cfg) == ["camera front: stream pi-7-front", "camera 1: stream 10000000abcdef01-1"]


def test_thing_name_placeholder_needs_an_iot_thing(tmp_path):
    ident = read_identity(fake_root(tmp_path))
    with pytest.raises(IdentityError, match=r"cameras\[0\]\.stream\.tags\.thing: \{thing_name\} has no value"):
        resolve_config(fleet_config({"thing": "{thing_name}"}), ident)


def test_thing_name_from_the_serial_and_used_in_tags(tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "root").mkdir()
    ident = read_identity(fake_root(tmp_path / "root"))
    tags = {"serial": "{serial}", "site": "north", "thing": "{thing_name}"}
    cfg = resolve_config(fleet_config(tags, credentials="iot", iot={
        "endpoint": "x.credentials.iot.eu-west-1.amazonaws.com", "role_alias": "kvs", "thing_name": "cam-{serial}",
        "cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}), ident)
    assert cfg.aws.iot.thing_name == "cam-10000000abcdef01"  # no longer forced to equal the stream name
    assert dict(cfg.cameras[0].stream.tags) == {"serial": "10000000abcdef01", "site": "north",
                                                "thing": "cam-10000000abcdef01"}
    assert dict(cfg.cameras[1].stream.tags) == {"serial": "10000000abcdef01", "site": "north",
                                                "thing": "cam-10000000abcdef01",
                                                "mid": "0123456789abcdef0123456789abcdef"}


def test_a_hostname_with_odd_characters_becomes_a_valid_stream_name():
    cfg = resolve_config(parse_config({"stream": {"name": "{hostname}"}}, "t"),
                         DeviceIdentity(hostname="my pi+1", serial=None, machine_id=None))
    assert cfg.stream.name == "my-pi-1"


def test_two_cameras_resolving_to_one_stream_are_refused():
    cfg = parse_config({"cameras": [{"stream": {"name": "{hostname}"}, "source": {"type": "testpattern"}},
                                    {"stream": {"name": "pi"}, "source": {"type": "testpattern"}}]}, "t")
    with pytest.raises(IdentityError, match=r"cameras\[1\]\.stream\.name: 'pi' is also the stream of cameras\[0\]"):
        resolve_config(cfg, DeviceIdentity(hostname="pi", serial=None, machine_id=None))


def test_unknown_placeholder_is_a_config_error():
    with pytest.raises(ConfigError, match=r"t: stream.name: unknown placeholder \{serialnumber\}"):
        parse_config({"stream": {"name": "cam-{serialnumber}"}}, "t")
    with pytest.raises(ConfigError, match=r"aws.iot.thing_name: unknown placeholder \{camera\}"):
        parse_config({"stream": {"name": "cam"}, "aws": {"credentials": "iot", "iot": {"thing_name": "{camera}"}}},
                     "t")
