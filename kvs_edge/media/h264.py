"""H.264 bitstream helpers (pure): Annex B splitting, NAL types, SPS parsing, avcC and AVCC.

References: ITU-T H.264 (7.3.2.1.1 SPS syntax, 7.4.1 emulation prevention, 7.3.3 slice header, Annex B byte stream)
and ISO/IEC 14496-15 5.3.3.1 (AVCDecoderConfigurationRecord).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

SLICE_P, SLICE_B, SLICE_I, SLICE_SP, SLICE_SI = 0, 1, 2, 3, 4

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling matrices (H.264 7.3.2.1.1)
_HIGH_SPS_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# profile_idc values for which the avcC record carries the extension fields (ISO/IEC 14496-15, as FFmpeg writes them)
AVCC_EXT_PROFILES = frozenset({100, 110, 122, 144})


class H264Error(ValueError):
    """The bytes are not the H.264 structure they claim to be."""


# ---------------------------------------------------------------- Annex B


# The scan for start codes is the muxer's main cost: every byte of the video passes through it once. Measured on 60 s of
# 1080p30 at 8 Mbit/s (Python 3.11, x86-64): one re.finditer per access unit ~19 ms (the regex engine's literal search,
# a byte-at-a-time C loop), bytes.find ~35 ms, bytes.count of one byte ~19 ms: none of CPython's bytes operations finds
# a 3-byte pattern faster. numpy compares 16-bit words in SIMD: ~7-9 ms, but importing it costs ~15 MB of RSS, so it is
# used only when the process has already imported numpy (picamera2 does, and so do the motion detector and the
# test-pattern source), never imported for this. Both give the same offsets (tests/test_fragmenter_bytes.py).
_START_CODE = re.compile(b"\x00\x00\x01")
_match_start = re.Match.start
_NUMPY_SCAN_MIN = 8192  # below this many bytes numpy's per-call overhead costs more than the regex scan


def start_codes(data: bytes) -> Iterable[int]:
    """Offsets of every 00 00 01 in `data`, in order (they cannot overlap: the third byte of one is 01, not 00)."""
    np = sys.modules.get("numpy") if len(data) >= _NUMPY_SCAN_MIN else None
    if np is None:
        return map(_match_start, _START_CODE.finditer(data))
    return _start_codes_numpy(np, data)


def _start_codes_numpy(np, data: bytes) -> list[int]:
    """start_codes() with numpy: the bytes as little-endian 16-bit words at even offsets; a word whose low byte is 00
    and high byte 00 or 01 (word & 0xFEFF == 0) marks every start code: one at an even offset p begins with the word
    00 00 at p, one at an odd offset p has the word 00 01 at p + 1. Each marked word is then checked in Python (a
    few per access unit: pairs of zero bytes are rare in H.264, emulation prevention puts 03 after them)."""
    words = np.frombuffer(data, "<u2", len(data) >> 1)
    mask, zero = np.uint16(0xFEFF), np.uint16(0)  # numpy scalars: no conversion of Python ints in the ufuncs
    marks = ((words & mask) == zero).tobytes()  # one byte per word: 1 where marked
    find = marks.find
    n = len(data)
    out: list[int] = []
    k = find(1)
    while k >= 0:
        p = k + k
        if data[p + 1]:  # 00 01 at p: a start code at p - 1 when a 00 precedes
            if p and not data[p - 1]:
                out.append(p - 1)
        elif p + 2 < n and data[p + 2] == 1:  # 00 00 at p, then 01
            out.append(p)
        k = find(1, k + 1)
    return out


def nal_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) offsets of the NAL units of an Annex B byte stream, start codes and trailing zeros excluded.

    The zero-copy form of split_annexb(); same rules and errors. One trailing-zero rule for every NAL unit, the last
    one included: "trailing_zero_8bits" and the leading zero of a 4-byte start code belong to the byte stream
    (H.264 B.2), and a NAL unit never ends in 0x00 (its RBSP ends with the rbsp_stop_one_bit, or with
    cabac_zero_words 0x0000 03), so zero bytes before a start code or the end of the data are dropped.
    """
    spans: list[tuple[int, int]] = []
    append = spans.append
    prev = -1
    for e in start_codes(data):
        nxt = e + 3
        if prev < 0:
            if e and data.count(0, 0, e) != e:
                raise H264Error("data before the first Annex B start code")
        else:
            while e > prev and data[e - 1] == 0:  # usually one step: the leading zero of a 4-byte start code
                e -= 1
            if e > prev:
                append((prev, e))
        prev = nxt
    if prev < 0:
        if data.count(0) != len(data):
            raise H264Error("no Annex B start code (00 00 01) found")
        return spans
    e = len(data)
    while e > prev and data[e - 1] == 0:
        e -= 1
    if e > prev:
        append((prev, e))
    return spans


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream into NAL units (without start codes, trailing zero bytes removed).

    Accepts 3- and 4-byte start codes (and any number of leading zero bytes). Empty NAL units are skipped.
    Raises H264Error when non-zero bytes precede the first start code (not Annex B).
    """
    data = bytes(data)
    return [data[s:e] for s, e in nal_spans(data)]


def join_annexb(nals: list[bytes]) -> bytes:
    """NAL units -> Annex B with 4-byte start codes."""
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def nal_types(data: bytes) -> list[int]:
    """The nal_unit_type of every NAL unit of an Annex B access unit, in order."""
    return [data[s] & 0x1F for s, _ in nal_spans(data)]


def nal_type(nal: bytes) -> int:
    if not nal:
        raise H264Error("empty NAL unit")
    return nal[0] & 0x1F


def unescape_rbsp(nal_payload: bytes) -> bytes:
    """Remove emulation prevention bytes (00 00 03 -> 00 00)."""
    if b"\x00\x00\x03" not in nal_payload:
        return bytes(nal_payload)
    out = bytearray()
    i = 0
    n = len(nal_payload)
    while i < n:
        j = nal_payload.find(b"\x00\x00\x03", i)
        if j < 0:
            out += nal_payload[i:]
            break
        out += nal_payload[i:j + 2]
        i = j + 3
    return bytes(out)


def annexb_to_avcc(data: bytes) -> bytes:
    """Annex B -> AVCC: each NAL prefixed with its 4-byte big-endian length."""
    return nals_to_avcc(split_annexb(data))


def nals_to_avcc(nals: list[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def iter_avcc(payload: bytes, length_size: int = 4) -> Iterator[bytes]:
    """NAL units of an AVCC payload; H264Error when the lengths do not add up."""
    if length_size not in (1, 2, 4):
        raise H264Error(f"invalid NAL length size {length_size}")
    mv = memoryview(payload)
    i, n = 0, len(payload)
    while i < n:
        if i + length_size > n:
            raise H264Error(f"AVCC payload truncated in a length field at byte {i}")
        ln = int.from_bytes(mv[i:i + length_size], "big")
        i += length_size
        if ln == 0 or i + ln > n:
            raise H264Error(f"AVCC NAL length {ln} at byte {i - length_size} does not fit the {n}-byte payload")
        yield bytes(mv[i:i + ln])
        i += ln


# ---------------------------------------------------------------- bit reader


class _Bits:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.end = len(data) * 8

    def u(self, n: int) -> int:
        if self.pos + n > self.end:
            raise H264Error("bitstream ends early")
        v = 0
        for _ in range(n):
            v = (v << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise H264Error("Exp-Golomb code too long")
        return (1 << zeros) - 1 + (self.u(zeros) if zeros else 0)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


# ---------------------------------------------------------------- SPS


@dataclass(frozen=True)
class SPS:
    profile_idc: int
    constraint_flags: int
    level_idc: int
    sps_id: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool
    width: int  # display width, after cropping
    height: int  # display height, after cropping
    coded_width: int
    coded_height: int


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            delta = b.se()
            if not -128 <= delta <= 127:
                raise H264Error("scaling list delta out of range")
            nxt = (last + delta + 256) % 256
        last = last if nxt == 0 else nxt


def parse_sps(nal: bytes) -> SPS:
    """Parse a sequence parameter set NAL unit (with its 1-byte NAL header)."""
    if not nal or nal_type(nal) != NAL_SPS:
        raise H264Error("not an SPS NAL unit")
    if len(nal) < 4:
        raise H264Error("SPS too short")
    b = _Bits(unescape_rbsp(nal[1:]))
    try:
        profile_idc = b.u(8)
        constraint = b.u(8)
        level_idc = b.u(8)
        sps_id = b.ue()
        if sps_id > 31:
            raise H264Error(f"SPS id {sps_id} out of range")
        chroma_format_idc, depth_l, depth_c, separate_planes = 1, 8, 8, 0
        if profile_idc in _HIGH_SPS_PROFILES:
            chroma_format_idc = b.ue()
            if chroma_format_idc > 3:
                raise H264Error(f"chroma_format_idc {chroma_format_idc} out of range")
            if chroma_format_idc == 3:
                separate_planes = b.u(1)
            depth_l = b.ue() + 8
            depth_c = b.ue() + 8
            if depth_l > 14 or depth_c > 14:
                raise H264Error("bit depth out of range")
            b.u(1)  # qpprime_y_zero_transform_bypass_flag
            if b.u(1):  # seq_scaling_matrix_present_flag
                for i in range(8 if chroma_format_idc != 3 else 12):
                    if b.u(1):
                        _skip_scaling_list(b, 16 if i < 6 else 64)
        if b.ue() > 12:  # log2_max_frame_num_minus4
            raise H264Error("log2_max_frame_num out of range")
        poc_type = b.ue()
        if poc_type == 0:
            b.ue()
        elif poc_type == 1:
            b.u(1)
            b.se()
            b.se()
            cycle = b.ue()
            if cycle > 255:
                raise H264Error("num_ref_frames_in_pic_order_cnt_cycle out of range")
            for _ in range(cycle):
                b.se()
        elif poc_type != 2:
            raise H264Error(f"pic_order_cnt_type {poc_type} out of range")
        b.ue()  # max_num_ref_frames
        b.u(1)  # gaps_in_frame_num_value_allowed_flag
        w_mbs = b.ue() + 1
        h_map_units = b.ue() + 1
        frame_mbs_only = b.u(1)
        if not frame_mbs_only:
            b.u(1)  # mb_adaptive_frame_field_flag
        b.u(1)  # direct_8x8_inference_flag
        crop = (0, 0, 0, 0)
        if b.u(1):
            crop = (b.ue(), b.ue(), b.ue(), b.ue())
    except H264Error as e:
        raise H264Error(f"malformed SPS: {e}") from None
    coded_w = w_mbs * 16
    coded_h = (2 - frame_mbs_only) * h_map_units * 16
    chroma_array_type = 0 if separate_planes else chroma_format_idc
    if chroma_array_type == 0:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        sub_w = 1 if chroma_array_type == 3 else 2
        sub_h = 2 if chroma_array_type == 1 else 1
        unit_x, unit_y = sub_w, sub_h * (2 - frame_mbs_only)
    width = coded_w - unit_x * (crop[0] + crop[1])
    height = coded_h - unit_y * (crop[2] + crop[3])
    if width <= 0 or height <= 0:
        raise H264Error("SPS cropping leaves no picture")
    return SPS(profile_idc, constraint, level_idc, sps_id, chroma_format_idc, depth_l, depth_c, bool(frame_mbs_only),
               width, height, coded_w, coded_h)


def slice_type(nal: bytes) -> int:
    """slice_type % 5 of a slice NAL unit (0 P, 1 B, 2 I, 3 SP, 4 SI)."""
    t = nal_type(nal)
    if t not in (NAL_SLICE, NAL_IDR):
        raise H264Error(f"NAL type {t} is not a slice")
    return slice_type_at(nal, 0, len(nal))


def _slice_type_from_first_byte(b: int) -> int:
    """slice_type % 5 when the byte after a slice's NAL header decides it, else -1 (see _SLICE_TYPE_BY_BYTE)."""
    if not b & 0x80:  # first_mb_in_slice != 0: its Exp-Golomb code runs past this byte
        return -1
    x = b & 0x7F  # the 7 bits after first_mb_in_slice = 0 (ue(v) code "1"), where slice_type's code starts
    k = x.bit_length()
    shift = 2 * k - 8  # bits of x after slice_type's code (7 - (2 * leading zeros + 1)), negative when cut short
    if not k or shift < 0:
        return -1
    st = (x >> shift) - 1
    return st % 5 if st <= 9 else -1  # an out-of-range value is left to slice_type_at, which raises


