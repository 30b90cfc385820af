"""Paths as users' file systems hold them: resolved without ever looping.

A symlink that leads back to itself (`out -> out`, or a loop in a parent) makes pathlib's resolve()
raise RuntimeError("Symlink loop ...") on Python 3.11 and OSError(ELOOP) on later versions; either
is bad input, named here once as such.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import ConvertError


def loop_error(path: Path) -> ConvertError:
    return ConvertError(path, "is a symbolic link loop: following it leads back to itself and never to a file",
                        "point the link at a real directory, or give the real path")


def resolved(path: Path) -> Path:
    """path.resolve(), with a symlink loop anywhere along it refused by name."""
    try:
        return Path(path).resolve()
    except RuntimeError as e:  # Python < 3.13's report of a loop
        if "loop" not in str(e).lower():
            raise
        raise loop_error(path) from None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise loop_error(path) from None


def report_target(path: Path, what: str, keep_out_of: list[Path]) -> Path:
    """A report file the user named (verify --junit FILE): checked before any work, so a wrong path costs
    nothing. Not a directory, not inside a checkpoint directory (a conversion lists exactly its files)."""
    path = Path(path)
    if path.is_dir():
        raise ConvertError(path, f"is a directory; {what} needs a file name", "e.g. reports/verify.xml")
    where = resolved(path.parent) / path.name
    for root in keep_out_of:
        if root.exists() and where.is_relative_to(resolved(root)):
            raise ConvertError(path, f"lies inside {root}; {what} is not written into a checkpoint directory",
                               "write it beside it, e.g. reports/")
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """Write path in one step (written beside it, then renamed): a reader never sees half a file, and a
    failed write leaves what was there. Missing parents are made, as mkdir -p would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
