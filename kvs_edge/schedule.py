"""Upload windows: cron expressions with a duration, evaluated in a time zone (pure).

`upload.schedule: [{cron: "0 * * * *", minutes: 10}]` opens a window at every minute the cron expression matches, for
`minutes` minutes. The five standard fields (minute hour day-of-month month day-of-week) take `*`, numbers, ranges
`a-b`, lists `a,b` and steps `*/n`, `a-b/n`; day-of-week 0 and 7 are Sunday; when both day fields are restricted a day
matching either one matches (cron's rule). Month and day names are not accepted (a clear error says so).

A window is open at `now` when a matching minute lies in (now - minutes, now], evaluated minute by minute in the
configured zone (zoneinfo), so a window that starts at 02:30 on a day the clocks skip 02:00-03:00 does not open, and one
that starts in a repeated hour opens twice: what a cron daemon does. Windows never open before the clock is
synchronized (`window_open(..., synchronized=False)` is False): a Pi without an RTC wakes up in 1970 or in the past.

Why not croniter: one small matcher (60 lines) covers what the setting needs and is tested here; croniter adds
iteration, seconds fields and macros kvs-edge has no use for, and had an uncertain maintenance status in 2024.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
MAX_WINDOW_MINUTES = 7 * 24 * 60


class CronError(ValueError):
    """A cron expression that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool

    def matches(self, t: datetime) -> bool:
        """Does the minute of local time `t` match?"""
        if t.minute not in self.minutes or t.hour not in self.hours or t.month not in self.months:
            return False
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow


def _field(text: str, name: str, lo: int, hi: int) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name} field {text!r}: the step after '/' must be a positive number")
            step = int(step_text)
        if body == "*":
            start, stop = lo, hi
        else:
            a, dash, b = body.partition("-")
            if not a.isdigit() or (dash and not b.isdigit()):
                raise CronError(f"{name} field {text!r}: use numbers, '*', 'a-b', lists 'a,b' and steps '/n' "
                                f"(names like MON or JAN are not supported)")
            start, stop = int(a), int(b) if dash else int(a)
            if step_text and not dash:
                stop = hi
            if start > stop:
                raise CronError(f"{name} field {text!r}: range {start}-{stop} runs backwards")
        if start < lo or stop > hi:
            raise CronError(f"{name} field {text!r}: values must be within {lo}-{hi}")
        values.update(range(start, stop + 1, step))
    return frozenset(values), text != "*"


def parse_cron(text: str) -> Cron:
    """Parse five whitespace-separated cron fields; CronError names the field in trouble."""
    if not isinstance(text, str):
        raise CronError("a cron expression is text like \"0 * * * *\"")
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"{text!r} has {len(parts)} fields; cron needs 5: minute hour day-of-month month day-of-week")
    parsed = [_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, _FIELDS)]
    weekdays = frozenset(d % 7 for d in parsed[4][0])
    return Cron(text, parsed[0][0], parsed[1][0], parsed[2][0], parsed[3][0], weekdays,
                days_restricted=parsed[2][1], weekdays_restricted=parsed[4][1])


@dataclass(frozen=True)
class Window:
    cron: Cron
    minutes: int


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name like UTC or Europe/Berlin") from None


def window_open(windows: list[Window] | tuple[Window, ...], now_s: float, tz: ZoneInfo, *,
                synchronized: bool) -> Window | None:
    """The first window open at epoch second `now_s`, or None (always None while the clock is not synchronized)."""
    if not synchronized:
        return None
    minute0 = int(now_s // 60) * 60
    for w in windows:
        for k in range(w.minutes):
            t = datetime.fromtimestamp(minute0 - 60 * k, timezone.utc).astimezone(tz)
            if w.cron.matches(t):
                return w
    return None
