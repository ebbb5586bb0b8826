"""--fault SPEC parsing and the Faults bookkeeping (the network behaviour is in test_emulator.py)."""

from __future__ import annotations

import pytest

from kvs_edge.emulator import Faults, FaultSpecError, parse_fault_spec


def test_every_fault_spec_sets_its_fault():
    f = Faults()
    parse_fault_spec("drop-after-bytes=1000x2", f)
    assert [f.take_drop(), f.take_drop(), f.take_drop()] == [1000, 1000, None]
    parse_fault_spec("drop-random=7", f)
    g = Faults()
    g.drop_at_random(7)
    assert f.take_drop() == g.take_drop() and f.take_drop() is None  # reproducible from the seed
    parse_fault_spec("delay-acks=1.5", f)
    assert f.ack_delay == 1.5
    parse_fault_spec("error=5001@2", f)
    assert [f.fragment_error(), f.fragment_error(), f.fragment_error()] == [None, 5001, None]
    parse_fault_spec("fail=2:throttle", f)
    assert f.take_failure("/putMedia")[1] == "ClientLimitExceededException"
    assert f.take_failure("/describeStream")[0] == 400
    assert f.take_failure("/putMedia") is None
    parse_fault_spec("fail=1:500@/putMedia", f)
    assert f.take_failure("/describeStream") is None and f.take_failure("/putMedia")[0] == 500
    parse_fault_spec("stall=5", f)
    assert 4 < f.stalled_for() <= 5
    parse_fault_spec("rate=100000", f)
    assert f.rate == 100000
    states = []
    h = Faults(on_offline=states.append)
    start = parse_fault_spec("refuse=0.01", h)
    assert h.offline and states == [True] and callable(start)
    f.clear()
    assert (f.ack_delay, f.rate, f.stalled_for(), f.take_drop()) == (0.0, None, 0.0, None)


def test_fail_next_can_target_paths():
    f = Faults()
    f.fail_next(1, "503", paths=["/putMedia"])
    assert f.take_failure("/getDataEndpoint") is None
    assert f.take_failure("/putMedia")[0] == 503


@pytest.mark.parametrize("spec,msg", [("nonsense", "expected NAME=VALUE"), ("explode=1", "unknown fault"),
                                      ("error=abc", "error=abc"), ("fail=1:418", "kind must be one of")])
def test_bad_fault_specs_get_one_clear_line(spec, msg):
    with pytest.raises(FaultSpecError, match=msg) as e:
        parse_fault_spec(spec, Faults())
    assert "\n" not in str(e.value)
