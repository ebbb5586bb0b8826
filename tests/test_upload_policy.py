"""The upload policy core, exhaustively over small grids against a brute-force oracle (one bit per millisecond)."""

import itertools

import pytest

from kvs_edge.upload_policy import Decision, EventSpan, Mode, Trigger, decide, event_for, forget_before, merge


def oracle_upload(triggers, pre, post, first, last):
    """Brute force: is any millisecond of [first, last] inside some trigger's [at - pre, at + seconds + post]?"""
    covered = set()
    for t in triggers:
        covered.update(range(t.at_ms - pre, t.at_ms + int(t.seconds * 1000) + post + 1))
    return any(ms in covered for ms in range(first, last + 1))


def test_merge_matches_the_oracle_on_every_small_case():
    pre, post = 5, 5
    ats = range(0, 40, 3)
    for n in (1, 2, 3):
        for combo in itertools.combinations(ats, n):
            triggers = [Trigger(a, f"l{a}") for a in combo]
            spans = merge(triggers, pre, post)
            # spans are disjoint, sorted, and cover exactly the union
            for a, b in zip(spans, spans[1:]):
                assert a.end_ms < b.start_ms
            assert sum(s.triggers for s in spans) == n
            for first in range(-10, 50, 2):
                for length in (0, 1, 3, 7):
                    last = first + length
                    got = decide(Mode.EVENTS, first, last, now_ms=60, spans=spans, retain_ms=None)
                    want = oracle_upload(triggers, pre, post, first, last)
                    assert (got is Decision.UPLOAD) == want, (combo, first, last)


def test_overlapping_triggers_merge_into_one_event_with_the_first_label():
    spans = merge([Trigger(20_000, "door"), Trigger(24_000, "motion"), Trigger(100_000, "late")], 5000, 5000)
    assert spans == [EventSpan(15_000, 29_000, 20_000, "door", 2), EventSpan(95_000, 105_000, 100_000, "late", 1)]


def test_touching_spans_merge_and_seconds_extends_the_event():
    assert len(merge([Trigger(0), Trigger(10)], 5, 5)) == 1  # [-5, 5] and [5, 15] touch
    assert len(merge([Trigger(0), Trigger(11)], 5, 5)) == 2
    (s,) = merge([Trigger(1000, seconds=30)], 5000, 5000)
    assert (s.start_ms, s.end_ms) == (-4000, 36_000)


def test_trigger_order_does_not_matter():
    a = [Trigger(50, "a"), Trigger(10, "b"), Trigger(30, "c")]
    assert merge(a, 10, 10) == merge(sorted(a, key=lambda t: t.at_ms), 10, 10)


def test_events_mode_keeps_then_expires_by_retention_with_an_injected_clock():
    spans = merge([Trigger(100_000)], 5000, 5000)
    frag = (50_000, 51_000)
    for now in range(51_000, 200_000, 7_000):
        d = decide(Mode.EVENTS, *frag, now_ms=now, spans=spans, retain_ms=60_000)
        assert d is (Decision.EXPIRED if frag[1] < now - 60_000 else Decision.KEEP), now
    # no retention: never expires
    assert decide(Mode.EVENTS, 0, 1000, now_ms=10**9, spans=[], retain_ms=None) is Decision.KEEP
    # an event fragment never expires before upload
    assert decide(Mode.EVENTS, 99_000, 100_500, now_ms=10**9, spans=spans, retain_ms=1) is Decision.UPLOAD


def test_continuous_uploads_everything_and_schedule_follows_the_window():
    for first in range(0, 10_000, 1000):
        assert decide(Mode.CONTINUOUS, first, first + 999, now_ms=0) is Decision.UPLOAD
        assert decide(Mode.SCHEDULE, first, first + 999, now_ms=0, window_is_open=True) is Decision.UPLOAD
        assert decide(Mode.SCHEDULE, first, first + 999, now_ms=10**9, window_is_open=False,
                      retain_ms=1) is Decision.KEEP


def test_event_for_finds_the_span_and_forget_before_drops_old_ones():
    spans = merge([Trigger(10_000, "a"), Trigger(50_000, "b")], 1000, 1000)
    assert event_for(spans, 49_500, 50_500).label == "b"
    assert event_for(spans, 20_000, 30_000) is None
    assert [s.label for s in forget_before(spans, 20_000)] == ["b"]
    assert forget_before(spans, None) == spans


@pytest.mark.parametrize("mode", list(Mode))
def test_mode_values_are_the_config_words(mode):
    assert Mode(mode.value) is mode
