"""How a training process runs, from `runtime`: its CPU threads, deterministic algorithms, TF32, and what it does
with the host memory it frees.

Freed host memory (`runtime.host_memory`). glibc serves every block above its mmap threshold (at most 32 MiB)
with a fresh `mmap` and unmaps it on `free`. A CPU train step of the study's convolutional networks allocates
and frees activations of hundreds of MB (CNN: (32, 296, 98, 98) floats, 371 MB, several times a step), so every
step touches them anew: hundreds of thousands of page faults, each one zeroing a page that the arithmetic then
overwrites. `keep_freed_memory` sets `M_MMAP_MAX` to 0 (large blocks come from the heap, as small ones do) and
`M_TRIM_THRESHOLD` to its largest value (free memory at the top of the heap stays mapped), so that a step reuses
the previous step's pages. Nothing computed changes, only where the bytes live; the process keeps its peak
resident memory until it exits, as PyTorch's CUDA caching allocator does on the GPU. The figures are in
docs/benchmarks.md (`tools/bench_host_memory.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

from bcrdist.train.config import RuntimeConfig

# mallopt parameters, <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
INT_MAX = 2 ** 31 - 1


def keep_freed_memory() -> bool:
    """Make this process's freed host memory stay mapped for reuse (module docstring). True when it took effect,
    False where the C library is not glibc (musl, macOS: their allocators have no such switches)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1


def configure_process(rt: RuntimeConfig, device: torch.device, local_world_size: int) -> str:
    """Apply the `runtime` section `rt` to this process for a run on `device` with `local_world_size` ranks on
    the node; returns what the run's log says of its freed host memory."""
    if rt.threads:
        torch.set_num_threads(rt.threads)
    elif device.type == "cpu":
        # one process per core group: oversubscribed OpenMP threads slow CPU training by 10× or more
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    if rt.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = rt.tf32
        torch.backends.cudnn.allow_tf32 = rt.tf32
    keep = rt.host_memory == "keep" or (rt.host_memory == "auto" and device.type == "cpu")
    return "kept for reuse" if keep and keep_freed_memory() else "the C library's defaults"
