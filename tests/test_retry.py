"""kvs_edge.retry: the one Backoff (exponential, full jitter, cap) and the limits derived from it."""

import random
import statistics

import pytest

from kvs_edge import retry
from kvs_edge.retry import Backoff, RetryPolicy, wedge_limit


def test_backoff_is_exponential_with_full_jitter():  # moved here from test_transport.py with the class
    b = Backoff(base_s=0.5, cap_s=8.0, rng=random.Random(7))
    ceilings = [0.5, 1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        samples = []
        for _ in range(300):
            b.attempt = ceilings.index(ceiling) if ceiling < 8 else 4
            samples.append(b.next())
        assert all(0 <= s <= ceiling for s in samples)
        # full jitter: spread over the whole range, not clustered at the ceiling
        assert min(samples) < 0.1 * ceiling and max(samples) > 0.9 * ceiling
    b.reset()
    assert b.attempt == 0 and b.next() <= 0.5 and b.attempt == 1


def test_ceilings_double_from_base_until_the_cap_and_stay_there():
    b = Backoff(1.0, 60.0, random.Random(1))
    seen = []
    for _ in range(12):
        seen.append(b.ceiling())
        b.next()
    assert seen == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]
    b.attempt = 10_000  # a days-long outage: no overflow, still the cap
    assert b.ceiling() == 60.0 and 0 <= b.next() <= 60.0


def test_full_jitter_is_uniform_over_zero_to_the_ceiling():
    rng = random.Random(2026)
    b = Backoff(0.5, 30.0, rng)
    samples = []
    for _ in range(4000):
        b.attempt = 20  # at the cap
        samples.append(b.next())
    assert min(samples) >= 0 and max(samples) <= 30.0
    # uniform on [0, 30]: mean 15, standard deviation 30/sqrt(12) = 8.66; each decile holds about a tenth
    assert abs(statistics.mean(samples) - 15.0) < 0.6
    assert abs(statistics.pstdev(samples) - 30.0 / 12 ** 0.5) < 0.4
    deciles = [sum(1 for s in samples if 3 * i <= s < 3 * (i + 1)) for i in range(10)]
    assert all(330 < n < 470 for n in deciles), deciles


def test_seeded_sources_give_the_same_schedule_and_reset_starts_again():
    a, b = Backoff(0.5, 30.0, random.Random(5)), Backoff(0.5, 30.0, random.Random(5))
    assert [a.next() for _ in range(8)] == [b.next() for _ in range(8)]
    a.reset()
    assert a.attempt == 0 and a.ceiling() == 0.5


@pytest.mark.parametrize("base, cap", [(0, 1), (-1, 1), (2, 1)])
def test_nonsense_numbers_are_refused(base, cap):
    with pytest.raises(ValueError):
        Backoff(base, cap)


def test_of_a_policy_and_the_wedge_limit_follows_the_largest_cap():
    b = Backoff.of(RetryPolicy(0.25, 4.0), random.Random(0))
    assert (b.base_s, b.cap_s) == (0.25, 4.0)
    assert wedge_limit(RetryPolicy(1, 30), RetryPolicy(1, 60)) == 2 * 60
    assert wedge_limit(RetryPolicy(1, 30), factor=3) == 90
    # the appliance's limit covers the longest sleep any of its retry loops takes between two heartbeats
    limit = wedge_limit(retry.UPLOAD, retry.STREAM_LOOKUP)
    assert limit > max(retry.UPLOAD.cap_s, retry.STREAM_LOOKUP.cap_s)
