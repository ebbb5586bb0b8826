"""Test PKI from trustme: a CA, a server certificate for loopback, device (client) certificates, all as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class ServerFiles:
    ca_file: Path  # the CA that signed the server certificate (what a client trusts: ca_bundle / aws.iot.ca_file)
    cert_file: Path  # server certificate chain, PEM
    key_file: Path  # server private key, PEM


@dataclass(frozen=True)
class ClientFiles:
    cert_file: Path  # device certificate chain, PEM
    key_file: Path  # device private key, PEM


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def server_files(ca: trustme.CA, directory: Path, name: str = "server",
                 hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> ServerFiles:
    """A server certificate for `hosts` signed by `ca`, written under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*hosts)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    return ServerFiles(ca_file=write_ca(ca, directory / f"{name}-ca.pem"), cert_file=cert_file, key_file=key_file)


def client_files(ca: trustme.CA, directory: Path, name: str = "device") -> ClientFiles:
    """A client (device) certificate signed by `ca`, as AWS IoT issues per device, written under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(f"{name}.devices.invalid", common_name=name)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return ClientFiles(cert_file=cert_file, key_file=key_file)
