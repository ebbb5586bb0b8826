"""`kvs-edge run [--config FILE]`: the appliance, until SIGTERM/SIGINT. SIGHUP reloads the configuration."""

from __future__ import annotations

import logging
import sys

from kvs_edge import logsetup
from kvs_edge.errors import EXIT_FAILURE, KvsEdgeError
from kvs_edge.config import ConfigError, config_warnings, has_placeholders, load_config

log = logging.getLogger("kvs_edge")


def tune_malloc() -> None:
    """Frames over 128 KB (1080p key frames) are mmap'd and handed back to the kernel when freed, and threads share
    at most two malloc arenas: the RSS of a days-long run stays flat (measured by bench/pipeline.py). glibc only."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic growth)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def load_valid(path: str, identity_root: str = "/"):
    """The configuration at path with this device's names filled in ({hostname}, {serial}, ...: identity.py), or
    ConfigError with every message (the example's placeholders count as errors for `run`)."""
    from kvs_edge.identity import IdentityError, read_identity, resolve_config

    cfg = load_config(path)
    if has_placeholders(cfg):
        raise ConfigError([w.removeprefix("warning: ") for w in config_warnings(cfg, path)])
    try:
        return resolve_config(cfg, read_identity(identity_root))
    except IdentityError as e:
        raise ConfigError([f"{path}: {e}"]) from None


def build_appliance(cfg, path: str):
    """One camera: the Appliance; several (cameras:): a CameraSet, one isolated pipeline per camera."""
    if len(cfg.cameras) > 1:
        from kvs_edge.camera_set import CameraSet

        return CameraSet(cfg, config_path=path)
    from kvs_edge.appliance import Appliance

    return Appliance(cfg, config_path=path)


def main(args) -> int:
    tune_malloc()
    try:
        cfg = load_valid(args.config)
    except ConfigError as e:
        logsetup.configure()
        for m in e.messages:
            print(m, file=sys.stderr)
        print(f"kvs-edge: fix {args.config} (check it with `kvs-edge check-config {args.config}`)", file=sys.stderr)
        return e.exit_code
    logsetup.configure(cfg.log.level, getattr(args, "verbose", False))
    for w in config_warnings(cfg, args.config):
        log.warning(w.removeprefix("warning: "))
    from kvs_edge.supervisor import Supervisor

    try:
        app = build_appliance(cfg, args.config)
    except KvsEdgeError as e:  # credentials, control plane, source: each says how to exit (README "Exit codes")
        log.error("%s", e.message)
        return e.exit_code
    except OSError as e:
        log.error("cannot start: %s", e)
        return EXIT_FAILURE

    sup = Supervisor(app, status_file=cfg.health.status_file, metrics_listen=cfg.health.metrics_listen,
                     reload=(lambda: load_valid(args.config), lambda c: build_appliance(c, args.config)))
    sup.install_signal_handlers()
    return sup.run()
