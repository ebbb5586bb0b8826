"""Writer loop for the kill -9 test (tests/test_log_kill.py): `python logwriter.py PATH SEED`.

Opens the fragment log at PATH (recovering whatever a previous kill left), releases about half of the backlog it finds,
then writes fragments as fast as it can until it is killed. Prints, flushed, one line per event:
    S <seq>   the first seq this process got
    C <seq>   after end_fragment() returned: the fragment is complete in the log
    r <seq>   before release() is called (a kill between the two leaves the test unsure whether it happened)
    R <seq>   after release() returned
Every fragment describes itself: its cluster head is b"CLUSTER <seed> <n>" (fixed width) (n counts the fragments of one run) and its
frames, header and timecodes are a function of (seed, n) alone (fragment()), so the test can check any fragment it
finds, also one completed just before the kill and never reported.
"""

from __future__ import annotations

import random
import sys

HEADERS = [b"\x1a\x45\xdf\xa3 kill-test header zero", b"\x1a\x45\xdf\xa3 kill-test header one" * 4]


def fragment(seed: int, n: int) -> tuple[bytes, int, list[tuple[bytes, int]], int]:
    """(cluster head, first_ms, [(frame, timecode_ms)], header index) of fragment n of run seed."""
    rng = random.Random(seed * 1_000_003 + n)
    first_ms = 1_000_000 * seed + 2000 * n
    frames = [(rng.randbytes(rng.randint(1, 8_000)), first_ms + 33 * k) for k in range(rng.randint(1, 10))]
    return b"CLUSTER %010d %010d" % (seed, n), first_ms, frames, (seed + n) % 2


HEAD_LEN = len(b"CLUSTER %010d %010d" % (0, 0))


def parse_head(data: bytes) -> tuple[int, int]:
    """(seed, n) from the start of a fragment's bytes."""
    _, seed, n = data[:HEAD_LEN].split(b" ")
    return int(seed), int(n)


def main() -> None:
    import logging
    import os

    from kvs_edge.log import FragmentLog

    if os.environ.get("KVS_LOGWRITER_DEBUG"):  # a directory: the log lines of run SEED go to SEED.log there
        logging.basicConfig(level=logging.DEBUG, format="%(message)s",
                            filename=os.path.join(os.environ["KVS_LOGWRITER_DEBUG"], f"{sys.argv[2]}.log"))

    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    log = FragmentLog(path, 512 << 20, segment_bytes=256 * 1024, sync_interval_s=1.0, boot_id=f"run-{seed}")
    ids = [log.add_header(h) for h in HEADERS]
    out = sys.stdout
    after = None
    while (info := log.next_fragment(after, timeout=0)) is not None:  # the backlog a previous run left
        after = info.seq
        if rng.random() < 0.5:
            out.write(f"r {info.seq}\n")
            out.flush()
            log.release(info.seq)
            out.write(f"R {info.seq}\n")
            out.flush()
    completed: list[int] = []
    first = True
    for n in range(1 << 30):
        head, first_ms, frames, h = fragment(seed, n)
        seq = log.start_fragment(ids[h], first_ms, head)
        if first:
            out.write(f"S {seq}\n")
            out.flush()
            first = False
        for data, tc in frames:
            log.append(data, tc)
        log.end_fragment()
        out.write(f"C {seq}\n")
        out.flush()
        completed.append(seq)
        if len(completed) > 2 and rng.random() < 0.6:
            s = completed.pop(0)
            out.write(f"r {s}\n")
            out.flush()
            log.release(s)
            out.write(f"R {s}\n")
            out.flush()


if __name__ == "__main__":
    main()
