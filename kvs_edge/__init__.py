"""kvs-edge: stream live H.264 from a Raspberry Pi camera to Amazon Kinesis Video Streams.

As a library: `from kvs_edge import Producer` (see kvs_edge.producer); `kvs_edge.picamera2.KvsOutput` for Picamera2.
The names below are imported on first use, so that `import kvs_edge` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "Producer": "kvs_edge.producer",
    "ProducerStats": "kvs_edge.producer",
    "ProducerError": "kvs_edge.producer",
    "AudioFormat": "kvs_edge.producer",
    "FrameError": "kvs_edge.media.access_unit",
    "TagError": "kvs_edge.media.fragment_tags",
    "Connected": "kvs_edge.kvs.uploader",
    "Disconnected": "kvs_edge.kvs.uploader",
    "FragmentPersisted": "kvs_edge.kvs.uploader",
    "FragmentSkipped": "kvs_edge.kvs.uploader",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # for type checkers and pdoc: the same names, imported eagerly
    from kvs_edge.kvs.uploader import Connected, Disconnected, FragmentPersisted, FragmentSkipped
    from kvs_edge.media.access_unit import FrameError
    from kvs_edge.media.fragment_tags import TagError
    from kvs_edge.producer import AudioFormat, Producer, ProducerError, ProducerStats


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kvs_edge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
