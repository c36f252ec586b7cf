"""A small, bounded cache of CPU gradient buffers for the fused ops' backward (``token_logprobs``).

Why: torch's CPU allocator hands every large tensor back to the OS when it is freed (glibc munmaps blocks above
its mmap threshold), so a ``[N, V]`` gradient created anew each training step is written into fresh pages: the
first write to every 4 KiB page faults and the kernel zeroes it. On the 2-core bench machine that made the float32
backward at 4096 x 49152 (805 MB) four times slower than the same kernel writing into memory already touched
(bench/RESULTS.md). CUDA has the same problem and torch's CUDA caching allocator is its answer; this is the CPU
analogue, narrowed to the one buffer that matters.

How: each cached block is an anonymous private ``mmap``; a gradient is ``torch.frombuffer(block)`` viewed to its
shape. The tensor's storage holds a reference to the mmap object until the storage is freed (all views, ``.grad``
slots and autograd uses gone), so ``sys.getrefcount`` tells exactly whether anything still uses the block: a block
is handed out again only when the cache's own reference is the only one left. No block is ever shared by two
live gradients.

Bounds: at most ``$SMTPO_GRAD_CACHE_BLOCKS`` blocks (default 2) are tracked; requests under 4 MiB are not cached
(glibc keeps those in its heap anyway). Sizes are rounded up to 2 MiB and then to 8 steps per power of two (at
most 12.5% slack), so slightly different shapes reuse one block; idle blocks too small for a request are released
when it comes. Between steps the cache keeps the idle blocks resident: about one gradient's worth of memory.

Switches: ``SMTPO_GRAD_CACHE=0`` turns it off (read at each allocation); ``empty_grad_cache()`` releases the idle
blocks now and forgets the ones still in use (those are freed when their last tensor goes, as without the cache);
``grad_cache_info()`` reports what is held.
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading

import torch

MIN_BYTES = 4 << 20
_ALIGN = 2 << 20
_DEFAULT_BLOCKS = 2

_lock = threading.Lock()
_blocks: list["_Block"] = []


class _Block:
    __slots__ = ("buf", "nbytes", "addr")

    def __init__(self, nbytes: int):
        # Private, not the shared mapping mmap(-1, n) gives by default: a forked worker must not see our writes.
        self.buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.nbytes = nbytes
        self.addr = torch.frombuffer(self.buf, dtype=torch.uint8, count=1).data_ptr()  # the temporary goes at once

    def in_use(self) -> bool:
        # Free: the only references are self.buf and getrefcount's argument. Every storage made from the block
        # by torch.frombuffer holds one more until it is freed.
        return sys.getrefcount(self.buf) > 2

    def holds(self, t: torch.Tensor) -> bool:
        return self.addr <= t.data_ptr() < self.addr + self.nbytes

    def release(self):
        if not self.in_use():
            self.buf.close()  # munmap now; a block still in use is unmapped when its last storage goes


def enabled() -> bool:
    return os.environ.get("SMTPO_GRAD_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def max_blocks() -> int:
    try:
        return max(0, int(os.environ.get("SMTPO_GRAD_CACHE_BLOCKS", _DEFAULT_BLOCKS)))
    except ValueError:
        return _DEFAULT_BLOCKS


def size_class(nbytes: int) -> int:
    """``nbytes`` rounded up to a multiple of 2 MiB, then to one of 8 steps per power of two."""
    n = -(-nbytes // _ALIGN) * _ALIGN
    step = 1 << max(0, n.bit_length() - 4)
    return max(_ALIGN, -(-n // step) * step)


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor like ``torch.empty(shape, dtype=dtype)``, from a cached block when it is large."""
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    limit = max_blocks()
    if nbytes < MIN_BYTES or limit <= 0 or not enabled():
        return torch.empty(shape, dtype=dtype)
    with _lock:
        free = [b for b in _blocks if not b.in_use()]
        fits = [b for b in free if b.nbytes >= nbytes]
        if fits:
            block = min(fits, key=lambda b: b.nbytes)
        else:
            # Idle blocks that cannot serve this request go (the cache follows the shapes in use), as do any over
            # the limit; if every tracked block is still in use, this gradient is an ordinary tensor.
            for b in free:
                _blocks.remove(b)
                b.release()
            if len(_blocks) >= limit:
                return torch.empty(shape, dtype=dtype)
            block = _Block(size_class(nbytes))
            _blocks.append(block)
        t = torch.frombuffer(block.buf, dtype=dtype, count=numel)
    return t.view(shape)


def empty_grad_cache() -> int:
    """Release the cached CPU gradient buffers that nothing uses now (like ``torch.cuda.empty_cache``) and forget
    the ones still in use (they are freed when their last tensor goes). Returns the bytes released now."""
    with _lock:
        released = 0
        for b in _blocks:
            if not b.in_use():
                released += b.nbytes
            b.release()
        _blocks.clear()
    return released


def from_cache(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory lies in a block the cache tracks (for tests and the bench)."""
    with _lock:
        return any(b.holds(t) for b in _blocks)


def grad_cache_info() -> dict:
    """What the CPU gradient cache holds: ``blocks`` tracked, ``bytes`` they span, ``idle_bytes`` of blocks nothing
    uses now (kept resident for the next backward), ``enabled`` and ``max_blocks``."""
    with _lock:
        idle = sum(b.nbytes for b in _blocks if not b.in_use())
        return {"enabled": enabled(), "max_blocks": max_blocks(), "blocks": len(_blocks),
                "bytes": sum(b.nbytes for b in _blocks), "idle_bytes": idle}
