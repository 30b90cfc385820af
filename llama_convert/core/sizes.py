"""Byte counts for people: one way, in binary units (B, KiB, MiB, GiB, TiB), everywhere the tool prints one."""
from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float, digits: int = 1) -> str:
    """`1536` -> `1.5 KiB`: the largest unit under which the number stays at least 1, `digits` after the point."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} B" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
