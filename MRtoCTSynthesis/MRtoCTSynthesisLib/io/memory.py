"""How much memory is free, so that sizes from files, headers and arguments are checked before allocating.

Readers and the synthesis loop compare what they are about to allocate with :func:`available_memory_bytes`
and refuse with an :class:`~..errors.InputError` instead of being killed by the kernel (or raising a
``MemoryError`` deep inside numpy) after minutes of work.
"""

from __future__ import annotations

import os

from ..errors import InputError

__all__ = ["available_memory_bytes", "check_fits_in_memory", "format_bytes"]


def available_memory_bytes() -> int | None:
    """Memory the process can still get: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else free physical pages;
    also bounded by an address-space limit (``ulimit -v``) and a cgroup (container) limit. None when unknown."""
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        import resource  # POSIX only

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            candidates.append(int(soft))
    except (ImportError, ValueError, OSError, AttributeError):
        pass
    for path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 1 << 60:
                continue
            with open(used_path, encoding="ascii") as fh:
                used = int(fh.read().strip())
            candidates.append(max(0, int(text) - used))
            break
        except (OSError, ValueError):
            continue
    return min(candidates) if candidates else None


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``320.0 MiB`` ..."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_fits_in_memory(nbytes: float, what: str, fix: str) -> None:
    """Raise :class:`InputError` when ``nbytes`` (what ``what`` needs) exceeds the memory available now."""
    free = available_memory_bytes()
    if free is not None and nbytes > free:
        raise InputError(f"{what} would need about {format_bytes(nbytes)} of memory, but only {format_bytes(free)} "
                         "is available.", fix)
