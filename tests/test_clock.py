"""The time base: video captured before the clock is synchronized gets its true capture time once it is."""

from types import SimpleNamespace

from kvs_edge.clock import FixedOffset, Timebase, kernel_clock_synchronized, sample_offset_ns

TRUE_EPOCH_NS = 1_790_000_000_000_000_000  # the real time at monotonic 0 of the fake boot
STALE_EPOCH_NS = 1_700_000_000_000_000_000  # what fake-hwclock restored: months behind


class FakeClock:
    """The kernel's clocks as a Pi sees them after boot: wall time wrong and unsynced until NTP steps it."""

    def __init__(self):
        self.mono = 5_000_000_000
        self.synced = False

    def monotonic_ns(self):
        return self.mono

    def wall_ns(self):
        return self.mono + (TRUE_EPOCH_NS if self.synced else STALE_EPOCH_NS)

    def synchronized(self):
        return self.synced

    def advance(self, seconds):
        self.mono += int(seconds * 1e9)


def test_unsynced_clock_holds_fragments_then_stamps_them_with_capture_time(tmp_path):
    clock = FakeClock()
    tb = Timebase(require_sync=True, clock=clock, boot_id="boot-a", state_path=tmp_path / "time.json")
    captured = []
    for _ in range(5):  # five fragments captured while the clock is wrong
        captured.append(clock.mono // 1_000_000)
        clock.advance(2)
    assert all(tb.producer_ms("boot-a", c) is None for c in captured)
    clock.synced = True  # NTP steps the clock
    clock.advance(30)
    stamps = [tb.producer_ms("boot-a", c) for c in captured]
    assert stamps == [c + TRUE_EPOCH_NS // 1_000_000 for c in captured]


def test_without_require_sync_stamps_at_once(tmp_path):
    clock = FakeClock()
    tb = Timebase(require_sync=False, clock=clock, boot_id="boot-a")
    c = clock.mono // 1_000_000
    assert tb.producer_ms("boot-a", c) == c + STALE_EPOCH_NS // 1_000_000


def test_backlog_of_an_earlier_boot_uses_that_boots_offset(tmp_path):
    state = tmp_path / "time.json"
    first = FakeClock()
    first.synced = True
    tb1 = Timebase(clock=first, boot_id="boot-1", state_path=state)
    captured = first.mono // 1_000_000
    tb1.refresh()
    # power cut; the next boot's monotonic clock restarts, its offset differs, and it is not synced yet
    second = FakeClock()
    second.mono = 1_000_000_000
    tb2 = Timebase(clock=second, boot_id="boot-2", state_path=state)
    assert tb2.producer_ms("boot-1", captured) is None  # SigV4 needs a good clock anyway
    second.synced = True
    second.advance(100)
    assert tb2.producer_ms("boot-1", captured) == captured + TRUE_EPOCH_NS // 1_000_000


def test_stamps_never_lie_in_the_future(tmp_path):
    clock = FakeClock()
    clock.synced = True
    tb = Timebase(clock=clock, boot_id="b")
    future_capture = clock.mono // 1_000_000 + 60_000
    assert tb.producer_ms("b", future_capture) <= clock.wall_ns() // 1_000_000


def test_unknown_boot_is_stamped_just_before_now():
    clock = FakeClock()
    clock.synced = True
    tb = Timebase(clock=clock, boot_id="b")
    assert tb.producer_ms("other", 123) == clock.wall_ns() // 1_000_000 - 1


def test_fixed_offset_and_call_protocol():
    info = SimpleNamespace(boot_id="x", first_ms=1_700_000_000_000)
    assert FixedOffset()(info) == 1_700_000_000_000
    assert FixedOffset(5)(info) == 1_700_000_000_005


def test_offset_sampling_on_the_real_clocks():
    import time

    from kvs_edge.clock import KernelClock

    off = sample_offset_ns(KernelClock())
    assert abs((time.monotonic_ns() + off) - time.time_ns()) < 50_000_000


def test_adjtimex_struct_layout_matches_the_kernel():
    # The kernel fills `tick` with microseconds per clock tick (1e6 / USER_HZ) and `tolerance` with its fixed
    # 500 ppm (500 << 16): both land in the right fields only if the ctypes layout is right.
    from kvs_edge.clock import read_timex

    state, tx = read_timex()
    assert state >= 0
    assert tx.tick in (1000, 3333, 4000, 10000)
    assert tx.tolerance == 500 << 16
    assert kernel_clock_synchronized() == (state != 5 and not tx.status & 0x40)
