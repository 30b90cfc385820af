"""What this machine can give a process now: memory (the kernel's view, capped by the cgroup's), and
what the process has used. Both verify (to choose streaming) and bulk (to admit rows) ask here."""
from __future__ import annotations

import os
from pathlib import Path


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> int | None:
    """What this process's cgroup still allows (v2, then v1), or None when it sets no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2
            d = Path("/sys/fs/cgroup") / rel.lstrip("/")
            limit, used = _read_int(d / "memory.max"), _read_int(d / "memory.current")
        elif "memory" in controllers.split(","):
            d = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
            limit, used = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
            if limit is not None and limit >= 2**60:  # v1 writes "no limit" as a huge number
                limit = None
        else:
            continue
        if limit is not None:
            return max(0, limit - (used or 0))
    return None


def available_memory() -> int:
    """Memory a new process can use now: the kernel's MemAvailable, capped by the cgroup's room."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not found:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        found = [pages]
    return min(found)


def peak_rss() -> int:
    """The largest resident set this process has had, in bytes."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
