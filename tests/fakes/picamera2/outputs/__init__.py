"""Fake picamera2.outputs: the Output base class with the real signatures (picamera2 0.3.x)."""

from __future__ import annotations


class Output:
    """Handles output functionality of encoders."""

    def __init__(self, pts=None):
        self.recording = False
        self.ptsoutput = pts

    def start(self):
        self.recording = True

    def stop(self):
        self.recording = False

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        """Called by the encoder (on its thread) with one encoded frame; the base class drops it."""

    def outputtimestamp(self, timestamp):
        pass

    def _add_stream(self, encoder_stream, codec_name, **kwargs):
        pass
