"""Cron windows in a time zone, with an injected clock (epoch seconds)."""

from datetime import datetime, timedelta, timezone

import pytest

from kvs_edge.schedule import CronError, Window, parse_cron, window_open, zone

UTC = zone("UTC")


def epoch(y, mo, d, h, mi, tz="UTC"):
    return datetime(y, mo, d, h, mi, tzinfo=zone(tz)).timestamp()


def test_hourly_ten_minute_window_opens_and_closes_minute_by_minute():
    w = [Window(parse_cron("0 * * * *"), 10)]
    base = epoch(2026, 11, 30, 3, 0)
    opened = [m for m in range(0, 180) if window_open(w, base + 60 * m + 30, UTC, synchronized=True)]
    assert opened == [m for m in range(0, 180) if m % 60 < 10]


def test_never_open_before_the_clock_is_synchronized():
    w = [Window(parse_cron("* * * * *"), 1)]
    assert window_open(w, epoch(2026, 1, 1, 0, 0), UTC, synchronized=False) is None
    assert window_open(w, epoch(2026, 1, 1, 0, 0), UTC, synchronized=True) is w[0]


def test_fields_lists_ranges_steps_and_brute_force_agreement():
    c = parse_cron("*/15 8-17 * * 1-5")
    t = datetime(2026, 11, 30, 0, 0, tzinfo=timezone.utc)  # a Monday
    for k in range(7 * 24 * 4):
        u = t + timedelta(minutes=15 * k + (k % 3))
        want = u.minute % 15 == 0 and 8 <= u.hour <= 17 and u.isoweekday() <= 5
        assert c.matches(u) == want, u
    assert parse_cron("5,35 1 * * *").minutes == frozenset({5, 35})
    assert parse_cron("0 0 * * 7").weekdays == frozenset({0})  # 7 is Sunday
    assert parse_cron("10/20 * * * *").minutes == frozenset({10, 30, 50})


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    c = parse_cron("0 0 1 * 1")  # the 1st, or any Monday
    assert c.matches(datetime(2026, 11, 30, 0, 0))  # Monday the 30th
    assert c.matches(datetime(2026, 12, 1, 0, 0))  # Tuesday the 1st
    assert not c.matches(datetime(2026, 12, 2, 0, 0))


def test_time_zone_and_daylight_saving():
    berlin = zone("Europe/Berlin")
    w = [Window(parse_cron("30 2 * * *"), 10)]
    # 2026-03-29: clocks jump 02:00 -> 03:00 in Berlin, 02:30 never happens
    day = datetime(2026, 3, 29, 0, 0, tzinfo=timezone.utc).timestamp()
    assert not [m for m in range(24 * 60) if window_open(w, day + 60 * m, berlin, synchronized=True)]
    # an ordinary day: opens at 02:30 local = 01:30 UTC in winter
    day = datetime(2026, 1, 10, 0, 0, tzinfo=timezone.utc).timestamp()
    opened = [m for m in range(24 * 60) if window_open(w, day + 60 * m, berlin, synchronized=True)]
    assert opened == list(range(90, 100))


@pytest.mark.parametrize("text, words", [
    ("* * * *", "5"), ("60 * * * *", "0-59"), ("* * * JAN *", "names"), ("5-1 * * * *", "backwards"),
    ("*/0 * * * *", "step"), ("* * 0 * *", "1-31"),
])
def test_bad_expressions_say_what_is_wrong(text, words):
    with pytest.raises(CronError, match=words):
        parse_cron(text)


def test_unknown_zone_is_one_clear_line():
    with pytest.raises(ValueError, match="IANA"):
        zone("Mars/Olympus")
