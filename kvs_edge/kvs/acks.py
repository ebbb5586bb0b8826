"""PutMedia acknowledgements: an incremental parser for the response body (pure, bytes in, events out).

KVS streams ACKs as bare JSON objects separated by newlines (docs/kvs-putmedia.md section 2). A read may hold several
ACKs, or part of one. The parser finds each object by tracking braces and strings (so it needs no newline after the
last ACK, and tolerates blank lines and keep-alive whitespace), then validates it. Anything else becomes an
`AckParseError` event: the parser never raises on input, and its output does not depend on how the bytes were split.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Event types KVS sends
BUFFERING = "BUFFERING"
RECEIVED = "RECEIVED"
PERSISTED = "PERSISTED"
ERROR = "ERROR"
IDLE = "IDLE"

MAX_ACK_BYTES = 16 * 1024  # a real ACK is ~150 bytes; anything this long is not one
_SAMPLE = 60

_WS = b" \t\r\n"
_IN_OBJECT = re.compile(rb'[{}"]')
_IN_STRING = re.compile(rb'["\\]')
_GARBAGE_END = re.compile(rb"[\n{]")


@dataclass(frozen=True, slots=True)
class Ack:
    event_type: str
    fragment_timecode: int | None = None
    fragment_number: str | None = None
    error_id: int | None = None
    error_code: str | None = None

    def __str__(self) -> str:
        s = f"{self.event_type} timecode={self.fragment_timecode}"
        if self.error_id is not None or self.error_code:
            s += f" error {self.error_id} {self.error_code or ''}".rstrip()
        return s


@dataclass(frozen=True, slots=True)
class AckParseError:
    """Bytes in the ACK stream that are not an acknowledgement. `message` is one line."""

    message: str


def _sample(data: bytes) -> str:
    text = data[:_SAMPLE].decode("utf-8", "replace")
    text = text.encode("unicode_escape").decode("ascii")
    return text + ("..." if len(data) > _SAMPLE else "")


def _int_field(obj: dict, key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"{key} is not a number")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"-?[0-9]{1,20}", v.strip()):
        return int(v)
    raise ValueError(f"{key} is not an integer")


def _str_field(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"{key} is not a string")
    if isinstance(v, (str, int)):
        return str(v)
    raise ValueError(f"{key} is not a string")


def ack_from_json(raw: bytes) -> Ack | AckParseError:
    """One JSON object's bytes -> an Ack, or an AckParseError saying why not."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return AckParseError(f"ACK is not valid JSON ({type(e).__name__}): {_sample(raw)}")
    if not isinstance(obj, dict):
        return AckParseError(f"ACK is not a JSON object: {_sample(raw)}")
    event_type = obj.get("EventType")
    if not isinstance(event_type, str) or not event_type:
        return AckParseError(f"ACK without an EventType: {_sample(raw)}")
    try:
        return Ack(
            event_type=event_type,
            fragment_timecode=_int_field(obj, "FragmentTimecode"),
            fragment_number=_str_field(obj, "FragmentNumber"),
            error_id=_int_field(obj, "ErrorId"),
            error_code=_str_field(obj, "ErrorCode"),
        )
    except ValueError as e:
        return AckParseError(f"malformed {event_type} ACK ({e}): {_sample(raw)}")


class AckParser:
    """Incremental ACK stream parser. `feed(bytes)` returns the complete events found so far."""

    def __init__(self, max_ack_bytes: int = MAX_ACK_BYTES) -> None:
        self._max = max_ack_bytes
        self._buf = bytearray()
        self._pos = 0  # scan position in _buf
        self._depth = 0  # brace depth of the object being scanned (0: between objects)
        self._in_string = False
        self._escape = False
        self._garbage: bytearray | None = None  # sample of a run of non-JSON bytes being skipped
        self._skip_line = False  # after an oversized object: skip to the next newline

    def feed(self, data: bytes) -> list[Ack | AckParseError]:
        if not data:
            return []
        self._buf += data
        out: list[Ack | AckParseError] = []
        buf = self._buf
        while self._pos < len(buf):
            if self._skip_line:
                i = buf.find(b"\n", self._pos)
                if i < 0:
                    self._pos = len(buf)
                    break
                self._pos = i + 1
                self._skip_line = False
                continue
            if self._garbage is not None:
                m = _GARBAGE_END.search(buf, self._pos)
                end = m.start() if m else len(buf)
                if len(self._garbage) <= _SAMPLE:
                    self._garbage += buf[self._pos:end]
                self._pos = end
                if not m:
                    break
                out.append(self._garbage_error())
                continue
            if self._depth == 0:
                while self._pos < len(buf) and buf[self._pos] in _WS:
                    self._pos += 1
                if self._pos >= len(buf):
                    break
                if buf[self._pos] != 0x7B:  # "{"
                    self._garbage = bytearray()
                    continue
                # an object starts: drop everything before it
                del buf[:self._pos]
                self._pos = 1
                self._depth = 1
                self._in_string = False
                self._escape = False
                continue
            done = self._scan_object(buf)
            if done is None:
                if len(buf) >= self._max:
                    out.append(AckParseError(f"ACK longer than {self._max} bytes: {_sample(bytes(buf))}"))
                    del buf[:self._max]
                    self._pos = 0
                    self._depth = 0
                    self._skip_line = True
                    continue
                break
            raw = bytes(buf[:done])
            del buf[:done]
            self._pos = 0
            self._depth = 0
            out.append(ack_from_json(raw))
        if self._depth == 0 and self._pos:
            del buf[:self._pos]
            self._pos = 0
        return out

    def close(self) -> list[Ack | AckParseError]:
        """The stream ended: whatever is left over is an error (an ACK cut short, or trailing junk)."""
        out: list[Ack | AckParseError] = []
        if self._garbage is not None:
            out.append(self._garbage_error())
        elif self._depth and not self._skip_line:
            out.append(AckParseError(f"ACK stream ended inside an ACK: {_sample(bytes(self._buf))}"))
        self.__init__(self._max)
        return out

    def _garbage_error(self) -> AckParseError:
        sample = bytes(self._garbage or b"")
        self._garbage = None
        return AckParseError(f"unexpected bytes in the ACK stream: {_sample(sample)}")

    def _scan_object(self, buf: bytearray) -> int | None:
        """Advance through the current object, never past _max bytes; its length once it is complete."""
        limit = min(len(buf), self._max)
        pos = self._pos
        while pos < limit:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                m = _IN_STRING.search(buf, pos, limit)
                if not m:
                    pos = limit
                    break
                pos = m.end()
                if m.group() == b"\\":
                    self._escape = True
                else:
                    self._in_string = False
                continue
            m = _IN_OBJECT.search(buf, pos, limit)
            if not m:
                pos = limit
                break
            pos = m.end()
            c = m.group()
            if c == b'"':
                self._in_string = True
            elif c == b"{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    self._pos = pos
                    return pos
        self._pos = pos
        return None