# slice_type % 5 by the first byte after the NAL header, -1 where the byte does not decide it (first_mb_in_slice is not
# 0, or slice_type's code continues into the next byte, or is out of range). The first slice of every picture has
# first_mb_in_slice = 0, so the fragmenter's B-frame check is one table lookup for it. No emulation prevention byte
# can be there: one needs two zero bytes before it, and the NAL header byte is never 0.
_SLICE_TYPE_BY_BYTE = tuple(_slice_type_from_first_byte(b) for b in range(256))


def slice_type_at(data: bytes, start: int, end: int) -> int:
    """slice_type % 5 of the slice NAL unit data[start:end] (with its header byte), without copying it."""
    if end - start > 1:
        st = _SLICE_TYPE_BY_BYTE[data[start + 1]]
        if st >= 0:
            return st
    head = data[start + 1:min(end, start + 9)]
    if len(head) == 8 and b"\x00\x00\x03" not in head:
        # first_mb_in_slice and slice_type are the first two Exp-Golomb codes of the header: read them from one
        # 64-bit integer. A code with z leading zeros takes 2z + 1 bits.
        v = int.from_bytes(head, "big")
        rem = 2 * v.bit_length() - 65  # bits after first_mb_in_slice's code
        if rem > 0:
            x = v & ((1 << rem) - 1)
            k = x.bit_length()
            shift = 2 * k - rem - 1  # bits after slice_type's code
            if k and shift >= 0:
                st = (x >> shift) - 1
                if st > 9:
                    raise H264Error(f"slice_type {st} out of range")
                return st % 5
    b = _Bits(unescape_rbsp(data[start + 1:min(end, start + 24)]))
    try:
        b.ue()  # first_mb_in_slice
        st = b.ue()
    except H264Error as e:
        raise H264Error(f"malformed slice header: {e}") from None
    if st > 9:
        raise H264Error(f"slice_type {st} out of range")
    return st % 5


