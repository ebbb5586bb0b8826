"""A source that delivers nothing by itself: the test calls Pipeline.emit() with the frames it wants."""

from __future__ import annotations


class NoSource:
    name = "test frames"
    error = None
    finished = False

    def start(self, emit):
        pass

    def stop(self, timeout=3.0):
        pass
