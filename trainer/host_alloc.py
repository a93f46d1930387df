"""glibc's thresholds for host memory: low while the models are built, high once a single unsharded rank has settled.

Two `mallopt` settings decide where a freed host buffer goes. Allocations of at least `M_MMAP_THRESHOLD` bytes are
their own mmap, returned to the system when freed (and paid for again, in page faults and zeroing, when the next
one is touched); smaller ones come from the heap, which keeps freed memory for reuse and gives its top back only
above `M_TRIM_THRESHOLD`. glibc's default raises both as large buffers are freed (the mmap threshold up to 32 MiB).

- While the models are built (`return_freed_memory`, at process-group start): `BUILD_MMAP_THRESHOLD`, so a freed
  full tensor (rank 0's initial weights, a gathered FSDP2 unit, a sync bucket) goes back to the system at once
  instead of staying in the heap, where it counts in every later measurement of the process's memory
  (`make memory`; README, "Scale").
- Once the first step is done, on a rank that runs the policy unsharded (one rank, no mixed precision or CPU
  offload: `trainer.dist.parallelize` returns the plain module) there are no more gathered units or full copies to
  give back, only the step's own activations and gradients, freed and allocated again every step. Left as mmaps,
  each of them paid its page faults again every step (about 40% of the built-in job's update on the 2-core CPU
  machine, issue 28). `settle_unsharded` sets the values glibc's own adaptive default ends at: an mmap threshold of
  `STEADY_MMAP_THRESHOLD` and a trim threshold twice that, so they are reused from the heap.
  Sharded ranks keep the low threshold: there the step frees gathered units, and a high threshold let the heap
  grow (`make memory`, W = 2, 3 steps: 3.85x -> 5.42x the fp32 model).

`FASTSLOW_MMAP_THRESHOLD` (bytes; 0: leave glibc's adaptive default) overrides both phases, for measuring.
No-ops without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["BUILD_MMAP_THRESHOLD", "STEADY_MMAP_THRESHOLD", "return_freed_memory", "settle_unsharded"]

BUILD_MMAP_THRESHOLD = 512 << 10
"""While building: below the model's smaller weight matrices, so their freed full copies leave the heap."""
STEADY_MMAP_THRESHOLD = 32 << 20
"""After the first step, unsharded: glibc's `DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit, the adaptive default's ceiling."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # malloc.h


def _override() -> int | None:
    value = os.environ.get("FASTSLOW_MMAP_THRESHOLD")
    return None if value is None else int(value)


def _mallopt(settings: dict[int, int]) -> bool:
    """`mallopt(param, value)` for each setting; False where there is no glibc (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in settings.items())
    except (OSError, AttributeError):
        return False


def return_freed_memory() -> bool:
    """The build phase's mmap threshold (`FASTSLOW_MMAP_THRESHOLD` if set; 0 leaves glibc's default). True if set."""
    threshold = _override()
    threshold = BUILD_MMAP_THRESHOLD if threshold is None else threshold
    return threshold > 0 and _mallopt({_M_MMAP_THRESHOLD: threshold})


def settle_unsharded() -> bool:
    """The steady state of an unsharded rank: mmap threshold `STEADY_MMAP_THRESHOLD`, trim threshold twice that.
    Nothing when `FASTSLOW_MMAP_THRESHOLD` is set. True if set."""
    if _override() is not None:
        return False
    return _mallopt({_M_MMAP_THRESHOLD: STEADY_MMAP_THRESHOLD, _M_TRIM_THRESHOLD: 2 * STEADY_MMAP_THRESHOLD})
