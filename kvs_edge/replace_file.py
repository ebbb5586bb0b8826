"""Writing a file whole or not at all: a temporary file in the destination's folder, renamed over it when complete.

    with replacing("out.mp4", mode=0o644) as tmp:   # tmp: a path beside out.mp4, created empty with `mode`
        write(tmp)                                  # the body raises: tmp is removed, out.mp4 untouched
    # here out.mp4 is the new file (os.replace: a reader sees the old or the new one, never half of it)

Durability (fsync before the rename) is the caller's: the status file is rewritten every few seconds and skips it;
a configuration imported from the boot partition syncs its file before leaving the block.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(dst: str | os.PathLike, *, mode: int | None = None, suffix: str = ".tmp") -> Iterator[str]:
    """Yields the temporary path (`.NAME.XXXX{suffix}` beside dst; mode: its permission bits, else 0600)."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
