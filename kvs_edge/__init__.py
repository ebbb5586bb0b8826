"""kvs-edge: stream live H.264 from a Raspberry Pi camera to Amazon Kinesis Video Streams."""

__version__ = "0.1.0"
