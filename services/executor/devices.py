"""What a device holds: memory in use, and giving it back after an out-of-memory error."""

from __future__ import annotations

import gc
import os
import sys


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA or host allocation failed: the task fails, the replica keeps serving."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


def free_memory(device: str) -> None:
    """Drops what the failed call left behind, so the next one has the memory."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_bytes(device: str) -> float:
    """Memory in use: allocated CUDA memory on a GPU, the process's resident set on CPU."""
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        return float(torch.cuda.memory_allocated(torch.device(device)))
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return 0.0