# ---------------------------------------------------------------- avcC


@dataclass(frozen=True)
class AVCConfig:
    version: int
    profile_idc: int
    profile_compat: int
    level_idc: int
    length_size: int
    sps: list[bytes] = field(default_factory=list)
    pps: list[bytes] = field(default_factory=list)
    # None when the record omits the High-profile extension (as the KVS SDK's records do)
    chroma_format_idc: int | None = None
    bit_depth_luma: int | None = None
    bit_depth_chroma: int | None = None
    sps_ext: list[bytes] = field(default_factory=list)


def build_avcc(sps: list[bytes], pps: list[bytes]) -> bytes:
    """AVCDecoderConfigurationRecord with 4-byte NAL lengths; High-profile extension fields as FFmpeg writes them."""
    if not sps or not pps:
        raise H264Error("avcC needs at least one SPS and one PPS")
    if len(sps) > 31 or len(pps) > 255:
        raise H264Error("too many parameter sets for avcC")
    for s in sps:
        if not s or nal_type(s) != NAL_SPS or len(s) < 4:
            raise H264Error("avcC: not an SPS NAL unit")
    for p in pps:
        if not p or nal_type(p) != NAL_PPS:
            raise H264Error("avcC: not a PPS NAL unit")
    first = sps[0]
    out = bytearray((1, first[1], first[2], first[3], 0xFC | 3, 0xE0 | len(sps)))
    for s in sps:
        if len(s) > 0xFFFF:
            raise H264Error("SPS too long for avcC")
        out += len(s).to_bytes(2, "big") + s
    out.append(len(pps))
    for p in pps:
        if len(p) > 0xFFFF:
            raise H264Error("PPS too long for avcC")
        out += len(p).to_bytes(2, "big") + p
    if first[1] in AVCC_EXT_PROFILES:
        info = parse_sps(first)
        out += bytes((0xFC | info.chroma_format_idc, 0xF8 | (info.bit_depth_luma - 8),
                      0xF8 | (info.bit_depth_chroma - 8), 0))
    return bytes(out)


