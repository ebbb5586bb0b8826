"""AAC bitstream helpers (pure): the AudioSpecificConfig (ASC) the MKV audio track carries, and ADTS de-framing.

KVS playback (docs/kvs-service-facts.md, and the SDK's issue tracker): "AAC CPD must be of length 2 or 5" -- the
track's CodecPrivate must be a plain AudioSpecificConfig of 2 bytes (object type, frequency index, channels) or 5
bytes (the same with an explicit 24-bit sampling frequency). LATM-wrapped config or ADTS headers in the blocks are
accepted at ingest and refused at playback, so they never reach the MKV: ADTS is stripped here, LATM is transcoded.
"""

from __future__ import annotations

from dataclasses import dataclass

AAC_LC = 2  # audioObjectType of AAC Low Complexity
SAMPLES_PER_FRAME = 1024  # an AAC-LC access unit
SAMPLING_FREQUENCIES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
EXPLICIT_FREQUENCY = 0xF
SYNC_EXTENSION = 0x2B7  # syncExtensionType of a backward-compatible extension after the 2-byte config
ACCEPTED_ASC_LENGTHS = (2, 5)  # KVS playback: "AAC CPD must be of length 2 or 5"


class AacError(ValueError):
    """Bytes that are not the AAC structure they should be; str() says what is wrong."""


@dataclass(frozen=True, slots=True)
class AudioSpecificConfig:
    object_type: int
    sample_rate: int
    channels: int


def parse_asc(data: bytes) -> AudioSpecificConfig:
    """The fields of a 2- or 5-byte AudioSpecificConfig; AacError for anything KVS playback would refuse."""
    data = bytes(data)
    if len(data) not in ACCEPTED_ASC_LENGTHS:
        raise AacError(f"AudioSpecificConfig is {len(data)} bytes; KVS playback needs 2 or 5")
    bits = int.from_bytes(data, "big")
    n = len(data) * 8
    object_type = bits >> (n - 5) & 0x1F
    freq_index = bits >> (n - 9) & 0xF
    if object_type in (0, 31):
        raise AacError(f"AudioSpecificConfig has audio object type {object_type}, which is not a codec")
    if len(data) == 5 and freq_index != EXPLICIT_FREQUENCY and bits >> 13 & 0x7FF == SYNC_EXTENSION:
        # FFmpeg's encoder writes the 2-byte config + a backward-compatible extension (sync 0x2B7: no SBR)
        data, bits, n = data[:2], bits >> 24, 16
    if freq_index == EXPLICIT_FREQUENCY:
        if len(data) != 5:
            raise AacError("AudioSpecificConfig says an explicit sampling frequency follows but is only 2 bytes")
        rate = bits >> (n - 33) & 0xFFFFFF
        channels = bits >> (n - 37) & 0xF
    else:
        if len(data) != 2:
            raise AacError("a 5-byte AudioSpecificConfig must carry an explicit sampling frequency (index 15)")
        if freq_index >= len(SAMPLING_FREQUENCIES):
            raise AacError(f"AudioSpecificConfig has the reserved sampling frequency index {freq_index}")
        rate = SAMPLING_FREQUENCIES[freq_index]
        channels = bits >> (n - 13) & 0xF
    if not 1 <= channels <= 7 or rate <= 0:
        raise AacError(f"AudioSpecificConfig has channel configuration {channels} and rate {rate}: "
                       f"kvs-edge needs 1..7 channels signalled in the config")
    return AudioSpecificConfig(object_type, rate, channels)


def build_asc(sample_rate: int, channels: int, object_type: int = AAC_LC) -> bytes:
    """The 2-byte ASC for a standard rate, else the 5-byte form with the rate written out."""
    if not 1 <= channels <= 7:
        raise AacError(f"{channels} channels: AAC channel configurations are 1..7")
    if not 0 < object_type < 31:
        raise AacError(f"audio object type {object_type} out of range")
    if sample_rate in SAMPLING_FREQUENCIES:
        v = object_type << 11 | SAMPLING_FREQUENCIES.index(sample_rate) << 7 | channels << 3
        return v.to_bytes(2, "big")
    if not 0 < sample_rate < 1 << 24:
        raise AacError(f"sample rate {sample_rate} out of range")
    v = object_type << 35 | EXPLICIT_FREQUENCY << 31 | sample_rate << 7 | channels << 3
    return v.to_bytes(5, "big")


def valid_asc(data: bytes | None) -> bool:
    try:
        parse_asc(data or b"")
    except AacError:
        return False
    return True


# ---------------------------------------------------------------- ADTS

ADTS_HEADER = 7  # 9 with the CRC


def is_adts(data: bytes) -> bool:
    return len(data) >= ADTS_HEADER and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


def split_adts(data: bytes) -> tuple[bytes, list[bytes]]:
    """ADTS frames -> (the ASC they imply, raw AAC access units). One raw data block per frame (the usual case)."""
    data = bytes(data)
    asc: bytes | None = None
    out: list[bytes] = []
    i = 0
    while i < len(data):
        h = data[i:i + ADTS_HEADER]
        if not is_adts(h):
            raise AacError(f"no ADTS sync word at byte {i}")
        protection_absent = h[1] & 1
        profile = h[2] >> 6
        freq_index = h[2] >> 2 & 0xF
        channels = (h[2] & 1) << 2 | h[3] >> 6
        length = (h[3] & 3) << 11 | h[4] << 3 | h[5] >> 5
        blocks = (h[6] & 3) + 1
        head = ADTS_HEADER if protection_absent else ADTS_HEADER + 2
        if length < head or i + length > len(data):
            raise AacError(f"ADTS frame at byte {i} claims {length} bytes; {len(data) - i} are left")
        if blocks != 1:
            raise AacError("ADTS frame with several raw data blocks: not supported (transcode it)")
        if freq_index >= len(SAMPLING_FREQUENCIES):
            raise AacError(f"ADTS frame with the reserved sampling frequency index {freq_index}")
        if channels == 0:
            raise AacError("ADTS frame with channel configuration 0 (set in-band): transcode it")
        this = build_asc(SAMPLING_FREQUENCIES[freq_index], channels, profile + 1)
        if asc is not None and this != asc:
            raise AacError("ADTS frames change their configuration mid-stream")
        asc = this
        out.append(data[i + head:i + length])
        i += length
    if asc is None:
        raise AacError("no ADTS frame")
    return asc, out


def adts_header(payload_size: int, asc: bytes) -> bytes:
    """An ADTS header (no CRC) for one raw frame: what a player needs to decode the raw blocks we store."""
    cfg = parse_asc(asc)
    if cfg.sample_rate not in SAMPLING_FREQUENCIES or cfg.object_type > 4:
        raise AacError("ADTS cannot signal this configuration")
    n = payload_size + ADTS_HEADER
    if n >= 1 << 13:
        raise AacError("AAC frame too large for ADTS")
    fi = SAMPLING_FREQUENCIES.index(cfg.sample_rate)
    return bytes((0xFF, 0xF1, (cfg.object_type - 1) << 6 | fi << 2 | cfg.channels >> 2,
                  (cfg.channels & 3) << 6 | n >> 11, n >> 3 & 0xFF, (n & 7) << 5 | 0x1F, 0xFC))
