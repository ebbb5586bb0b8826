"""The VM test bed's frame-sequence check (tests/vm/archive.py): in order, gaps counted in frames, duplicates."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "vm"))

from archive import audio_coverage, beep_offsets, check_sequence, frame_lateness  # noqa: E402

CLIP = 300
MS = 1000 / 15


def frames(start_idx, count, t0=1_000_000.0, jitter=()):
    out = []
    for k in range(count):
        j = jitter[k % len(jitter)] if jitter else 0
        out.append((int(t0 + k * MS + j), (start_idx + k) % CLIP))
    return out


def test_an_unbroken_run_across_the_clip_loop_has_no_gap():
    rep = check_sequence(frames(250, 200, jitter=(0, 20, -15, 5)), CLIP, MS)
    assert (rep.frames, rep.lost, rep.gaps, rep.misordered, rep.duplicates) == (200, 0, [], [], 0)


def test_a_gap_is_counted_in_clip_frames_including_whole_loops():
    a = frames(0, 50)
    # 700 frames later: two whole loops of the clip and 100 frames
    b = frames((50 + 700) % CLIP, 30, t0=a[-1][0] + 701 * MS)
    rep = check_sequence(a + b, CLIP, MS)
    assert [g.lost for g in rep.gaps] == [700]
    assert rep.lost == 700 and not rep.misordered


def test_a_resent_fragment_is_a_duplicate_not_a_gap():
    a = frames(0, 60)
    rep = check_sequence(a + a[30:], CLIP, MS)
    assert rep.duplicates == 30 and rep.frames == 60 and rep.lost == 0


def test_a_picture_from_the_future_is_misordered():
    a = frames(0, 10)
    swapped = a[:4] + [(a[4][0], a[7][1]), (a[5][0], a[5][1])] + a[6:]
    rep = check_sequence(swapped, CLIP, MS)
    assert rep.misordered


def test_a_late_camera_loses_nothing():
    a = frames(0, 10)
    b = frames(10, 10, t0=a[-1][0] + 40 * MS)  # the next picture arrived 40 frame times later
    rep = check_sequence(a + b, CLIP, MS)
    assert rep.lost == 0 and not rep.misordered


def test_frames_that_are_not_the_clip_are_counted():
    rep = check_sequence(frames(0, 5) + [(5_000_000, -1)], CLIP, MS)
    assert rep.unknown == 1


def test_audio_coverage_sums_the_sound_and_finds_where_it_jumps():
    rate, n = 16000, 1024  # 64 ms AAC frames
    t = [1_000_000 + k * 64 for k in range(100)]
    cov = audio_coverage([(x, n, rate) for x in t])
    assert (round(cov.seconds, 3), cov.first_ms, cov.end_ms, cov.gaps, cov.overlaps) == (6.4, t[0], t[-1] + 64, [], 0)
    later = t[:50] + [x + 300 for x in t[50:]]      # an xrun: 300 ms missing, the clock re-anchored
    cov = audio_coverage([(x, n, rate) for x in later])
    assert cov.gaps == [(t[49] + 64, 300)] and cov.overlaps == 0 and cov.end_ms == t[-1] + 64 + 300
    back = t[:50] + [x - 10 for x in t[50:]]
    assert audio_coverage([(x, n, rate) for x in back]).overlaps == 1
    assert audio_coverage([(x + (k % 2), n, rate) for k, x in enumerate(t)]).gaps == []   # whole-ms stamps


def test_beep_offsets_pair_each_beep_with_the_clip_frame_of_its_second():
    run = frames(0, 600, t0=1_000_000_000 - 20 * 1000)  # clip frame 0 at a whole second, two loops of the clip
    seconds = [1_000_000_000 - 20 * 1000 + k * 1000 for k in range(1, 40)]
    beeps = [s + 37 for s in seconds]
    assert beep_offsets(beeps, run, CLIP, 15) == [37] * len(beeps)
    # a picture stamped 80 ms late: the sound is earlier than the picture
    late = [(ts + 80, idx) for ts, idx in run]
    assert beep_offsets(beeps[:3], late, CLIP, 15) == [37 - 80] * 3
    # no frame of that second stored: the beep is left out
    assert beep_offsets([seconds[-1] + 100_000], run, CLIP, 15) == []


def test_frame_lateness_is_the_stamp_minus_the_moment_the_feeder_wrote_the_frame():
    t0 = 1_000_000_000 - 20 * 1000  # clip frame 0 written at a whole second (the clip plays since the epoch)
    run = [(ts + 45, idx) for ts, idx in frames(0, 700, t0=t0)]
    late = frame_lateness(run, CLIP, 15)  # the stamps are whole ms: 45 ms, less up to 1 ms of rounding
    assert len(late) == 700 and all(44 < x <= 45 for x in late)
    assert frame_lateness([(t0 + 10, -1)], CLIP, 15) == []
