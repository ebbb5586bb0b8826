"""A raw H.264 byte stream (Annex B, e.g. a .h264 file) -> its access units, split as FFmpeg's h264 parser splits
them, so a raw file needs neither PyAV nor FFmpeg (about 25 MB of a process's memory: README "Measured"). Pure: bytes
in, lists of NAL units out; reading the file is the caller's (sources/av.py FileSource).

The boundaries (libavcodec/h264_parser.c, h264_find_frame_end, which H.264 7.4.1.2.3 describes more fully):
- once the current access unit holds a slice, an SEI, SPS, PPS or access unit delimiter (NAL types 6-9) starts the
  next one (with the parameter sets and SEI in front of their picture);
- a slice (NAL types 1, 2, 5) whose first_mb_in_slice is not above the previous slice's starts a new picture, so
  the several slices of one picture stay in one unit;
- every other NAL unit (end of sequence, filler, partitions B/C, ...) stays with the unit it follows.
NAL units come without start codes and trailing zero bytes (media/h264.py nal_spans: "a NAL unit never ends in 0x00").
"""

from __future__ import annotations

from kvs_edge.media import h264

START_CODE = b"\x00\x00\x01"
NON_VCL_STARTS = frozenset((6, 7, 8, 9))  # SEI, SPS, PPS, AUD
SLICES = frozenset((1, 2, 5))  # non-IDR slice, partition A, IDR slice
MAX_SEARCH = 1 << 20  # bytes read without finding a first start code: not Annex B


def first_mb_in_slice(nal: bytes) -> int:
    """The first ue(v) of a slice header (the byte after the NAL header onwards), read as FFmpeg's parser reads it:
    from at most 5 bytes, emulation prevention bytes not removed (they cannot occur before 16 leading zero bits)."""
    if len(nal) > 1 and nal[1] & 0x80:  # the one-bit code word "1": macroblock 0, the common case
        return 0
    try:
        return h264._Bits(nal[1:6]).ue()
    except (h264.H264Error, IndexError):
        return 0


class AccessUnitSplitter:
    """feed(bytes) -> access units completed so far (each a list of NAL units); flush() -> the rest at the end."""

    def __init__(self) -> None:
        self._carry = b""  # from the last start code seen: a NAL unit that may continue in the next bytes
        self._started = False
        self._unit: list[bytes] = []
        self._has_slice = False
        self._last_mb = -1

    def feed(self, data: bytes) -> list[list[bytes]]:
        buf = self._carry + data if self._carry else bytes(data)
        last = buf.rfind(START_CODE)
        if last < 0:
            if not self._started and len(buf) > MAX_SEARCH and buf.count(0) != len(buf):
                raise h264.H264Error("no Annex B start code (00 00 01) found")
            self._carry = buf
            return []
        self._started = True
        self._carry = buf[last:]
        return self._take(buf[:last])

    def flush(self) -> list[list[bytes]]:
        """The access units left when the stream ends (the last one included). Raises H264Error for bytes that hold
        no start code at all."""
        buf, self._carry = self._carry, b""
        out = self._take(buf) if buf else []
        if self._unit:
            out.append(self._unit)
            self._unit, self._has_slice = [], False
        return out

    def _take(self, data: bytes) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        for s, e in h264.nal_spans(data):
            nal = data[s:e]
            t = nal[0] & 0x1F
            if t in SLICES:
                mb = first_mb_in_slice(nal)
                if self._has_slice and mb <= self._last_mb:
                    out.append(self._unit)
                    self._unit = []
                self._has_slice = True
                self._last_mb = mb
            elif t in NON_VCL_STARTS and self._has_slice:
                out.append(self._unit)
                self._unit, self._has_slice = [], False
            self._unit.append(nal)
        return out