def parse_avcc(data: bytes) -> AVCConfig:
    """Parse an AVCDecoderConfigurationRecord; the High-profile extension is optional (the KVS SDK omits it)."""
    data = bytes(data)
    if len(data) < 7:
        raise H264Error(f"avcC too short ({len(data)} bytes)")
    if data[0] != 1:
        raise H264Error(f"avcC configurationVersion {data[0]}, expected 1")
    length_size = (data[4] & 3) + 1
    if length_size == 3:
        raise H264Error("avcC lengthSizeMinusOne 2 is not allowed")
    n_sps = data[5] & 0x1F
    i = 6

    def take_sets(count: int, kind: int, name: str) -> list[bytes]:
        nonlocal i
        sets = []
        for _ in range(count):
            if i + 2 > len(data):
                raise H264Error(f"avcC truncated in {name} length")
            ln = int.from_bytes(data[i:i + 2], "big")
            i += 2
            if ln == 0 or i + ln > len(data):
                raise H264Error(f"avcC {name} length {ln} runs past the record")
            nal = data[i:i + ln]
            if kind and nal_type(nal) != kind:
                raise H264Error(f"avcC {name} entry has NAL type {nal_type(nal)}")
            sets.append(nal)
            i += ln
        return sets

    sps = take_sets(n_sps, NAL_SPS, "SPS")
    if not sps:
        raise H264Error("avcC has no SPS")
    if i >= len(data):
        raise H264Error("avcC truncated before the PPS count")
    n_pps = data[i]
    i += 1
    pps = take_sets(n_pps, NAL_PPS, "PPS")
    chroma = depth_l = depth_c = None
    sps_ext: list[bytes] = []
    rest = len(data) - i
    if data[1] in AVCC_EXT_PROFILES and rest >= 4:
        chroma = data[i] & 3
        depth_l = (data[i + 1] & 7) + 8
        depth_c = (data[i + 2] & 7) + 8
        n_ext = data[i + 3]
        i += 4
        sps_ext = take_sets(n_ext, 0, "SPS extension")
    return AVCConfig(1, data[1], data[2], data[3], length_size, sps, pps, chroma, depth_l, depth_c, sps_ext)
