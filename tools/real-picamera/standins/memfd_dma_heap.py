"""STAND-IN for /dev/dma_heap: picamera2's DmaAllocator gets memfd buffers instead of DMA-heap buffers.

On a Pi, picamera2 allocates every frame buffer from /dev/dma_heap/{vidbuf_cached,linux,cma} (DMA_HEAP_IOCTL_ALLOC)
and brackets CPU access with DMA_BUF_IOCTL_SYNC. This machine has no DMA heap. A memfd is what the kernel gives
instead: an fd that can be passed to libcamera as a FrameBuffer plane and mmapped by both sides. CPU memory needs no
cache maintenance, so the sync becomes a no-op. Everything else in picamera2's allocator (buffer bookkeeping,
mmap, FrameBuffer construction, release) runs unchanged.

Only the real-picamera test harness calls `install()`; nothing in kvs-edge imports this.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

STAND_IN = True


class MemfdHeap:
    """What picamera2.dma_heap.DmaHeap offers (isValid, alloc, close), backed by memfd_create."""

    def __init__(self) -> None:
        self.allocated = 0  # buffers handed out: the test checks the stand-in was really used

    @property
    def isValid(self) -> bool:
        return True

    def alloc(self, name: str, size: int):
        from picamera2.dma_heap import UniqueFD

        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        self.allocated += 1
        return UniqueFD(fd)

    def close(self) -> None:
        pass


class MemfdSync:
    """picamera2's DmaAllocator.DmaSync without the DMA_BUF_IOCTL_SYNC ioctls (memfd memory is coherent)."""

    def __init__(self, allocator, fb, write) -> None:
        self.allocator = allocator
        self._fb = fb

    def __enter__(self):
        mapped = self.allocator.mapped_buffers.get(self._fb, None)
        if mapped is None:
            raise RuntimeError("failed to find buffer in MemfdSync")
        return mapped

    def __exit__(self, exc_type=None, exc_value=None, exc_traceback=None):
        return None


heaps: list[MemfdHeap] = []


def install() -> None:
    """Make picamera2's DmaAllocator use memfd buffers. Call before Picamera2() is created."""
    from picamera2.allocators import dmaallocator

    def heap() -> MemfdHeap:
        h = MemfdHeap()
        heaps.append(h)
        return h

    dmaallocator.DmaHeap = heap
    dmaallocator.DmaAllocator.DmaSync = MemfdSync
    log.info("stand-in: picamera2's DMA heap is memfd-backed")
